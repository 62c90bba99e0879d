"""`refdl train` on an idle machine against the same run next to busy processes.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_contention.py
    python benchmarks/bench_contention.py --busy 2 --runs 3 --epochs 10 --threads auto 2

Issue 15's target: with two busy competing processes, ``refdl train`` on the digits at
most 2x slower than idle. Each run is a fresh ``python -m refdl train --epochs E
--no-plots --quiet`` (LeNet-5 on the digits, the defaults otherwise); the figure is the
training time, the sum over epochs of the training set's size over the samples/s the
epoch reports (history.json), so start-up, data loading and evaluation are not counted. For every thread setting it runs the idle case and the busy case alternately
(``--runs`` times each; the minimum is reported), the busy case next to ``--busy``
processes that spin on a core each (pure Python loops, started before and killed after
the run). The load average is printed before and after; on a machine that is not idle
to begin with, the "idle" column is not idle either.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPIN = "import time\nt = time.time()\nwhile time.time() - t < 600:\n    pass\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--busy", type=int, default=2, help="busy processes (default 2)")
    p.add_argument("--runs", type=int, default=3, help="runs per case (default 3)")
    p.add_argument("--epochs", type=int, default=10, help="epochs per run (default 10)")
    p.add_argument("--threads", nargs="+", default=["auto", "2"],
                   help="thread settings: auto (no --threads) or a number")
    return p.parse_args(argv)


def train_time(threads, epochs):
    """Seconds of training `refdl train` reports for one fresh run."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "refdl", "train", "--epochs", str(epochs),
               "--no-plots", "--out", out]
        if threads != "auto":
            cmd += ["--threads", threads]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if res.returncode != 0:
            raise SystemExit(f"refdl train failed ({res.returncode}):\n{res.stderr[-2000:]}")
        m = re.search(r"\(([\d,]+) train", res.stdout)
        with open(os.path.join(out, "history.json")) as f:
            rates = json.load(f)["samples_per_s"]
    # the header names the training set's size; each epoch reports its samples/s
    n_train = int(m.group(1).replace(",", ""))
    return sum(n_train / r for r in rates)


def main(argv=None):
    args = parse_args(argv)
    print(f"{os.cpu_count()} cores; {args.busy} busy processes; {args.runs} runs per case; "
          f"{args.epochs} epochs; load average at start: "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    rows = []
    for threads in args.threads:
        idle, busy = [], []
        for _ in range(args.runs):
            idle.append(train_time(threads, args.epochs))
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN])
                        for _ in range(args.busy)]
            try:
                time.sleep(0.5)                       # let the spinners reach their loop
                busy.append(train_time(threads, args.epochs))
            finally:
                for s in spinners:
                    s.kill()
                    s.wait()
        rows.append((threads, min(idle), min(busy), idle, busy))
    print("load average at end: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print()
    print(f"| threads | idle s | next to {args.busy} busy s | busy/idle | all runs (idle; busy) |")
    print("|---|---:|---:|---:|---|")
    for threads, i, b, ia, ba in rows:
        runs = ", ".join(f"{v:.2f}" for v in ia) + "; " + ", ".join(f"{v:.2f}" for v in ba)
        print(f"| {threads} | {i:.2f} | {b:.2f} | {b / i:.2f} | {runs} |")


if __name__ == "__main__":
    main()
