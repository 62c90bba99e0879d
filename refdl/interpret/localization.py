r"""Measuring how well a map localises the object: upsampling, pointing game, IoU.

* Pointing game (Zhang et al. 2016): a hit when the map's maximum (after upsampling to the
  image) falls inside the object's box; the score is the fraction of hits. A map that is
  identically 0 points nowhere and counts as a miss.
* IoU of the thresholded map: the pixels where map >= ``threshold`` * max(map) against the
  box (or mask) pixels, |P & B| / |P | B|.
"""
import numpy as np
from scipy import ndimage

__all__ = ["upsample", "normalize", "pointing_game", "iou_at_threshold", "box_mask"]


def upsample(maps, size):
    """Bilinear upsampling (N, h, w) -> (N, H, W), pixel centres aligned (align_corners=False)."""
    maps = np.asarray(maps, dtype=np.float64)
    H, W = (size, size) if np.isscalar(size) else size
    n, h, w = maps.shape
    return ndimage.zoom(maps, (1, H / h, W / w), order=1, mode="nearest", grid_mode=True)


def normalize(maps):
    """Each map scaled to [0, 1] by its maximum (a zero map stays zero)."""
    maps = np.maximum(np.asarray(maps, dtype=np.float64), 0)
    m = maps.max(axis=(1, 2), keepdims=True)
    return np.where(m > 0, maps / np.where(m > 0, m, 1.0), 0.0)


def box_mask(boxes, size):
    """(N, H, W) boolean masks of half-open boxes (x0, y0, x1, y1)."""
    H, W = (size, size) if np.isscalar(size) else size
    yy, xx = np.mgrid[0:H, 0:W]
    b = np.asarray(boxes)[:, :, None, None]
    return (xx >= b[:, 0]) & (xx < b[:, 2]) & (yy >= b[:, 1]) & (yy < b[:, 3])


def pointing_game(maps, boxes, size, tolerance=0):
    """Fraction of images whose (upsampled) map peaks inside the box (+- ``tolerance`` px)."""
    up = upsample(maps, size)
    hits = []
    for m, (x0, y0, x1, y1) in zip(up, np.asarray(boxes)):
        if not np.any(m > 0):
            hits.append(False)
            continue
        i, j = np.unravel_index(np.argmax(m), m.shape)
        hits.append(x0 - tolerance <= j < x1 + tolerance and y0 - tolerance <= i < y1 + tolerance)
    return float(np.mean(hits))


def iou_at_threshold(maps, boxes, size, threshold=0.5, masks=None):
    """Mean IoU of {map >= threshold * max} with the boxes (or ``masks`` when given)."""
    up = normalize(upsample(maps, size))
    pred = (up >= threshold) & (up > 0)
    target = box_mask(boxes, size) if masks is None else np.asarray(masks, dtype=bool)
    inter = np.sum(pred & target, axis=(1, 2))
    union = np.sum(pred | target, axis=(1, 2))
    return float(np.mean(inter / np.maximum(union, 1)))
