"""The spread of 400 LeNet-5 SGD steps (batch 64, float32) at 2 threads: a step that
waits for scheduler ticks shows a spike at 4.00 ms (or 8.00, ...); bench_threads.py's
"q" flag only looks at the median. Prints the median, the 10th/90th percentiles and a
histogram in 0.1 ms bins.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/_lenet_step_histogram.py
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refdl                                          # noqa: E402
from refdl import nn                                  # noqa: E402
from refdl.functional import log_softmax              # noqa: E402
from _cases import lenet5                             # noqa: E402


def main(steps=400, threads=2):
    refdl.set_num_threads(threads)
    refdl.keep_freed_memory()
    refdl.manual_seed(0)
    rng = np.random.default_rng(0)
    net = lenet5(nn)
    x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 64)

    def step(lr=0.01):                 # bench_threads.py's step
        logp = log_softmax(net(x), axis=1)
        grad = np.exp(logp)
        grad[np.arange(64), y] -= 1
        net.zero_grad()
        net.backward(grad / 64, input_grad=False)
        for p in net.parameters():
            p.data -= lr * p.grad
    for _ in range(20):
        step()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts = np.array(ts)
    lo, hi = np.percentile(ts, [10, 90])
    print(f"{steps} steps at {threads} threads: median {np.median(ts):.2f} ms, "
          f"10th-90th percentile {lo:.2f}-{hi:.2f} ms; within 0.05 ms of a multiple of "
          f"4 ms: {int((np.abs(ts - 4 * np.round(ts / 4)) < 0.05).sum())}")
    top = max(5.0, float(np.ceil(np.percentile(ts, 99))))
    counts, edges = np.histogram(ts, bins=np.arange(0.0, top + 0.05, 0.1))
    for edge, c in zip(edges, counts):
        if c:
            print(f"{edge:5.1f} ms {c:4d} {'#' * max(1, c // 4)}")


if __name__ == "__main__":
    main()
