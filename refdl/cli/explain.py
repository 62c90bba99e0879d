"""``refdl explain LAYER``: a layer's docstring (shapes, forward and backward formulas),
the file and line of its forward and backward, and its derivation page."""
import difflib
import inspect
import re
from pathlib import Path

from .. import models, nn, optim
from ..nn.module import Module
from .common import UserError, find

LIBRARY = Path(__file__).resolve().parents[1]      # the refdl package's folder


def cmd_explain(args):
    """``refdl explain LAYER``: print the docstring, the source lines and the page."""
    label, obj = _explain_lookup(args.layer)
    print(f"refdl.{label}" + (str(inspect.signature(obj)) if inspect.isfunction(obj) else ""))
    print()
    doc = inspect.getdoc(obj) or "(no docstring)"
    print(doc)
    mod_doc = inspect.getdoc(inspect.getmodule(obj))
    if "module doc" in doc and mod_doc:
        print(f"\n{inspect.getmodule(obj).__name__}:\n{mod_doc}")
    print()
    _print_source_lines(obj)
    pages = _derivation_pages(obj)
    if not pages:
        print("\nderivation: no page in docs/derivations/ names it")
        return 0
    for page in pages:
        print(f"\nderivation: {page}")
        if not args.no_page:
            print("-" * 80)
            print(page.read_text(encoding="utf-8").rstrip())
    return 0


def _print_source_lines(obj):
    """file:line of a class's forward/backward/step/double_backward, or of a function."""
    if not inspect.isclass(obj):
        print(f"source    {_where(obj)}")
        return
    for meth in ("forward", "backward", "step", "double_backward"):
        f = getattr(obj, meth, None)
        if f is None or not callable(f):
            continue
        owner = next((c for c in obj.__mro__ if meth in vars(c)), obj)
        if owner.__module__ == "builtins":
            continue
        print(f"{meth:<9} {_where(f)}" + ("" if owner is obj else
                                         f"  (inherited from {owner.__name__})"))


def _explain_lookup(name):
    """The class or function called ``name`` (case-insensitive) in refdl's public modules."""
    spaces = [("nn", nn), ("optim", optim), ("optim.lr_scheduler", optim.lr_scheduler),
              ("models", models)]
    found, known = [], set()
    for label, mod in spaces:
        for attr in dir(mod):
            obj = getattr(mod, attr)
            if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not (getattr(obj, "__module__", "") or "").startswith("refdl."):
                continue
            if label == "nn" and not (inspect.isclass(obj) and issubclass(obj, Module)):
                continue
            known.add(attr)
            if attr.lower() == name.lower() and obj not in [o for _, o in found]:
                found.append((f"{label}.{attr}", obj))
    if not found:
        close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else \
            " (a class of refdl.nn, refdl.optim or refdl.models, e.g. Linear, LSTM, Adam)"
        raise UserError(f"unknown layer {name!r}{hint}")
    return found[0]


def _derivation_pages(obj):
    """Derivation pages for ``obj``: the one its docstring names, else the page named after
    it, else the pages that name its source file, else the pages that name it."""
    folder = find("docs/derivations")
    if folder is None:
        return []
    pages = sorted(folder.glob("*.md"))
    doc = "\n".join(inspect.getdoc(c) or "" for c in getattr(obj, "__mro__", (obj,))
                    if (c.__module__ or "").startswith("refdl."))
    doc += "\n" + (inspect.getdoc(inspect.getmodule(obj)) or "")
    named = [folder / Path(m).name for m in re.findall(r"derivations/([\w\-]+\.md)", doc)]
    if named:
        return [p for p in dict.fromkeys(named) if p.exists()]
    src = Path(inspect.getsourcefile(obj)).resolve()
    for own in (folder / f"{obj.__name__.lower()}.md", folder / f"{src.stem}.md"):
        if own.exists():
            return [own]
    rel = "refdl/" + src.relative_to(LIBRARY).as_posix()
    texts = {p: p.read_text(encoding="utf-8") for p in pages}
    by_file = [p for p, t in texts.items() if rel in t]
    if by_file:
        return by_file
    return [p for p, t in texts.items() if re.search(rf"`{obj.__name__}\b", t)]


def _where(func):
    """``file:line`` where ``func`` (unwrapped) is defined."""
    func = inspect.unwrap(func)
    lines, start = inspect.getsourcelines(func)
    return f"{inspect.getsourcefile(func)}:{start}"
