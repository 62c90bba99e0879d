r"""Threads: one pool at a time, parallel only where it pays.

refdl's work runs in two places that can use threads: the BLAS library behind NumPy's
matmul (OpenBLAS's own pthread pool) and the compiled kernels of refdl/_ext (an OpenMP
team over the batch). Two pools on the same cores fight: a thread that spins waiting for
work holds a core the other pool's thread needs, and a parallel region whose second thread
is not scheduled waits for the next scheduler tick (4 ms on Linux with HZ=250), so times
come in multiples of 4 ms. The model here:

* ``set_num_threads(n)`` (PyTorch's name) sets the BLAS pool (via threadpoolctl) and the
  kernels' team to ``n``; ``get_num_threads()`` reads it back. ``refdl train --threads N``
  and ``refdl bench --threads N`` call it.
* The pools never run at the same time: Python calls them one after the other, and the
  kernels' OpenMP team sleeps about 0.1 ms after a region ends (refdl/_ext/__init__.py
  sets the wait for its OpenMP runtime when it loads, unless the user set a policy), so
  it holds no core while BLAS runs. Every convolution's GEMMs run inside its kernel, on
  the team's threads, each calling SciPy's BLAS with that pool held at one thread
  (``blas_serial``): the im2col path (refdl.ext.conv_forward) and Winograd
  (refdl.functional.winograd, a chunk of images per thread).
* Small work stays serial. A compiled kernel uses its team only above
  ``KERNEL_GRAIN`` elements; the products of Linear, the whole-batch convolution path and
  the transposed convolutions use the BLAS pool only above ``GEMM_GRAIN`` multiply-adds
  (``serial_below``), because waking threads costs more than a small product saves, and
  far more when the machine is busy. Both grains were measured with
  ``benchmarks/bench_threads.py`` (docs/performance.md).
* What is left: OpenBLAS's own threads spin for about 0.1 s after a multi-threaded
  product before they sleep (its THREAD_TIMEOUT, fixed when NumPy loads it), and a kernel
  region in that window shares a core with them. refdl's own products stay below the
  grain in the small layers where this costs most; a large Linear layer next to
  convolutions still meets it: a CNN with a 4096 -> 1024 classifier steps in 43.5 ms at
  2 threads with Linear on OpenBLAS's pool and in 38.9 ms with Linear on one thread,
  while a GPT, all of whose products use that pool, is faster with it (435 against
  513 ms; benchmarks/_pool_mix.py). The end state is one pool for every product (Linear,
  attention, the recurrent layers: about 80 call sites) on the kernels' team; moving
  Linear alone there made the CNN faster (32 ms) and the GPT slower (571 ms), because
  attention's products then met the team's threads (docs/performance.md).

Results do not depend on the thread count: the kernels partition the batch (each thread
writes its own samples), and refdl's GEMMs are the same BLAS calls whatever the count
(tests/test_threads.py checks bit-for-bit equality for the kernels and 1e-6 for GEMMs,
whose summation order OpenBLAS may split differently).
"""
import os
import time

__all__ = ["set_num_threads", "get_num_threads", "serial_below",
           "auto_num_threads", "blas_serial",
           "KERNEL_GRAIN", "GEMM_GRAIN"]

# Elements a kernel must touch before it wakes its OpenMP team (im2col's column matrix,
# pooling's input): below it, one thread is faster even on an idle machine.
KERNEL_GRAIN = 1 << 18
# Multiply-adds (M*K*N) below which a convolution's GEMM runs on one BLAS thread.
GEMM_GRAIN = 1 << 23

_num_threads = None          # None until set_num_threads: the libraries' own defaults
_blas = None                 # cached threadpoolctl controllers of the loaded BLAS libraries


def _blas_controllers():
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas


# the compiled modules with an OpenMP team: the kernels' builds (refdl.ext picks one;
# tests load every one)
_KERNEL_MODULES = ("_kernels", "_kernels_avx2")


