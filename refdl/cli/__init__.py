"""The ``refdl`` command (also ``python -m refdl``).

    refdl train      train a model on a data set, print progress, write plots + a checkpoint
    refdl sample     generate text from a trained character-level GPT
    refdl gradcheck  check every layer's backward numerically; a table of relative errors
    refdl summary    layer-by-layer output shapes and parameter counts of a model
    refdl exam       the exam items: the paper's claim, refdl's result, the verdict
    refdl bench      run the benchmark scripts in benchmarks/
    refdl explain    a layer's formulas, its derivation page, where its forward/backward live

A user's mistake (an unknown name, a missing folder, a corrupt file, a checkpoint from
another model) gives a one-line message on stderr and exit status 2, never a traceback.

Where things are: ``parser.py`` declares every command's options; each command runs in a
module of its name (``train.py`` with ``train_run.py``, ``train_plots.py`` and
``train_text.py`` for ``--model gpt``; ``sample.py``, ``gradcheck.py`` with its table in
``gradcheck_table.py``, ``summary.py``, ``exam.py``, ``bench.py``, ``explain.py``);
``common.py`` holds what they share, including ``UserError``.
"""
import os
import sys

from ..checkpoint import CheckpointError
from ..data import IDXError
from .common import UserError
from .gradcheck_table import GRADCHECK_TABLE
from .parser import build_parser, explicit_options

__all__ = ["main", "build_parser", "GRADCHECK_TABLE"]


def main(argv=None):
    """Entry point of the ``refdl`` command; returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        argv = ["--help"]
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args._explicit = explicit_options(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, CheckpointError, IDXError, FileNotFoundError) as e:
        print(f"refdl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"refdl {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:          # e.g. `refdl exam | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
