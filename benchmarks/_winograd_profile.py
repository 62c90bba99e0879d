"""Where Winograd's time goes: the stages of refdl.functional.winograd's forward and
backward on one layer, 1 thread, CPU time (time.process_time: robust to other processes
on the machine), against the bound of its GEMM work at the square-SGEMM rate.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/_winograd_profile.py
    ... _winograd_profile.py --shape 64,32,32,32 --out 64 --calls 20

Each stage is timed alone over ``--calls`` calls (minimum and median of per-call CPU time),
interleaved over ``--rounds`` rounds; the whole layer (Conv2d forward, forward+backward)
is timed the same way, so "rest" = layer - sum of stages is Python/bookkeeping.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import refdl  # noqa: E402
from refdl import nn  # noqa: E402
from refdl.functional import winograd as wg  # noqa: E402


def cpu(fn, calls):
    fn()
    ts = []
    for _ in range(calls):
        t0 = time.process_time()
        fn()
        ts.append(time.process_time() - t0)
    return ts


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="64,32,32,32")
    p.add_argument("--out", type=int, default=64)
    p.add_argument("--calls", type=int, default=15)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--algorithm", default="winograd")
    a = p.parse_args(argv)
    N, C, H, W = map(int, a.shape.split(","))
    O = a.out
    refdl.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    refdl.manual_seed(0)
    m = nn.Conv2d(C, O, 3, padding=1)
    m.algorithm = a.algorithm
    y = m(x)
    g = rng.standard_normal(y.shape).astype(np.float32)
    m.backward(g)
    S = 1024
    A = rng.standard_normal((S, S)).astype(np.float32)
    B = rng.standard_normal((S, S)).astype(np.float32)
    Cm = np.empty((S, S), np.float32)

    stages = stages_f23(x, m.weight.data, m.bias.data, ((1, 1), (1, 1)), g)
    cases = dict(stages["cases"])
    cases["layer fwd"] = lambda: _fwd(m, x)
    cases["layer fwd+bwd"] = lambda: (m(x), m.backward(g))
    cases["sgemm 1024^3"] = lambda: np.matmul(A, B, out=Cm)
    res = {k: [] for k in cases}
    load0 = os.getloadavg()
    for _ in range(a.rounds):
        for k, f in cases.items():
            res[k] += cpu(f, a.calls)
    load1 = os.getloadavg()
    best = {k: min(v) * 1e3 for k, v in res.items()}
    med = {k: statistics.median(v) * 1e3 for k, v in res.items()}
    rate = 2.0 * S ** 3 / (best["sgemm 1024^3"] / 1e3) / 1e9
    direct = 2.0 * N * O * C * 9 * H * W
    print(f"layer ({N},{C},{H},{W})->{O}@3x3 p1 float32, {a.algorithm} "
          f"({stages['name']}), 1 thread, CPU ms (min / median of {a.rounds}x{a.calls}); "
          f"load average {load0[0]:.2f} -> {load1[0]:.2f}")
    print(f"square SGEMM {S}^3: {rate:.0f} GFLOP/s; direct conv {direct / 1e9:.3f} GFLOP "
          f"= {direct / rate / 1e6:.2f} ms at that rate (fwd)")
    gemm_flops = stages["gemm_flops"]
    for part in ("fwd", "bwd"):
        tot = 0.0
        print(f"-- {part}")
        for k in stages["cases"]:
            if not k.startswith(part):
                continue
            tot += best[k]
            extra = ""
            if k in gemm_flops:
                fl = gemm_flops[k]
                extra = (f"   {fl / 1e9:.3f} GFLOP: {fl / best[k] / 1e6:.0f} GFLOP/s, "
                         f"bound {fl / rate / 1e6:.2f} ms")
            print(f"  {k:38s} {best[k]:7.2f} / {med[k]:7.2f}{extra}")
        print(f"  {'sum of stages':38s} {tot:7.2f}")
    print(f"layer fwd       {best['layer fwd']:7.2f} / {med['layer fwd']:7.2f}   eff "
          f"{100 * direct / (best['layer fwd'] / 1e3) / 1e9 / rate:.0f}%")
    print(f"layer fwd+bwd   {best['layer fwd+bwd']:7.2f} / {med['layer fwd+bwd']:7.2f}   eff "
          f"{100 * 3 * direct / (best['layer fwd+bwd'] / 1e3) / 1e9 / rate:.0f}%")


def stages_f23(x, w, b, pads, g):
    """The stages of F(2x2, 3x3) as refdl.functional.winograd's compiled path runs them
    (ranges of tile rows whose V and M stay in cache), each stage as a separate callable
    that runs over all ranges with one range's buffers (so its data come from L2 as in
    the fused loop)."""
    N, C, H, W = x.shape
    O = w.shape[0]
    OH, OW = g.shape[2:]
    TH, TW = wg.tiles((OH, OW))
    T = TH * TW
    K = wg._kernels()
    (ph, _), (pw, _) = pads
    U = wg.weight_transform(w)
    Ut = np.ascontiguousarray(U.transpose(0, 2, 1))
    k = wg._range_tiles(C, O, 4)
    R = wg._rows_per_range(TH, TW, k)
    rng = [seg for segs in wg._row_ranges((0, N), TH, TW, k) for seg in segs]
    Vb, Mb = wg.planes(C, R * TW, np.float32), wg.planes(O, R * TW, np.float32)
    tmp, rb = np.empty((16, O, C), np.float32), np.empty(16 * (2 * TW + 4), np.float32)

    def tile_major(kk):          # the first kk*C entries of each of Vb's planes, (16, kk, C)
        return Vb.reshape(16, -1)[:, :kk * C].reshape(16, kk, C)
    y = np.empty(g.shape, np.float32)
    dx = np.zeros(x.shape, np.float32)
    bb = b.astype(np.float32)

    def each(f):
        def run():
            for n, t0, t1 in rng:
                kk = (t1 - t0) * TW
                f(n, t0, t1, kk, Vb[:, :, :kk], Mb[:, :, :kk])
        return run

    P = N * T
    cases = {
        "fwd weight transform U": lambda: wg.weight_transform(w),
        "fwd input transform V": each(lambda n, t0, t1, kk, v, m: K.input_rows(
            x, v, rb, ph, pw, TW, n, t0, t1)),
        "fwd 16 GEMMs M = U V": each(lambda n, t0, t1, kk, v, m: np.matmul(U, v, out=m)),
        "fwd output transform y": each(lambda n, t0, t1, kk, v, m: K.output_rows(
            m, y, bb, True, rb, TW, n, t0, t1)),
        "bwd output adjoint dM": each(lambda n, t0, t1, kk, v, m: K.output_rows_adjoint(
            g, m, rb, TW, n, t0, t1)),
        "bwd input transform V (tile-major)": each(lambda n, t0, t1, kk, v, m: K.input_tiles(
            x, tile_major(kk), ph, pw, TH, TW, n * T + t0 * TW,
            n * T + t1 * TW)),
        "bwd 16 GEMMs dU = dM V": each(lambda n, t0, t1, kk, v, m: np.matmul(
            m, tile_major(kk), out=tmp)),
        "bwd 16 GEMMs dV = U^T dM": each(lambda n, t0, t1, kk, v, m: np.matmul(
            Ut, m, out=v)),
        "bwd input adjoint dx": each(lambda n, t0, t1, kk, v, m: K.input_rows_adjoint(
            v, dx, rb, ph, pw, TW, n, t0, t1)),
        "bwd weight adjoint dW": lambda: wg.weight_transform_adjoint(tmp, (O, C)),
    }
    fl = 2.0 * 16 * O * C * P
    return {"name": f"F(2x2,3x3), ranges of {R} tile rows ({R * TW} tiles)",
            "cases": cases,
            "gemm_flops": {"fwd 16 GEMMs M = U V": fl, "bwd 16 GEMMs dU = dM V": fl,
                           "bwd 16 GEMMs dV = U^T dM": fl}}


def _fwd(m, x):
    with refdl.no_grad():
        m(x)


if __name__ == "__main__":
    main()
