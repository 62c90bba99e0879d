"""Activations: gradient checks, forward values against direct formulas, extremes, errors."""
import warnings

import numpy as np
import pytest
from scipy import special

import refdl
from refdl import nn
from refdl.gradcheck import check_module


def rand(*shape, seed=0, scale=2.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


ELEMENTWISE = [
    (nn.ReLU(), lambda x: np.maximum(x, 0)),
    (nn.LeakyReLU(), lambda x: np.where(x >= 0, x, 0.01 * x)),
    (nn.LeakyReLU(0.2), lambda x: np.where(x >= 0, x, 0.2 * x)),
    (nn.LeakyReLU(negative_slope=-1.5), lambda x: np.where(x >= 0, x, -1.5 * x)),
    (nn.ELU(), lambda x: np.where(x > 0, x, np.expm1(x))),
    (nn.ELU(alpha=0.5), lambda x: np.where(x > 0, x, 0.5 * np.expm1(x))),
    (nn.Sigmoid(), special.expit),
    (nn.Tanh(), np.tanh),
    (nn.Softplus(), lambda x: np.log1p(np.exp(x))),
    (nn.Softplus(beta=2.0, threshold=5.0),
     lambda x: np.where(2 * x > 5, x, np.log1p(np.exp(2 * x)) / 2)),
    (nn.GELU(), lambda x: x * special.ndtr(x)),
    (nn.GELU(approximate="tanh"),
     lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))),
    (nn.SiLU(), lambda x: x * special.expit(x)),
]
IDS = [repr(m) for m, _ in ELEMENTWISE]


@pytest.mark.parametrize("layer,ref", ELEMENTWISE, ids=IDS)
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 2, 2)])
def test_elementwise_gradcheck(layer, ref, shape):
    # moderate inputs keep L = <y, R> O(1), so the numeric estimate's rounding error
    # stays far below the small slope 0.01 of LeakyReLU
    x = rand(*shape, seed=len(shape), scale=0.7)
    check_module(layer, x)


@pytest.mark.parametrize("layer,ref", ELEMENTWISE, ids=IDS)
def test_elementwise_forward_matches_formula(layer, ref):
    x = rand(50, seed=3, scale=4.0)
    with refdl.no_grad():                      # forward only: record no cache
        y, y32 = layer(x), layer(x.astype(np.float32))
    np.testing.assert_allclose(y, ref(x), rtol=1e-12, atol=1e-15)
    assert y32.dtype == np.float32 and y32.shape == x.shape
    np.testing.assert_allclose(y32, ref(x), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("layer,ref", ELEMENTWISE, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_extremes_finite_no_warnings(layer, ref, dtype):
    x = np.array([-1e4, -50.0, -1.0, 1.0, 50.0, 1e4], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = layer(x)
        g = layer.backward(np.ones_like(x))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(g))
    assert y.dtype == dtype and g.dtype == dtype
    # far out, every activation is linear or constant with the obvious slope
    assert y[-1] == pytest.approx(1.0 if isinstance(layer, (nn.Sigmoid, nn.Tanh)) else 1e4)


def test_derivative_values_at_known_points():
    x = np.array([-1e4, -2.0, 0.5, 3.0, 1e4])
    s = special.expit(x)
    for layer, d in [
        (nn.Sigmoid(), s * (1 - s)),
        (nn.Tanh(), 1 - np.tanh(x) ** 2),
        (nn.ReLU(), (x > 0).astype(float)),
        (nn.SiLU(), s * (1 + x * (1 - s))),
        (nn.Softplus(), s),
        (nn.GELU(), special.ndtr(x) + x * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)),
        (nn.ELU(alpha=2.0), np.where(x > 0, 1, 2 * np.exp(np.minimum(x, 0)))),
    ]:
        layer(x)
        np.testing.assert_allclose(layer.backward(np.ones(5)), d, rtol=1e-12, atol=1e-300)
    # the sigmoid's derivative never exceeds 1/4 (act-1/act-3)
    sg = nn.Sigmoid()
    sg(np.linspace(-5, 5, 101))
    assert sg.backward(np.ones(101)).max() == pytest.approx(0.25)


def test_relu_subgradient_at_zero_and_leaky_slope():
    x = np.array([-1.0, 0.0, 1.0])
    r = nn.ReLU()
    r(x)
    np.testing.assert_array_equal(r.backward(np.ones(3)), [0, 0, 1])
    lr = nn.LeakyReLU(0.1)
    lr(x)
    np.testing.assert_allclose(lr.backward(np.ones(3)), [0.1, 0.1, 1])


def test_softplus_threshold_branch_gradient_is_one():
    sp = nn.Softplus(beta=1.0, threshold=20.0)
    x = np.array([21.0, 30.0, 1e4])
    np.testing.assert_array_equal(sp(x), x)
    np.testing.assert_array_equal(sp.backward(np.ones(3)), [1, 1, 1])
    check_module(nn.Softplus(beta=1.0, threshold=20.0), np.array([21.0, 25.0, -3.0]))


# -- softmax and log-softmax -----------------------------------------------------------
@pytest.mark.parametrize("cls,ref", [(nn.Softmax, special.softmax),
                                     (nn.LogSoftmax, special.log_softmax)])
@pytest.mark.parametrize("shape,dim", [((5,), 0), ((5,), -1), ((3, 4), 0), ((3, 4), 1),
                                       ((2, 3, 4), 1), ((2, 3, 4), -1), ((2, 3, 2, 2), 1),
                                       ((2, 3, 2, 2), -2)])
def test_softmax_gradcheck_and_values(cls, ref, shape, dim):
    x = rand(*shape, seed=sum(shape))
    layer = cls(dim=dim)
    np.testing.assert_allclose(layer(x), ref(x, axis=dim), rtol=1e-12, atol=1e-14)
    check_module(layer, x)


def test_softmax_default_dim_is_last_and_rows_sum_to_one():
    x = rand(4, 6)
    y = nn.Softmax()(x)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(nn.LogSoftmax()(x), special.log_softmax(x, axis=-1))


def test_softmax_backward_is_the_jacobian_product():
    x = rand(5, seed=9)
    sm = nn.Softmax(dim=0)
    y = sm(x)
    J = np.diag(y) - np.outer(y, y)           # dy_i/dx_j = y_i (delta_ij - y_j)
    g = rand(5, seed=10)
    np.testing.assert_allclose(sm.backward(g), J.T @ g, rtol=1e-12, atol=1e-15)
    ls = nn.LogSoftmax(dim=0)
    ls(x)
    J = np.eye(5) - y[None, :]                 # d logy_i/dx_j = delta_ij - y_j
    np.testing.assert_allclose(ls.backward(g), J.T @ g, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("cls", [nn.Softmax, nn.LogSoftmax])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_extremes(cls, dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [3e4, 3e4, -3e4]], dtype=dtype)
    layer = cls(dim=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = layer(x)
        g = layer.backward(np.ones_like(x))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(g)) and y.dtype == dtype
    p = np.exp(y) if cls is nn.LogSoftmax else y
    np.testing.assert_allclose(p, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0]],
                               rtol=1e-6, atol=1e-30)


