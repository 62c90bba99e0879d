"""GAN vs WGAN-GP on the 2-D toys (8 Gaussians on a ring, 25 on a grid) and on the digits.

    python scripts/gan_toys.py [--steps 3000] [--out docs/img] [--quick]

Prints a table of modes covered and the fraction of high-quality samples (within 3 std of a
mode) per model and data set, and writes sample plots. Seeds are fixed.
"""
import argparse
import os
import time

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from refdl.data.synthetic import grid_centers, make_gaussian_mixture, ring_centers  # noqa: E402
from refdl.metrics import mode_coverage  # noqa: E402
from refdl.models.gan import sample_generator, train_gan  # noqa: E402


def mixture(centers, std):
    """A sampler for train_gan: n points of refdl.data's Gaussian mixture at ``centers``."""
    def sample(n, rng):
        return make_gaussian_mixture(centers, n, std, generator=rng)[0]
    return sample


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--digits-steps", type=int, default=3000, help="0 skips the digits")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--quick", action="store_true", help="a few hundred steps, for a smoke run")
    ap.add_argument("--toys", default="ring8,grid25", help="which toys (default both)")
    args = ap.parse_args(argv)
    steps = 200 if args.quick else args.steps
    os.makedirs(args.out, exist_ok=True)
    toys = {"ring8": (ring_centers(), 0.05), "grid25": (grid_centers(), 0.05)}
    toys = {k: v for k, v in toys.items() if k in args.toys.split(",")}
    rows = []
    fig, axes = plt.subplots(len(toys), 3, figsize=(12, 4 * len(toys)), squeeze=False)
    for i, (name, (centers, std)) in enumerate(toys.items()):
        rng = np.random.default_rng(0)
        real = mixture(centers, std)(2000, rng)
        axes[i, 0].scatter(real[:, 0], real[:, 1], s=2, c="k")
        axes[i, 0].set_title(f"{name}: data")
        for j, kind in enumerate(["gan", "wgan-gp"]):
            t0 = time.perf_counter()
            G, _, _ = train_gan(mixture(centers, std), kind=kind, steps=steps,
                                batch_size=256, hidden=(128, 128), lr=1e-3,
                                generator=np.random.default_rng(0))
            secs = time.perf_counter() - t0
            s = sample_generator(G, 2500, generator=np.random.default_rng(1))
            m = mode_coverage(s, centers, std)   # covered: >= 20% of the fair share
            rows.append((name, kind, steps, m["modes_covered"], m["n_modes"],
                         m["high_quality"], secs))
            ax = axes[i, j + 1]
            ax.scatter(real[:, 0], real[:, 1], s=2, c="0.8")
            ax.scatter(s[:, 0], s[:, 1], s=2, c="C0" if kind == "gan" else "C3")
            ax.set_title(f"{name}: {kind}, {m['modes_covered']}/{m['n_modes']} modes, "
                         f"{100 * m['high_quality']:.0f}% high quality")
            print(rows[-1], flush=True)
    for ax in axes.flat:
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, f"gan_{'_'.join(toys)}.png"), dpi=80)
    print("\n| data | model | steps | modes covered | high-quality samples | seconds |")
    print("|---|---|---|---|---|---|")
    for name, kind, st, cov, n, hq, secs in rows:
        print(f"| {name} | {kind} | {st} | {cov}/{n} | {100 * hq:.1f}% | {secs:.0f} |")
    if not args.quick and args.digits_steps > 0:
        digits(args.digits_steps, args.out)


def digits(steps, out):
    """WGAN-GP and GAN on the 8x8 digits (scaled to [-1, 1]); writes a sample grid each."""
    from sklearn.datasets import load_digits
    X = (load_digits().data / 8.0 - 1.0).astype(np.float32)

    def sample(n, rng):
        return X[rng.integers(0, len(X), n)]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, kind in zip(axes, ["gan", "wgan-gp"]):
        t0 = time.perf_counter()
        G, _, _ = train_gan(sample, kind=kind, steps=steps, batch_size=128, latent_dim=16,
                            hidden=(256, 256), lr=5e-4, generator=np.random.default_rng(0))
        s = sample_generator(G, 64, latent_dim=16, generator=np.random.default_rng(1))
        grid = np.clip(s, -1, 1).reshape(8, 8, 8, 8).transpose(0, 2, 1, 3).reshape(64, 64)
        ax.imshow(grid, cmap="gray_r")
        ax.set_title(f"{kind}, {steps} steps ({time.perf_counter() - t0:.0f} s)")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "gan_digits.png"), dpi=80)


if __name__ == "__main__":
    try:        # tiny matrix products: one BLAS thread avoids thread start-up costs
        from threadpoolctl import threadpool_limits
        with threadpool_limits(1):
            main()
    except ImportError:
        main()
