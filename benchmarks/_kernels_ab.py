"""The compiled convolution kernels of two source trees, before and after a change:
ext.conv_forward and ext.conv_backward on docs/performance.md's convolutions, called
directly (no layer), at 1 thread, alternating between the trees (one child process per
tree and round, each importing refdl from its tree; build both first).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/_kernels_ab.py OLD NEW
"""
import os
import subprocess
import sys

CHILD = r"""
import sys, timeit
sys.path.insert(0, sys.argv[1])
import numpy as np
import refdl
from refdl import ext
refdl.set_num_threads(1)
t = lambda f: min(timeit.repeat(f, number=50, repeat=7)) / 50 * 1e3
rng = np.random.default_rng(0)
cases = [("conv1", 64, 1, (28, 28), 5, 6, 2, 1), ("conv2", 64, 6, (14, 14), 5, 16, 0, 1),
         ("s2", 64, 3, (32, 32), 3, 32, 1, 2), ("conv1d", 256, 1, (40,), 5, 32, 2, 1),
         ("conv3d", 8, 3, (10, 32, 32), 3, 16, 1, 1)]
out = []
for name, N, C, sp, k, Co, p, s in cases:
    x = rng.standard_normal((N, C) + sp).astype(np.float32)
    w2 = rng.standard_normal((Co, C * k ** len(sp))).astype(np.float32)
    b = rng.standard_normal(Co).astype(np.float32)
    o = tuple((L + 2 * p - k) // s + 1 for L in sp)
    args = ((k,) * len(sp), (s,) * len(sp), ((p, p),) * len(sp), (1,) * len(sp), o)
    g = rng.standard_normal((N, Co) + o).astype(np.float32)
    buf = {}
    out.append(f"{name} fwd {t(lambda: ext.conv_forward(x, w2, b, *args, buffers=buf)):.3f}"
               f" bwd {t(lambda: ext.conv_backward(x, w2, g, *args, buffers=buf)):.3f}")
print("  ".join(out))
"""


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    for rnd in range(3):
        for tree in sys.argv[1:]:
            r = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(tree)],
                               capture_output=True, text=True)
            print(f"round {rnd + 1} {tree}: " + (r.stdout.strip() or r.stderr.strip()[-300:]),
                  flush=True)


if __name__ == "__main__":
    main()