# -- errors ----------------------------------------------------------------------------
def test_errors_name_the_layer_and_values():
    with pytest.raises(TypeError, match=r"ReLU\(\): expected a floating-point input.*int64"):
        nn.ReLU()(np.arange(3))
    with pytest.raises(ValueError, match=r"Softmax\(dim=2\): dim 2 is out of range for an "
                                         r"input of shape \(3, 4\)"):
        nn.Softmax(dim=2)(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"GELU: approximate must be 'none' or 'tanh', "
                                         r"got 'erf'"):
        nn.GELU(approximate="erf")
    t = nn.Tanh()
    with pytest.raises(RuntimeError, match=r"Tanh\(\).backward called before forward"):
        t.backward(np.ones(3))
    t(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"Tanh\(\).backward: expected grad_out of shape "
                                         r"\(2, 3\).*got \(3, 2\)"):
        t.backward(np.ones((3, 2)))
    sm = nn.LogSoftmax(dim=0)
    sm(np.zeros(4))
    with pytest.raises(ValueError, match=r"LogSoftmax\(dim=0\).backward: expected grad_out "
                                         r"of shape \(4,\)"):
        sm.backward(np.ones(5))


def test_no_parameters_and_repr():
    for layer, _ in ELEMENTWISE:
        assert layer.num_parameters() == 0
    assert repr(nn.LeakyReLU(0.2)) == "LeakyReLU(negative_slope=0.2)"
    assert repr(nn.Softmax(dim=1)) == "Softmax(dim=1)"


def test_softmax_never_turns_bad_numbers_into_probabilities():
    """One softmax for Softmax, attention and the oracles (refdl.functional.softmax): a
    masked (-inf) entry gets 0 and a fully masked row zeros, but a NaN or +inf score is
    not a mask: its row is NaN, as the definition exp(x_i) / sum_j exp(x_j) gives (and as
    PyTorch gives). Finite rows match the definition computed entry by entry."""
    import math
    import warnings

    from refdl.functional import softmax
    x = np.array([[1.0, 2.0, -np.inf],
                  [-np.inf, -np.inf, -np.inf],
                  [1.0, np.nan, 0.0],
                  [np.inf, 1.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = softmax(x, axis=-1)
    e = [math.exp(1.0), math.exp(2.0)]
    np.testing.assert_allclose(p[0], [e[0] / sum(e), e[1] / sum(e), 0.0], rtol=1e-15)
    assert np.array_equal(p[1], np.zeros(3))
    assert np.isnan(p[2]).all() and np.isnan(p[3]).all()
    # the same along another axis
    np.testing.assert_array_equal(softmax(x.T, axis=0), p.T)
