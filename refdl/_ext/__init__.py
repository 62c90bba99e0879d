"""Compiled kernels (Cython): im2col/col2im, the chunked convolution, max/avg pooling and
Winograd F(2x2, 3x3). Use them via refdl.ext (Winograd via refdl.functional.winograd).

The kernels come in builds for instruction sets, all compiled from _kernels.pyx by
setup.py: ``_kernels`` (baseline: any CPU of the architecture) and, on x86-64,
``_kernels_avx2`` (AVX2 and FMA). refdl.ext picks the one to load (its ``kernel_variant``).

The OpenMP runtime the kernels link reads its settings once, when it loads. Unless the
user chose a wait policy, refdl asks for a short spin: a team thread waits about 0.1 ms
(GNU libgomp's GOMP_SPINCOUNT=10000) for the next parallel region, then sleeps, so it holds
no core while a BLAS pool runs next, yet back-to-back regions (one layer's kernel after
another's) find it awake instead of waking it from sleep (LeNet-5's step at 2 threads:
4.42 ms against 4.85 ms with the fully passive policy, docs/performance.md). Other
OpenMP runtimes get OMP_WAIT_POLICY=PASSIVE. The environment is restored right after the
load (``passive_openmp``).
"""
import contextlib as _contextlib
import os as _os

# the switch between the compiled kernels and the NumPy reference (refdl.ext flips it;
# the modules that call compiled code read it here, below refdl.ext)
enabled = _os.environ.get("REFDL_DISABLE_EXT", "").strip() not in ("1", "true", "True", "yes")

# set by refdl.ext when it loads: a function returning the build of the kernels in use, or
# None on the NumPy path; modules below refdl.ext (refdl.functional.winograd) call it
active_kernels = None


# the wait: a spin of about 0.1 ms by libgomp's own estimate (100,000 spins per ms), then
# sleep; measured on the 2-core machine of docs/performance.md against 0 (passive), 3,000,
# 30,000 and 100,000 (which gained 0.25 ms more in LeNet's step but spins 1 ms after every
# region)
SPINCOUNT = "10000"
_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


@_contextlib.contextmanager
def passive_openmp():
    """``with passive_openmp(): import ...``: a compiled module that loads the OpenMP
    runtime inside the block makes its team spin briefly, then sleep, between regions
    (unless the user chose a policy); the environment is as before after the block."""
    set_ = not any(k in _os.environ for k in _WAIT_VARIABLES)
    if set_:
        _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"       # any runtime: sleep when idle,
        _os.environ["GOMP_SPINCOUNT"] = SPINCOUNT        # GNU libgomp: after a short spin
    try:
        yield
    finally:
        if set_:
            _os.environ.pop("OMP_WAIT_POLICY", None)
            _os.environ.pop("GOMP_SPINCOUNT", None)

