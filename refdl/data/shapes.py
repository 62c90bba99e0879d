r"""A generated data set of images of shapes, each object's bounding box and mask known.

Every image holds one object of a class in ``classes`` (square, circle, triangle) at a
random position and size, on a noisy background with a few small distractor specks. The
box is (x0, y0, x1, y1) in pixels, half-open (the object covers rows y0..y1-1 and columns
x0..x1-1); the mask marks the object's pixels. It is made for measuring how well a
saliency or class-activation map localises the object (pointing game, IoU). Nothing is
downloaded: the images are drawn from a ``numpy.random.Generator``.

    ds = make_shapes(600, size=32, generator=np.random.default_rng(0))
    ds.images (600, 1, 32, 32) float32, ds.labels (600,), ds.boxes (600, 4), ds.masks
"""
import numpy as np

from ..random import get_rng

__all__ = ["SHAPE_CLASSES", "ShapesDataset", "make_shapes", "draw_shape"]

SHAPE_CLASSES = ("square", "circle", "triangle")


def draw_shape(kind, size, cx, cy, r):
    """A boolean (size, size) mask of a shape of half-width ``r`` centred at (cx, cy)."""
    yy, xx = np.mgrid[0:size, 0:size]
    dx, dy = xx - cx, yy - cy
    if kind == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if kind == "circle":
        return dx ** 2 + dy ** 2 <= (r + 0.5) ** 2
    if kind == "triangle":        # apex up: |dx| grows linearly from apex to base
        t = (dy + r) / (2.0 * r)
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= t * r + 0.5)
    raise ValueError(f"draw_shape: unknown shape {kind!r}; expected one of {SHAPE_CLASSES}")


class ShapesDataset:
    """``ds[i] -> (image (1, H, W), label)``; ``.boxes``, ``.masks`` for localisation."""

    def __init__(self, images, labels, boxes, masks, classes):
        self.images, self.labels, self.boxes, self.masks = images, labels, boxes, masks
        self.classes = tuple(classes)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def __repr__(self):
        return (f"ShapesDataset(n={len(self)}, size={self.images.shape[-1]}, "
                f"classes={self.classes})")


def make_shapes(n, size=32, classes=SHAPE_CLASSES, min_radius=3, max_radius=6, noise=0.15,
                specks=3, dtype=np.float32, generator=None):
    """Draw ``n`` images (N, 1, size, size), one object each, labels balanced round-robin."""
    rng = get_rng(generator)
    n, size = int(n), int(size)
    if n <= 0:
        raise ValueError(f"make_shapes: n must be positive, got {n}")
    if not 1 <= min_radius <= max_radius or 2 * max_radius + 2 > size:
        raise ValueError(f"make_shapes: need 1 <= min_radius <= max_radius and "
                         f"2*max_radius + 2 <= size, got radii ({min_radius}, {max_radius}) "
                         f"for size {size}")
    for c in classes:
        if c not in SHAPE_CLASSES:
            raise ValueError(f"make_shapes: unknown class {c!r}; expected {SHAPE_CLASSES}")
    images = np.empty((n, 1, size, size), dtype=dtype)
    masks = np.empty((n, size, size), dtype=bool)
    boxes = np.empty((n, 4), dtype=np.int64)
    labels = np.arange(n) % len(classes)
    rng.shuffle(labels)
    for i in range(n):
        r = int(rng.integers(min_radius, max_radius + 1))
        cx = int(rng.integers(r + 1, size - r - 1))
        cy = int(rng.integers(r + 1, size - r - 1))
        m = draw_shape(classes[labels[i]], size, cx, cy, r)
        img = noise * rng.standard_normal((size, size))
        for _ in range(specks):                       # 2x2 distractors, off the object
            sx, sy = rng.integers(0, size - 1, 2)
            if not m[sy:sy + 2, sx:sx + 2].any():
                img[sy:sy + 2, sx:sx + 2] += rng.uniform(0.5, 1.0)
        img[m] += rng.uniform(0.7, 1.0)
        ys, xs = np.nonzero(m)
        boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        images[i, 0] = img
        masks[i] = m
    return ShapesDataset(images, labels.astype(np.int64), boxes, masks, classes)
