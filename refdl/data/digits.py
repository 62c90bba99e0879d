"""The handwritten digits that scikit-learn ships: 1,797 8x8 grey images, no download."""
import numpy as np

__all__ = ["load_digits"]


def load_digits(test_size=360, seed=0, layout="image"):
    """``(x_train, y_train, x_test, y_test)`` from ``sklearn.datasets.load_digits``.

    Pixels (0..16 in the source) are scaled to [0, 1] as float32; labels are int64 0..9.
    The train/test split is a fixed permutation from ``numpy.random.default_rng(seed)``
    (independent of refdl's generator), so every call returns the same split:
    with the defaults 1,437 training and 360 test images (``test_size`` is a count or a
    fraction of the 1,797).

    ``layout``: ``'image'`` gives (N, 1, 8, 8), ``'flat'`` (N, 64), ``'sequence'`` (N, 8, 8)
    (eight rows read as eight time steps of eight features).
    """
    from sklearn.datasets import load_digits as _sk_load

    d = _sk_load()
    x = (d.images.astype(np.float32) / np.float32(16.0))
    y = d.target.astype(np.int64)
    n = len(y)
    n_test = int(round(test_size * n)) if isinstance(test_size, float) else int(test_size)
    if not 0 < n_test < n:
        raise ValueError(f"load_digits: test_size must leave both parts non-empty, got {test_size}")
    perm = np.random.default_rng(seed).permutation(n)
    te, tr = perm[:n_test], perm[n_test:]
    shapes = {"image": (1, 8, 8), "flat": (64,), "sequence": (8, 8)}
    if layout not in shapes:
        raise ValueError(f"load_digits: layout must be one of {sorted(shapes)}, got {layout!r}")
    x = np.ascontiguousarray(x.reshape((n,) + shapes[layout]))
    return x[tr], y[tr], x[te], y[te]
