"""Figures drawn on matplotlib's Agg canvas (no window, no global backend change):
training curves, confusion matrices, first-layer filters, feature maps (with colorbars),
sample grids, the misclassified images, decision boundaries of 2-D classifiers,
gradient-norm profiles and the gradient-check report.

Every function takes the data and an optional ``path``. With a path it writes the PNG
(creating its folder) and returns the path; without one it returns the
``matplotlib.figure.Figure``, which a notebook shows inline (``%matplotlib inline``, or
``display(fig)``) and ``fig.savefig(...)`` writes later.
"""
import math
from pathlib import Path

import numpy as np

__all__ = ["plot_history", "plot_confusion_matrix", "plot_filters", "plot_feature_maps",
           "plot_samples", "plot_misclassified", "plot_decision_boundary", "plot_heatmaps",
           "plot_grad_norms", "plot_gradcheck", "grad_norms"]


def _figure(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path, tight=True):
    """Write ``fig`` to ``path`` and return the path, or return the figure when path is None."""
    if tight:
        fig.tight_layout()
    if path is None:
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_history(history, path=None, title=None):
    """Loss (left) and accuracy (right) per epoch, training and validation."""
    fig = _figure(9, 3.5)
    ax1, ax2 = fig.subplots(1, 2)
    ep = history.get("epoch") or list(range(1, len(history["loss"]) + 1))
    ax1.plot(ep, history["loss"], "o-", label="train", ms=3)
    if history.get("val_loss"):
        ax1.plot(ep, history["val_loss"], "s-", label="validation", ms=3)
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    has_acc = any(np.isfinite(history.get("accuracy") or [np.nan]))
    if has_acc:
        ax2.plot(ep, 100 * np.asarray(history["accuracy"]), "o-", label="train", ms=3)
        if history.get("val_accuracy"):
            ax2.plot(ep, 100 * np.asarray(history["val_accuracy"]), "s-", label="validation",
                     ms=3)
        ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
        ax2.legend()
    else:
        ax2.plot(ep, history.get("lr", [np.nan] * len(ep)), "o-", ms=3)
        ax2.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion_matrix(cm, path=None, class_names=None, normalize=False, title="confusion matrix"):
    """Rows: true class, columns: predicted class; counts (or row fractions) in the cells."""
    cm = np.asarray(cm)
    k = len(cm)
    vals = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    fig = _figure(1.2 + 0.45 * k, 1.0 + 0.45 * k)
    ax = fig.subplots()
    im = ax.imshow(vals, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    names = class_names or [str(i) for i in range(k)]
    ax.set_xticks(range(k), names, rotation=90 if k > 10 else 0)
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    hi = vals.max() if vals.size else 0
    if k <= 20:
        for i in range(k):
            for j in range(k):
                txt = f"{vals[i, j]:.2f}" if normalize else str(int(cm[i, j]))
                ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                        color="white" if vals[i, j] > hi / 2 else "black")
    return _save(fig, path)


def _grid(n):
    cols = int(math.ceil(math.sqrt(n)))
    return int(math.ceil(n / cols)), cols


def _tiles(images, path, titles=None, cmap="gray", suptitle=None, symmetric=False,
           colorbar=False, label=None):
    """A grid of images. With ``colorbar`` every grey-level tile shares one colour scale
    (symmetric about 0 in blue-white-red when ``symmetric``) and one colorbar, so tiles
    can be compared with each other and read off in the data's units."""
    n = len(images)
    rows, cols = _grid(n)
    fig = _figure(1.1 * cols + (1.2 if colorbar else 0.4), 1.1 * rows + (0.6 if suptitle else 0.2))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    flat = [np.asarray(im, dtype=np.float64) for im in images if np.ndim(im) == 2]
    lo = min((float(im.min()) for im in flat), default=0.0)
    hi = max((float(im.max()) for im in flat), default=1.0)
    if symmetric:
        v = max(abs(lo), abs(hi)) or 1.0
        lo, hi = -v, v
    elif hi <= lo:
        hi = lo + 1.0
    mappable = None
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        if img.ndim == 2 and (colorbar or symmetric):
            shared = dict(vmin=lo, vmax=hi) if colorbar else \
                dict(vmin=-(float(np.abs(img).max()) or 1.0), vmax=float(np.abs(img).max()) or 1.0)
            mappable = ax.imshow(img, cmap="RdBu_r" if symmetric else cmap, **shared)
        else:
            ax.imshow(img, cmap=None if img.ndim == 3 else cmap)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8,
                         color="C3" if titles[i].endswith(" !") else "black")
    if suptitle:
        fig.suptitle(suptitle)
    if colorbar and mappable is not None:
        w_in = fig.get_figwidth()
        right = 1 - 1.0 / w_in                 # leave ~1 inch for the bar and its labels
        fig.tight_layout(rect=(0, 0, right, 1))
        cax = fig.add_axes((right + 0.1 / w_in, 0.15, 0.15 / w_in, 0.7))
        cb = fig.colorbar(mappable, cax=cax)
        if label:
            cb.set_label(label)
        return _save(fig, path, tight=False)
    return _save(fig, path)


