"""Exam items owned by the user-experience helper: loss-3 (paper 002 Q4 / A4)."""
import numpy as np
import pytest

from refdl import metrics


def count_directly(y_true, y_pred, pos=1):
    """TP, FP, TN, FN by walking over the examples one by one (no refdl)."""
    tp = fp = tn = fn = 0
    for t, p in zip(y_true.tolist(), y_pred.tolist()):
        if p == pos:
            tp, fp = (tp + 1, fp) if t == pos else (tp, fp + 1)
        else:
            tn, fn = (tn + 1, fn) if t != pos else (tn, fn + 1)
    return tp, fp, tn, fn


def test_loss_3_accuracy_precision_from_confusion_matrix():
    # the paper's formulas, on a small hand-checked example
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array([1, 0, 1, 1, 1, 0, 0, 1])
    cm = metrics.confusion_matrix(y, p)            # rows true, columns predicted
    assert cm.tolist() == [[2, 2], [1, 3]]          # TN=2 FP=2 / FN=1 TP=3
    tn, fp, fn, tp = cm.ravel()
    assert metrics.accuracy(y, p) == (tp + tn) / (tp + tn + fp + fn) == 5 / 8
    assert metrics.precision(y, p, average="binary") == tp / (tp + fp) == 3 / 5
    assert metrics.recall(y, p, average="binary") == tp / (tp + fn) == 3 / 4

    # the same identities on random data, confusion matrix vs direct counting
    rng = np.random.default_rng(3)
    for _ in range(20):
        yt = rng.integers(0, 2, 200)
        yp = np.where(rng.random(200) < 0.7, yt, 1 - yt)
        tp, fp, tn, fn = count_directly(yt, yp)
        assert metrics.binary_counts(yt, yp) == (tp, fp, tn, fn)
        cm = metrics.confusion_matrix(yt, yp, num_classes=2)
        assert cm.tolist() == [[tn, fp], [fn, tp]]
        assert metrics.accuracy(yt, yp) == pytest.approx((tp + tn) / (tp + tn + fp + fn), abs=0)
        assert metrics.precision(cm=cm, average="binary") == pytest.approx(tp / (tp + fp), abs=0)


def test_loss_3_accuracy_and_precision_differ_on_imbalanced_data():
    # 95 negatives, 5 positives; the classifier flags all 5 positives and 10 negatives
    y = np.array([0] * 95 + [1] * 5)
    p = np.array([1] * 10 + [0] * 85 + [1] * 5)
    tp, fp, tn, fn = count_directly(y, p)
    assert (tp, fp, tn, fn) == (5, 10, 85, 0)
    assert metrics.accuracy(y, p) == pytest.approx(0.90)        # (5 + 85) / 100
    assert metrics.precision(y, p, average="binary") == pytest.approx(1 / 3)   # 5 / 15
    # multi-class: accuracy = trace(C) / N = micro-averaged precision
    rng = np.random.default_rng(0)
    yt, yp = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    cm = metrics.confusion_matrix(yt, yp)
    assert metrics.accuracy(yt, yp) == pytest.approx(np.trace(cm) / 300)
    assert metrics.precision(yt, yp, average="micro") == pytest.approx(np.trace(cm) / 300)
