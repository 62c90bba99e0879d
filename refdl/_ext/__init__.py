"""Compiled kernels (Cython): im2col/col2im and max/avg pooling. Use them via refdl.ext.

The kernels come in builds for instruction sets, all compiled from _kernels.pyx by
setup.py: ``_kernels`` (baseline: any CPU of the architecture) and, on x86-64,
``_kernels_avx2`` (AVX2 and FMA). refdl.ext picks the one to load (its ``kernel_variant``).

The OpenMP runtime the kernels link reads its settings once, when it loads. Unless the
user chose a wait policy, refdl asks for a passive one: a team sleeps as soon as a parallel
region ends instead of spinning on a core that the BLAS pool needs next (see
refdl/threads.py). The environment is restored right after the load (``passive_openmp``).
"""
import contextlib as _contextlib
import os as _os

# the switch between the compiled kernels and the NumPy reference (refdl.ext flips it;
# the modules that call compiled code read it here, below refdl.ext)
enabled = _os.environ.get("REFDL_DISABLE_EXT", "").strip() not in ("1", "true", "True", "yes")


@_contextlib.contextmanager
def passive_openmp():
    """``with passive_openmp(): import ...``: a compiled module that loads the OpenMP
    runtime inside the block makes its team wait passively (unless the user chose a
    policy); the environment is as before after the block."""
    set_ = not any(k in _os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"))
    if set_:
        _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        yield
    finally:
        if set_:
            _os.environ.pop("OMP_WAIT_POLICY", None)


with passive_openmp():
    try:
        from . import _winograd  # noqa: F401
    except ImportError:          # not built: refdl.ext reports it and uses the NumPy path
        pass
