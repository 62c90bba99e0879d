"""Direct convolution or im2col + GEMM? Times refdl.ext.conv_forward both ways (float32,
interleaved rounds, the minimum over rounds of a median) over a grid of layer shapes, at 1
and 2 threads: the data behind refdl.ext.conv_direct's rule (docs/performance.md).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/_direct_choice.py
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import refdl  # noqa: E402  (before NumPy: refdl.threads sets OpenBLAS's thread timeout)
import numpy as np  # noqa: E402
from refdl import ext  # noqa: E402

# (name, x shape, C_out, kernel, stride, padding)
CASES = [
    ("LeNet conv2", (64, 6, 14, 14), 16, 5, 1, 0),
    ("LeNet conv1", (64, 1, 28, 28), 6, 5, 1, 0),
    ("conv1 C_out 8", (64, 1, 28, 28), 8, 5, 1, 0),
    ("conv1 C_out 16", (64, 1, 28, 28), 16, 5, 1, 0),
    ("conv2 C_out 4", (64, 6, 14, 14), 4, 5, 1, 0),
    ("conv2 C_out 6", (64, 6, 14, 14), 6, 5, 1, 0),
    ("conv2 C_out 8", (64, 6, 14, 14), 8, 5, 1, 0),
    ("conv2 C_out 12", (64, 6, 14, 14), 12, 5, 1, 0),
    ("conv2 C_out 32", (64, 6, 14, 14), 32, 5, 1, 0),
    ("stride 2", (64, 3, 32, 32), 32, 3, 2, 1),
    ("3x3 C 3 -> 16", (64, 3, 32, 32), 16, 3, 1, 1),
    ("3x3 C 8 -> 8", (64, 8, 32, 32), 8, 3, 1, 1),
    ("3x3 C 16 -> 4", (64, 16, 32, 32), 4, 3, 1, 1),
    ("3x3 C 2 -> 32", (64, 2, 32, 32), 32, 3, 1, 1),
    ("5x5 C 3 -> 64, 32x32", (32, 3, 32, 32), 64, 5, 1, 2),
    ("3x3 C 16 -> 32", (32, 16, 32, 32), 32, 3, 1, 1),
    ("3x3 C 64 -> 64, 8x8", (64, 64, 8, 8), 64, 3, 1, 1),
    ("3x3 C 128 -> 128, 16x16", (16, 128, 16, 16), 128, 3, 1, 1),
    ("1x1 C 64 -> 64", (32, 64, 16, 16), 64, 1, 1, 0),
    ("Conv1d", (256, 1, 40), 32, 5, 1, 2),
    ("Conv1d C 16 -> 32", (64, 16, 100), 32, 5, 1, 2),
    ("Conv3d", (8, 3, 10, 32, 32), 16, 3, 1, 1),
    ("batch 1, 3x3 C 32 -> 32, 64x64", (1, 32, 64, 64), 32, 3, 1, 1),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=7)
    ap.add_argument("--only", default=None)
    ap.add_argument("--isa", default=None, help="the direct kernel to time (portable, "
                    "avx2, avx512; default the fastest): with OPENBLAS_CORETYPE=Haswell, "
                    "--isa avx2 stands in for an AVX2 laptop")
    args = ap.parse_args()
    ext._K.set_direct_isa(args.isa)
    rng = np.random.default_rng(0)
    print(f"direct kernel {ext._K.direct_isa()}, build {ext.kernel_variant()}, load "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'case':34s} thr  gemm ms  direct ms  direct/gemm  rule")
    for name, xs, cout, k, s, p in CASES:
        if args.only and args.only not in name:
            continue
        nd = len(xs) - 2
        x = rng.standard_normal(xs).astype(np.float32)
        w2 = rng.standard_normal((cout, xs[1] * k ** nd)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        out = tuple((n + 2 * p - k) // s + 1 for n in xs[2:])
        geo = ((k,) * nd, (s,) * nd, ((p, p),) * nd, (1,) * nd, out, 1)
        rule = ext.conv_direct(xs, w2.shape, x.dtype, *geo)
        for nt in (1, 2):
            refdl.set_num_threads(nt)
            bufs = {False: {}, True: {}}
            best = {False: np.inf, True: np.inf}
            for _ in range(args.rounds):
                for direct in (False, True):
                    ts = []
                    for _ in range(args.calls):
                        t0 = time.perf_counter()
                        ext.conv_forward(x, w2, b, *geo, buffers=bufs[direct],
                                         direct=direct)
                        ts.append(time.perf_counter() - t0)
                    best[direct] = min(best[direct], float(np.median(ts)))
            print(f"{name:34s} {nt:3d} {best[False] * 1e3:8.3f} {best[True] * 1e3:10.3f} "
                  f"{best[True] / best[False]:12.2f}  {'direct' if rule else 'gemm'}")


if __name__ == "__main__":
    main()
