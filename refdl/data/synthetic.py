"""Small generated data sets for 2-D classification and toy generative models.

Each returns ``(x, y)``: points (N, 2) float32 and labels (N,) int64 (the class, or the
mixture component), drawn from ``generator`` or refdl's default generator.
"""
import numpy as np

from ..random import get_rng

__all__ = ["make_spirals", "make_moons", "make_gaussian_mixture", "ring_centers",
           "grid_centers", "make_ring", "make_grid"]


def _split(n, k):
    counts = np.full(k, n // k)
    counts[: n % k] += 1
    return counts


def make_spirals(n_samples=300, n_classes=3, noise=0.2, generator=None):
    """CS231n's interleaved spirals: class j has radii r in [0, 1] and angles
    t = 4j + 4r + noise * N(0, 1); the point is r (sin t, cos t)."""
    if n_classes < 1 or n_samples < n_classes:
        raise ValueError(f"make_spirals: need n_samples >= n_classes >= 1, got "
                         f"{n_samples}, {n_classes}")
    rng = get_rng(generator)
    xs, ys = [], []
    for j, m in enumerate(_split(n_samples, n_classes)):
        r = np.linspace(0.0, 1.0, m)
        t = np.linspace(4.0 * j, 4.0 * (j + 1), m) + noise * rng.standard_normal(m)
        xs.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
        ys.append(np.full(m, j))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def make_moons(n_samples=200, noise=0.1, generator=None):
    """Two interleaving half circles (scikit-learn's make_moons), Gaussian noise added."""
    rng = get_rng(generator)
    n0, n1 = _split(n_samples, 2)
    t0 = np.linspace(0, np.pi, n0)
    t1 = np.linspace(0, np.pi, n1)
    x = np.concatenate([np.stack([np.cos(t0), np.sin(t0)], 1),
                        np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)])
    x = x + noise * rng.standard_normal(x.shape)
    y = np.concatenate([np.zeros(n0), np.ones(n1)])
    return x.astype(np.float32), y.astype(np.int64)


def make_gaussian_mixture(centers, n_samples=1000, std=0.05, generator=None,
                          dtype=np.float32):
    """(x, y): points from an equal-weight mixture of N(centre_k, std^2 I), ``centers``
    (K, D); x (n_samples, D) in ``dtype`` (drawn in float64), y the component (int64).
    Draws the components first, then the noise."""
    if not std > 0:
        raise ValueError(f"make_gaussian_mixture: std must be positive, got {std!r}")
    centers = np.asarray(centers, dtype=np.float64)
    rng = get_rng(generator)
    n_samples = int(n_samples)
    y = rng.integers(0, len(centers), size=n_samples)
    x = centers[y] + std * rng.standard_normal((n_samples, centers.shape[1]))
    return x.astype(dtype), y.astype(np.int64)


def ring_centers(n_modes=8, radius=2.0):
    """Mode centres (n_modes, 2) at angles 2 pi k / n_modes on a circle of ``radius``."""
    a = 2 * np.pi * np.arange(n_modes) / n_modes
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def grid_centers(size=5, spacing=2.0):
    """Mode centres (size^2, 2) of a size x size grid centred at 0 (-4, -2, ..., 4 for 5)."""
    c = spacing * (np.arange(size) - (size - 1) / 2)
    return np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)


def make_ring(n_samples=1000, n_modes=8, radius=2.0, std=0.02, generator=None,
              dtype=np.float32):
    """The GAN/diffusion toy set: ``n_modes`` Gaussians evenly spaced on a circle."""
    return make_gaussian_mixture(ring_centers(n_modes, radius), n_samples, std, generator,
                                 dtype)


def make_grid(n_samples=1000, size=5, spacing=2.0, std=0.05, generator=None,
              dtype=np.float32):
    """The GAN toy set: a size x size grid of Gaussians (25 modes at -4, -2, ..., 4)."""
    return make_gaussian_mixture(grid_centers(size, spacing), n_samples, std, generator,
                                 dtype)
