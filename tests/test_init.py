"""Initialisers: fans, gains, bounds, variances, orthogonality, reproducibility."""
import math

import numpy as np
import pytest
from scipy import stats

import refdl
from refdl import init
from refdl.nn import Linear
from refdl.nn.module import Parameter


def _gen(seed=0):
    return np.random.default_rng(seed)


# -- gains and fans -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                                  "conv_transpose2d", "conv_transpose3d", "sigmoid"])
def test_gain_one(name):
    assert init.calculate_gain(name) == 1.0


def test_gain_values():
    assert init.calculate_gain("tanh") == 5.0 / 3
    assert init.calculate_gain("relu") == math.sqrt(2.0)
    assert init.calculate_gain("selu") == 0.75
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2)))
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.calculate_gain("leaky_relu", 0) == math.sqrt(2.0)
    assert init.calculate_gain("leaky_relu", np.float32(0.2)) == pytest.approx(
        math.sqrt(2 / 1.04), rel=1e-7)
    # a = sqrt(5): PyTorch's Linear/Conv default, gain sqrt(1/3)
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    with pytest.raises(ValueError, match="not a number"):
        init.calculate_gain("leaky_relu", True)
    with pytest.raises(ValueError, match="unsupported nonlinearity 'gelu'"):
        init.calculate_gain("gelu")


def test_gain_relu_is_second_moment_compensation():
    # E[relu(z)^2] = Var(z)/2 for symmetric z: gain^2 = 2 restores the variance
    z = _gen(1).standard_normal(400_000)
    assert np.mean(np.maximum(z, 0) ** 2) == pytest.approx(0.5, rel=0.01)
    # tanh: 5/3 is the gain PyTorch tabulates; E[tanh(z)^2] for z ~ N(0,1) is ~0.39,
    # and (5/3)^2 * 0.394 = 1.095 ~ 1
    assert (5 / 3) ** 2 * np.mean(np.tanh(z) ** 2) == pytest.approx(1.095, abs=0.01)


def test_fans():
    assert init.calculate_fan_in_and_fan_out(np.empty((7, 3))) == (3, 7)
    assert init.calculate_fan_in_and_fan_out(np.empty((8, 3, 5, 7))) == (105, 280)
    assert init.calculate_fan_in_and_fan_out(np.empty((8, 3, 2, 2, 2))) == (24, 64)
    assert init.calculate_fan_in_and_fan_out(np.empty((4, 6, 5))) == (30, 20)
    lin = Linear(11, 4)
    assert init.calculate_fan_in_and_fan_out(lin.weight) == (11, 4)
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.calculate_fan_in_and_fan_out(np.empty(5))
    with pytest.raises(ValueError, match="mode must be 'fan_in' or 'fan_out'"):
        init.kaiming_normal_(np.empty((3, 3)), mode="fan_avg")
    with pytest.raises(TypeError, match="Parameter or ndarray"):
        init.normal_([1.0, 2.0])


# -- distributions ----------------------------------------------------------------------------

SHAPE = (300, 200)          # 60 000 draws: the variance is within ~1.5 % (4 sigma)


def _var_ok(w, var):
    assert np.mean(w) == pytest.approx(0.0, abs=5 * math.sqrt(var / w.size))
    assert np.mean(w ** 2) == pytest.approx(var, rel=0.025)


def test_xavier_uniform():
    w = np.empty(SHAPE)
    init.xavier_uniform_(w, gain=2.0, generator=_gen())
    a = 2.0 * math.sqrt(6.0 / 500)
    assert np.abs(w).max() <= a and np.abs(w).max() > 0.999 * a
    _var_ok(w, 4.0 * 2.0 / 500)


def test_xavier_normal():
    w = np.empty(SHAPE)
    init.xavier_normal_(w, generator=_gen())
    _var_ok(w, 2.0 / 500)
    assert abs(stats.kurtosis(w.ravel())) < 0.1            # Gaussian, not uniform (-1.2)


@pytest.mark.parametrize("mode,fan", [("fan_in", 200), ("fan_out", 300)])
def test_kaiming_uniform(mode, fan):
    w = np.empty(SHAPE)
    init.kaiming_uniform_(w, mode=mode, nonlinearity="relu", generator=_gen())
    b = math.sqrt(2.0) * math.sqrt(3.0 / fan)
    assert np.abs(w).max() <= b and np.abs(w).max() > 0.999 * b
    _var_ok(w, 2.0 / fan)


@pytest.mark.parametrize("mode,fan", [("fan_in", 200), ("fan_out", 300)])
def test_kaiming_normal(mode, fan):
    w = np.empty(SHAPE)
    init.kaiming_normal_(w, mode=mode, nonlinearity="relu", generator=_gen())
    _var_ok(w, 2.0 / fan)


def test_kaiming_leaky_relu_and_conv_fan():
    w = np.empty((64, 16, 3, 3))                           # fan_in = 144
    init.kaiming_normal_(w, a=0.2, generator=_gen())
    _var_ok(w, 2.0 / (1 + 0.04) / 144)


def test_linear_default_init_bound():
    lin = Linear(50, 400, generator=_gen())
    bound = 1 / math.sqrt(50)
    assert np.abs(lin.weight.data).max() <= bound
    assert np.abs(lin.weight.data).max() > 0.99 * bound
    assert np.mean(lin.weight.data.astype(np.float64) ** 2) == pytest.approx(
        bound ** 2 / 3, rel=0.03)


