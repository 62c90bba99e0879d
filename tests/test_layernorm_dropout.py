"""LayerNorm and Dropout(1d/2d/3d): gradient checks, forward values, modes, errors."""
import warnings

import numpy as np
import pytest

import refdl
from refdl import nn
from refdl.gradcheck import check_module


def rand(*shape, seed=0, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


# -- LayerNorm ---------------------------------------------------------------------------
def layernorm(ns, seed=1, **kw):
    ln = nn.LayerNorm(ns, **kw)
    rng = np.random.default_rng(seed)
    for p in ln.parameters():                 # non-trivial gamma and beta for the check
        p.data[...] = 1 + 0.5 * rng.standard_normal(p.shape)
    return ln


LN_CASES = [((4, 5), 5), ((3, 2, 4), 4), ((2, 3, 4), (3, 4)), ((6,), 6),
            ((2, 2, 2, 3), (2, 2, 3))]


@pytest.mark.parametrize("shape,ns", LN_CASES, ids=str)
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, True)])
def test_layernorm_gradcheck(shape, ns, affine, bias):
    ln = layernorm(ns, elementwise_affine=affine, bias=bias)
    x = rand(*shape, seed=2, scale=2.0) + 0.5
    res = check_module(ln, x)
    names = [t.name for t in res.tensors]
    assert names == ["input 0"] + (["weight"] if affine else []) + \
        (["bias"] if affine and bias else [])


