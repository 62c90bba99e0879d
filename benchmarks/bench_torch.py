"""PyTorch CPU alone, in its own process, on the cases of issue 15's table.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_torch.py --json t.json

bench_threads.py runs this as a child process for its PyTorch column (unless
``--torch-in-process``): a process that has loaded refdl holds a second OpenMP runtime and
OpenBLAS's pool next to PyTorch's own, and their idle threads compete for the same two
cores, which is not how anyone runs PyTorch. Same protocol as bench_threads.py: every
round times every case at every thread count once (a round's figure is the median of
``--calls`` calls), the figure is the minimum over ``--rounds`` rounds.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cases import CONVS, LENET_STEP, POOL, lenet5   # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, action="append", help="default: 1 and 2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=7)
    p.add_argument("--only", help="run only the cases whose name contains this text")
    p.add_argument("--json", help="write [[case, threads, 'torch', ms, samples]] here")
    return p.parse_args(argv)


def build_cases(torch, np):
    rng = np.random.default_rng(0)
    T = torch.nn
    cases = {}
    for name, rank, cin, cout, k, kw, shape in CONVS:
        torch.manual_seed(0)
        m = {1: T.Conv1d, 2: T.Conv2d, 3: T.Conv3d}[rank](cin, cout, k, **kw)
        x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
        with torch.no_grad():
            g = torch.from_numpy(rng.standard_normal(m(x).shape).astype(np.float32))
        xg = x.clone().requires_grad_(True)

        def fwd(m=m, x=x):
            with torch.no_grad():
                m(x)

        def fwdbwd(m=m, x=xg, g=g):
            x.grad = None
            m.zero_grad(set_to_none=False)
            m(x).backward(g)
        cases[name + ", fwd"] = fwd
        cases[name + ", fwd+bwd"] = fwdbwd
    name, shape = POOL
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).requires_grad_(True)
    pool = T.MaxPool2d(2)
    gp = torch.ones(pool(x).shape)

    def pool_fb():
        x.grad = None
        pool(x).backward(gp)
    cases[name] = pool_fb
    torch.manual_seed(0)
    net = lenet5(T)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    xb = torch.from_numpy(rng.standard_normal((64, 1, 28, 28)).astype(np.float32))
    lb = torch.from_numpy(rng.integers(0, 10, 64))

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xb), lb).backward()
        opt.step()
    cases[LENET_STEP] = step
    return cases


def run(argv=None):
    args = parse_args(argv)
    import numpy as np
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed (pip install torch==2.13.0): nothing to time")
        return []
    threads = args.threads or [1, 2]
    cases = build_cases(torch, np)
    if args.only:
        cases = {k: v for k, v in cases.items() if args.only in k}
    fig = {(n, t): [] for n in cases for t in threads}
    samples = {k: [] for k in fig}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            for t in threads:
                torch.set_num_threads(t)
                fn()
                ts = []
                for _ in range(args.calls):
                    t0 = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t0)
                samples[(name, t)] += ts
                fig[(name, t)].append(statistics.median(ts))
    rows = [[n, t, "torch", min(v) * 1e3, samples[(n, t)]] for (n, t), v in fig.items()]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "figures": rows}, f)
    else:
        for n, t, _, ms, _ in rows:
            print(f"{n} | {t} | {ms:.2f} ms")
    return rows


if __name__ == "__main__":
    run()
