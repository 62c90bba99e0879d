"""refdl.plot writes valid PNG files for every figure."""
import numpy as np
import pytest

import refdl
from refdl import nn, plot
from refdl.gradcheck import check_module

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(p):
    data = open(p, "rb").read()
    return data[:8] == PNG and len(data) > 1000


def test_history_and_confusion(tmp_path):
    h = {"epoch": [1, 2, 3], "loss": [1.0, 0.5, 0.3], "accuracy": [0.5, 0.8, 0.9],
         "val_loss": [1.1, 0.6, 0.4], "val_accuracy": [0.4, 0.7, 0.85]}
    assert is_png(plot.plot_history(h, tmp_path / "sub" / "h.png", title="t"))
    assert is_png(plot.plot_history({"loss": [3.0, 2.0], "accuracy": [np.nan, np.nan],
                                     "lr": [0.1, 0.05]}, tmp_path / "h2.png"))
    cm = np.array([[5, 1], [2, 7]])
    assert is_png(plot.plot_confusion_matrix(cm, tmp_path / "c.png", ["cat", "dog"]))
    assert is_png(plot.plot_confusion_matrix(cm, tmp_path / "cn.png", normalize=True))


def test_filters_maps_samples(tmp_path):
    rng = np.random.default_rng(0)
    assert is_png(plot.plot_filters(nn.Linear(64, 10).weight, tmp_path / "f.png"))
    assert is_png(plot.plot_filters(rng.standard_normal((6, 3, 5, 5)), tmp_path / "f3.png"))
    assert is_png(plot.plot_filters(rng.standard_normal((6, 2, 3, 3)), tmp_path / "f2.png"))
    with pytest.raises(ValueError, match="square"):
        plot.plot_filters(rng.standard_normal((4, 10)), tmp_path / "x.png")
    assert is_png(plot.plot_feature_maps(rng.random((2, 5, 6, 6)), tmp_path / "m.png"))
    x = rng.random((9, 1, 8, 8))
    y = np.arange(9)
    assert is_png(plot.plot_samples(x, tmp_path / "s.png", labels=y, preds=(y + 1) % 9))
    assert is_png(plot.plot_samples(rng.random((4, 3, 8, 8)), tmp_path / "rgb.png"))
    assert is_png(plot.plot_samples(rng.random((4, 64)), tmp_path / "flat.png", labels=y[:4]))


def test_grad_norms_and_gradcheck_chart(tmp_path):
    refdl.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    x = np.ones((2, 4), np.float32)
    m(x)
    m.backward(np.ones((2, 2), np.float32))
    norms = plot.grad_norms(m)
    assert [n for n, _ in norms] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert norms[3][1] == pytest.approx(2 * np.sqrt(2))
    assert is_png(plot.plot_grad_norms(m, tmp_path / "g.png"))
    r = check_module(nn.Linear(3, 2), np.random.default_rng(0).standard_normal((2, 3)))
    assert is_png(plot.plot_gradcheck(r, tmp_path / "gc.png"))
    assert is_png(plot.plot_gradcheck({"Linear": r, "again": r}, tmp_path / "gc2.png"))
