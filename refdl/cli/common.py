"""What the commands share: the user-error exception, the folders refdl's files are found
in, shape parsing, the run configuration, and which kernels run."""
import re
import tempfile
from pathlib import Path

from .. import ext

REPO = Path(__file__).resolve().parents[2]
# an installed wheel carries docs/exam.md, docs/derivations/ and benchmarks/ here (setup.py)
SHIPPED = Path(__file__).resolve().parents[1] / "_shipped"


class UserError(Exception):
    """A mistake in the command line or the files it names: message, exit status 2."""


def find(rel):
    """``rel`` (e.g. docs/exam.md) in the current folder, the source tree, or the copy an
    installed wheel carries; None when none has it."""
    for base in (Path.cwd(), REPO, SHIPPED):
        p = base / rel
        if p.exists():
            return p
    return None


def parse_shape(text):
    """``"1,8,8"`` (or ``"1x8x8"``) -> (1, 8, 8); positive integers only."""
    if not re.fullmatch(r"\d+([,x]\d+)*", text.strip()):
        raise UserError(f"--input-shape {text!r}: expected integers separated by commas, "
                        "e.g. 1,8,8")
    shape = tuple(int(s) for s in re.split(r"[,x]", text.strip()))
    if any(s <= 0 for s in shape):
        raise UserError(f"--input-shape {text!r}: sizes must be positive")
    return shape


def check_out_writable(out):
    """--out must be a folder refdl can create and write, checked before any training."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder (a file or device); "
                        "choose a folder for the run's checkpoint and plots")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there "
                        f"({e.strerror or type(e).__name__})") from None


def run_config(args):
    """The run's options as written to config.json (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if k != "func" and not k.startswith("_")}


def kernels_description():
    """Which path runs the convolution and pooling loops, and why (for headers)."""
    if ext.available():
        return (f"compiled kernels ({ext.variant_description()}) "
                + ("with OpenMP" if ext.openmp() else "serial"))
    if ext.compiled_module() is not None:
        return "NumPy reference path (compiled kernels built but switched off)"
    return ("NumPy reference path (the compiled kernels were not built: "
            f"{ext.import_error}; reinstall with a C compiler and Cython for speed)")
