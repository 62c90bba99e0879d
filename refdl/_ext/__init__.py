"""Compiled kernels (Cython): im2col/col2im and max/avg pooling. Use them via refdl.ext.

The OpenMP runtime the kernels link reads its settings once, when it loads. Unless the
user chose a wait policy, refdl asks for a passive one: a team sleeps as soon as a parallel
region ends instead of spinning on a core that the BLAS pool needs next (see
refdl/threads.py). The environment is restored right after the load.
"""
import os as _os

# the switch between the compiled kernels and the NumPy reference (refdl.ext flips it;
# the modules that call compiled code read it here, below refdl.ext)
enabled = _os.environ.get("REFDL_DISABLE_EXT", "").strip() not in ("1", "true", "True", "yes")

_set = not any(k in _os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"))
if _set:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
try:
    from . import _kernels  # noqa: F401
except ImportError:          # not built: refdl.ext reports it and uses the NumPy path
    pass
try:
    from . import _winograd  # noqa: F401
except ImportError:
    pass
finally:
    if _set:
        del _os.environ["OMP_WAIT_POLICY"]
