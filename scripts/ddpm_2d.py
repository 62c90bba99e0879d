"""Train a small DDPM on 8 Gaussians on a ring and plot its samples.

    python scripts/ddpm_2d.py [--steps 10000] [--T 100] [--out ddpm_2d.png]

Prints the simple loss, the mode coverage and high-quality fraction of 5000 samples (for
the trained network and for the exact-eps "oracle", which isolates the sampler's own
error), and a one-sample estimate of the variational bound's terms; writes a PNG with
the data, the samples and the reverse trajectory at a few steps.
"""
import argparse
import contextlib
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from refdl.data.synthetic import make_ring, ring_centers  # noqa: E402
from refdl.metrics import mode_coverage  # noqa: E402
from refdl.models.diffusion import (GaussianDiffusion, MixtureOracleEps, NoisePredictor,  # noqa: E402
                                    train_ddpm)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--schedule", default="linear", choices=["linear", "cosine"])
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--std", type=float, default=0.1, help="std of each mixture component")
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="ddpm_2d.png")
    args = ap.parse_args(argv)

    try:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(1)     # many tiny matmuls: BLAS threads only spin
    except ImportError:
        limit = contextlib.nullcontext()

    rng = np.random.default_rng(args.seed)
    d = GaussianDiffusion.from_schedule(args.schedule, args.T)
    net = NoisePredictor(2, args.hidden, args.layers, 16, generator=rng)
    data = lambda n, g: make_ring(n, std=args.std, generator=g)[0]  # noqa: E731
    centers = ring_centers()
    print(f"{d}; alpha_bar_T = {d.alphas_cumprod[-1]:.3g}; {net}")
    with limit:
        t0 = time.time()
        losses = train_ddpm(net, d, data, args.steps, batch_size=args.batch_size, lr=args.lr,
                            generator=rng, log_every=max(1, args.steps // 10))
        print(f"trained {args.steps} steps in {time.time() - t0:.1f} s; final loss "
              f"(mean of last 500) {np.mean(losses[-500:]):.4f}")
        samples, traj = d.sample(net, (args.samples, 2), generator=rng, return_trajectory=True)
        oracle = d.sample(MixtureOracleEps(d, centers, args.std), (args.samples, 2),
                          generator=rng, dtype=np.float64)
        real = data(args.samples, rng)
        for name, s in (("data", real), ("DDPM", samples), ("oracle eps", oracle)):
            r = mode_coverage(s, centers, args.std, min_fraction=0.1)
            print(f"{name:>10}: modes covered {r['modes_covered']}/8, within 3 std of a mode "
                  f"{100 * r['high_quality']:.1f}%, per mode {r['counts'].tolist()}")
        x0 = data(500, rng).astype(np.float64)
        net64 = net.to(np.float64)
        terms = d.elbo_terms(net64, x0, rng)
        print(f"bound (nats per 2-D point, 500 points, 1 sample per term): "
              f"L_T = {terms['L_T'].mean():.3g}, sum L_t-1 = {terms['L_t'].sum(1).mean():.3f}, "
              f"L_0 = {terms['L_0'].mean():.3f}, total = {terms['bound'].mean():.3f}")
        net.to(np.float32)

    T = d.T
    snaps = [T, int(0.6 * T), int(0.3 * T), int(0.1 * T), 0]
    fig, axes = plt.subplots(1, len(snaps) + 2, figsize=(3.2 * (len(snaps) + 2), 3.4))
    for ax, (title, pts) in zip(axes[:2], (("data", real), ("oracle eps, t = 0", oracle))):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
        ax.set_title(title)
    for ax, t in zip(axes[2:], snaps):
        pts = traj[T - t]
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4, color="C1")
        ax.set_title(f"DDPM x_t, t = {t}")
    for ax in axes:
        ax.set_xlim(-3.5, 3.5)
        ax.set_ylim(-3.5, 3.5)
        ax.set_aspect("equal")
        ax.scatter(centers[:, 0], centers[:, 1], s=12, marker="x", color="k")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
