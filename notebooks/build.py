"""Build the lecture notebooks from their sources (jupytext percent format).

    python notebooks/build.py            # write notebooks/NN_topic.ipynb from src/NN_topic.py
    python notebooks/build.py --check    # exit 1 when a committed .ipynb differs from its source
    python notebooks/build.py --run      # execute every notebook (nbclient), print run times

The .ipynb files are committed without outputs; CI executes them (pytest --nbmake
notebooks). Every notebook gets the same first code cell (SETUP): the imports, ``show``
(a function's own source from the library, so the notebook can never drift from it) and
``check`` (checks an exercise's answer against a value computed independently).
"""
import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SETUP = '''%matplotlib inline
import inspect

import numpy as np
from IPython.display import Code, display

import refdl
from refdl import nn, optim, plot
from refdl.gradcheck import check_module

np.set_printoptions(precision=4, suppress=True, linewidth=100)
refdl.manual_seed(0)
# the arrays here are tiny: one BLAS/OpenMP thread (waking more costs more than it saves,
# and spinning threads stall a shared machine)
if hasattr(refdl, "set_num_threads"):
    refdl.set_num_threads(1)
else:
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)


def show(*objs):
    """Display the library's own source of each object (read from refdl, never copied)."""
    for obj in objs:
        display(Code(inspect.getsource(obj), language="python"))


def check(name, answer, expected, rtol=1e-6, atol=1e-8):
    """Check an exercise: None means not answered yet; a wrong answer raises."""
    if answer is None:
        print(f"{name}: not answered yet (solutions at the end of the notebook)")
        return
    a = np.asarray(answer, dtype=float)
    e = np.asarray(expected, dtype=float)
    assert a.shape == e.shape and np.allclose(a, e, rtol=rtol, atol=atol), \\
        f"{name}: {answer!r} is not right"
    print(f"{name}: right")'''


def _child_cpu():
    """CPU seconds (user + system) of the finished child processes (the kernels)."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def build(src):
    import jupytext
    import nbformat
    nb = jupytext.reads(src.read_text(encoding="utf-8"), fmt="py:percent")
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells.insert(first_code, nbformat.v4.new_code_cell(SETUP))
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python",
                                  "name": "python3"},
                   "language_info": {"name": "python"}}
    for i, c in enumerate(nb.cells):
        c.metadata = {}
        c["id"] = f"{src.stem[:2]}-{i:02d}"
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--out", help="with --run: also write the executed notebooks to this folder")
    ap.add_argument("names", nargs="*", help="notebook stems (default: all)")
    a = ap.parse_args(argv)
    srcs = sorted((HERE / "src").glob("[0-9]*.py"))
    if a.names:
        srcs = [s for s in srcs if any(s.stem.startswith(n) for n in a.names)]
    stale = []
    for src in srcs:
        out = HERE / f"{src.stem}.ipynb"
        text = build(src)
        if a.check:
            if not out.exists() or out.read_text(encoding="utf-8") != text:
                stale.append(out.name)
        else:
            out.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run python notebooks/build.py): " + ", ".join(stale))
        return 1
    if a.run:
        import os

        import nbformat
        from nbclient import NotebookClient
        # the kernels import this tree's refdl, installed or not
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(HERE.parent)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        total = 0.0
        for src in srcs:
            nb = nbformat.read(HERE / f"{src.stem}.ipynb", as_version=4)
            t0, c0 = time.perf_counter(), _child_cpu()
            NotebookClient(nb, timeout=300, kernel_name="python3",
                           resources={"metadata": {"path": str(HERE)}}).execute()
            dt, cpu = time.perf_counter() - t0, _child_cpu() - c0
            total += dt
            if a.out:
                Path(a.out).mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, Path(a.out) / f"{src.stem}.ipynb")
            print(f"{src.stem:<40} {dt:6.1f} s  (kernel CPU {cpu:5.1f} s, load "
                  f"{os.getloadavg()[0]:.1f})", flush=True)
        print(f"{'total':<40} {total:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
