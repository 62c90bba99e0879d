"""refdl.keep_freed_memory: freed NumPy temporaries are reused without page faults."""
import subprocess
import sys
import textwrap

import pytest

import refdl

PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    import refdl
    from refdl import nn
    if {keep}:
        assert refdl.keep_freed_memory()
    refdl.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
    x = np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32)
    def step():
        y = net(x)
        net.backward(np.ones_like(y))
    for _ in range(5):                       # warm up: the heap reaches its size
        step()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
""")



def _faults(keep):
    import pathlib
    root = str(pathlib.Path(refdl.__file__).resolve().parents[1])
    import os
    # the allocation pattern of the compiled path (where the default faults); the probe is
    # about memory, not about which kernels run
    env = {k: v for k, v in os.environ.items() if k != "REFDL_DISABLE_EXT"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=root, keep=keep)],
                         capture_output=True, text=True, check=True, env=env).stdout
    return int(out.split()[-1])


def test_freed_arrays_are_reused_without_page_faults():
    """20 training steps of LeNet-5's convolutional half on 64 images: by default glibc
    gives the freed activations (0.1-5 MB each, of varying sizes) back to the system and
    every step faults on fresh pages (about a thousand per step); with the setting the
    same memory is reused and the steps fault almost never."""
    if not sys.platform.startswith("linux") or not refdl.keep_freed_memory():
        pytest.skip("glibc's mallopt is not available here")
    plain, kept = _faults(False), _faults(True)
    if refdl.ext.available():
        assert plain > 20 * 100, plain           # the default really does fault here
    # (without the compiled kernels the reference path's arrays happen to be reused by
    # glibc's own adaptive threshold: then there is little to gain, and nothing is lost)
    assert kept <= max(plain / 20, 50), (plain, kept)


def test_keep_freed_memory_is_idempotent():
    first = refdl.keep_freed_memory()
    assert refdl.keep_freed_memory() is first


def test_scratch_is_reused_while_it_fits():
    # the kernels' per-thread scratch (refdl.memory.scratch): the same array while the
    # request fits, a new one when it grows in either axis or changes dtype
    import numpy as np
    from refdl.memory import scratch
    bufs = {}
    a = scratch(bufs, "k", (2, 100), np.float32)
    assert a.shape == (2, 112) and bufs["k"] is a      # rows of whole 64-byte lines
    assert scratch(bufs, "k", (1, 50), np.float32) is a
    assert scratch(bufs, "k", (2, 112), np.float32) is a
    b = scratch(bufs, "k", (2, 113), np.float32)
    assert b is not a and b.shape == (2, 128) and bufs["k"] is b
    assert scratch(bufs, "k", (3, 10), np.float32).shape == (3, 16)
    c = scratch(bufs, "k", (1, 10), np.float64)
    assert c.dtype == np.float64 and c.shape == (1, 16) and bufs["k"] is c
    assert scratch(None, "k", (1, 4), np.float32).shape == (1, 16)
    assert set(bufs) == {"k"}


def test_scratch_rows_start_on_a_cache_line():
    # the kernels' 64-byte moves and GEMM operands: every row of every scratch aligned,
    # whatever NumPy's allocator returned
    import numpy as np
    from refdl.memory import ALIGN, aligned_rows
    for dtype in (np.float32, np.float64):
        for rows, length in ((1, 1), (2, 3), (3, 100), (4, 1000), (2, 0)):
            for _ in range(8):                       # different allocations
                a = aligned_rows((rows, length), dtype)
                assert a.flags.c_contiguous and a.shape[0] == rows
                assert length <= a.shape[1] < length + ALIGN // a.itemsize
                for r in range(rows if length else 0):     # an empty row has no bytes
                    assert a[r:].ctypes.data % ALIGN == 0
