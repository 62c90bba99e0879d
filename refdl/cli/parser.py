"""The command line: one function per command that declares its options and the function
that runs it (``func``). ``build_parser`` puts them together."""
import argparse
import platform

import numpy as np

from .. import __version__
from ..models import available_models
from .bench import cmd_bench
from .common import kernels_description
from .exam import cmd_exam
from .explain import cmd_explain
from .gradcheck import cmd_gradcheck
from .sample import cmd_sample
from .summary import cmd_summary
from .train import DATASETS, DEFAULT_MODEL, OPTIMIZERS, POINT_DATASETS, cmd_train


def build_parser():
    """The ``refdl`` parser with its subcommands."""
    p = argparse.ArgumentParser(
        prog="refdl", description="refdl: a reference deep-learning library in NumPy. "
        "Train a network, check every backward, inspect models and the exam items.",
        epilog="Run 'refdl COMMAND --help' for a command's options.")
    p.add_argument("--version", action="version", version=f"refdl {__version__} "
                   f"({platform.python_implementation()} {platform.python_version()}, "
                   f"NumPy {np.__version__}): {kernels_description()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    model_help = ", ".join(f"{k} ({v})" for k, v in sorted(available_models().items()))
    _add_train(sub, model_help)
    _add_sample(sub)
    _add_gradcheck(sub)
    _add_summary(sub, model_help)
    _add_exam(sub)
    _add_bench(sub)
    _add_explain(sub)
    return p


def explicit_options(argv):
    """The dests of the options typed on the command line (defaults not counted)."""
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    for sp in sub.choices.values():
        for a in sp._actions:
            a.default = argparse.SUPPRESS
    try:
        ns = p.parse_args(argv)
    except SystemExit:
        return set()
    return {k for k in vars(ns) if k not in ("func", "command")}


def _add_train(sub, model_help):
    """``refdl train``: the options of every run; the text models' in a group of their own."""
    t = sub.add_parser("train", help="train a model; print progress, write plots + checkpoint",
                       description="Train a model and report its test accuracy. With no "
                       f"options: {DEFAULT_MODEL} (LeNet-5) on scikit-learn's 8x8 digits (no "
                       "download) in a few seconds. Writes a checkpoint, history.json and PNG "
                       "plots to --out.")
    t.add_argument("--model", default=None, help=f"model name: {model_help} "
                   f"(default {DEFAULT_MODEL}; mlp for {' and '.join(POINT_DATASETS)})")
    t.add_argument("--dataset", default="digits", choices=DATASETS,
                   help="data set (default digits; mnist/fashion-mnist read IDX files from "
                   "--data-dir; spirals/moons are generated 2-D points)")
    t.add_argument("--data-dir", help="folder with the MNIST/Fashion-MNIST IDX files")
    t.add_argument("--epochs", type=int, default=15, help="number of epochs (default 15)")
    t.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")
    t.add_argument("--optimizer", default="adam", choices=OPTIMIZERS,
                   help="optimiser (default adam)")
    t.add_argument("--lr", type=float, help="learning rate (default: sgd 0.05, adam/adamw "
                   "3e-3, rmsprop 1e-3)")
    t.add_argument("--momentum", type=float, default=0.9,
                   help="momentum for sgd/rmsprop (default 0.9)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default 0)")
    t.add_argument("--scheduler", default="cosine", choices=("none", "step", "cosine", "onecycle"),
                   help="learning-rate schedule: step (x0.1 every epochs/3), cosine "
                   "annealing to 0, or one-cycle (per step, peak = --lr) (default cosine)")
    t.add_argument("--clip-grad-norm", type=float, metavar="MAX",
                   help="clip the total gradient norm to MAX before each step")
    t.add_argument("--val-split", type=float, default=0.1, metavar="F",
                   help="fraction of the training data held out as the validation split "
                   "that every choice during training looks at (default 0.1; 0: none). "
                   "The test split is evaluated once, after training")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--out", help="output folder (default runs/MODEL-DATASET[-N], never "
                   "overwriting a previous run)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint up to --epochs")
    t.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    t.add_argument("--quiet", action="store_true", help="print nothing but errors")
    t.add_argument("--threads", type=int, metavar="N",
                   help="threads for BLAS and the compiled kernels (default: the cores "
                   "not busy with other processes, from the load average)")
    t.set_defaults(func=cmd_train)
    _add_text_model_options(t)


def _add_text_model_options(t):
    """``refdl train --model gpt``: the options only a character-level language model uses."""
    tx = t.add_argument_group(
        "text models (--model gpt)", "A character-level language model trains for --steps "
        "steps (not --epochs) with AdamW on --text FILE, or on the data-set descriptions "
        "bundled with scikit-learn (no download); 10% of the text is held out for "
        "validation and the bigram baseline's validation loss is printed for comparison.")
    tx.add_argument("--text", metavar="FILE", help="a UTF-8 text file (default: scikit-learn's "
                    "bundled data-set descriptions, about 47,000 characters)")
    tx.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    tx.add_argument("--block-size", type=int, default=64, help="context length (default 64)")
    tx.add_argument("--n-layer", type=int, default=2, help="Transformer blocks (default 2)")
    tx.add_argument("--n-head", type=int, default=4, help="attention heads (default 4)")
    tx.add_argument("--n-embd", type=int, default=64, help="model width (default 64)")
    tx.add_argument("--dropout", type=float, default=0.0, help="dropout (default 0)")
    tx.add_argument("--no-tie", action="store_true",
                    help="separate output head (default: tied to the token embedding)")
    tx.add_argument("--eval-interval", type=int, default=100,
                    help="steps between validation measurements (default 100)")
    tx.add_argument("--time-limit", type=float, metavar="SECONDS",
                    help="stop training after this many seconds")


def _add_sample(sub):
    """``refdl sample CHECKPOINT``."""
    sm = sub.add_parser("sample", help="generate text from a trained text model (gpt)",
                        description="Continue a prompt with characters sampled from a "
                        "checkpoint written by 'refdl train --model gpt'.")
    sm.add_argument("checkpoint", help="checkpoint.npz of a text model")
    sm.add_argument("--prompt", default="", help="text to continue (default: a newline)")
    sm.add_argument("--chars", type=int, default=500,
                    help="number of characters to generate (default 500)")
    sm.add_argument("--temperature", type=float, default=1.0,
                    help="softmax temperature; lower is more conservative (default 1.0)")
    sm.add_argument("--top-k", type=int, default=None,
                    help="sample only among the k most likely characters (default: all)")
    sm.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sm.set_defaults(func=cmd_sample)


def _add_gradcheck(sub):
    """``refdl gradcheck [LAYER ...]``, including the options for the user's own layer."""
    g = sub.add_parser("gradcheck", help="check every layer's backward numerically",
                       description="Gradient-check every layer and loss refdl.nn has (float64 "
                       "central differences against a random projection of the output; "
                       "relative error < 1e-7 for the input and every parameter). Prints a "
                       "table; exit status 1 if any check fails.")
    g.add_argument("only", nargs="*", help="layer names to check (default: all), or your "
                   "own layer as FILE.py:ClassName or package.module:ClassName")
    g.add_argument("--input-shape", action="append",
                   help="for your own layer: the input's shape, e.g. 4,3 (repeat for "
                   "several inputs)")
    g.add_argument("--args", default="",
                   help="for your own layer: constructor arguments, e.g. '3, 4, bias=False'")
    g.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    g.add_argument("--plot", help="also write the report as a bar chart (PNG)")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="full per-tensor reports and skipped layers")
    g.set_defaults(func=cmd_gradcheck)


