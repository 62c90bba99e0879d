r"""Localisation of saliency, Grad-CAM and Grad-CAM++ on the generated shapes data set.

A small CNN is trained to tell squares, circles and triangles apart
(refdl.data.shapes); every method then explains the true class of each test image and is
scored by the pointing game and by the IoU of its thresholded map with the object's box.
Two baselines calibrate the numbers: a centred Gaussian blob (where objects are on
average) and a random map.

    python -m experiments.gradcam_shapes [out.png]     # prints the table, writes overlays

The CNN (``make_cnn``): conv(1->8)-ReLU-maxpool, conv(8->16)-ReLU-maxpool,
conv(16->32)-ReLU (layer '7', 8x8 maps: the Grad-CAM layer), global max pooling,
Linear(32, 16)-Tanh-Linear(16, 3). (Global max pooling trains much faster than average
pooling here: an object covers a few of the 64 positions, and the average dilutes it.)
The tanh makes the score non-linear in the maps, so
Grad-CAM++'s closed form (first derivatives only) and its exact second/third derivatives
(refdl.autograd through the head) differ and are both measured.
"""
from typing import NamedTuple, Tuple

import numpy as np

from refdl import nn
from refdl.data.shapes import make_shapes
from refdl.functional import log_softmax
from refdl.interpret import (cam_from_weights, exp_score_derivatives, grad_cam_pp_weights,
                             grad_cam_weights, head_after, iou_at_threshold, pointing_game,
                             saliency, save_overlays, score_backward, score_derivatives,
                             to_engine)
from refdl.nn.module import Module
from refdl.optim import Adam
from refdl.train import check_finite, run_steps

__all__ = ["paper000_weights", "GlobalAvgPool2d", "GlobalMaxPool2d", "make_cnn", "train_cnn",
           "localisation_table", "pointing_by_class", "run_shapes_experiment"]


def paper000_weights(d1, d2):
    """Paper 000's formula: alpha_k = sum_ij (d1^ij / sum_pq d1^pq) d2^ij, (N, K).

    d1, d2: first and second diagonal derivatives of the score f used (raw S or exp S).
    A map whose gradients sum to 0 gets alpha 0 (the formula divides by that sum).
    """
    s = d1.sum(axis=(2, 3), keepdims=True)
    w = np.where(s != 0, d1 / np.where(s != 0, s, 1.0), 0.0)
    return np.sum(w * d2, axis=(2, 3))


class PoolCache(NamedTuple):
    """One call of GlobalAvgPool2d / GlobalMaxPool2d."""
    x_shape: Tuple[int, ...]        # (N, K, h, w)
    argmax: object = None           # (N, K) flat index of each map's maximum (max pool)


class GlobalAvgPool2d(Module):
    r"""y[n, k] = mean_ij x[n, k, i, j]: (N, K, h, w) -> (N, K).

    Backward: dL/dx[n, k, i, j] = g[n, k] / (h w) (each input entry has weight 1/hw).
    Translated to engine ops by :func:`refdl.interpret.to_engine` (by class name).
    """

    def forward(self, x):
        self.save_for_backward(PoolCache(x_shape=x.shape))
        return x.mean(axis=(2, 3))

    def backward(self, grad_out):
        x_shape = self.pop_saved().x_shape
        n, k, h, w = x_shape
        return np.broadcast_to(grad_out[:, :, None, None] / (h * w), x_shape).copy()


class GlobalMaxPool2d(Module):
    r"""y[n, k] = max_ij x[n, k, i, j]: (N, K, h, w) -> (N, K).

    Backward: dL/dx[n, k, i, j] = g[n, k] at the first (row-major) maximal position of map
    (n, k), 0 elsewhere. Piecewise linear: its second derivative is 0.
    Translated to engine ops (``ops.max`` over the flattened map) by ``to_engine``.
    """

    def forward(self, x):
        n, k = x.shape[:2]
        flat = x.reshape(n, k, -1)
        argmax = np.argmax(flat, axis=-1)
        self.save_for_backward(PoolCache(x_shape=x.shape, argmax=argmax))
        return np.take_along_axis(flat, argmax[..., None], axis=-1)[..., 0]

    def backward(self, grad_out):
        c = self.pop_saved()
        n, k = c.x_shape[:2]
        d = np.zeros((n, k, int(np.prod(c.x_shape[2:]))), dtype=grad_out.dtype)
        np.put_along_axis(d, c.argmax[..., None], grad_out[..., None], axis=-1)
        return d.reshape(c.x_shape)


def make_cnn(dtype=np.float32, generator=None):
    g = generator
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, dtype=dtype, generator=g), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, dtype=dtype, generator=g), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, dtype=dtype, generator=g), nn.ReLU(),
        GlobalMaxPool2d(),
        nn.Linear(32, 16, dtype=dtype, generator=g), nn.Tanh(),
        nn.Linear(16, 3, dtype=dtype, generator=g))


