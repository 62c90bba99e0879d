r"""Classification metrics from labels, and from the confusion matrix.

The confusion matrix C (K x K) counts C[i, j] = #{examples with true class i predicted as
class j} (rows: truth, columns: prediction; scikit-learn's convention). For class k,

    TP_k = C[k, k]      FP_k = sum_i C[i, k] - C[k, k]      FN_k = sum_j C[k, j] - C[k, k]
    TN_k = N - TP_k - FP_k - FN_k

    accuracy    = trace(C) / N          (binary: (TP + TN) / (TP + TN + FP + FN))
    precision_k = TP_k / (TP_k + FP_k)  (of those predicted k, how many are k)
    recall_k    = TP_k / (TP_k + FN_k)  (of those that are k, how many were found)
    F1_k        = 2 precision_k recall_k / (precision_k + recall_k)

A ratio whose denominator is zero is reported as 0 (scikit-learn's ``zero_division=0``).
``average='macro'`` is the unweighted mean over classes, ``'micro'`` pools the counts
(equal to accuracy for single-label problems), ``None`` returns one value per class,
``'binary'`` the value for ``pos_label``.
"""
import numpy as np

__all__ = ["confusion_matrix", "accuracy", "precision", "recall", "f1_score",
           "precision_recall_f1", "binary_counts", "classification_report", "mode_coverage"]


def _labels(y_true, y_pred):
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == y_true.ndim + 1:          # scores / logits -> predicted class
        y_pred = y_pred.argmax(axis=-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"metrics: y_true has shape {y_true.shape} but y_pred has shape "
                         f"{y_pred.shape}")
    if not (np.issubdtype(y_true.dtype, np.integer) and np.issubdtype(y_pred.dtype, np.integer)):
        raise TypeError(f"metrics: labels must be integers, got {y_true.dtype} and {y_pred.dtype}")
    return y_true.ravel(), y_pred.ravel()


def confusion_matrix(y_true, y_pred, num_classes=None):
    """C[i, j] = number of examples of true class i predicted as j (int64, K x K).

    ``y_pred`` may be labels or scores of shape (N, K) (then argmax is taken).
    """
    t, p = _labels(y_true, y_pred)
    if t.size and (t.min() < 0 or p.min() < 0):
        raise ValueError("confusion_matrix: labels must be non-negative")
    k = int(num_classes) if num_classes is not None else \
        int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
    if t.size and max(t.max(), p.max()) >= k:
        raise ValueError(f"confusion_matrix: a label {int(max(t.max(), p.max()))} is out of "
                         f"range for num_classes={k}")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def _div(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b != 0)


def accuracy(y_true, y_pred):
    """Fraction of correct predictions (``y_pred`` labels or (N, K) scores)."""
    t, p = _labels(y_true, y_pred)
    return float(np.mean(t == p)) if t.size else 0.0


def binary_counts(y_true, y_pred, pos_label=1):
    """``(TP, FP, TN, FN)`` counted directly, treating ``pos_label`` as positive."""
    t, p = _labels(y_true, y_pred)
    tp = int(np.sum((p == pos_label) & (t == pos_label)))
    fp = int(np.sum((p == pos_label) & (t != pos_label)))
    tn = int(np.sum((p != pos_label) & (t != pos_label)))
    fn = int(np.sum((p != pos_label) & (t == pos_label)))
    return tp, fp, tn, fn


def _per_class(cm):
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    return tp, fp, fn


def _reduce(values, cm, average, pos_label, kind):
    if average is None:
        return values
    if average == "macro":
        return float(values.mean())
    if average == "binary":
        return float(values[pos_label])
    if average == "micro":
        tp, fp, fn = _per_class(cm)
        if kind == "precision":
            return float(_div(tp.sum(), tp.sum() + fp.sum()))
        if kind == "recall":
            return float(_div(tp.sum(), tp.sum() + fn.sum()))
        return float(_div(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()))
    raise ValueError(f"metrics: average must be 'macro', 'micro', 'binary' or None, "
                     f"got {average!r}")


