"""Figures written to PNG files with matplotlib's Agg canvas (no window, no global backend
change): training curves, confusion matrices, first-layer filters, feature maps, sample
grids, gradient-norm profiles and the gradient-check report.

Every function takes the data and a ``path``, writes the file (creating its folder) and
returns the path.
"""
import math
from pathlib import Path

import numpy as np

__all__ = ["plot_history", "plot_confusion_matrix", "plot_filters", "plot_feature_maps",
           "plot_samples", "plot_grad_norms", "plot_gradcheck", "grad_norms"]


def _figure(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_history(history, path, title=None):
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


def plot_confusion_matrix(cm, path, class_names=None, normalize=False, title="confusion matrix"):
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


def _tiles(images, path, titles=None, cmap="gray", suptitle=None, symmetric=False):
    n = len(images)
    rows, cols = _grid(n)
    fig = _figure(1.1 * cols + 0.4, 1.1 * rows + (0.6 if suptitle else 0.2))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        if symmetric and img.ndim == 2:
            v = float(np.abs(img).max()) or 1.0
            ax.imshow(img, cmap="RdBu_r", vmin=-v, vmax=v)
        else:
            ax.imshow(img, cmap=None if img.ndim == 3 else cmap)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8,
                         color="C3" if titles[i].endswith(" !") else "black")
    if suptitle:
        fig.suptitle(suptitle)
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


def plot_filters(weight, path, image_shape=None, max_filters=64, title="first-layer filters"):
    """The first layer's weights as pictures (blue negative, red positive).

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
        return _tiles(imgs, path, suptitle=title, symmetric=True)
    if w.ndim == 4:
        imgs = [_to_hw(f) for f in w[:max_filters]]
        return _tiles(imgs, path, suptitle=title, symmetric=w.shape[1] != 3)
    raise ValueError(f"plot_filters: expected a 2-D (Linear) or 4-D (conv) weight, got shape "
                     f"{w.shape}")


def plot_feature_maps(maps, path, max_maps=32, title="feature maps"):
    """Channels of one activation (C, H, W) (or the first example of (N, C, H, W))."""
    m = np.asarray(maps)
    if m.ndim == 4:
        m = m[0]
    if m.ndim != 3:
        raise ValueError(f"plot_feature_maps: expected (C, H, W) or (N, C, H, W), got {maps.shape}")
    return _tiles(list(m[:max_maps]), path, titles=[f"ch {i}" for i in range(min(len(m), max_maps))],
                  cmap="viridis", suptitle=title)


def plot_samples(images, path, labels=None, preds=None, class_names=None, max_images=64,
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


def grad_norms(model):
    """[(name, ||grad||_2)] for every trainable parameter, in the model's order."""
    return [(n, float(np.linalg.norm(p.grad))) for n, p in model.named_parameters()
            if p.requires_grad]


def plot_grad_norms(model_or_norms, path, title="gradient norm per parameter"):
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


def plot_gradcheck(results, path, rtol=None, title="gradient check: max relative error"):
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
