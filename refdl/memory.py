"""Keep freed memory for reuse: large NumPy temporaries without page faults.

Every forward and backward allocates arrays of a few hundred kilobytes to tens of
megabytes and frees them moments later. glibc's malloc hands large blocks back to the
operating system when they are freed (through ``munmap`` or by trimming the top of the
heap), so the next array of that size starts on fresh pages, and the kernel zero-fills
each 4 KiB page on first touch: a 1.2 MB activation costs about 300 page faults, every
call. PyTorch avoids this with its caching allocator; refdl, on NumPy, can ask glibc to
keep freed memory instead:

    refdl.keep_freed_memory()      # what ``refdl train`` does before training

sets ``M_MMAP_THRESHOLD`` (blocks below 256 MiB come from the heap, not their own
mappings), ``M_TRIM_THRESHOLD`` (the heap's free top is not given back below 1 GiB) and
``M_TOP_PAD`` (the heap grows 64 MiB at a time) with ``mallopt``. The price is that the
process keeps its peak memory until it exits, as PyTorch's allocator does. The same can be
had without code from the environment (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``). On other C libraries (macOS, musl) it
does nothing and returns False. Measured: a LeNet-5 training step on 64 MNIST-sized images
8-18% faster (docs/performance.md); ``tests/test_memory.py`` counts the page faults.
"""
import ctypes
import ctypes.util

import numpy as np

__all__ = ["keep_freed_memory", "scratch"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_done = False


def keep_freed_memory():
    """Ask glibc's malloc to keep freed blocks for reuse; True when it took effect."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):        # not glibc: nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = (mallopt(_M_MMAP_THRESHOLD, 256 << 20) == 1
          and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
          and mallopt(_M_TOP_PAD, 64 << 20) == 1)
    _done = ok
    return ok


# the alignment of aligned_rows' rows: a cache line
ALIGN = 64


def aligned_rows(shape, dtype):
    """An uninitialised C-contiguous array of ``rows`` rows of at least ``length``
    entries, each row starting on a cache line (ALIGN bytes: the length is rounded up to
    a whole number of lines). The kernels' fixed-size moves and the GEMMs over a scratch
    ran up to 15% slower when it started 16 or 32 bytes past a cache line (Conv3d's plane
    path: 2.04-2.08 against 1.72-1.82 ms)."""
    rows, length = shape
    item = np.dtype(dtype).itemsize
    stride = -(-length * item // ALIGN) * ALIGN // item
    flat = np.empty(rows * stride + ALIGN // item, dtype=dtype)
    off = (-flat.ctypes.data % ALIGN) // item
    return flat[off:off + rows * stride].reshape(rows, stride)


def scratch(buffers, key, shape, dtype):
    """A 2-D scratch array of at least ``shape`` (rows, length) in ``dtype``, kept in the
    dict ``buffers`` under ``key`` and reused while it fits (a layer keeps its buffers
    across calls, so a step allocates no new scratch); ``buffers=None``: a fresh array.
    The compiled kernels give each thread a row (refdl.ext's chunked convolution,
    Winograd's team kernels); each row starts on a cache line (:func:`aligned_rows`)."""
    s = buffers.get(key) if buffers is not None else None
    if s is None or s.dtype != dtype or s.shape[0] < shape[0] or s.shape[1] < shape[1]:
        s = aligned_rows(shape, dtype)
        if buffers is not None:
            buffers[key] = s
    return s
