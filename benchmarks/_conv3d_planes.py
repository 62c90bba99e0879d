"""Conv3d's forward on its two compiled paths: the plane path (ext.conv_forward_planes:
each input plane's 2-D columns built once per image) against the im2col of the whole 3-D
window a piece at a time (the plane path switched off through ext.PLANE_RING_BYTES), at 1
and 2 threads, with the largest difference of the outputs.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/_conv3d_planes.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refdl                                          # noqa: E402
from refdl import ext                                 # noqa: E402
from _cases import best_median                        # noqa: E402

# (N, C_in, (D, H, W), kernel, C_out, padding, dilation); the first is docs/performance.md's
CASES = [(8, 3, (10, 32, 32), 3, 16, 1, 1), (8, 3, (10, 32, 32), 3, 16, 1, 2),
         (4, 16, (8, 16, 16), 3, 32, 1, 1), (16, 8, (6, 12, 12), 3, 16, 0, 1),
         (8, 2, (9, 20, 20), 5, 8, 2, 1)]


def main():
    if not ext.available():
        sys.exit("the compiled kernels are not built")
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.2f}; ms, forward, float32")
    ring = ext.PLANE_RING_BYTES
    for threads in (1, 2):
        refdl.set_num_threads(threads)
        for N, C, sp, k, Co, p, d in CASES:
            x = rng.standard_normal((N, C) + sp).astype(np.float32)
            w2 = rng.standard_normal((Co, C * k ** 3)).astype(np.float32)
            b = rng.standard_normal(Co).astype(np.float32)
            out = tuple(L + 2 * p - d * (k - 1) for L in sp)
            args = ((k,) * 3, (1, 1, 1), ((p, p),) * 3, (d,) * 3, out)
            buf, res = {}, {}
            for label, limit in (("whole window", 0), ("planes", ring)):
                ext.PLANE_RING_BYTES = limit

                def call():
                    return ext.conv_forward(x, w2, b, *args, buffers=buf)
                res[label] = (best_median(call, 9), call())
            ext.PLANE_RING_BYTES = ring
            diff = float(np.abs(res["planes"][1] - res["whole window"][1]).max())
            print(f"{threads} thread(s)  ({N},{C},{sp})->{Co}@{k}^3 p{p} d{d}:  whole window "
                  f"{res['whole window'][0]:7.3f}  planes {res['planes'][0]:7.3f}  "
                  f"max |difference| {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