def _to_hw(img):
    """(C, H, W) or (H, W) -> something imshow takes: (H, W) or (H, W, 3) in [0, 1]."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 3 and img.shape[0] == 1:
        return img[0]
    if img.ndim == 3 and img.shape[0] == 3:
        img = img.transpose(1, 2, 0)
        lo, hi = img.min(), img.max()
        return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    if img.ndim == 3:
        return img.mean(axis=0)
    return img


def plot_filters(weight, path=None, image_shape=None, max_filters=64, title="first-layer filters"):
    """The first layer's weights as pictures (blue negative, red positive, one shared scale
    with its colorbar).

    ``weight``: a Parameter or array, either a Linear weight (out, in) whose rows are
    reshaped to ``image_shape`` (default: the square sqrt(in) x sqrt(in)), or a conv
    weight (C_out, C_in, kH, kW) (RGB when C_in = 3, else the mean over input channels).
    """
    w = np.asarray(getattr(weight, "data", weight), dtype=np.float64)
    if w.ndim == 2:
        if image_shape is None:
            side = int(round(math.sqrt(w.shape[1])))
            if side * side != w.shape[1]:
                raise ValueError(f"plot_filters: cannot show rows of length {w.shape[1]} as "
                                 "square images; pass image_shape")
            image_shape = (side, side)
        imgs = [r.reshape(image_shape) for r in w[:max_filters]]
        return _tiles(imgs, path, suptitle=title, symmetric=True, colorbar=True,
                      label="weight")
    if w.ndim == 4:
        imgs = [_to_hw(f) for f in w[:max_filters]]
        return _tiles(imgs, path, suptitle=title, symmetric=w.shape[1] != 3,
                      colorbar=w.shape[1] != 3, label="weight")
    raise ValueError(f"plot_filters: expected a 2-D (Linear) or 4-D (conv) weight, got shape "
                     f"{w.shape}")


def plot_feature_maps(maps, path=None, max_maps=32, title="feature maps"):
    """Channels of one activation (C, H, W) (or the first example of (N, C, H, W)), on one
    shared colour scale with its colorbar."""
    m = np.asarray(maps)
    if m.ndim == 4:
        m = m[0]
    if m.ndim != 3:
        raise ValueError(f"plot_feature_maps: expected (C, H, W) or (N, C, H, W), got {maps.shape}")
    return _tiles(list(m[:max_maps]), path, titles=[f"ch {i}" for i in range(min(len(m), max_maps))],
                  cmap="viridis", suptitle=title, colorbar=True, label="activation")


def plot_samples(images, path=None, labels=None, preds=None, class_names=None, max_images=64,
                 title=None):
    """A grid of images (N, C, H, W), (N, H, W) or flat squares (N, H*W), titled with labels
    (and predictions: 'p=3 (t=5)', a wrong one marked with '!' in red)."""
    x = np.asarray(images)
    if x.ndim == 2:
        side = int(round(math.sqrt(x.shape[1])))
        if side * side != x.shape[1]:
            raise ValueError(f"plot_samples: flat rows of length {x.shape[1]} are not square")
        x = x.reshape(-1, side, side)
    x = x[:max_images]
    name = (lambda c: class_names[int(c)]) if class_names else (lambda c: str(int(c)))
    titles = None
    if labels is not None and preds is not None:
        titles = [f"p={name(p)} (t={name(t)})" + ("" if p == t else " !")
                  for t, p in zip(labels, preds)]
    elif labels is not None:
        titles = [name(t) for t in labels]
    return _tiles([_to_hw(i) for i in x], path, titles=titles, suptitle=title)


def plot_misclassified(images, labels, preds, path=None, class_names=None, max_images=36,
                       title=None):
    """The images the model got wrong (not the first N of the test set): 'p=3 (t=5)' over
    each. ``images`` as for :func:`plot_samples`; raises ValueError when nothing is wrong."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    wrong = np.flatnonzero(labels != preds)
    if len(wrong) == 0:
        raise ValueError("plot_misclassified: every prediction is right; nothing to show")
    pick = wrong[:max_images]
    title = title or f"misclassified: {len(wrong)} of {len(labels)} (showing {len(pick)})"
    return plot_samples(np.asarray(images)[pick], path, labels=labels[pick], preds=preds[pick],
                        class_names=class_names, max_images=max_images, title=title)


