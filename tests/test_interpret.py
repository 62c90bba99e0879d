"""refdl.interpret (saliency, Grad-CAM, Grad-CAM++) and refdl.data.shapes: API and errors."""
import numpy as np
import pytest

import refdl
from refdl import nn
from refdl.data.shapes import make_shapes
from refdl.gradcheck import numeric_gradient
from refdl.interpret import (box_mask, grad_cam, grad_cam_pp, head_after, iou_at_threshold,
                             pointing_game, saliency, save_overlays, to_engine, upsample)


def model_and_input():
    refdl.manual_seed(0)
    m = nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(2 * 3 * 3, 5), nn.Tanh(),
                      nn.Linear(5, 4)).to(np.float64)
    x = np.abs(np.random.default_rng(0).standard_normal((2, 2, 3, 3)))
    return m, x


def test_grad_cam_shapes_class_default_and_param_grads_untouched():
    m, x = model_and_input()
    before = [p.grad.copy() for p in m.parameters()]
    cam = grad_cam(m, x, "0")
    assert cam.shape == (2, 3, 3) and np.all(cam >= 0)
    with refdl.no_grad():
        predicted = np.argmax(m(x), axis=1)
    np.testing.assert_array_equal(cam, grad_cam(m, x, "0", predicted))
    for p, b in zip(m.parameters(), before):
        np.testing.assert_array_equal(p.grad, b)
    assert "forward" not in m[0].__dict__ and "backward" not in m[0].__dict__
    for mode in ("closed", "exact"):
        assert grad_cam_pp(m, x, "0", 1, derivatives=mode).shape == (2, 3, 3)
    assert grad_cam(m, x, m[0], 3).shape == (2, 3, 3)     # a module instead of a name


def test_saliency_is_abs_input_gradient_max_over_channels():
    m, x = model_and_input()
    s = saliency(m, x, 2)
    x0 = x.copy()
    num = numeric_gradient(lambda: m(x0)[:, 2].sum(), x0)
    np.testing.assert_allclose(s, np.abs(num).max(axis=1), rtol=1e-6)


def test_bad_layer_name_lists_the_available_layers():
    m, x = model_and_input()
    with pytest.raises(ValueError, match=r"no layer named 'conv9'; available layers: "
                                         r"'0' \(Identity\), '1' \(Flatten\)"):
        grad_cam(m, x, "conv9")
    with pytest.raises(ValueError, match="needs feature maps"):
        grad_cam(m, x, "2")


def test_class_index_out_of_range():
    m, x = model_and_input()
    with pytest.raises(IndexError, match=r"class index 4 is out of range for a model with 4 "
                                         r"classes .* valid indices are 0\.\.3"):
        grad_cam(m, x, "0", 4)
    with pytest.raises(IndexError, match="class index -1"):
        grad_cam_pp(m, x, "0", [0, -1])
    with pytest.raises(ValueError, match="'closed' or 'exact'"):
        grad_cam_pp(m, x, "0", 0, derivatives="numeric")


def test_head_after_nested_sequential_and_to_engine_errors():
    refdl.manual_seed(1)
    inner = nn.Sequential(nn.Identity(), nn.ReLU())
    m = nn.Sequential(inner, nn.Flatten(), nn.Linear(8, 2)).to(np.float64)
    head = head_after(m, "0.0")
    assert [type(k).__name__ for k in head] == ["ReLU", "Flatten", "Linear"]
    x = np.random.default_rng(2).standard_normal((3, 2, 2, 2))
    np.testing.assert_allclose(to_engine(head)(refdl.autograd.Tensor(x)).data, m(x),
                               rtol=1e-14)
    with pytest.raises(NotImplementedError, match="no engine translation for Softmax"):
        to_engine(nn.Softmax(dim=1))


def test_shapes_dataset_boxes_masks_and_determinism():
    a = make_shapes(12, size=24, generator=np.random.default_rng(7))
    b = make_shapes(12, size=24, generator=np.random.default_rng(7))
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (12, 1, 24, 24) and a.images.dtype == np.float32
    assert sorted(np.bincount(a.labels)) == [4, 4, 4]
    inside = box_mask(a.boxes, 24)
    assert np.all(a.masks <= inside)                   # every object pixel is in its box
    for m, (x0, y0, x1, y1) in zip(a.masks, a.boxes):  # and the box is tight
        assert m[y0].any() and m[y1 - 1].any() and m[:, x0].any() and m[:, x1 - 1].any()
    with pytest.raises(ValueError, match="unknown class 'star'"):
        make_shapes(3, classes=("star",))
    with pytest.raises(ValueError, match="max_radius"):
        make_shapes(3, size=8, max_radius=6)


def test_pointing_game_and_iou_on_known_maps():
    boxes = np.array([[2, 2, 6, 6], [0, 0, 2, 2]])
    maps = np.zeros((2, 8, 8))
    maps[0, 3, 3] = 1.0          # inside box 0
    maps[1, 7, 7] = 1.0          # outside box 1
    assert pointing_game(maps, boxes, 8) == 0.5
    perfect = box_mask(boxes, 8).astype(float)
    assert iou_at_threshold(perfect, boxes, 8) == 1.0
    assert pointing_game(np.zeros((2, 8, 8)), boxes, 8) == 0.0     # a zero map misses
    up = upsample(np.ones((1, 2, 2)), 8)
    assert up.shape == (1, 8, 8) and np.allclose(up, 1.0)


def test_save_overlays_writes_a_png(tmp_path):
    ds = make_shapes(3, size=16, min_radius=2, max_radius=4, generator=np.random.default_rng(0))
    maps = {"Grad-CAM": np.random.default_rng(1).random((3, 4, 4)),
            "Grad-CAM++": np.random.default_rng(2).random((3, 4, 4))}
    path = save_overlays(tmp_path / "cams.png", ds.images, maps, boxes=ds.boxes)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_running_statistics_are_not_changed_by_grad_cam():
    refdl.manual_seed(0)
    m = nn.Sequential(nn.BatchNorm2d(2, dtype=np.float64), nn.Identity(), nn.Flatten(),
                      nn.Linear(18, 3)).to(np.float64)
    x = np.random.default_rng(0).standard_normal((4, 2, 3, 3))
    before = {k: v.copy() for k, v in m.state_dict().items()}
    grad_cam(m, x, "1")                      # training mode: a forward would update stats
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