def _kernels():
    """The compiled modules with an OpenMP team that are loaded now. A build that loads
    later gets the current setting from :func:`configure_kernels` (refdl.ext calls it)."""
    import sys
    pkg = __name__.rsplit(".", 1)[0] + "._ext."
    mods = [sys.modules.get(pkg + name) for name in _KERNEL_MODULES]
    return [m for m in mods if m is not None and hasattr(m, "set_threading")]


def configure_kernels(mod):
    """Give a compiled module that has just loaded the team size of the last
    :func:`set_num_threads` (before any call: OpenMP's own default)."""
    if _num_threads is not None and hasattr(mod, "set_threading"):
        mod.set_threading(_num_threads, KERNEL_GRAIN)


def set_num_threads(n):
    """Use ``n`` threads for BLAS products and the compiled kernels (PyTorch's name).

    n must be a positive integer. Small work stays on one thread whatever ``n`` is.
    """
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads: expected a positive int, got {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {n}")
    global _num_threads, _blas
    _blas = None                         # libraries loaded since the last call count too
    for lib in _blas_controllers():
        lib.set_num_threads(n)
    for K in _kernels():
        K.set_threading(n, KERNEL_GRAIN)
    _num_threads = n


def get_num_threads():
    """The thread count set by :func:`set_num_threads` (before any call: the BLAS pool's
    current size, which OpenBLAS takes from OPENBLAS_NUM_THREADS or the core count)."""
    if _num_threads is not None:
        return _num_threads
    sizes = [lib.num_threads for lib in _blas_controllers()]
    return max(sizes) if sizes else (os.cpu_count() or 1)


def busy_cores(interval=0.1):
    """How many cores other processes keep busy right now: the non-idle share of all cores
    over ``interval`` seconds (Linux's /proc/stat; this process sleeps meanwhile), or None
    where /proc/stat cannot be read."""
    def read():
        with open("/proc/stat") as f:
            v = [int(a) for a in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4]          # all jiffies; idle + iowait
    try:
        total0, idle0 = read()
        time.sleep(interval)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1.0 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def auto_num_threads():
    """(n, reason): the cores nobody else is using, at least 1.

    n = cores - round(busy), clipped to [1, cores], where busy is what :func:`busy_cores`
    measures over 0.1 s (where it cannot, the 1-minute load average, which lags a minute
    behind a competitor that just started). On an idle laptop that is every core; with
    other busy processes it leaves their cores to them, because a parallel region whose
    second thread is not scheduled waits a whole scheduler tick (``refdl train`` with two
    busy competitors ran 27x slower on 2 threads than on 1).
    """
    cores = os.cpu_count() or 1
    busy = busy_cores()
    if busy is not None:
        n = max(1, min(cores, cores - int(busy + 0.5)))
        return n, f"{cores} cores, {busy:.1f} busy"
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):          # not available here: assume idle
        return cores, f"{cores} cores"
    n = max(1, min(cores, cores - int(load + 0.5)))
    return n, f"{cores} cores, load average {load:.2f}"


class serial_below:
    """``with serial_below(macs): np.matmul(...)`` runs the products on one BLAS thread when
    ``macs`` (M*K*N summed over the block) is below :data:`GEMM_GRAIN`; otherwise it does
    nothing. Cheap (a C call of about a microsecond each way) and reentrant."""

    __slots__ = ("_on", "_n")

    def __init__(self, macs):
        self._n = get_num_threads()
        self._on = macs < GEMM_GRAIN and self._n > 1

    def __enter__(self):
        if self._on:
            for lib in _blas_controllers():
                lib.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self._on:
            for lib in _blas_controllers():
                lib.set_num_threads(self._n)
        return False


def blas_serial():
    """``with blas_serial(): ...`` runs the block with the BLAS pool on one thread: for
    compiled kernels that call BLAS from their own OpenMP threads (refdl.ext.conv_forward),
    where a BLAS pool of its own would compete with them for the same cores."""
    return serial_below(0)
