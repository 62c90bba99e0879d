"""Generated videos of moving shapes (no download): the data of the video U-Net (refdl.models.unet.video_unet).

Each video shows one to ``max_shapes`` coloured squares and discs on a dark background,
each moving in a straight line with constant velocity and bouncing off the frame edges.
The layout is PyTorch's for 3-D convolution, (C, T, H, W): channels, frames, height, width,
values in [0, 1], float32. A video as X in R^{f x h x w x c} (frames, height, width,
channels) with f = 10, h = w = 32, c = 3 is ``moving_shapes(n)[i].transpose(1, 2, 3, 0)``.
"""
import numpy as np

from ..random import get_rng

__all__ = ["moving_shapes", "MovingShapes"]


def moving_shapes(n, frames=10, size=32, channels=3, max_shapes=2, min_radius=None,
                  max_radius=None, generator=None, dtype=np.float32):
    """``n`` videos as an array (n, channels, frames, size, size) with values in [0, 1].

    Shapes: squares and discs of radius ``min_radius``..``max_radius`` pixels (default
    size/8 .. size/4), random colour (bright in at least one channel; grey for one
    channel), random start inside the frame and velocity of 1..size/8 pixels per frame.
    Randomness from ``generator`` (or refdl's default generator).
    """
    rng = get_rng(generator)
    n, frames, size, channels = int(n), int(frames), int(size), int(channels)
    if min(n, frames, size, channels) <= 0:
        raise ValueError(f"moving_shapes: n, frames, size and channels must be positive, got "
                         f"({n}, {frames}, {size}, {channels})")
    rmin = max(1, size // 8) if min_radius is None else int(min_radius)
    rmax = max(rmin, size // 4) if max_radius is None else int(max_radius)
    vmax = max(1.0, size / 8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    out = np.zeros((n, channels, frames, size, size), dtype=dtype)
    for i in range(n):
        for _ in range(int(rng.integers(1, max_shapes + 1))):
            r = float(rng.integers(rmin, rmax + 1))
            pos = rng.uniform(r, size - r, 2)
            ang = rng.uniform(0, 2 * np.pi)
            vel = rng.uniform(1.0, vmax) * np.array([np.sin(ang), np.cos(ang)])
            colour = rng.uniform(0.2, 1.0, channels)
            colour[int(rng.integers(channels))] = 1.0
            square = bool(rng.integers(2))
            for t in range(frames):
                cy, cx = pos
                if square:
                    mask = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
                else:
                    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                for c in range(channels):
                    out[i, c, t][mask] = colour[c]
                pos = pos + vel
                for k in range(2):            # bounce off the edges
                    if pos[k] < r:
                        pos[k], vel[k] = 2 * r - pos[k], -vel[k]
                    elif pos[k] > size - r:
                        pos[k], vel[k] = 2 * (size - r) - pos[k], -vel[k]
    return out


class MovingShapes:
    """A dataset of ``n`` generated videos; item i is ``(video, video)`` (input = target
    of a reconstruction auto-encoder), each of shape (channels, frames, size, size)."""

    def __init__(self, n=64, frames=10, size=32, channels=3, seed=0, **kwargs):
        self.videos = moving_shapes(n, frames, size, channels,
                                    generator=np.random.default_rng(seed), **kwargs)

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, i):
        v = self.videos[i]
        return v, v
