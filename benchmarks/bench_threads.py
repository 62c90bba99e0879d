"""refdl against PyTorch at 1 and 2 threads, in the same run, with the machine's state.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_threads.py
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_threads.py --quick
    python benchmarks/bench_threads.py --threads 2           # one thread count only

For every case (the table of issue 15 plus the other convolutions of docs/performance.md)
it times refdl's compiled path and PyTorch CPU (when installed) at each thread count,
interleaved: every round times every case at every thread count once, so a burst of load
from other processes hits all of them alike. A round's figure is the median of
``--calls`` calls; the reported figure is the minimum over ``--rounds`` rounds. Baselines
in the same run: PyTorch (ratio refdl/PyTorch), the square SGEMM rate (a 2048^3 product
through NumPy's BLAS; "eff" is a conv's direct FLOPs over refdl's time as a fraction of that
rate) and, for fwd+bwd rows, refdl's own NumPy path (without --quick).

PyTorch runs alone in a child process (benchmarks/bench_torch.py) unless
``--torch-in-process``: next to refdl's OpenMP runtime and BLAS pool its threads compete
with idle ones that no real PyTorch user has.

Thread counts are set with ``refdl.set_num_threads`` (the BLAS pool and the kernels'
OpenMP team together) and ``torch.set_num_threads``; refdl before issue 15 had no
set_num_threads, so then threadpoolctl limits every pool. The load average is printed
before and after; a load above the core count, or a case whose calls cluster at multiples
of the 4 ms scheduler tick, is flagged ("LOAD", "q"): such a figure measures the
scheduler, not the code.

``--refdl PATH`` imports refdl from another source tree (a before/after comparison).
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cases import CONVS, LENET_STEP, POOL, lenet5   # noqa: E402

TICK = 4e-3          # the scheduler tick (CONFIG_HZ=250) at which stalls quantise times
# With OpenBLAS's default timeout its worker threads spin (busy-wait) for about 0.1 s after
# a multi-threaded product before they sleep (measured: 0.40 cores busy over the 0.3 s
# after a 1024^3 SGEMM at 2 threads); a refdl row timed in that window shares a core with
# them (LeNet-scale Conv3d forward at 2 threads: 1.9 ms alone, 2.7 ms right after the
# NumPy-path rows). refdl's timeout (threads.BLAS_THREAD_TIMEOUT) cuts the spin to about
# 0.3 ms; the pause stays for trees and setups without it.
BLAS_SPIN_S = 0.15


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, action="append",
                   help="thread count (repeatable; default: 1 and 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--calls", type=int, default=7, help="calls per round (median; default 7)")
    p.add_argument("--quick", action="store_true",
                   help="one round of 3 calls, no NumPy path, smaller SGEMM (< 1 minute)")
    p.add_argument("--no-torch", action="store_true", help="no PyTorch column")
    p.add_argument("--torch-in-process", action="store_true",
                   help="time PyTorch in this process, interleaved with refdl (default: "
                        "alone in a child process, benchmarks/bench_torch.py)")
    p.add_argument("--refdl", help="source tree to import refdl from (default: this one)")
    p.add_argument("--only", help="run only the cases whose name contains this text")
    p.add_argument("--json", help="also write the figures (ms) and flags to this file")
    return p.parse_args(argv)


def loadavg():
    try:
        return os.getloadavg()
    except OSError:            # not available on this platform
        return (float("nan"),) * 3


def on_tick(t):
    """True when t (seconds, >= 1 tick) lies within 0.1 ms of a multiple of the tick."""
    return t >= TICK * 0.95 and abs(t / TICK - round(t / TICK)) * TICK < 1e-4


def quantised(samples):
    """True when most calls of >= 1 tick sit within 0.15 ms of a multiple of the tick."""
    long = [s for s in samples if s >= TICK * 0.9]
    if len(long) < 2:
        return False
    near = sum(1 for s in long if abs(s / TICK - round(s / TICK)) * TICK < 1.5e-4)
    return near >= max(2, (len(long) + 1) // 2)


def torch_alone(args, threads):
    """PyTorch's figures from benchmarks/bench_torch.py in a child process ([] without
    PyTorch): PyTorch alone, not next to refdl's OpenMP runtime and BLAS pool."""
    import json
    import subprocess
    import tempfile
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "torch.json")
        cmd = [sys.executable, os.path.join(here, "bench_torch.py"), "--json", out,
               "--rounds", str(args.rounds), "--calls", str(args.calls)]
        cmd += [a for t in threads for a in ("--threads", str(t))]
        if args.only:
            cmd += ["--only", args.only]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print("bench_torch.py failed:\n" + res.stderr[-1500:], file=sys.stderr)
            return []
        if not os.path.exists(out):                   # PyTorch is not installed
            return []
        with open(out) as f:
            data = json.load(f)
    print(f"PyTorch {data['torch']} timed alone in a child process "
          f"(load {loadavg()[0]:.2f} after)", file=sys.stderr)
    return data["figures"]