def _add_summary(sub, model_help):
    """``refdl summary MODEL``."""
    s = sub.add_parser("summary", help="layer-by-layer output shapes and parameter counts",
                       description="Build a registered model and print, layer by layer, its "
                       "output shape and trainable parameter count.")
    s.add_argument("model", help=f"model name: {model_help}")
    s.add_argument("--input-shape", help="one example's shape without the batch, e.g. 1,8,8 "
                   "(default from the model's layout: 64 / 1,8,8 / 8,8)")
    s.add_argument("--num-classes", type=int, default=10, help="number of classes (default 10)")
    s.add_argument("--batch", type=int, default=1, help="batch size of the dummy input")
    s.set_defaults(func=cmd_summary)


def _add_exam(sub):
    """``refdl exam [ID ...]``."""
    e = sub.add_parser("exam", help="the exam items: paper's claim, refdl's result, verdict",
                       description="Print exam items from docs/exam.md (the paper's claim, "
                       "what refdl computed, the verdict) and recompute them by running the "
                       "tests named after their IDs (pytest -k test_<topic>_<n>_).")
    e.add_argument("ids", nargs="*", help="item IDs such as loss-3 (default: list all)")
    e.add_argument("--all", action="store_true", help="recompute every item")
    e.set_defaults(func=cmd_exam)


def _add_bench(sub):
    """``refdl bench [NAME ...]``."""
    b = sub.add_parser("bench", help="run the benchmark scripts in benchmarks/",
                       description="Run benchmarks/*.py (or the named ones), each printing "
                       "its timings and ratios against a baseline measured in the same run.")
    b.add_argument("names", nargs="*", help="benchmark script names (default: all)")
    b.add_argument("--threads", type=int, metavar="N",
                   help="time at N threads only (default: each script's own, e.g. 1 and 2)")
    b.add_argument("--quick", action="store_true",
                   help="only the quick thread/PyTorch table (under a minute)")
    b.set_defaults(func=cmd_bench)


def _add_explain(sub):
    """``refdl explain LAYER``."""
    x = sub.add_parser("explain", help="a layer's formulas, derivation page and source lines",
                       description="Print a layer's docstring (shapes, forward and backward "
                       "formulas), the file and line of its forward and backward, and its "
                       "derivation page from docs/derivations/.")
    x.add_argument("layer", help="a class of refdl.nn, refdl.optim or refdl.models, e.g. "
                   "Linear, Conv2d, LSTM, Adam (case-insensitive)")
    x.add_argument("--no-page", action="store_true",
                   help="name the derivation page without printing it")
    x.set_defaults(func=cmd_explain)
