"""MaxPool2d(2) forward and forward+backward on the baseline and the AVX2 build of the
kernels, at 1 and 2 threads (docs/performance.md, "Instruction-set builds").

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/_pool_variants.py [rounds]

Both builds are loaded in this process (refdl.ext.load_variant) and swapped in turn, round
after round, so a change of load hits both alike. Each figure: the minimum over rounds of
the median of 15 calls, in ms. Also the kernels alone (avg pooling, max pooling's
backward, im2col, col2im) on the same shapes, to see which loops gain from AVX2.
"""
import os
import statistics
import sys
import time

import numpy as np

import refdl
from refdl import ext, nn

SHAPES = [(64, 6, 28, 28), (64, 16, 10, 10), (64, 32, 32, 32)]


def median_ms(fn, calls=15):
    fn()
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def cases(x):
    pool = nn.MaxPool2d(2)
    g = np.ones(pool(x).shape, x.dtype)
    pool.pop_saved()

    def fwd():
        with refdl.no_grad():
            pool(x)

    def fwd_bwd():
        pool(x)
        pool.backward(g)

    y, idx = ext.max_pool_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), g.shape[2:])
    k = 3
    cols = ext.im2col(x, k, 1, 1)
    return {"MaxPool2d(2) fwd": fwd, "MaxPool2d(2) fwd+bwd": fwd_bwd,
            "max_pool_backward": lambda: ext.max_pool_backward(g, idx, x.shape),
            "avg_pool fwd": lambda: ext.avg_pool_forward(x, (2, 2), (2, 2), (0, 0),
                                                         g.shape[2:]),
            "avg_pool bwd": lambda: ext.avg_pool_backward(g, x.shape, (2, 2), (2, 2),
                                                          (0, 0), g.shape[2:]),
            "im2col 3x3 p1": lambda: ext.im2col(x, k, 1, 1, out=cols),
            "col2im 3x3 p1": lambda: ext.col2im(cols, x.shape, k, 1, 1)}


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    builds = {v: ext.load_variant(v) for v in ("baseline", "avx2")}
    rng = np.random.default_rng(0)
    xs = {s: rng.standard_normal(s).astype(np.float32) for s in SHAPES}
    best = {}
    load0 = os.getloadavg()
    for _ in range(rounds):
        for t in (1, 2):
            refdl.set_num_threads(t)
            for v, K in builds.items():
                ext._K = K
                with ext.numpy_path(False):
                    for s, x in xs.items():
                        for name, fn in cases(x).items():
                            key = (name, s, t, v)
                            best[key] = min(best.get(key, 1e9), median_ms(fn))
    load1 = os.getloadavg()
    print(f"refdl {os.path.dirname(refdl.__file__)}; builds {list(builds)}; "
          f"{os.cpu_count()} cores; {rounds} rounds x median of 15; float32; ms")
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f}")
    names = list(cases(xs[SHAPES[0]]))
    print(f"| {'work':22} | {'shape':17} | thr | baseline |   avx2 | speed-up |")
    for name in names:
        for s in SHAPES:
            for t in (1, 2):
                b, a = best[(name, s, t, "baseline")], best[(name, s, t, "avx2")]
                print(f"| {name:22} | {str(s):17} | {t:3} | {b:8.3f} | {a:6.3f} | "
                      f"{b / a:7.2f}x |")


if __name__ == "__main__":
    main()