def run(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.rounds, args.calls = 1, 3
    threads = args.threads or [1, 2]
    root = args.refdl or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.abspath(root))

    # refdl before NumPy, as a user's ``refdl train`` does: it sets OpenBLAS's thread
    # timeout when NumPy loads (refdl.threads.BLAS_THREAD_TIMEOUT)
    import refdl
    import numpy as np
    import threadpoolctl
    from refdl import ext, nn
    from refdl.functional import log_softmax

    import contextlib
    # inference records no cache (refdl.no_grad, per-call caches); older trees had neither
    no_grad = getattr(refdl, "no_grad", contextlib.nullcontext)
    torch = None
    if not args.no_torch and args.torch_in_process:
        try:
            import torch
        except ImportError:
            torch = None
    ncpu = os.cpu_count() or 1
    limiter = []
    if torch is not None:
        torch_note = f"{torch.__version__} in this process"
    elif args.no_torch:
        torch_note = "not timed (--no-torch)"
    elif args.torch_in_process:
        torch_note = "not installed"
    else:
        torch_note = "timed alone in a child process, when installed"

    def set_threads(t):
        if hasattr(refdl, "set_num_threads"):
            refdl.set_num_threads(t)
        else:                                          # refdl before issue 15
            limiter[:] = [threadpoolctl.threadpool_limits(t)]
        if torch is not None:
            torch.set_num_threads(t)

    rng = np.random.default_rng(0)
    load0 = loadavg()
    blas = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    print(f"refdl from {os.path.dirname(refdl.__file__)}; compiled kernels "
          f"{ext.available()} ({ext.variant_description()}; OpenMP {ext.openmp()}); "
          f"numpy {np.__version__}; torch "
          f"{torch_note}; {ncpu} cores; threads "
          f"{threads}; rounds {args.rounds} x median of {args.calls} calls (minimum over "
          f"rounds)")
    for i in blas:
        print(f"BLAS: {i.get('internal_api')} {i.get('version')} kernel "
              f"{i.get('architecture')}")
    timeout = getattr(refdl.threads, "blas_thread_timeout", lambda: (28, "default"))()
    print(f"OpenBLAS's workers spin 2**{timeout[0]} cycles before they sleep "
          f"(set by: {timeout[1]})")
    print(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")

    # -- cases: name -> dict(refdl=fn, torch=fn, numpy=fn, flops=...) ---------------------
    cases = {}
    for name, rank, cin, cout, k, kw, shape in CONVS:
        cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
        refdl.manual_seed(0)
        m = cls(cin, cout, k, **kw)
        x = rng.standard_normal(shape).astype(np.float32)
        with no_grad():
            y = m(x)
        g = rng.standard_normal(y.shape).astype(np.float32)
        flops = 2.0 * y.size * cin * k ** (len(shape) - 2)

        def fwd(m=m, x=x):
            with no_grad():                    # like torch.no_grad(): records nothing
                m(x)

        def fwdbwd(m=m, x=x, g=g):
            m(x)
            m.backward(g)
        row_f = {"refdl": fwd, "flops": flops}
        row_fb = {"refdl": fwdbwd, "flops": 3 * flops}
        if not args.quick:
            row_fb["numpy"] = fwdbwd
        cases[name + ", fwd"] = row_f
        cases[name + ", fwd+bwd"] = row_fb

    x = rng.standard_normal(POOL[1]).astype(np.float32)
    pool = nn.MaxPool2d(2)
    with no_grad():
        gp = np.ones_like(pool(x))

    def pool_fb():
        pool(x)
        pool.backward(gp)
    row = {"refdl": pool_fb}
    if not args.quick:
        row["numpy"] = pool_fb
    cases[POOL[0]] = row

    refdl.manual_seed(0)
    net = lenet5(nn)
    xb = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    lb = rng.integers(0, 10, 64)

    def step(lr=0.01):
        logp = log_softmax(net(xb), axis=1)
        grad = np.exp(logp)
        grad[np.arange(64), lb] -= 1
        net.zero_grad()
        net.backward(grad / 64, input_grad=False)   # PyTorch's data needs no gradient
        for p in net.parameters():
            p.data -= lr * p.grad
    row = {"refdl": step}
    if not args.quick:
        row["numpy"] = step
    cases[LENET_STEP] = row
    if torch is not None:          # --torch-in-process: bench_torch.py's own cases
        from bench_torch import build_cases
        for name, fn in build_cases(torch, np).items():
            cases[name]["torch"] = fn

    if args.only:
        cases = {k: v for k, v in cases.items() if args.only in k}
    S = 1024 if args.quick else 2048
    A = rng.standard_normal((S, S)).astype(np.float32)
    B = rng.standard_normal((S, S)).astype(np.float32)
    C = np.empty((S, S), np.float32)
    cases[f"square SGEMM {S}^3"] = {"refdl": lambda: np.matmul(A, B, out=C),
                                    "flops": 2.0 * S ** 3}

    # -- interleaved timing -----------------------------------------------------------------
    samples = {(n, t, who): [] for n, row in cases.items() for t in threads
               for who in ("refdl", "torch", "numpy") if who in row}
    fig = {key: [] for key in samples}
    t_start = time.perf_counter()
    for r in range(args.rounds):
        for name, row in cases.items():
            for t in threads:
                set_threads(t)
                for who in ("refdl", "torch", "numpy"):
                    if who not in row:
                        continue
                    fn = row[who]
                    with ext.numpy_path(who == "numpy"):
                        fn()                                    # warm-up
                        ts = []
                        for _ in range(args.calls if who != "numpy" else min(3, args.calls)):
                            t0 = time.perf_counter()
                            fn()
                            ts.append(time.perf_counter() - t0)
                    samples[(name, t, who)] += ts
                    fig[(name, t, who)].append(statistics.median(ts))
                    if t > 1 and (who == "numpy" or name.startswith("square SGEMM")):
                        # NumPy's matmul ran on OpenBLAS's pool: its threads spin after
                        # a product (OpenBLAS's thread timeout; 0.1 s by default) and
                        # would take a core from the next row's refdl kernels
                        time.sleep(BLAS_SPIN_S)
        print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f} s, "
              f"load {loadavg()[0]:.2f})", file=sys.stderr)
    load1 = loadavg()
    best = {k: min(v) * 1e3 for k, v in fig.items()}
    q = {k: quantised(v) or on_tick(best[k] / 1e3) for k, v in samples.items()}
    if not args.no_torch and not args.torch_in_process:
        for name, t, who, ms, ts in torch_alone(args, threads):
            if name in cases:
                best[(name, t, who)] = ms
                q[(name, t, who)] = quantised(ts) or on_tick(ms / 1e3)

    sq = {t: cases[f"square SGEMM {S}^3"]["flops"] / best[(f"square SGEMM {S}^3", t,
                                                           "refdl")] / 1e6
          for t in threads}            # GFLOP/s
    loaded = max(load0[0], load1[0]) > ncpu
    print(f"load average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}"
          + (f"  LOAD above {ncpu} cores: figures measure contention" if loaded else ""))
    print("square SGEMM rate: " + ", ".join(f"{sq[t]:.0f} GFLOP/s at {t} thread(s)"
                                            for t in threads))
    print()
    head = "| work | threads | refdl ms | PyTorch ms | refdl/PyTorch | NumPy path ms | eff |"
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|")
    out = []
    for name, row in cases.items():
        if name.startswith("square SGEMM"):
            continue
        for t in threads:
            r = best[(name, t, "refdl")]
            tt = best.get((name, t, "torch"))
            nn_ = best.get((name, t, "numpy"))
            flag = " q" if q[(name, t, "refdl")] else ""
            tflag = " q" if q.get((name, t, "torch")) else ""
            eff = (f"{100 * row['flops'] / (r * 1e6) / sq[t]:.0f}%" if "flops" in row
                   else "-")
            print(f"| {name} | {t} | {r:.2f}{flag} | "
                  f"{f'{tt:.2f}{tflag}' if tt else '-'} | "
                  f"{f'{r / tt:.2f}' if tt else '-'} | {f'{nn_:.2f}' if nn_ else '-'} | "
                  f"{eff} |")
            out.append((name, t, r, tt))
    nq = sum(q.values())
    print()
    print(f"{nq} of {len(q)} timings flagged q (the figure, or most calls, at a multiple "
          f"of the {TICK * 1e3:.0f} ms scheduler tick)" + ("; LOAD flagged" if loaded else ""))
    print(f"total {time.perf_counter() - t_start:.0f} s")
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump({"load": [load0[0], load1[0]], "sgemm_gflops": sq,
                       "figures": [[n, t, who, best[(n, t, who)], q[(n, t, who)]]
                                   for (n, t, who) in best]}, f)
    return out


if __name__ == "__main__":
    run()
