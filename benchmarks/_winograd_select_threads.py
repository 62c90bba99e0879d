"""Winograd against the chunked im2col path for 3x3 stride-1 Conv2d layers, at 1 and 2
threads, wall-clock (median of 5 calls, minimum over 3 rounds): the data behind
refdl.nn.conv.WINOGRAD_MIN_CHANNELS since the chunked kernels (docs/performance.md).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/_winograd_select_threads.py

Ratios are im2col/Winograd: above 1, Winograd is faster.
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import refdl  # noqa: E402
import refdl.nn as nn  # noqa: E402

refdl.keep_freed_memory()
rng = np.random.default_rng(0)
def tm(f, reps=5, rounds=3):
    best = 1e9
    for r in range(rounds):
        ts = []
        for i in range(reps):
            t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
        best = min(best, sorted(ts)[len(ts)//2])
    return best * 1e3
cases = [((64, 8, 32, 32), 8), ((64, 16, 32, 32), 16), ((32, 16, 16, 16), 32), ((64, 32, 16, 16), 32),
         ((16, 64, 8, 8), 64), ((8, 128, 8, 8), 128), ((64, 64, 16, 16), 64), ((64, 32, 32, 32), 64)]
for nt in (1, 2):
    refdl.set_num_threads(nt)
    for shape, co in cases:
        x = rng.standard_normal(shape).astype(np.float32)
        out = []
        for algo in ("winograd", "im2col"):
            m = nn.Conv2d(shape[1], co, 3, padding=1); m.algorithm = algo
            with refdl.no_grad(): y = m(x)
            g = np.ones_like(y)
            def fwd():
                with refdl.no_grad(): m(x)
            def fb():
                m(x); m.backward(g)
            fb()
            out.append((tm(fwd), tm(fb)))
        (wf, wb), (cf, cb) = out
        print(f"{nt}t {str(shape):18s}->{co:3d}  fwd W {wf:7.2f} im2col {cf:7.2f} ({cf/wf:.2f})  fwd+bwd W {wb:7.2f} im2col {cb:7.2f} ({cb/wb:.2f})", flush=True)