def test_uniform_normal_constant():
    w = np.empty((200, 100))
    init.uniform_(w, -0.5, 1.5, generator=_gen())
    assert w.min() >= -0.5 and w.max() < 1.5
    assert w.mean() == pytest.approx(0.5, abs=0.01)
    init.normal_(w, 3.0, 0.5, generator=_gen())
    assert w.mean() == pytest.approx(3.0, abs=0.01) and w.std() == pytest.approx(0.5, rel=0.02)
    init.constant_(w, 0.25)
    assert np.all(w == 0.25)
    init.ones_(w)
    assert np.all(w == 1.0)
    init.zeros_(w)
    assert np.all(w == 0.0)


@pytest.mark.parametrize("mean,std,a,b", [(0.0, 1.0, -2.0, 2.0), (1.0, 2.0, 0.0, 1.5),
                                          (0.0, 0.02, -0.04, 0.04)])
def test_trunc_normal_bounds_and_moments(mean, std, a, b):
    w = np.empty((200, 200))
    init.trunc_normal_(w, mean=mean, std=std, a=a, b=b, generator=_gen())
    assert w.min() >= a and w.max() <= b
    d = stats.truncnorm((a - mean) / std, (b - mean) / std, loc=mean, scale=std)
    assert w.mean() == pytest.approx(d.mean(), abs=5 * d.std() / 200)
    assert w.var() == pytest.approx(d.var(), rel=0.03)


def test_eye_and_dirac():
    w = np.empty((3, 5))
    init.eye_(w)
    np.testing.assert_array_equal(w, np.eye(3, 5))
    with pytest.raises(ValueError, match="only 2-D"):
        init.eye_(np.empty((2, 2, 2)))
    k = np.empty((4, 3, 3, 5))
    init.dirac_(k)
    x = _gen().standard_normal((3, 7, 9))
    # 'same' cross-correlation with the dirac kernel copies channel d to channel d
    xp = np.pad(x, ((0, 0), (1, 1), (2, 2)))
    y = np.zeros((4, 7, 9))
    for o in range(4):
        for i in range(3):
            for u in range(3):
                for v in range(5):
                    y[o] += k[o, i, u, v] * xp[i, u:u + 7, v:v + 9]
    np.testing.assert_array_equal(y[:3], x)
    np.testing.assert_array_equal(y[3], 0)
    g = np.empty((4, 2, 3))
    init.dirac_(g, groups=2)
    assert g.sum() == 4 and g[2, 0, 1] == 1 and g[3, 1, 1] == 1
    with pytest.raises(ValueError, match="divisible by groups"):
        init.dirac_(np.empty((3, 2, 3)), groups=2)


def test_sparse():
    w = np.empty((10, 30))
    init.sparse_(w, sparsity=0.3, std=0.5, generator=_gen())
    assert np.all((w == 0).sum(axis=0) == 3)
    assert np.std(w[w != 0]) == pytest.approx(0.5, rel=0.15)


@pytest.mark.parametrize("shape", [(4, 9), (9, 4), (6, 6), (5, 2, 3, 3)])
def test_orthogonal(shape):
    w = np.empty(shape)
    init.orthogonal_(w, gain=1.5, generator=_gen())
    m = w.reshape(shape[0], -1)
    if m.shape[0] <= m.shape[1]:
        np.testing.assert_allclose(m @ m.T, 2.25 * np.eye(m.shape[0]), atol=1e-12)
    else:
        np.testing.assert_allclose(m.T @ m, 2.25 * np.eye(m.shape[1]), atol=1e-12)
    with pytest.raises(ValueError, match="2 or more dimensions"):
        init.orthogonal_(np.empty(3))


def test_orthogonal_preserves_norms_in_deep_linear_chain():
    x = _gen(5).standard_normal(32)
    n0 = np.linalg.norm(x)
    for k in range(50):
        w = np.empty((32, 32))
        init.orthogonal_(w, generator=_gen(100 + k))
        x = w @ x
    assert np.linalg.norm(x) == pytest.approx(n0, rel=1e-12)


def test_zero_element_tensors_are_noops():
    for fn in (init.kaiming_uniform_, init.kaiming_normal_, init.orthogonal_):
        w = np.empty((0, 4))
        assert fn(w) is w


# -- in place, dtype, reproducibility -----------------------------------------------------------

def test_in_place_on_parameter_and_dtype():
    p = Parameter(np.zeros((5, 4), dtype=np.float32))
    data = p.data
    out = init.xavier_uniform_(p, generator=_gen())
    assert out is p and p.data is data and p.data.dtype == np.float32
    assert np.any(p.data != 0)


@pytest.mark.parametrize("fn", [
    lambda w, g: init.uniform_(w, generator=g), lambda w, g: init.normal_(w, generator=g),
    lambda w, g: init.trunc_normal_(w, generator=g),
    lambda w, g: init.xavier_uniform_(w, generator=g),
    lambda w, g: init.xavier_normal_(w, generator=g),
    lambda w, g: init.kaiming_uniform_(w, generator=g),
    lambda w, g: init.kaiming_normal_(w, generator=g),
    lambda w, g: init.orthogonal_(w, generator=g),
    lambda w, g: init.sparse_(w, 0.5, generator=g)])
def test_generator_reproducibility(fn):
    a, b, c = np.empty((6, 4)), np.empty((6, 4)), np.empty((6, 4))
    fn(a, _gen(7))
    fn(b, _gen(7))
    fn(c, _gen(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # the default generator, seeded by refdl.manual_seed
    refdl.manual_seed(3)
    fn(a, None)
    refdl.manual_seed(3)
    fn(b, None)
    np.testing.assert_array_equal(a, b)


def test_explicit_generator_leaves_default_untouched():
    refdl.manual_seed(11)
    state = refdl.random.get_rng_state()
    init.normal_(np.empty(10), generator=_gen())
    assert refdl.random.get_rng_state() == state
