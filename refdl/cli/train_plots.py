"""The PNG figures ``refdl train`` writes next to its checkpoint (matplotlib is imported
only when a figure is drawn)."""
import numpy as np


def write_classifier_plots(args, model, history, ev, out, img, xte, yte):
    """Draw a classifier run's figures into ``out``; returns the files written: the
    history, the confusion matrix, test images (or 2-D decision regions), the first
    feature maps and the first layer's weights where those are pictures."""
    from .. import plot

    files = [plot.plot_history(history, out / "history.png",
                               title=f"{args.model} on {args.dataset} "
                                     "(validation split of the training data)"),
             plot.plot_confusion_matrix(ev["confusion"], out / "confusion.png")]
    if img is not None:
        n = min(36, len(yte))
        xs = xte[:n].reshape((n,) + tuple(img))
        files.append(plot.plot_samples(xs, out / "samples.png", labels=yte[:n],
                                       preds=ev["y_pred"][:n], title="test images"))
        if np.any(ev["y_pred"] != yte):      # the ones it got wrong, wherever they are
            files.append(plot.plot_misclassified(
                xte.reshape((len(yte),) + tuple(img)), yte, ev["y_pred"],
                out / "misclassified.png"))
    elif xte.ndim == 2 and xte.shape[1] == 2:    # 2-D points: the decision regions
        files.append(plot.plot_decision_boundary(model, xte, yte,
                                                 out / "decision_boundary.png",
                                                 title=f"{args.model} on {args.dataset} "
                                                 "(test points)"))
    maps = first_feature_maps(model, xte[:1])
    if maps is not None:
        files.append(plot.plot_feature_maps(maps, out / "feature_maps.png",
                                            title="first feature maps (one test image)"))
    first = _first_weight_as_pictures(model, img)
    if first is not None:
        shape = tuple(img[1:]) if first.data.ndim == 2 else None
        files.append(plot.plot_filters(first, out / "filters.png", image_shape=shape))
    return files


def _first_weight_as_pictures(model, img):
    """The model's first parameter when it is a weight worth drawing as pictures (a Linear
    that sees the whole grey image, or a convolution's kernels), else None."""
    name0, first = next(iter(model.named_parameters()), (None, None))
    if name0 is None or not name0.endswith("weight") or img is None:
        return None
    if first.data.ndim == 4 or (first.data.ndim == 2 and img[0] == 1
                                and first.data.shape[1] == int(np.prod(img))):
        return first
    return None


def first_feature_maps(model, x):
    """The first (1, C, H, W) output (C > 1) of a leaf module on input ``x``, or None."""
    found = []
    leaves = [m for m in model.modules() if not list(m.children())]
    saved = []
    for m in leaves:
        fwd = m.forward

        def wrapped(*a, _fwd=fwd, **k):
            out = _fwd(*a, **k)
            if not found and isinstance(out, np.ndarray) and out.ndim == 4 and out.shape[1] > 1:
                found.append(out.copy())
            return out
        saved.append((m, "forward" in m.__dict__, fwd))
        object.__setattr__(m, "forward", wrapped)
    was = model.training
    try:
        model.eval()
        model(x)
    finally:
        model.train(was)
        for m, had, fwd in saved:
            if had:
                object.__setattr__(m, "forward", fwd)
            else:
                del m.__dict__["forward"]
    return found[0] if found else None


def plot_lm_history(hist, baseline, path, title):
    """Training loss per step, train/validation loss at the evaluations, bigram baseline."""
    from ..plot import _figure, _save

    fig = _figure(7, 4)
    ax = fig.subplots()
    loss = np.asarray(hist["loss"])
    if len(loss):
        steps = np.arange(1, len(loss) + 1)
        ax.plot(steps, loss, color="0.75", lw=0.8, label="training batch")
    ax.plot(hist["step"], hist["train_loss"], "o-", ms=3, label="train (fixed windows)")
    ax.plot(hist["step"], hist["val_loss"], "s-", ms=3, label="validation")
    ax.axhline(baseline, color="k", ls="--", lw=1,
               label=f"bigram baseline (validation) {baseline:.3f}")
    ax.set(xlabel="step", ylabel="cross-entropy (nats / character)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
