"""Before/after on a shared machine: bench_threads.py for two source trees, alternately.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/compare_runs.py \\
        --before /tmp/refdl-main [--runs 3] [--quick]

Runs ``bench_threads.py --rounds 1`` in a fresh process for the old tree, then for this
one, ``--runs`` times (a burst of load from other jobs then hits both), and prints for
every case and thread count the minimum over runs of refdl's time, before and after, and
of PyTorch's time (every process times PyTorch too), with refdl/PyTorch ratios, the load
average range and the count of runs whose figure sat on a 4 ms scheduler tick ("q").
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--before", required=True, help="the old source tree (kernels built)")
p.add_argument("--runs", type=int, default=3)
p.add_argument("--quick", action="store_true")
p.add_argument("--only")
args = p.parse_args()

res = {"before": [], "after": []}
with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.runs):
        for tag, tree in (("before", args.before), ("after", os.path.dirname(here))):
            out = os.path.join(tmp, f"{tag}{r}.json")
            cmd = [sys.executable, os.path.join(here, "bench_threads.py"), "--rounds", "1",
                   "--refdl", tree, "--json", out]
            if args.quick:
                cmd.append("--quick")
            if args.only:
                cmd += ["--only", args.only]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            with open(out) as f:
                res[tag].append(json.load(f))
            print(f"run {r + 1}/{args.runs} {tag} done (load {os.getloadavg()[0]:.2f})",
                  file=sys.stderr)


def table(tag):
    best, flags = {}, {}
    for run in res[tag]:
        for n, t, who, ms, q in run["figures"]:
            k = (n, t, who)
            best[k] = min(best.get(k, float("inf")), ms)
            flags[k] = flags.get(k, 0) + int(q)
    return best, flags


b, bq = table("before")
a, aq = table("after")
loads = [x for tag in res for run in res[tag] for x in run["load"]]
print(f"{args.runs} alternating runs per tree; load average {min(loads):.2f} to "
      f"{max(loads):.2f} on {os.cpu_count()} cores; minimum over runs (ms); q = runs whose "
      f"figure sat on a 4 ms tick")
print()
print("| work | threads | before ms | after ms | after/before | PyTorch ms | before/PyTorch "
      "| after/PyTorch |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for (n, t, who) in a:
    if who != "refdl" or n.startswith("square"):
        continue
    tb, ta = b.get((n, t, "refdl")), a[(n, t, "refdl")]
    tt = min(v for v in (b.get((n, t, "torch")), a.get((n, t, "torch"))) if v is not None) \
        if (n, t, "torch") in a else None
    fq = lambda d, k: f" q{d[k]}" if d.get(k) else ""  # noqa: E731
    print(f"| {n} | {t} | {tb:.2f}{fq(bq, (n, t, 'refdl'))} | {ta:.2f}{fq(aq, (n, t, 'refdl'))}"
          f" | {ta / tb:.2f} | {f'{tt:.2f}' if tt else '-'} | "
          f"{f'{tb / tt:.2f}' if tt else '-'} | {f'{ta / tt:.2f}' if tt else '-'} |")
