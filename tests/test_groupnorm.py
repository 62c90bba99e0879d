"""GroupNorm and InstanceNorm1d/2d/3d: forward, running stats, gradient checks, errors."""
import numpy as np
import pytest

from refdl import nn
from refdl.gradcheck import check_module


def rng(s=7):
    return np.random.default_rng(s)


def with_affine(m, seed=1):
    r = rng(seed)
    m.weight.data[...] = r.uniform(0.5, 1.5, m.weight.shape)
    m.bias.data[...] = r.standard_normal(m.bias.shape)
    return m


def test_groupnorm_forward_formula():
    x = rng().normal(2.0, 3.0, (2, 6, 3, 2))
    gn = with_affine(nn.GroupNorm(3, 6)).to(np.float64)
    y = gn(x)
    xg = x.reshape(2, 3, -1)
    ref = ((xg - xg.mean(2, keepdims=True)) / np.sqrt(xg.var(2, keepdims=True) + 1e-5))
    ref = ref.reshape(x.shape) * gn.weight.data[:, None, None] + gn.bias.data[:, None, None]
    np.testing.assert_allclose(y, ref, rtol=1e-12)


def test_groupnorm_special_cases():
    x = rng().standard_normal((2, 4, 3))
    # one group = LayerNorm over (C, L); C groups = InstanceNorm
    ln = nn.GroupNorm(1, 4, affine=False)(x)
    flat = x.reshape(2, -1)
    np.testing.assert_allclose(ln.reshape(2, -1), (flat - flat.mean(1, keepdims=True))
                               / np.sqrt(flat.var(1, keepdims=True) + 1e-5), rtol=1e-12)
    np.testing.assert_allclose(nn.GroupNorm(4, 4, affine=False)(x),
                               nn.InstanceNorm1d(4)(x), rtol=1e-12)


def test_groupnorm_independent_of_batch_and_mode():
    gn = nn.GroupNorm(2, 4)
    x = rng().standard_normal((3, 4, 5))
    np.testing.assert_allclose(gn(x)[1:2], gn(x[1:2]), rtol=1e-6)
    np.testing.assert_array_equal(gn.train()(x), gn.eval()(x))


@pytest.mark.parametrize("shape,groups", [((2, 4, 3), 2), ((1, 6, 2, 2), 3),
                                          ((2, 4, 2, 2, 2), 1), ((2, 6), 2)])
def test_groupnorm_gradcheck(shape, groups):
    gn = with_affine(nn.GroupNorm(groups, shape[1]))
    check_module(gn, rng(5).normal(0.5, 2.0, shape))


def test_groupnorm_gradcheck_no_affine():
    check_module(nn.GroupNorm(2, 4, affine=False), rng().standard_normal((1, 4, 3)))


def test_groupnorm_errors():
    with pytest.raises(ValueError, match="divisible"):
        nn.GroupNorm(3, 4)
    with pytest.raises(ValueError, match=r"GroupNorm\(2, 4.*expected input with 4 channels.*"
                                         r"\(2, 6, 3\)"):
        nn.GroupNorm(2, 4)(np.ones((2, 6, 3)))


# -- InstanceNorm --------------------------------------------------------------------------
@pytest.mark.parametrize("cls,shape", [(nn.InstanceNorm1d, (2, 3, 5)),
                                       (nn.InstanceNorm2d, (2, 3, 3, 4)),
                                       (nn.InstanceNorm3d, (1, 2, 2, 3, 2))])
def test_instancenorm_normalises_each_channel_of_each_example(cls, shape):
    x = rng().normal(1.0, 4.0, shape)
    y = cls(shape[1])(x)
    axes = tuple(range(2, len(shape)))
    np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=axes), 1, rtol=1e-3)
    assert cls(shape[1]).num_parameters() == 0   # affine=False by default


def test_instancenorm_unbatched():
    x = rng().standard_normal((3, 4, 4))
    m = nn.InstanceNorm2d(3)
    np.testing.assert_allclose(m(x), m(x[None])[0], rtol=1e-12)
    check_module(with_affine(nn.InstanceNorm2d(3, affine=True)), x)


def test_instancenorm_running_stats():
    m = nn.InstanceNorm1d(2, momentum=0.5, track_running_stats=True)
    x = rng().normal(3.0, 2.0, (4, 2, 6))
    m(x)
    np.testing.assert_allclose(m.running_mean, 0.5 * x.mean(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(m.running_var, 0.5 + 0.5 * x.var(axis=2, ddof=1).mean(0),
                               rtol=1e-6)
    m.eval()
    y = m(x)
    np.testing.assert_allclose(y, (x - m.running_mean[:, None]) /
                               np.sqrt(m.running_var[:, None] + 1e-5), rtol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("cls,shape", [(nn.InstanceNorm1d, (2, 3, 4)),
                                       (nn.InstanceNorm2d, (1, 2, 3, 2)),
                                       (nn.InstanceNorm3d, (2, 2, 2, 2, 2))])
def test_instancenorm_gradcheck(cls, shape, mode):
    m = with_affine(cls(shape[1], affine=True, track_running_stats=True))
    m.running_mean[...] = rng(5).standard_normal(shape[1])
    m.running_var[...] = rng(6).uniform(0.5, 2, shape[1])
    m.train(mode == "train")
    check_module(m, rng(2).normal(0.0, 2.0, shape))


def test_instancenorm_gradcheck_default():
    check_module(nn.InstanceNorm2d(2), rng().standard_normal((2, 2, 2, 3)))


def test_instancenorm_errors():
    with pytest.raises(ValueError, match=r"Expected more than 1 spatial element when "
                                         r"training, got input size \(2, 3, 1\)"):
        nn.InstanceNorm1d(3)(np.ones((2, 3, 1)))
    with pytest.raises(ValueError, match=r"InstanceNorm2d\(3.*expected input with 3 "
                                         r"channels.*\(2, 4, 5, 5\)"):
        nn.InstanceNorm2d(3)(np.ones((2, 4, 5, 5)))
    with pytest.raises(ValueError, match=r"expected an input of shape \(N, C, D, H, W\)"):
        nn.InstanceNorm3d(3)(np.ones((3, 5, 5)))