@pytest.mark.parametrize("shape,ns", LN_CASES, ids=str)
def test_layernorm_forward_matches_formula(shape, ns):
    ln = layernorm(ns)
    x = rand(*shape, seed=3, scale=3.0) + 1.0
    k = 1 if isinstance(ns, int) else len(ns)
    axes = tuple(range(x.ndim - k, x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    ref = (x - mu) / np.sqrt(var + 1e-5) * ln.weight.data + ln.bias.data
    np.testing.assert_allclose(ln(x), ref, rtol=1e-12, atol=1e-12)


def test_layernorm_compact_backward_equals_explicit_jacobian():
    ln = layernorm(5, seed=4)
    x = rand(1, 5, seed=5)
    ln(x)
    g = rand(1, 5, seed=6)
    dx = ln.backward(g)
    # explicit Jacobian of x_hat: (I - 1/K) / sigma - x_hat x_hat^T / (K sigma)
    K = 5
    sigma = np.sqrt(x.var() + 1e-5)
    xh = (x[0] - x.mean()) / sigma
    J = (np.eye(K) - 1.0 / K) / sigma - np.outer(xh, xh) / (K * sigma)
    np.testing.assert_allclose(dx[0], J.T @ (g[0] * ln.weight.data), rtol=1e-12)


def test_layernorm_parameters_dtype_and_defaults():
    ln = nn.LayerNorm((3, 4))
    assert [n for n, _ in ln.named_parameters()] == ["weight", "bias"]
    assert ln.weight.shape == (3, 4) and ln.weight.dtype == np.float32
    assert np.all(ln.weight.data == 1) and np.all(ln.bias.data == 0)
    assert ln.num_parameters() == 24
    assert nn.LayerNorm(6).num_parameters() == 12                       # mlp-5
    assert nn.LayerNorm(6, bias=False).num_parameters() == 6
    assert nn.LayerNorm(6, elementwise_affine=False).num_parameters() == 0
    y = ln(rand(2, 3, 4).astype(np.float32))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.reshape(2, -1).mean(1), 0, atol=1e-6)
    np.testing.assert_allclose(y.reshape(2, -1).var(1), 1, rtol=1e-4)
    assert repr(ln) == "LayerNorm((3, 4), eps=1e-05, elementwise_affine=True)"


def test_layernorm_constant_rows_and_extremes_no_warnings():
    ln = nn.LayerNorm(4)
    x = np.array([[3.0, 3.0, 3.0, 3.0], [1e4, -1e4, 1e4, -1e4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = ln(x)
        g = ln.backward(np.ones_like(x))
    np.testing.assert_array_equal(y[0], 0)
    np.testing.assert_allclose(y[1], [1, -1, 1, -1], rtol=1e-9)
    assert np.all(np.isfinite(g))


def test_layernorm_errors():
    ln = nn.LayerNorm((3, 4))
    with pytest.raises(ValueError, match=r"LayerNorm\(\(3, 4\), eps=1e-05, "
                                         r"elementwise_affine=True\): expected input of "
                                         r"shape \(\*, 3, 4\), got \(2, 4, 3\)"):
        ln(np.zeros((2, 4, 3)))
    with pytest.raises(TypeError, match="floating-point"):
        ln(np.zeros((2, 3, 4), dtype=int))
    with pytest.raises(ValueError, match="normalized_shape"):
        nn.LayerNorm(0)


# -- Dropout -----------------------------------------------------------------------------
# check_module reseeds the library generator before every forward, so each forward
# of a gradient check draws the same mask.
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(10,), (4, 5), (2, 3, 4)], ids=str)
def test_dropout_gradcheck(p, shape):
    x = rand(*shape, seed=7)
    check_module(nn.Dropout(p), x)


@pytest.mark.parametrize("cls,shape", [(nn.Dropout1d, (3, 4, 5)), (nn.Dropout1d, (4, 5)),
                                       (nn.Dropout2d, (2, 3, 2, 3)), (nn.Dropout2d, (4, 2, 3)),
                                       (nn.Dropout3d, (2, 3, 2, 2, 2)),
                                       (nn.Dropout3d, (3, 2, 2, 2))], ids=str)
@pytest.mark.parametrize("p", [0.3, 0.5])
def test_channel_dropout_gradcheck_and_whole_channels(cls, shape, p):
    check_module(cls(p), rand(*shape, seed=8))
    x = rand(*shape, seed=8) + 5.0          # no entry is 0, so zeros mark dropped entries
    refdl.manual_seed(0)
    d = cls(p)
    y = d(x)
    spatial = d._rank
    per_channel = (y == 0).reshape(shape[:len(shape) - spatial] + (-1,))
    assert np.all(per_channel.all(-1) | ~per_channel.any(-1))     # all or nothing
    kept = ~per_channel.any(-1)
    scale = np.where(kept[(...,) + (None,) * spatial], 1 / (1 - p), 0)
    np.testing.assert_allclose(y, x * scale, rtol=1e-15)


def test_dropout_statistics_unbiased_and_rate():
    refdl.manual_seed(1)
    d = nn.Dropout(0.3)
    x = np.ones(200_000)
    y = d(x)
    assert np.mean(y == 0) == pytest.approx(0.3, abs=0.005)
    assert y.mean() == pytest.approx(1.0, abs=0.01)                # E[y] = x
    np.testing.assert_allclose(np.unique(y), [0, 1 / 0.7])
    g = d.backward(np.ones_like(x))
    np.testing.assert_array_equal(g, y)                           # the same mask
    d2 = nn.Dropout2d(0.25)
    y2 = d2(np.ones((400, 100, 2, 2)))
    assert np.mean(y2[:, :, 0, 0] == 0) == pytest.approx(0.25, abs=0.01)


def test_dropout_eval_identity_and_extreme_p():
    x = rand(5, 4)
    for d in (nn.Dropout(0.5), nn.Dropout2d(0.5), nn.Dropout1d(0.9)):
        d.eval()
        assert d(x.reshape(5, 4, 1, 1) if isinstance(d, nn.Dropout2d) else x) is not None
    d = nn.Dropout(0.7).eval()
    with refdl.enable_grad():                     # eval mode records only when asked to
        np.testing.assert_array_equal(d(x), x)
    np.testing.assert_array_equal(d.backward(np.ones_like(x)), 1)
    d = nn.Dropout(0.0)
    np.testing.assert_array_equal(d(x), x)
    d = nn.Dropout(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(d(x), 0)
        np.testing.assert_array_equal(d.backward(np.ones_like(x)), 0)


def test_dropout_repeatable_with_seed_and_generator():
    x = rand(50)
    refdl.manual_seed(3)
    a = nn.Dropout(0.5)(x)
    refdl.manual_seed(3)
    b = nn.Dropout(0.5)(x)
    np.testing.assert_array_equal(a, b)
    c = nn.Dropout(0.5, generator=np.random.default_rng(3))(x)
    e = nn.Dropout(0.5, generator=np.random.default_rng(3))(x)
    np.testing.assert_array_equal(c, e)
    y32 = nn.Dropout(0.5)(x.astype(np.float32))
    assert y32.dtype == np.float32


def test_dropout_errors():
    with pytest.raises(ValueError, match=r"Dropout: dropout probability has to be between 0 "
                                         r"and 1, but got 1.5"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match=r"Dropout2d\(p=0.5\): expected a 4-D input \(N, C, "
                                         r"H, W\) or a 3-D unbatched input \(C, H, W\), got "
                                         r"shape \(2, 3\)"):
        nn.Dropout2d()(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"Dropout1d\(p=0.5\): expected a 3-D input \(N, C, "
                                         r"L\)"):
        nn.Dropout1d()(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match=r"Dropout3d.*\(N, C, D, H, W\)"):
        nn.Dropout3d()(np.zeros((2, 3, 4)))
    d = nn.Dropout()
    with pytest.raises(RuntimeError, match="before forward"):
        d.backward(np.ones(3))
