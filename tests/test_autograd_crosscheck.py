"""The engine as a second opinion: for Linear, the activations, MSE and cross-entropy the
gradients of refdl.autograd (chain rule over ops) equal the hand-derived backward of
refdl.nn and the numeric ones."""
import numpy as np
import pytest

import refdl
from refdl import nn
from refdl.autograd import Tensor
from refdl.autograd import functional as AF
from refdl.gradcheck import check_loss, check_module, gradgradcheck

rng = np.random.default_rng(0)


def test_linear_engine_equals_hand_derived_and_numeric():
    refdl.manual_seed(0)
    lin = nn.Linear(4, 3).to(np.float64)
    x = rng.standard_normal((5, 4))
    g = rng.standard_normal((5, 3))
    y = lin(x)
    dx = lin.backward(g)
    xt = Tensor(x, requires_grad=True)
    W = Tensor(lin.weight.data, requires_grad=True)
    b = Tensor(lin.bias.data, requires_grad=True)
    yt = AF.linear(xt, W, b)
    np.testing.assert_allclose(yt.data, y, rtol=1e-14)
    yt.backward(g)
    np.testing.assert_allclose(xt.grad.data, dx, rtol=1e-13)
    np.testing.assert_allclose(W.grad.data, lin.weight.grad, rtol=1e-13)
    np.testing.assert_allclose(b.grad.data, lin.bias.grad, rtol=1e-13)
    check_module(nn.Linear(4, 3), x)                      # hand-derived vs numeric
    gradgradcheck(lambda x, W, b: AF.linear(x, W, b).tanh(),
                  [x[:2].copy(), lin.weight.data.copy(), lin.bias.data.copy()])


ACTIVATIONS = [
    ("ReLU", lambda: nn.ReLU(), AF.relu),
    ("LeakyReLU", lambda: nn.LeakyReLU(0.1), lambda t: AF.leaky_relu(t, 0.1)),
    ("ELU", lambda: nn.ELU(0.7), lambda t: AF.elu(t, 0.7)),
    ("Sigmoid", lambda: nn.Sigmoid(), AF.sigmoid),
    ("Tanh", lambda: nn.Tanh(), AF.tanh),
    ("Softplus", lambda: nn.Softplus(), AF.softplus),
    ("GELU", lambda: nn.GELU(), AF.gelu),
    ("GELU-tanh", lambda: nn.GELU(approximate="tanh"), lambda t: AF.gelu(t, "tanh")),
    ("SiLU", lambda: nn.SiLU(), AF.silu),
    ("LogSoftmax", lambda: nn.LogSoftmax(dim=1), lambda t: AF.log_softmax(t, axis=1)),
    ("Softmax", lambda: nn.Softmax(dim=1), lambda t: AF.softmax(t, axis=1)),
]


@pytest.mark.parametrize("name,make,fn", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_engine_equals_hand_derived_and_numeric(name, make, fn):
    x = rng.choice([-1, 1], (3, 4)) * rng.uniform(0.1, 3.0, (3, 4))   # away from kinks
    g = rng.standard_normal((3, 4))
    layer = make()
    y = layer(x)
    dx = layer.backward(g)
    xt = Tensor(x, requires_grad=True)
    yt = fn(xt)
    np.testing.assert_allclose(yt.data, y, rtol=1e-12, atol=1e-15)
    yt.backward(g)
    np.testing.assert_allclose(xt.grad.data, dx, rtol=1e-10, atol=1e-14)
    check_module(make(), x)
    gradgradcheck(fn, [x.copy()], check_first_order=False)


def _loss(name):
    return getattr(nn, name)()


def test_mse_engine_equals_hand_derived_and_numeric():
    crit = _loss("MSELoss")
    x, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    loss = crit(x, t)
    dx = crit.backward()
    xt = Tensor(x, requires_grad=True)
    lt = AF.mse_loss(xt, Tensor(t))
    np.testing.assert_allclose(lt.data, loss, rtol=1e-14)
    lt.backward()
    np.testing.assert_allclose(xt.grad.data, dx, rtol=1e-13)
    check_loss(_loss("MSELoss"), x, t)


def test_cross_entropy_engine_equals_hand_derived_and_numeric():
    crit = _loss("CrossEntropyLoss")
    x, t = rng.standard_normal((4, 5)) * 3, np.array([0, 4, 2, 2])
    loss = crit(x, t)
    dx = crit.backward()
    xt = Tensor(x, requires_grad=True)
    lt = AF.cross_entropy(xt, t)
    np.testing.assert_allclose(lt.data, loss, rtol=1e-13)
    lt.backward()
    np.testing.assert_allclose(xt.grad.data, dx, rtol=1e-12, atol=1e-15)
    check_loss(_loss("CrossEntropyLoss"), x, t)
    gradgradcheck(lambda z: AF.cross_entropy(z, t), [x.copy()])
