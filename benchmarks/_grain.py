"""Measure the serial grains of refdl/threads.py: 1 vs 2 threads for conv-shaped GEMMs
and for the im2col kernel, interleaved (min over rounds of the median of calls)."""
import os, sys, time, statistics
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np, refdl
from refdl import ext
rng = np.random.default_rng(0)
gemms = []
for (M, K, N) in [(6, 25, 3136), (16, 150, 1600), (6, 25, 12544), (16, 150, 6400),
                  (32, 27, 16384), (64, 288, 4096), (64, 288, 16384), (64, 288, 65536)]:
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    gemms.append((f"gemm {M}x{K}x{N} ({M*K*N/1e6:.1f}M MAC)", lambda A=A, B=B: A @ B))
kern = []
for shape, k in [((64, 1, 28, 28), 5), ((64, 6, 14, 14), 5), ((16, 32, 32, 32), 3), ((64, 32, 32, 32), 3)]:
    x = rng.standard_normal(shape).astype(np.float32)
    cols = ext.im2col(x, k, 1, 0)
    kern.append((f"im2col {shape} k{k} ({cols.size/1e6:.2f}M el)",
                 lambda x=x, k=k, cols=cols: ext.im2col(x, k, 1, 0, out=cols)))
cases = gemms + kern
res = {(n, t): [] for n, _ in cases for t in (1, 2)}
import refdl.threads as T
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
    for n, f in cases:
        for t in (1, 2):
            refdl.set_num_threads(t)
            if n.startswith("im2col"):       # kernels: all above the grain
                ext.compiled_module().set_threading(t, 1)
            f(); ts = []
            for _ in range(7):
                t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
            res[(n, t)].append(statistics.median(ts))
print("load", os.getloadavg())
for n, _ in cases:
    a, b = min(res[(n, 1)]) * 1e3, min(res[(n, 2)]) * 1e3
    print(f"{n:45s} 1 thread {a:8.3f} ms  2 threads {b:8.3f} ms  speedup {a / b:5.2f}")
