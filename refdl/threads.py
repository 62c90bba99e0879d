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
* OpenBLAS's own threads spin after a multi-threaded product before they sleep, for
  2**28 cycles (about 0.1 s) by default, and a kernel region in that window shares a
  core with them. OpenBLAS reads that timeout once, when it loads, from
  OPENBLAS_THREAD_TIMEOUT (log2 of the cycles). So ``import refdl`` sets it to
  :data:`BLAS_THREAD_TIMEOUT` (2**20 cycles, about 0.3 ms) for the libraries it loads,
  unless the user set it or NumPy was already imported (then OpenBLAS is loaded with its
  default; :func:`blas_thread_timeout` says which), and restores the environment after.
  Products that follow each other within 0.3 ms (a GPT's) find the workers awake; a
  convolution after a large Linear layer no longer meets them. At 2 threads
  (benchmarks/_pool_mix.py), a CNN with a 4096 -> 1024 classifier and Linear on
  OpenBLAS's pool stepped in 48-54 ms with the default timeout and 35-40 ms with 2**20
  (38-49 ms with Linear on one thread); a GPT, all of whose products use that pool, in
  445-479 ms against 468-478 ms. The CLI (``refdl train``) always gets it: refdl is
  imported before NumPy there. The end state is still one pool for every product
  (Linear, attention, the recurrent layers: about 80 call sites) on the kernels' team;
  moving Linear alone there made the CNN faster (32 ms) and the GPT slower (571 ms),
  because attention's products then met the team's threads (docs/performance.md).

Results do not depend on the thread count: the kernels partition the batch (each thread
writes its own samples), and refdl's GEMMs are the same BLAS calls whatever the count
(tests/test_threads.py checks bit-for-bit equality for the kernels and 1e-6 for GEMMs,
whose summation order OpenBLAS may split differently).
"""
import os
import sys
import time

__all__ = ["set_num_threads", "get_num_threads", "serial_below",
           "auto_num_threads", "blas_serial", "blas_thread_timeout",
           "KERNEL_GRAIN", "GEMM_GRAIN", "BLAS_THREAD_TIMEOUT"]

# log2 of the cycles OpenBLAS's idle workers spin before they sleep (OpenBLAS's default:
# 28, about 0.1 s); 18, 20 and 22 measured alike on benchmarks/_pool_mix.py, 20 leaves the
# most room for products in quick succession
BLAS_THREAD_TIMEOUT = 20
_TIMEOUT_VARIABLE = "OPENBLAS_THREAD_TIMEOUT"


def _blas_timeout_before_load():
    """Called when refdl/__init__.py imports this module, before anything imports NumPy:
    sets OPENBLAS_THREAD_TIMEOUT for the BLAS libraries that load during ``import refdl``
    (restored by :func:`_restore_blas_environment`) and returns the timeout NumPy's BLAS
    loads with, as :func:`blas_thread_timeout` reports it."""
    if _TIMEOUT_VARIABLE in os.environ:
        value = os.environ[_TIMEOUT_VARIABLE]
        return (int(value) if value.strip().isdigit() else None), "user"
    if "numpy" in sys.modules:
        return 28, "default"
    os.environ[_TIMEOUT_VARIABLE] = str(BLAS_THREAD_TIMEOUT)
    return BLAS_THREAD_TIMEOUT, "refdl"


_timeout = _blas_timeout_before_load()


def _restore_blas_environment():
    """The end of ``import refdl``: the environment as the user left it (child processes
    do not inherit refdl's setting)."""
    if _timeout[1] == "refdl":
        os.environ.pop(_TIMEOUT_VARIABLE, None)


def blas_thread_timeout():
    """(log2 cycles, source): how long NumPy's OpenBLAS workers spin before they sleep, as
    far as refdl can tell, fixed when NumPy loaded: ``"refdl"`` (it set
    :data:`BLAS_THREAD_TIMEOUT` first), ``"user"`` (OPENBLAS_THREAD_TIMEOUT was set; None
    when it is not an integer) or ``"default"`` (NumPy was imported before refdl:
    OpenBLAS's 28)."""
    return _timeout

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
