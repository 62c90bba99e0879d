"""backward(g, input_grad=False): the parameters' gradients without dL/dx.

PyTorch computes no gradient for a model's data (it does not require grad), so its first
convolution skips the dx product and col2im. refdl's layers that accept ``input_grad``
(Linear, Conv1d/2d/3d, Sequential, the image models) do the same when asked; the trainer
asks. Each test compares the gradients with those of the full backward, bit for bit, on
every path a convolution can take.
"""
import warnings

import numpy as np
import pytest

import refdl
from refdl import ext, nn
from refdl.models import get_model
from refdl.nn.conv import WINOGRAD_MIN_CHANNELS
from refdl.train import fit
from refdl.data import DataLoader, TensorDataset


def _grads(model, x, g, **kw):
    """(returned value, {name: grad copy}) of one forward and backward(g, **kw)."""
    model.zero_grad()
    model(x)
    out = model.backward(g, **kw)
    return out, {n: p.grad.copy() for n, p in model.named_parameters()}


def _same_grads_without_dx(model, x):
    rng = np.random.default_rng(1)
    with refdl.no_grad():
        y = model(x)
    g = rng.standard_normal(y.shape).astype(x.dtype)
    dx, full = _grads(model, x, g)
    assert dx is not None and dx.shape == x.shape
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # no cache left behind (StaleCacheWarning)
        none, skipped = _grads(model, x, g, input_grad=False)
        assert none is None
        assert full.keys() == skipped.keys()
        for name in full:
            np.testing.assert_array_equal(skipped[name], full[name], err_msg=name)
        again, _ = _grads(model, x, g)           # and the next full backward still works
    np.testing.assert_array_equal(again, dx)


def _conv(rank, cin, cout, k, **kw):
    refdl.manual_seed(0)
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank](cin, cout, k, **kw)


def _winograd(conv):
    conv.algorithm = "winograd"
    return conv


CASES = [
    ("Conv1d", lambda: _conv(1, 2, 3, 3, padding=1), (4, 2, 9)),
    ("Conv2d", lambda: _conv(2, 3, 4, 3, stride=2, padding=1), (5, 3, 8, 7)),
    ("Conv2d groups", lambda: _conv(2, 4, 6, 3, groups=2, dilation=2), (3, 4, 9, 9)),
    ("Conv2d reflect", lambda: _conv(2, 2, 3, 3, padding=1, padding_mode="reflect"),
     (2, 2, 6, 6)),
    ("Conv2d unbatched", lambda: _conv(2, 2, 3, 3), (2, 6, 6)),
    ("Conv3d", lambda: _conv(3, 2, 3, 2, padding=1), (2, 2, 4, 5, 4)),
    ("Winograd", lambda: _winograd(_conv(2, WINOGRAD_MIN_CHANNELS, WINOGRAD_MIN_CHANNELS,
                                         3, padding=1)),
     (2, WINOGRAD_MIN_CHANNELS, 6, 6)),
    ("Linear", lambda: (refdl.manual_seed(0), nn.Linear(5, 3))[1], (4, 2, 5)),
]


@pytest.mark.parametrize("path", ["compiled", "whole-batch", "numpy"])
@pytest.mark.parametrize("name,make,shape", CASES, ids=[c[0] for c in CASES])
def test_layer_gradients_without_dx_are_the_full_backward_gradients(name, make, shape, path,
                                                                    monkeypatch):
    if path != "numpy" and not ext.available():
        pytest.skip("the compiled kernels are not built")
    if path == "whole-batch":         # the compiled im2col + NumPy matmul path
        monkeypatch.setattr(ext, "conv_chunked", lambda *a: False)
    x = np.random.default_rng(0).standard_normal(shape)
    with ext.numpy_path(path == "numpy"):
        _same_grads_without_dx(make(), x)


@pytest.mark.parametrize("model", ["lenet5", "resnet_small", "vgg_small", "mlp"])
def test_models_gradients_without_dx_are_the_full_backward_gradients(model):
    refdl.manual_seed(0)
    m = get_model(model, num_classes=10)
    shape = {"lenet5": (3, 1, 28, 28), "resnet_small": (2, 1, 8, 8),
             "vgg_small": (2, 1, 8, 8), "mlp": (3, 64)}[model]
    assert m.accepts_input_grad
    _same_grads_without_dx(m, np.random.default_rng(0).standard_normal(shape))


def test_sequential_asks_only_its_first_layer_to_skip_dx():
    refdl.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    asked = []
    for m in seq:
        if m.accepts_input_grad:
            def spy(g, input_grad=True, m=m, orig=m.backward):
                asked.append((type(m).__name__, input_grad))
                return orig(g, input_grad=input_grad)
            m.backward = spy
    x = np.ones((1, 1, 4, 4))
    seq.backward(np.ones(seq(x).shape), input_grad=False)
    assert asked == [("Linear", True), ("Conv2d", False)]
    # a first layer without the keyword runs its full backward; the chain returns None
    seq2 = nn.Sequential(nn.ReLU(), nn.Linear(3, 2))
    assert seq2.backward(np.ones(seq2(np.ones((2, 3))).shape), input_grad=False) is None


def test_the_trainer_asks_for_no_dx_and_trains_other_models_as_before():
    calls = []

    class Spy(nn.Sequential):
        def backward(self, g, input_grad=True):
            calls.append(input_grad)
            return super().backward(g, input_grad=input_grad)

    class Plain(nn.Module):                  # a user's model: backward(g) only
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x):
            return self.lin(x)

        def backward(self, g):
            calls.append("plain")
            return self.lin.backward(g)

    rng = np.random.default_rng(0)
    data = TensorDataset(rng.standard_normal((8, 4)).astype(np.float32),
                         rng.integers(0, 2, 8))
    for model in (Spy(nn.Linear(4, 2)), Plain()):
        fit(model, nn.CrossEntropyLoss(), refdl.optim.SGD(model.parameters(), lr=0.1),
            DataLoader(data, batch_size=4), epochs=1, progress=False)
    assert calls == [False, False, "plain", "plain"]
