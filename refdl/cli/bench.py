"""``refdl bench [NAME ...]``: run the benchmark scripts in benchmarks/, each printing its
timings and ratios against a baseline measured in the same run."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from .common import UserError, find


def cmd_bench(args):
    """``refdl bench``: run the scripts one after the other; exit status 1 if one fails."""
    folder = find("benchmarks")
    if folder is None or not folder.is_dir():
        raise UserError("no benchmarks/ folder (neither here, in the refdl source tree, nor in "
                        "the installed package)")
    scripts = _chosen_scripts(folder, args.names)
    if not scripts:
        print(f"no benchmark scripts in {folder}")
        return 0
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE",
                                                             "OPENBLAS_L2_SIZE")}
    # --quick runs only bench_threads.py's quick table (under a minute) unless names are
    # given; --threads/--quick are passed to the scripts that take them
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be a positive integer, got {args.threads}")
    if args.quick and not args.names:
        scripts = [p for p in scripts if p.stem == "bench_threads"]
    failed = []
    for s in scripts:
        need = [m for m in ("threadpoolctl",) if f"import {m}" in s.read_text(encoding="utf-8")
                or f"from {m} " in s.read_text(encoding="utf-8")]
        if any(importlib.util.find_spec(m) is None for m in need):
            print(f"== {s.name}: skipped, it needs {', '.join(need)} "
                  "(pip install \"refdl[bench]\")")
            continue
        print(f"== {s.name}")
        sys.stdout.flush()
        extra = _bench_flags(s, args)
        if subprocess.call([sys.executable, str(s)] + extra, env=env,
                           cwd=str(folder.parent)) != 0:
            failed.append(s.name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


def _chosen_scripts(folder, names):
    """The scripts named (by file name, with or without .py), or all of them."""
    scripts = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))
    if not names:
        return scripts
    known = {p.stem: p for p in scripts}
    unknown = [n for n in names if Path(n).stem not in known]
    if unknown:
        raise UserError(f"unknown benchmark(s) {', '.join(unknown)}; available: "
                        f"{', '.join(sorted(known)) or 'none'}")
    return [known[Path(n).stem] for n in names]


def _bench_flags(script, args):
    """The --threads/--quick options for a benchmark script that declares them."""
    text = script.read_text(errors="replace")
    flags = []
    if args.threads is not None and '"--threads"' in text:
        flags += ["--threads", str(args.threads)]
    if args.quick and '"--quick"' in text:
        flags.append("--quick")
    return flags
