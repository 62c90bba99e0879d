"""The house's import rules (docs/architecture.md), checked on the source with ast.

Every ``import`` / ``from ... import`` in refdl/**/*.py, at any depth (inside functions and
``try`` blocks too), is resolved to the refdl module it loads. The test fails, listing every
violation as file:line at once, when

* an import runs upward: a module on a lower floor imports one on a higher floor (FLOORS,
  the same table as docs/architecture.md);
* refdl's modules import each other around a cycle (a package's ``__init__`` counts as the
  module ``refdl.pkg``; Python's implicit import of parent packages is not an edge);
* a private module (a name with a leading underscore) is imported from outside the
  package that holds it;
* refdl imports the experiments package (which sits above the library);
* a function (or method) is longer than MAX_FUNCTION_LINES lines from its ``def`` to its
  last line, its docstring not counted, or a module longer than MAX_MODULE_LINES lines
  (one screen per function, one sitting per module).
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "refdl"

# Bottom to top. A module may import modules on its own floor or below, never above.
# Keys are refdl's top-level modules and packages (the first name after ``refdl.``);
# "refdl" is the package's own __init__, the facade on top.
FLOORS = [
    ("foundation", ["_ext", "random", "grad_mode", "threads", "memory", "progress"]),
    ("functional", ["functional", "metrics"]),
    ("kernels", ["ext"]),
    ("init", ["init"]),
    ("nn", ["nn"]),
    ("optim", ["optim"]),
    ("autograd", ["autograd"]),
    ("functional API", ["nn.functional"]),
    ("checks", ["gradcheck", "summary", "interop"]),
    ("train", ["checkpoint", "train"]),
    ("models", ["models"]),
    ("interpret", ["interpret"]),
    ("data", ["data"]),
    ("facade", ["refdl"]),
    ("plot", ["plot"]),
    ("cli", ["cli", "__main__"]),
]

# Violations in files owned by other work in progress, each to be removed with its fix
# (a stale entry fails test_pending_entries_are_still_needed):
PENDING = {
    "private": set(),
    # import edges (importer, imported) allowed for now although they run upward or
    # close a cycle:
    "edges": set(),
    # modules (path) and functions (path::qualified name) longer than the limits below,
    # being split by other work in progress:
    "long": set(),
}
MAX_FUNCTION_LINES = 50     # def line to last line, the docstring not counted
MAX_MODULE_LINES = 650
FLOOR = {name: i for i, (_, names) in enumerate(FLOORS) for name in names}


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def library_files():
    return sorted(p for p in PKG.rglob("*.py") if "build" not in p.parts)


MODULES = {module_name(p): p for p in library_files()}


def _resolve(name):
    """The refdl module (a key of MODULES) that importing ``name`` loads, or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(path):
    """[(line, imported module)] of one file: every refdl module it imports, at any depth."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:           # `from refdl import nn` imports refdl.nn
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if sub in MODULES else target))
    return out


def floor_of(module):
    parts = module.split(".")
    if ".".join(parts[1:3]) in FLOOR:            # a module with a floor of its own
        return FLOOR[".".join(parts[1:3])]
    return FLOOR[parts[1] if len(parts) > 1 else "refdl"]


def edges():
    """[(importer, imported, file:line)] for every import of a refdl module by refdl."""
    out = []
    seen = set()
    for me, path in MODULES.items():
        for line, name in imports_of(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if name.split(".")[0] == "experiments":
                out.append((me, name, where))
                continue
            target = _resolve(name) if name.split(".")[0] == "refdl" else None
            if target is not None and target != me and (target, where) not in seen:
                seen.add((target, where))
                out.append((me, target, where))
    return out


def test_every_top_level_module_has_a_floor():
    tops = {m.split(".")[1] if "." in m else "refdl" for m in MODULES}
    assert not tops - set(FLOOR), f"add to FLOORS (and docs/architecture.md): {tops - set(FLOOR)}"


def test_no_import_runs_upward():
    bad = [f"{where}: {me} (floor {FLOORS[floor_of(me)][0]}) imports {target} "
           f"(floor {FLOORS[floor_of(target)][0]})"
           for me, target, where in edges()
           if target.startswith("refdl") and floor_of(target) > floor_of(me)
           and (me, target) not in PENDING["edges"]]
    assert not bad, "imports running upward:\n" + "\n".join(bad)


def test_the_library_never_imports_experiments():
    bad = [f"{where}: {me} imports {target}" for me, target, where in edges()
           if target.split(".")[0] == "experiments"]
    assert not bad, "\n".join(bad)


def test_no_private_module_is_imported_from_outside_its_package():
    bad = []
    for me, target, where in edges():
        parts = target.split(".")
        private = [i for i, p in enumerate(parts) if p.startswith("_") and p != "__main__"]
        if not private:
            continue
        owner = ".".join(parts[:private[0]])        # the package holding the private name
        if target in PENDING["private"]:
            continue
        if not (me == owner or me.startswith(owner + ".")):
            bad.append(f"{where}: {me} imports {target} (private to {owner})")
    assert not bad, "private modules used outside their package:\n" + "\n".join(bad)


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def test_no_import_cycle():
    graph, where = {}, {}
    for me, target, w in edges():
        if target.startswith("refdl") and (me, target) not in PENDING["edges"]:
            graph.setdefault(me, set()).add(target)
            where.setdefault((me, target), w)
    bad = []
    for comp in _cycles(graph):
        inside = set(comp)
        lines = [f"  {where[(a, b)]}: {a} imports {b}" for a in comp
                 for b in sorted(graph.get(a, ())) if b in inside]
        bad.append(" <-> ".join(comp) + "\n" + "\n".join(lines))
    assert not bad, "import cycles:\n" + "\n".join(bad)


def test_pending_entries_are_still_needed():
    found = {(me, t) for me, t, _ in edges()}
    stale = [m for m in PENDING["private"] if m not in {t for _, t in found}]
    stale += [e for e in PENDING["edges"] if e not in found]
    stale += sorted(PENDING["long"] - {key for key, _ in too_long()})
    assert not stale, f"fixed: remove from PENDING in tests/test_architecture.py: {stale}"


def function_lengths(source):
    """[(qualified name, def line, length)] for every function and method in ``source``:
    lines from the ``def`` to the last line of the body, the docstring not counted."""
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                length = child.end_lineno - child.lineno + 1
                doc = child.body[0]
                if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) \
                        and isinstance(doc.value.value, str):
                    length -= doc.end_lineno - doc.lineno + 1
                out.append((name, child.lineno, length))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return out


def too_long():
    """[(key, message)] for every module and function over the limits (key: a module's
    path, or path::qualified name for a function)."""
    out = []
    for path in library_files():
        rel = path.relative_to(ROOT).as_posix()
        source = path.read_text(encoding="utf-8")
        n = len(source.splitlines())
        if n > MAX_MODULE_LINES:
            out.append((rel, f"{rel}: {n} lines (at most {MAX_MODULE_LINES})"))
        for name, line, length in function_lengths(source):
            if length > MAX_FUNCTION_LINES:
                out.append((f"{rel}::{name}", f"{rel}:{line}: {name} is {length} lines "
                            f"without its docstring (at most {MAX_FUNCTION_LINES})"))
    return out


def test_functions_fit_on_a_screen_and_modules_in_a_sitting():
    bad = [msg for key, msg in too_long() if key not in PENDING["long"]]
    assert not bad, "too long (split into named steps or modules):\n" + "\n".join(bad)


def test_the_floors_table_is_the_one_on_the_architecture_page():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for name, members in FLOORS:
        for m in members:
            shown = "refdl/__init__.py" if m == "refdl" else "refdl/" + m.replace(".", "/")
            assert shown in page, f"docs/architecture.md does not place {shown} ({name})"
    order = [page.index(f"| {i} |") for i in range(len(FLOORS))]
    assert order == sorted(order)


# -- the checker itself, on made-up trees: it must be able to fail -------------------------
def test_checker_resolves_relative_and_nested_imports(tmp_path):
    pkg = tmp_path / "refdl" / "nn"
    pkg.mkdir(parents=True)
    (tmp_path / "refdl" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .blocks import *\n")
    (pkg / "blocks.py").write_text("def f():\n    from .. import nn\n    from ..train import fit\n")
    global ROOT
    old = ROOT
    try:
        ROOT = tmp_path
        assert imports_of(pkg / "blocks.py") == [(2, "refdl.nn"), (3, "refdl.train")]
        assert imports_of(pkg / "__init__.py") == [(1, "refdl.nn.blocks")]
    finally:
        ROOT = old
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("me,target,up", [("refdl.nn.linear", "refdl.train", True),
                                          ("refdl.train", "refdl.nn.linear", False),
                                          ("refdl.models.vae", "refdl.train", False),
                                          ("refdl.models.vae", "refdl.data", True),
                                          ("refdl.cli", "refdl", False)])
def test_floor_order(me, target, up):
    assert (floor_of(target) > floor_of(me)) == up


def test_function_lengths_count_from_def_to_end_without_the_docstring():
    source = ("def f(x):\n    \"\"\"Doc\n    on two lines.\"\"\"\n    y = x\n    return y\n\n\n"
              "class C:\n    def m(self):\n        def inner():\n            pass\n"
              "        return inner\n")
    assert function_lengths(source) == [("f", 1, 3), ("C.m", 9, 4), ("C.m.inner", 10, 2)]