def train_cnn(model, images, labels, epochs=6, batch_size=32, lr=3e-3, generator=None):
    """Adam on the mean cross-entropy; returns the loss of every step."""
    rng = np.random.default_rng(0) if generator is None else generator
    opt = Adam(model.parameters(), lr=lr)
    n = len(labels)

    def batches():
        for _ in range(epochs):
            order = rng.permutation(n)
            for s in range(0, n, batch_size):
                yield order[s:s + batch_size]

    def step(i, idx):
        x, y = images[idx], labels[idx]
        logits = model(x)
        logp = log_softmax(logits, axis=1)
        loss = check_finite(-logp[np.arange(len(y)), y].mean(), i)
        d = np.exp(logp)
        d[np.arange(len(y)), y] -= 1.0
        opt.zero_grad()
        model.backward((d / len(y)).astype(logits.dtype))
        opt.step()
        return loss

    return run_steps(step, batches()).get("loss", [])


def _center_prior(n, size, h):
    yy, xx = np.mgrid[0:h, 0:h] + 0.5
    c = h / 2
    blob = np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2 * (h / 4) ** 2))
    return np.broadcast_to(blob, (n, h, h)).copy()


def localisation_table(model, ds, layer="7", threshold=0.5, generator=None):
    """{method: (pointing game, IoU@threshold)} for the true class of every image."""
    rng = np.random.default_rng(1) if generator is None else generator
    x, y, boxes = ds.images, ds.labels, ds.boxes
    size = x.shape[-1]
    _, idx, _, acts, grads = score_backward(model, x, y, layer)
    acts64, grads64 = acts.astype(np.float64), grads.astype(np.float64)
    head = to_engine(head_after(model, layer))
    s1, s2, s3 = score_derivatives(head, acts64, idx)
    y1, y2, y3 = exp_score_derivatives(s1, s2, s3)
    maps = {
        "saliency": saliency(model, x, y),
        "Grad-CAM": cam_from_weights(acts64, grad_cam_weights(grads64)),
        "Grad-CAM++ (closed form)": cam_from_weights(acts64, grad_cam_pp_weights(acts64,
                                                                                 grads64)[0]),
        "Grad-CAM++ (exact derivatives)": cam_from_weights(
            acts64, grad_cam_pp_weights(acts64, y1, y2, y3)[0]),
        "paper 000 formula, f = S": cam_from_weights(acts64, paper000_weights(s1, s2)),
        "paper 000 formula, f = exp S": cam_from_weights(acts64, paper000_weights(y1, y2)),
        "baseline: centre": _center_prior(len(y), size, acts.shape[-1]),
        "baseline: random": rng.random((len(y),) + acts.shape[-2:]),
    }
    table = {k: (pointing_game(m, boxes, size), iou_at_threshold(m, boxes, size, threshold))
             for k, m in maps.items()}
    return table, maps


def pointing_by_class(maps, ds):
    """{method: [pointing game of the images of class 0, 1, ...]}."""
    size = ds.images.shape[-1]
    return {k: [pointing_game(m[ds.labels == c], ds.boxes[ds.labels == c], size)
                for c in range(len(ds.classes))] for k, m in maps.items()}


def run_shapes_experiment(n_train=600, n_test=200, epochs=10, size=32, min_radius=3,
                          max_radius=6, lr=1e-2, seed=0, png=None):
    """Train the CNN on generated shapes, score every method; optionally write overlays."""
    rng = np.random.default_rng(seed)
    kw = dict(size=size, min_radius=min_radius, max_radius=max_radius, generator=rng)
    train = make_shapes(n_train, **kw)
    test = make_shapes(n_test, **kw)
    model = make_cnn(generator=rng)
    losses = train_cnn(model, train.images, train.labels, epochs=epochs, lr=lr,
                       generator=rng)
    model.eval()
    acc = float(np.mean(np.argmax(model(test.images), axis=1) == test.labels))
    table, maps = localisation_table(model, test)
    if png is not None:
        keep = ["saliency", "Grad-CAM", "Grad-CAM++ (closed form)",
                "Grad-CAM++ (exact derivatives)", "paper 000 formula, f = exp S"]
        save_overlays(png, test.images[:8], {k: maps[k][:8] for k in keep},
                      boxes=test.boxes[:8])
    return {"accuracy": acc, "final_loss": float(np.mean(losses[-10:])), "table": table,
            "by_class": pointing_by_class(maps, test), "classes": test.classes,
            "model": model, "test": test}


if __name__ == "__main__":    # pragma: no cover
    import sys
    out = run_shapes_experiment(png=sys.argv[1] if len(sys.argv) > 1 else "gradcam_shapes.png")
    print(f"test accuracy {out['accuracy']:.3f}, final training loss {out['final_loss']:.3f}")
    print(f"{'method':34s} pointing game   IoU@0.5   pointing game by class "
          f"{out['classes']}")
    for k, (pg, iou) in out["table"].items():
        by = ", ".join(f"{v:.2f}" for v in out["by_class"][k])
        print(f"{k:34s} {pg:13.3f} {iou:9.3f}   ({by})")
