"""Every code block of README.md and docs/**/*.md runs, and printed output is checked.

The pages are read as they are; a few HTML comments (invisible on the rendered page) say
how a block is checked:

- a ```python block with ``>>>`` prompts is a doctest (ELLIPSIS, NORMALIZE_WHITESPACE);
  the blocks of one page share their names, like cells of a notebook;
- any other ```python block is executed in the page's namespace; its ``test_*`` functions
  are then called, as pytest would;
- ``<!-- test-setup`` ... ``-->`` runs hidden code first (a fragment's surroundings);
- ``<!-- excerpt: refdl.nn.Linear -->`` before a block: the block is an excerpt of that
  object's source; every line but ``...`` must be in it, in order, trailing comments
  aside (so it cannot drift);
- ``<!-- expected-output -->`` before a bare ``` block: the stdout of the page's previous
  ```python block, checked like a doctest;
- ``<!-- command-output: refdl ARGS -->`` before a bare ``` block: that command's output;
- a block that imports torch runs only when PyTorch is installed (refdl never needs it);
- in a ```bash block, every ``refdl ...`` line is parsed by refdl's own parser (so each
  documented option exists) and the quick ones (not train/bench) are run; every
  ``python PATH.py --opt ...`` line has its options checked against the script's --help.
  The install lines (venv, pip) are what CI itself runs.
"""
import contextlib
import doctest
import inspect
import io
import re
import importlib.util
import shlex
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!--\s*(excerpt|expected-output|command-output)\s*:?\s*(.*?)\s*-->\s*$")


def parse(text):
    """[(kind, lang, body, line, marker, arg)] in page order; kind 'code' or 'setup'."""
    lines = text.splitlines()
    blocks, i, marker = [], 0, (None, None)
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("<!-- test-setup"):
            j = i + 1
            while "-->" not in lines[j]:
                j += 1
            blocks.append(("setup", "python", textwrap.dedent("\n".join(lines[i + 1:j])), i + 1,
                           None, None))
            i = j + 1
            continue
        m = MARK.match(line.strip())
        if m:
            marker = (m.group(1), m.group(2))
            i += 1
            continue
        f = FENCE.match(line.strip())
        if f:                            # a fence may be indented (inside a list item)
            j = i + 1
            while not lines[j].strip().startswith("```"):
                j += 1
            body = textwrap.dedent("\n".join(lines[i + 1:j]))
            blocks.append(("code", f.group(1), body, i + 1) + marker)
            marker = (None, None)
            i = j + 1
            continue
        if line.strip():
            marker = (None, None)        # a marker applies to the very next block only
        i += 1
    return blocks


def _check_output(want, got, where):
    checker = doctest.OutputChecker()
    if not checker.check_output(want.strip() + "\n", got.strip() + "\n", FLAGS):
        ex = doctest.Example("", want.strip() + "\n")
        pytest.fail(f"{where}: printed output differs\n"
                    + checker.output_difference(ex, got.strip() + "\n", FLAGS))


def _excerpt(body, target, where):
    import importlib
    mod, _, attr = target.rpartition(".")
    src = inspect.getsource(getattr(importlib.import_module(mod), attr))
    bare = lambda ln: re.sub(r"\s+#.*$", "", ln).strip()  # noqa: E731 (a page may comment)
    src_lines = [bare(ln) for ln in src.splitlines()]
    k = 0
    for ln in body.splitlines():
        s = bare(ln)
        if not s or s == "...":
            continue
        while k < len(src_lines) and src_lines[k] != s:
            k += 1
        if k == len(src_lines):
            pytest.fail(f"{where}: excerpt line {s!r} is not in {target}'s source (in order)")
        k += 1


def _run_refdl(argv, where, cwd, run):
    from refdl.cli import build_parser, main
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{where}: `refdl {' '.join(argv)}` does not parse (exit {e.code})")
    if run:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(argv)
        assert rc == 0, f"{where}: `refdl {' '.join(argv)}` exited {rc}\n{out.getvalue()}"
        return out.getvalue()
    return None


def _python_script(argv, where):
    script = ROOT / argv[0]
    assert script.is_file(), f"{where}: {argv[0]} does not exist"
    opts = [a.split("=")[0] for a in argv[1:] if a.startswith("--")]
    if opts:
        r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                           text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 0, f"{where}: {argv[0]} --help failed\n{r.stderr}"
        for o in opts:
            assert o in r.stdout, f"{where}: {argv[0]} has no option {o}"