def plot_decision_boundary(model, x, y, path=None, resolution=200, margin=0.5,
                           title="decision regions"):
    """The class a 2-D classifier predicts at every point of the plane (filled regions),
    the points (x, y) on top, the misclassified ones circled in red.

    ``model``: a refdl Module (run in eval mode, its training flag restored) or any
    callable mapping (M, 2) points to (M, K) scores.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"plot_decision_boundary: expected 2-D points of shape (N, 2), got "
                         f"{x.shape}")
    lo, hi = x.min(axis=0) - margin, x.max(axis=0) + margin
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], resolution),
                         np.linspace(lo[1], hi[1], resolution))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(x.dtype if x.dtype.kind == "f"
                                                              else np.float32)
    was = getattr(model, "training", None)
    if was is not None:
        model.eval()
    try:
        scores = np.concatenate([np.asarray(model(grid[i:i + 8192]))
                                 for i in range(0, len(grid), 8192)])
        pred_pts = np.asarray(model(x.astype(grid.dtype))).argmax(axis=1)
    finally:
        if was is not None:
            model.train(was)
    k = max(int(scores.shape[1]), int(y.max()) + 1)
    regions = scores.argmax(axis=1).reshape(gx.shape)
    fig = _figure(5.5, 4.8)
    ax = fig.subplots()
    from matplotlib.colors import ListedColormap
    colors = [f"C{i % 10}" for i in range(k)]
    ax.contourf(gx, gy, regions, levels=np.arange(k + 1) - 0.5, cmap=ListedColormap(colors),
                alpha=0.25)
    ax.contour(gx, gy, regions, levels=np.arange(k) + 0.5, colors="k", linewidths=0.6)
    for c in range(k):
        pts = x[y == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=8, color=colors[c], label=f"class {c}")
    bad = pred_pts != y
    if bad.any():
        ax.scatter(x[bad, 0], x[bad, 1], s=40, facecolors="none", edgecolors="red",
                   linewidths=1, label=f"wrong ({int(bad.sum())})")
    ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), xlabel="x₁", ylabel="x₂",
           title=f"{title}: {100 * (1 - bad.mean()):.1f}% right")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_heatmaps(images, maps, path=None, titles=None, boxes=None, alpha=0.5,
                  title=None):
    """Heat maps (Grad-CAM, saliency) over their images, one panel each, with a colorbar.

    ``images`` (N, C, H, W) or (N, H, W); ``maps`` (N, h, w), upsampled to the image and
    scaled to [0, 1] per map; ``boxes`` optional (x0, y0, x1, y1) per image.
    """
    from .interpret.overlay import save_overlays
    fig = save_overlays(None, images, maps, titles=titles, boxes=boxes, alpha=alpha)
    if title:
        fig.suptitle(title)
    return _save(fig, path, tight=False)


def grad_norms(model):
    """[(name, ||grad||_2)] for every trainable parameter, in the model's order."""
    return [(n, float(np.linalg.norm(p.grad))) for n, p in model.named_parameters()
            if p.requires_grad]


def plot_grad_norms(model_or_norms, path=None, title="gradient norm per parameter"):
    """Bar chart (log scale) of each parameter's gradient norm, input side on the left:
    vanishing gradients show as bars falling towards the input, exploding ones rising.
    Accepts a model (after a backward pass) or a list of (name, norm)."""
    items = grad_norms(model_or_norms) if hasattr(model_or_norms, "named_parameters") \
        else list(model_or_norms)
    if not items:
        raise ValueError("plot_grad_norms: nothing to plot (no trainable parameters)")
    names = [n for n, _ in items]
    vals = np.maximum(np.array([v for _, v in items], dtype=np.float64), 1e-30)
    fig = _figure(max(5, 0.35 * len(items) + 2), 4)
    ax = fig.subplots()
    ax.bar(range(len(vals)), vals, color=["C0" if "weight" in n else "C1" for n in names])
    ax.set_yscale("log")
    ax.set_xticks(range(len(vals)), names, rotation=90, fontsize=7)
    ax.set(ylabel="||dL/dθ||₂", title=title)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_gradcheck(results, path=None, rtol=None, title="gradient check: max relative error"):
    """Horizontal bars of each checked tensor's worst relative error (log scale), the
    tolerance as a dashed line; failures in red.

    ``results``: a ``refdl.gradcheck.GradcheckResult``, a list of them, or a dict
    name -> GradcheckResult (e.g. one per layer from ``refdl gradcheck``).
    """
    if isinstance(results, dict):
        pairs = list(results.items())
    elif isinstance(results, (list, tuple)):
        pairs = [(r.name, r) for r in results]
    else:
        pairs = [(results.name, results)]
    labels, errs, ok = [], [], []
    for name, r in pairs:
        for t in r.tensors:
            labels.append(f"{name}: {t.name}")
            errs.append(max(t.max_rel_error, 1e-17))
            ok.append(t.passed)
            rtol = rtol or t.rtol
    if not labels:
        raise ValueError("plot_gradcheck: no tensors in the results")
    rtol = rtol or 1e-7
    fig = _figure(7, 0.6 + 0.22 * len(labels))
    ax = fig.subplots()
    y = np.arange(len(labels))[::-1]
    ax.barh(y, errs, color=["C2" if o else "C3" for o in ok])
    ax.axvline(rtol, color="k", ls="--", lw=1, label=f"rtol = {rtol:g}")
    ax.set_xscale("log")
    ax.set_yticks(y, labels, fontsize=7)
    ax.set(xlabel="max relative error |a-n| / max(|a|+|n|, tiny)", title=title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)
