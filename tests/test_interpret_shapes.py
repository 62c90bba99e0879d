"""Localisation on the generated shapes: a small CNN is trained, every map is scored."""
import numpy as np
import pytest

from refdl import nn
from refdl.gradcheck import check_module
from refdl.interpret.experiment import GlobalAvgPool2d


def test_global_avg_pool_gradcheck():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    check_module(GlobalAvgPool2d(), x)


@pytest.mark.skipif(not (hasattr(nn, "Conv2d") and hasattr(nn, "MaxPool2d")),
                    reason="refdl.nn.Conv2d / MaxPool2d not merged yet")
def test_trained_cnn_maps_localise_the_shapes(tmp_path):
    from refdl.interpret.experiment import run_shapes_experiment
    out = run_shapes_experiment(n_train=300, n_test=48, epochs=4, seed=0,
                                png=tmp_path / "cams.png")
    t = out["table"]
    print(out["accuracy"], {k: tuple(round(v, 3) for v in vals) for k, vals in t.items()})
    assert out["accuracy"] > 0.8
    assert (tmp_path / "cams.png").stat().st_size > 1000
    for method in ("Grad-CAM", "Grad-CAM++ (closed form)", "Grad-CAM++ (exact derivatives)"):
        assert t[method][0] > t["baseline: random"][0]
        assert t[method][0] > t["baseline: centre"][0]
    assert t["paper 000 formula, f = S"][0] == 0.0 or t["paper 000 formula, f = S"][0] < 0.5
