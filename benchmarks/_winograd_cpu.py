"""The (64,32,32,32)->64 3x3 p1 Conv2d at 1 thread in CPU time (time.process_time), refdl
against PyTorch (when installed), interleaved rounds: on a shared machine CPU time is far
less disturbed by other processes than wall-clock time (it still rises somewhat when they
share the caches and memory bandwidth).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/_winograd_cpu.py
    ... --refdl /path/to/other/tree      (a before/after comparison)

Figures: minimum and median over --rounds x --calls calls, ms; "eff" as in
bench_threads.py (direct-convolution FLOPs over the time, as a fraction of the square
SGEMM rate measured the same way in the same run).
"""
import argparse
import os
import statistics
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--refdl", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--calls", type=int, default=10)
a = p.parse_args()
sys.path.insert(0, os.path.abspath(a.refdl))
import numpy as np  # noqa: E402
import refdl  # noqa: E402
from refdl import nn  # noqa: E402
try:
    import torch
except ImportError:
    torch = None

refdl.set_num_threads(1)
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 32, 32, 32)).astype(np.float32)
refdl.manual_seed(0)
m = nn.Conv2d(32, 64, 3, padding=1)
y = m(x)
g = rng.standard_normal(y.shape).astype(np.float32)
m.backward(g)
S = 2048
A = rng.standard_normal((S, S)).astype(np.float32)
B = rng.standard_normal((S, S)).astype(np.float32)
Cm = np.empty((S, S), np.float32)


def rfwd():
    with refdl.no_grad():
        m(x)


cases = {"refdl fwd": rfwd, "refdl fwd+bwd": lambda: (m(x), m.backward(g)),
         "sgemm": lambda: np.matmul(A, B, out=Cm)}
if torch is not None:
    torch.set_num_threads(1)
    tm = torch.nn.Conv2d(32, 64, 3, padding=1)
    tx = torch.from_numpy(x).clone().requires_grad_(True)
    tg = torch.from_numpy(g)

    def tfwd():
        with torch.no_grad():
            tm(tx)

    def tfb():
        tx.grad = None
        tm.zero_grad(set_to_none=False)
        tm(tx).backward(tg)
    cases["torch fwd"] = tfwd
    cases["torch fwd+bwd"] = tfb
res = {k: [] for k in cases}
l0 = os.getloadavg()
for _ in range(a.rounds):
    for k, f in cases.items():
        f()
        for _ in range(a.calls if k != "sgemm" else 3):
            t0 = time.process_time()
            f()
            res[k].append(time.process_time() - t0)
l1 = os.getloadavg()
best = {k: min(v) * 1e3 for k, v in res.items()}
med = {k: statistics.median(v) * 1e3 for k, v in res.items()}
rate = 2.0 * S ** 3 / best["sgemm"] / 1e6
fl = 2.0 * 64 * 64 * 32 * 9 * 32 * 32
print(f"refdl from {os.path.dirname(refdl.__file__)} ({m.last_algorithm}); 1 thread, CPU "
      f"ms, min / median of {a.rounds}x{a.calls}; load average {l0[0]:.2f} -> {l1[0]:.2f}; "
      f"square SGEMM {S}^3 {rate:.0f} GFLOP/s")
for what, mult in (("fwd", 1), ("fwd+bwd", 3)):
    r = best[f"refdl {what}"]
    line = (f"  {what:8s} refdl {r:7.2f} / {med[f'refdl {what}']:7.2f}  eff "
            f"{100 * mult * fl / (r / 1e3) / 1e9 / rate:3.0f}%")
    if torch is not None:
        t = best[f"torch {what}"]
        line += (f"   PyTorch {t:7.2f} / {med[f'torch {what}']:7.2f}  eff "
                 f"{100 * mult * fl / (t / 1e3) / 1e9 / rate:3.0f}%   ratio {r / t:.2f}")
    print(line)
