"""Simple image transforms on arrays (torchvision.transforms' names).

Each transform is called as ``t(x, generator=None)`` on one image ``(C, H, W)`` or a batch
``(N, C, H, W)`` and returns a new array; random ones draw from ``generator`` (refdl's
default when None), independently for every image of a batch. The DataLoader's
``transform=`` applies one to every batch of inputs.
"""
import numbers

import numpy as np

from ..random import get_rng

__all__ = ["Compose", "Normalize", "RandomCrop", "RandomHorizontalFlip"]


def _as_batch(x, who):
    x = np.asarray(x)
    if x.ndim == 3:
        return x[None], True
    if x.ndim == 4:
        return x, False
    raise ValueError(f"{who}: expected an image (C, H, W) or a batch (N, C, H, W), got shape "
                     f"{x.shape}")


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x, generator=None):
        for t in self.transforms:
            x = t(x, generator=generator)
        return x

    def __repr__(self):
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class Normalize:
    """x[c] <- (x[c] - mean[c]) / std[c], per channel (a number applies to every channel)."""

    def __init__(self, mean, std):
        self.mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        self.std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize: std must be positive, got {std}")

    def __call__(self, x, generator=None):
        xb, single = _as_batch(x, repr(self))
        c = xb.shape[1]
        if self.mean.size not in (1, c) or self.std.size not in (1, c):
            raise ValueError(f"{self!r}: mean/std have {self.mean.size}/{self.std.size} "
                             f"entries but the input has {c} channels")
        dt = xb.dtype if np.issubdtype(xb.dtype, np.floating) else np.float32
        out = ((xb - self.mean.reshape(1, -1, 1, 1)) / self.std.reshape(1, -1, 1, 1)).astype(dt)
        return out[0] if single else out

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class RandomCrop:
    """Zero-pad by ``padding`` on every side, then cut a random ``size`` window."""

    def __init__(self, size, padding=0):
        self.size = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
        self.padding = int(padding)

    def __call__(self, x, generator=None):
        xb, single = _as_batch(x, repr(self))
        rng = get_rng(generator)
        p = self.padding
        h, w = self.size
        padded = np.pad(xb, ((0, 0), (0, 0), (p, p), (p, p)))
        H, W = padded.shape[2:]
        if h > H or w > W:
            raise ValueError(f"{self!r}: crop {self.size} larger than the padded image "
                             f"{(H, W)}")
        tops = rng.integers(0, H - h + 1, size=xb.shape[0])
        lefts = rng.integers(0, W - w + 1, size=xb.shape[0])
        out = np.stack([padded[i, :, t:t + h, s:s + w] for i, (t, s) in enumerate(zip(tops, lefts))])
        return out[0] if single else out

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p=0.5):
        self.p = float(p)

    def __call__(self, x, generator=None):
        xb, single = _as_batch(x, repr(self))
        flip = get_rng(generator).random(xb.shape[0]) < self.p
        out = xb.copy()
        out[flip] = out[flip][..., ::-1]
        return out[0] if single else out

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"
