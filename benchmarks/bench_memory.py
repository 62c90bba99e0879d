"""Peak memory (tracemalloc) of one training step, and of repeated inference calls.

    python benchmarks/bench_memory.py

For LeNet-5 (batch 64, 1x8x8 digits-sized input scaled to 28x28) and resnet_small
(batch 32, 1x8x8), it reports the peak traced memory of one forward + loss + backward +
SGD step (after a warm-up step), and the traced memory left after 1,000 inference calls
in eval mode and under refdl.no_grad(), after 1,000 warm-up calls (caches must not
accumulate).
"""
import tracemalloc

import numpy as np

import refdl
from refdl import nn, optim
from refdl.models import get_model


def step_peak(model, x, y):
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.01)

    def step():
        out = model(x)
        loss_fn(out, y)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)   # as the trainer
        opt.step()

    step()                                   # warm-up: optimiser state, lazy buffers
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    step()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def inference_growth(model, x, calls=1000):
    """Traced memory kept by ``calls`` inference calls, after as many warm-up calls (the
    first calls allocate per-shape geometry and thread-pool bookkeeping once)."""
    tracemalloc.start()

    def kept(run):
        for _ in range(calls):
            run()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(calls):
            run()
        return tracemalloc.get_traced_memory()[0] - base

    model.eval()
    eval_growth = kept(lambda: model(x))
    model.train()
    with refdl.no_grad() if hasattr(refdl, "no_grad") else _null():
        nograd_growth = kept(lambda: model(x))
    tracemalloc.stop()
    return eval_growth, nograd_growth


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main():
    rng = np.random.default_rng(0)
    cases = [("lenet5", dict(num_classes=10), (64, 1, 28, 28)),
             ("resnet_small", dict(num_classes=10, in_channels=1), (32, 1, 8, 8))]
    print(f"refdl {getattr(refdl, '__version__', '?')}, compiled kernels: "
          f"{refdl.ext.available()}")
    for name, kw, shape in cases:
        try:
            model = get_model(name, **kw)
        except TypeError:
            kw.pop("in_channels", None)
            model = get_model(name, **kw)
        x = rng.standard_normal(shape).astype(np.float32)
        y = rng.integers(0, 10, shape[0])
        peak = step_peak(model, x, y)
        line = f"{name:13s} batch {shape[0]:3d}: training step peak {peak / 2**20:7.2f} MiB"
        if hasattr(refdl, "no_grad"):
            ev, ng = inference_growth(model, x[:8], calls=1000)
            line += (f";  kept by 1,000 inference calls: eval {ev / 2**10:+.1f} KiB, "
                     f"no_grad {ng / 2**10:+.1f} KiB")
        print(line)


if __name__ == "__main__":
    main()