def precision_recall_f1(y_true=None, y_pred=None, num_classes=None, average="macro",
                        pos_label=1, cm=None):
    """``(precision, recall, f1)`` from labels, or from a confusion matrix ``cm=``."""
    if cm is None:
        cm = confusion_matrix(y_true, y_pred, num_classes)
    tp, fp, fn = _per_class(cm)
    p = _div(tp, tp + fp)
    r = _div(tp, tp + fn)
    f = _div(2 * p * r, p + r)
    return (_reduce(p, cm, average, pos_label, "precision"),
            _reduce(r, cm, average, pos_label, "recall"),
            _reduce(f, cm, average, pos_label, "f1"))


def precision(y_true=None, y_pred=None, num_classes=None, average="macro", pos_label=1, cm=None):
    """TP / (TP + FP) per class, then averaged (see the module docstring)."""
    return precision_recall_f1(y_true, y_pred, num_classes, average, pos_label, cm)[0]


def recall(y_true=None, y_pred=None, num_classes=None, average="macro", pos_label=1, cm=None):
    """TP / (TP + FN) per class, then averaged."""
    return precision_recall_f1(y_true, y_pred, num_classes, average, pos_label, cm)[1]


def f1_score(y_true=None, y_pred=None, num_classes=None, average="macro", pos_label=1, cm=None):
    """2 P R / (P + R) per class, then averaged."""
    return precision_recall_f1(y_true, y_pred, num_classes, average, pos_label, cm)[2]


def classification_report(y_true, y_pred, num_classes=None, class_names=None):
    """A printable table of per-class precision, recall, F1 and support, with macro averages."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    p, r, f = precision_recall_f1(cm=cm, average=None)
    support = cm.sum(axis=1)
    names = class_names or [str(i) for i in range(len(cm))]
    w = max(8, max(len(n) for n in names))
    lines = [f"{'class':>{w}}  precision  recall     f1  support"]
    for i, n in enumerate(names):
        lines.append(f"{n:>{w}}  {p[i]:9.3f}  {r[i]:6.3f}  {f[i]:5.3f}  {support[i]:7d}")
    lines.append(f"{'macro':>{w}}  {p.mean():9.3f}  {r.mean():6.3f}  {f.mean():5.3f}  "
                 f"{support.sum():7d}")
    acc = float(np.trace(cm) / max(cm.sum(), 1))
    lines.append(f"{'accuracy':>{w}}  {acc:.4f}")
    return "\n".join(lines)


def mode_coverage(samples, centers, std, n_std=3.0, min_fraction=0.2):
    r"""How well samples of a generative model cover a Gaussian mixture with isotropic
    components of standard deviation ``std`` centred at ``centers`` (K, D).

    A sample is *high quality* when it lies within ``n_std`` std of its nearest centre
    (3 std by default). A mode is *covered* when it receives at least ``min_fraction`` of
    the high-quality samples it would get if all n samples were spread evenly over the K
    modes, i.e. at least max(min_fraction * n / K, 1) of them. The default threshold,
    20% of the fair share, is the one the GAN toys report; pass another to compare.

    Returns {'modes_covered': int, 'n_modes': K, 'high_quality': fraction of samples,
    'counts': high-quality samples per mode (K,)}.
    """
    samples = np.asarray(samples, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    if centers.ndim != 2 or samples.ndim != 2 or samples.shape[1] != centers.shape[1]:
        raise ValueError(f"mode_coverage: samples must have shape (n, {centers.shape[-1]}), "
                         f"got {tuple(samples.shape)}")
    if not std > 0:
        raise ValueError(f"mode_coverage: std must be positive, got {std!r}")
    d = np.sqrt(((samples[:, None, :] - centers[None]) ** 2).sum(-1))
    nearest = d.argmin(axis=1)
    good = d[np.arange(len(samples)), nearest] <= n_std * std
    counts = np.bincount(nearest[good], minlength=len(centers))
    need = min_fraction * len(samples) / len(centers)
    return {"modes_covered": int(np.sum(counts >= max(need, 1))), "n_modes": len(centers),
            "high_quality": float(good.mean()) if len(samples) else 0.0, "counts": counts}
