"""PReLU and the rest of torch.nn's activations: gradient checks, forward values against
direct formulas, PyTorch's subgradients at the kinks, and PyTorch itself when installed."""
import numpy as np
import pytest
from scipy import special

import refdl
from refdl import nn
from refdl.gradcheck import check_module

SELU_A, SELU_S = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946

FORMULAS = [
    (nn.ReLU6(), lambda x: np.minimum(np.maximum(x, 0), 6)),
    (nn.Hardtanh(-2.0, 1.5), lambda x: np.clip(x, -2, 1.5)),
    (nn.Hardsigmoid(), lambda x: np.where(x <= -3, 0, np.where(x >= 3, 1, x / 6 + .5))),
    (nn.Hardswish(), lambda x: np.where(x <= -3, 0, np.where(x >= 3, x, x * (x + 3) / 6))),
    (nn.SELU(), lambda x: SELU_S * np.where(x > 0, x, SELU_A * np.expm1(x))),
    (nn.CELU(0.7), lambda x: np.where(x > 0, x, 0.7 * np.expm1(x / 0.7))),
    (nn.Mish(), lambda x: x * np.tanh(np.logaddexp(0, x))),
    (nn.LogSigmoid(), lambda x: -np.logaddexp(0, -x)),
    (nn.Softsign(), lambda x: x / (1 + np.abs(x))),
    (nn.Threshold(0.1, 20.0), lambda x: np.where(x > 0.1, x, 20.0)),
    (nn.PReLU(), lambda x: np.where(x > 0, x, 0.25 * x)),
    (nn.GLU(), lambda x: x[..., :2] * special.expit(x[..., 2:])),
    (nn.Softmin(1), lambda x: special.softmax(-x, axis=1)),
]
IDS = [type(m).__name__ for m, _ in FORMULAS]


def away_from_kinks(shape, seed):
    """Inputs in (-5, 5) at least 0.05 from every kink (0, +-3, 6, -2, 1.5, 0.1)."""
    x = np.random.default_rng(seed).uniform(-5, 5, shape)
    for k in (0.0, 3.0, -3.0, 6.0, -2.0, 1.5, 0.1):
        near = np.abs(x - k) < 0.05
        x[near] = k + 0.1
    return x


@pytest.mark.parametrize("layer,ref", FORMULAS, ids=IDS)
def test_forward_matches_formula_and_keeps_dtype(layer, ref):
    x = away_from_kinks((3, 4, 4), seed=1)
    with refdl.no_grad():
        y, y32 = layer(x), layer(x.astype(np.float32))
    np.testing.assert_allclose(y, ref(x), rtol=1e-12, atol=1e-14)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, ref(x), rtol=3e-6, atol=3e-6)


@pytest.mark.parametrize("layer,ref", FORMULAS, ids=IDS)
def test_gradcheck(layer, ref):
    check_module(layer, away_from_kinks((2, 4, 4), seed=2))


def test_prelu_per_channel_slopes_and_their_gradient():
    refdl.manual_seed(0)
    m = nn.PReLU(3).double()
    m.weight.data[:] = [0.1, -0.5, 2.0]
    x = away_from_kinks((4, 3, 5), seed=3)
    check_module(m, x)
    g = np.random.default_rng(4).standard_normal(x.shape)
    m.zero_grad()
    y = m(x)
    dx = m.backward(g)
    a = m.weight.data[None, :, None]
    np.testing.assert_allclose(y, np.where(x > 0, x, a * x), rtol=1e-15)
    np.testing.assert_allclose(dx, g * np.where(x > 0, 1, a), rtol=1e-15)
    # brute force: dL/da_c = sum over the entries of channel c with x < 0 of g x
    for c in range(3):
        xc, gc = x[:, c], g[:, c]
        assert m.weight.grad[c] == pytest.approx(np.sum(gc * xc * (xc < 0)), rel=1e-13)
    with pytest.raises(ValueError, match=r"PReLU\(num_parameters=3\): expected 3 channels"):
        m(np.zeros((2, 4)))
    assert nn.PReLU().weight.data.tolist() == [0.25]          # PyTorch's init


def test_subgradients_at_the_kinks_are_pytorchs():
    x = np.array([-3.0, 0.0, 3.0, 6.0, -1.0, 1.0])
    cases = [(nn.ReLU6(), [0, 0, 1, 0, 0, 1]),
             (nn.Hardtanh(), [0, 1, 0, 0, 0, 0]),
             (nn.Hardsigmoid(), [0, 1 / 6, 0, 0, 1 / 6, 1 / 6]),
             (nn.Hardswish(), [0, 0.5, 1, 1, 1 / 6, 5 / 6])]
    for layer, want in cases:
        layer(x)
        np.testing.assert_allclose(layer.backward(np.ones_like(x)), want, rtol=1e-15,
                                   err_msg=type(layer).__name__)


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_val"):
        nn.Hardtanh(1.0, 1.0)
    with pytest.raises(ValueError, match="even size"):
        nn.GLU()(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="num_parameters"):
        nn.PReLU(0)
    with pytest.raises(ValueError, match="alpha"):
        nn.CELU(0.0)


def test_against_pytorch_when_installed():
    torch = pytest.importorskip("torch")
    tn = torch.nn
    # (CELU with alpha = 0.5, a binary fraction: PyTorch rounds 1/alpha for alpha = 0.7
    # to about 5e-8 relative)
    pairs = [(nn.ReLU6(), tn.ReLU6()), (nn.Hardtanh(-2.0, 1.5), tn.Hardtanh(-2.0, 1.5)),
             (nn.Hardsigmoid(), tn.Hardsigmoid()), (nn.Hardswish(), tn.Hardswish()),
             (nn.SELU(), tn.SELU()), (nn.CELU(0.5), tn.CELU(0.5)), (nn.Mish(), tn.Mish()),
             (nn.LogSigmoid(), tn.LogSigmoid()), (nn.Softsign(), tn.Softsign()),
             (nn.Threshold(0.1, 20.0), tn.Threshold(0.1, 20.0)), (nn.GLU(), tn.GLU()),
             (nn.Softmin(1), tn.Softmin(1)), (nn.PReLU(), tn.PReLU())]
    x = np.random.default_rng(5).uniform(-5, 5, (3, 4, 4))
    x[0, 0, :4] = [-3.0, 0.0, 3.0, 6.0]                       # the kinks too
    g = np.random.default_rng(6).standard_normal(x.shape)
    for ours, theirs in pairs:
        ours = ours.double()
        theirs = theirs.double()
        t = torch.tensor(x, requires_grad=True)
        ty = theirs(t)
        ty.backward(torch.tensor(g[..., :ty.shape[-1]]))
        y = ours(x)
        dx = ours.backward(g[..., :y.shape[-1]])
        # PyTorch's CPU kernel writes Hardsigmoid's 1/6 as the float literal 1.0f/6.0f
        # (relative error 3e-8), in float64 too; refdl uses 1/6 itself
        rtol = 1e-7 if isinstance(ours, nn.Hardsigmoid) else 1e-13
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=1e-15,
                                   err_msg=type(ours).__name__)
        np.testing.assert_allclose(dx, t.grad.numpy(), rtol=rtol, atol=1e-15,
                                   err_msg=type(ours).__name__)
        if isinstance(ours, nn.PReLU):
            np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(),
                                       rtol=1e-13)
