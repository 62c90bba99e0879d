"""conv_backward's dW product with g channel-major against g transposed (pixel-major):
forward+backward of the docs/performance.md convolutions with ext.dw_pixel_major forced
each way, interleaved, at 1 and 2 threads (the rule it measures: refdl/ext.py).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/_dw_orientation.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refdl                                          # noqa: E402
from refdl import ext, nn                             # noqa: E402
from _cases import CONVS, best_median                 # noqa: E402


def main():
    if not ext.available():
        sys.exit("the compiled kernels are not built")
    refdl.keep_freed_memory()
    rule = ext.dw_pixel_major
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.2f}; ms, forward+backward, float32")
    for threads in (1, 2):
        refdl.set_num_threads(threads)
        for name, rank, cin, cout, k, kw, shape in CONVS:
            if "3x3 p1" in name and "s2" not in name:    # Winograd: no dW product here
                continue
            m = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank](cin, cout, k, **kw)
            x = rng.standard_normal(shape).astype(np.float32)
            with refdl.no_grad():
                g = np.ones_like(m(x))

            def step():
                m(x)
                m.backward(g)
            times = {False: [], True: []}
            for _ in range(2):
                for pixel_major in (False, True):
                    ext.dw_pixel_major = lambda cog, CKg, v=pixel_major: v
                    step()
                    times[pixel_major].append(best_median(step, 9))
            ext.dw_pixel_major = rule
            chosen = rule(cout, cin * k ** (len(shape) - 2))
            print(f"{threads} thread(s)  {name:40s} channel-major "
                  f"{min(times[False]):6.2f}  pixel-major {min(times[True]):6.2f}  "
                  f"(the rule picks {'pixel' if chosen else 'channel'}-major)")


if __name__ == "__main__":
    main()
