"""Train the MLP VAE on the 8x8 digits and plot reconstructions, samples and the latent space.

    python scripts/vae_digits.py [--epochs 60] [--beta 1.0] [--out docs/img]
"""
import argparse
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import refdl  # noqa: E402
from refdl.models.vae import VAE, VAELoss, train_vae  # noqa: E402
from refdl.optim import Adam  # noqa: E402


def grid(images, rows):
    n = len(images)
    cols = int(np.ceil(n / rows))
    out = np.zeros((rows * 9, cols * 9))
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        out[r * 9:r * 9 + 8, c * 9:c * 9 + 8] = im.reshape(8, 8)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--latent", type=int, default=2)
    ap.add_argument("--out", default="docs/img")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    refdl.manual_seed(0)
    d = load_digits()
    X, y = (d.data / 16.0).astype(np.float32), d.target
    vae, crit = VAE(64, args.latent, hidden=(256, 128)), VAELoss("bernoulli", beta=args.beta)
    opt = Adam(vae.parameters(), lr=1e-3)
    train_vae(vae, crit, opt, X, epochs=args.epochs, batch_size=64,
              generator=np.random.default_rng(0), print_fn=lambda s: print(s, flush=True))
    vae.eval()
    x_hat, mu, _ = vae(X)
    recon = refdl.functional.sigmoid(x_hat)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.8))
    axes[0].imshow(grid(np.concatenate([X[:16], recon[:16]]), 4), cmap="gray_r")
    axes[0].set_title("data (rows 1-2) and reconstructions (rows 3-4)")
    axes[1].imshow(grid(vae.sample(32, generator=np.random.default_rng(1)), 4), cmap="gray_r")
    axes[1].set_title("samples z ~ N(0, I)")
    sc = axes[2].scatter(mu[:, 0], mu[:, 1], c=y, cmap="tab10", s=6)
    axes[2].set_title("latent means of all 1,797 digits")
    fig.colorbar(sc, ax=axes[2])
    for ax in axes[:2]:
        ax.axis("off")
    fig.tight_layout()
    path = os.path.join(args.out, "vae_digits.png")
    fig.savefig(path, dpi=80)
    print("wrote", path)


if __name__ == "__main__":
    try:
        from threadpoolctl import threadpool_limits
        with threadpool_limits(1):
            main()
    except ImportError:
        main()
