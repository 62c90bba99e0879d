"""Global vs windowed self-attention on large images: tokens, multiply-adds, score memory.

    python scripts/attention_cost.py [--measure] [--dim 768 --heads 12 --window 8]

For square images of side 256 ... 4096 and patch sizes 8 and 128, one attention layer of
a ViT-B-like width (dim 768, 12 heads) on one image:

* tokens N = (H/p)^2;
* multiply-adds: projections 4 N dim^2, attention 2 N K dim, with K = N keys per query
  for global attention and K = M^2 (M = window side in tokens) for windowed attention;
* the score matrices: heads N K float32 entries.

With --measure it also runs refdl's attention core (softmax(Q K^T / sqrt(d)) V, float32,
the head dimension 64) where the arrays fit in 200 MiB, records the bytes of the weight
array it actually allocated and the wall time (one run; the machine is shared, so times
are indicative only, the bytes are exact).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from refdl.models.vit import attention_cost  # noqa: E402
from refdl.nn import ScaledDotProductAttention  # noqa: E402
from refdl.nn.transformer import window_partition  # noqa: E402

SIZES = (256, 512, 1024, 2048, 4096)
PATCHES = (8, 128)
LIMIT = 200 * 2 ** 20          # measure only where the largest array is below this


def human(n, unit="B"):
    for u in ("", "Ki", "Mi", "Gi", "Ti", "Pi"):
        if abs(n) < 1024 or u == "Pi":
            return f"{n:.3g} {u}{unit}" if u else f"{n:.0f} {unit}"
        n /= 1024


def sci(n):
    return f"{n:.3g}"


def measure(grid, heads, d, window):
    """Run the attention core on random tokens; return (score bytes, seconds) or None."""
    gh, gw = grid
    N = gh * gw
    K = N if window is None else min(window, gh) * min(window, gw)
    if max(heads * N * K, heads * N * d) * 4 > LIMIT:
        return None
    g = np.random.default_rng(0)
    x = g.standard_normal((1, gh, gw, heads * d), dtype=np.float32)
    att = ScaledDotProductAttention()
    if window is None:
        t = x.reshape(N, heads, d).transpose(1, 0, 2)            # (heads, N, d)
    else:
        M = min(window, gh)
        w = window_partition(x, M)                               # (nW, M^2, heads d)
        t = w.reshape(w.shape[0], M * M, heads, d).transpose(0, 2, 1, 3)
    best = np.inf
    for _ in range(2):                                           # the faster of two runs
        t0 = time.perf_counter()
        _, A = att(t, t, t, need_weights=True)
        best = min(best, time.perf_counter() - t0)
    return A.nbytes, best


def table(dim, heads, window, do_measure):
    d = dim // heads
    rows = ["| image | patch | tokens N | global: attention MACs | global: total MACs | "
            "global: scores | windowed (M=%d): keys/query | windowed: total MACs | "
            "windowed: scores | saving (total MACs) | saving (scores) |" % window,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    meas = ["| image | patch | tokens | global: scores allocated | global: time | "
            "windowed: scores allocated | windowed: time |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for p in PATCHES:
        for s in SIZES:
            g = attention_cost(s, p, dim, heads)
            w = attention_cost(s, p, dim, heads, window=window)
            rows.append(f"| {s}x{s} | {p} | {g['tokens']:,} | {sci(g['attn_macs'])} | "
                        f"{sci(g['total_macs'])} | {human(g['score_bytes'])} | "
                        f"{w['keys_per_query']} | {sci(w['total_macs'])} | "
                        f"{human(w['score_bytes'])} | "
                        f"{g['total_macs'] / w['total_macs']:.3g}x | "
                        f"{g['score_bytes'] / w['score_bytes']:.3g}x |")
            if do_measure:
                mg = measure(g["grid"], heads, d, None)
                mw = measure(g["grid"], heads, d, window)
                if mg is not None:
                    assert mg[0] == g["score_bytes"], (mg, g)
                if mw is not None:
                    assert mw[0] == w["score_bytes"], (mw, w)
                f = (lambda m: ("skipped (> 200 MiB)", "-") if m is None else
                     (human(m[0]), f"{m[1]:.3f} s"))
                meas.append(f"| {s}x{s} | {p} | {g['tokens']:,} | {f(mg)[0]} | {f(mg)[1]} | "
                            f"{f(mw)[0]} | {f(mw)[1]} |")
    return rows, meas


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--measure", action="store_true")
    a = ap.parse_args(argv)
    rows, meas = table(a.dim, a.heads, a.window, a.measure)
    print(f"One attention layer, one image, dim {a.dim}, {a.heads} heads, float32 scores.\n")
    print("\n".join(rows))
    if a.measure:
        print("\nMeasured (refdl's attention core, float32, head dim "
              f"{a.dim // a.heads}; allocated bytes equal the computed ones):\n")
        print("\n".join(meas))


if __name__ == "__main__":
    main()