def _bash(body, where, cwd):
    body = re.sub(r"\\\n\s*", " ", body)         # join continued lines
    for raw in body.splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if "pip install" in line or "python3 -m venv" in line:
            continue                     # the install/test commands: CI runs exactly these
        words = shlex.split(line)
        while words and (words[0] == "env" or words[0].startswith("-u") or "=" in words[0]
                         or words[0].startswith("OPENBLAS")):
            words = words[1:]
        if words[:1] == ["refdl"]:
            slow = words[1:2] in (["train"], ["bench"])
            _run_refdl(words[1:], f"{where}: {line}", cwd, run=not slow)
        elif words[:1] in (["git"], ["tar"], ["(cd"], ["cd"]):
            continue                     # plumbing that prepares a benchmark's second tree
        elif words[:1] in (["python"], ["python3"]) and words[1:2] and words[1].endswith(".py"):
            _python_script(words[1:], f"{where}: {line}")
        else:
            pytest.fail(f"{where}: no rule to check the shell line {line!r}")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)          # files the examples write land in a scratch folder
    import refdl
    refdl.manual_seed(0)                 # then the page runs top to bottom, like a reader
    ns = {"__name__": f"docs_{page.stem}"}
    last_stdout, no_torch = None, []
    for kind, lang, body, line, marker, arg in parse(page.read_text(encoding="utf-8")):
        where = f"{page.relative_to(ROOT)}:{line}"
        if re.search(r"^\s*import torch\b", body, re.M) and importlib.util.find_spec("torch") is None:
            no_torch.append(where)       # refdl never needs PyTorch; its interop pages do
            continue
        if kind == "setup":
            exec(compile(body, where, "exec"), ns)
            continue
        if marker == "excerpt":
            _excerpt(body, arg, where)
            continue
        if lang == "python" and ">>>" in body:
            test = doctest.DocTestParser().get_doctest(body, ns, where, str(page), line)
            runner = doctest.DocTestRunner(optionflags=FLAGS)
            out = io.StringIO()
            runner.run(test, out=out.write, clear_globs=False)
            ns.update(test.globs)            # DocTest ran on a copy: keep its names
            if runner.failures:
                pytest.fail(f"{where}: doctest failed\n{out.getvalue()}")
        elif lang == "python":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                before = set(ns)
                exec(compile(body, where, "exec"), ns)
                for name in [n for n in ns if n not in before and n.startswith("test_")]:
                    fn = ns[name]
                    params = inspect.signature(fn).parameters
                    fn(**({"tmp_path": tmp_path} if "tmp_path" in params else {}))
            last_stdout = out.getvalue()
        elif lang in ("bash", "sh", "console"):
            _bash(body, where, tmp_path)
        elif marker == "expected-output":
            assert last_stdout is not None, f"{where}: no python block before the output"
            _check_output(body, last_stdout, where)
        elif marker == "command-output":
            words = shlex.split(arg)
            assert words[0] == "refdl", f"{where}: only refdl commands are run"
            got = _run_refdl(words[1:], where, tmp_path, run=True)
            _check_output(body, got, where)
        elif lang == "":
            pass                         # an illustration (a report shown, a layout)
        else:
            pytest.fail(f"{where}: no rule to check a ```{lang} block")
    if no_torch:
        warnings.warn(f"not run without PyTorch: {', '.join(no_torch)}")


def test_the_collector_fails_on_drift(tmp_path):
    """The checks above can fail: a wrong doctest output, a wrong excerpt, a bad option."""
    blocks = parse("<!-- excerpt: refdl.nn.Linear -->\n```python\nreturn 42\n```\n"
                   "```python\n>>> 1 + 1\n3\n```\n```bash\nrefdl train --no-such-option\n```\n")
    assert [b[4] for b in blocks] == ["excerpt", None, None]
    with pytest.raises(pytest.fail.Exception, match="not in refdl.nn.Linear's source"):
        _excerpt(blocks[0][2], "refdl.nn.Linear", "x")
    with pytest.raises(pytest.fail.Exception, match="printed output differs"):
        _check_output("3", "2", "x")
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        _bash(blocks[2][2], "x", tmp_path)
