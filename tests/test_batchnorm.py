"""BatchNorm1d/2d/3d: forward statistics, running stats (PyTorch's rules), gradient checks
in training and eval mode, errors."""
import numpy as np
import pytest

import refdl
from refdl import nn
from refdl.gradcheck import check_module


def rng(s=7):
    return np.random.default_rng(s)


def with_affine(bn, seed=1):
    r = rng(seed)
    bn.weight.data[...] = r.uniform(0.5, 1.5, bn.weight.shape)
    bn.bias.data[...] = r.standard_normal(bn.bias.shape)
    return bn


# -- forward ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm1d, (6, 3)), (nn.BatchNorm1d, (4, 3, 5)),
                                       (nn.BatchNorm2d, (2, 3, 4, 5)),
                                       (nn.BatchNorm3d, (2, 3, 2, 3, 2))])
def test_training_output_is_normalised_per_channel(cls, shape):
    x = rng().normal(3.0, 2.0, shape)
    y = cls(3, affine=False)(x)
    axes = tuple(i for i in range(len(shape)) if i != 1)
    np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=axes), 1, rtol=1e-4)   # eps = 1e-5 in sigma


def test_affine_and_formula():
    x = rng().standard_normal((5, 4))
    bn = with_affine(nn.BatchNorm1d(4)).to(np.float64)
    y = bn(x)
    mu, var = x.mean(0), x.var(0)
    np.testing.assert_allclose(y, bn.weight.data * (x - mu) / np.sqrt(var + 1e-5)
                               + bn.bias.data, rtol=1e-12)


def test_running_stats_momentum_and_unbiased_variance():
    bn = nn.BatchNorm2d(2, momentum=0.3)
    x = rng().normal(2.0, 3.0, (4, 2, 3, 3))
    bn(x)
    m = 4 * 9
    mu = x.mean(axis=(0, 2, 3))
    var_unbiased = x.var(axis=(0, 2, 3)) * m / (m - 1)
    np.testing.assert_allclose(bn.running_mean, 0.3 * mu, rtol=1e-6)
    np.testing.assert_allclose(bn.running_var, 0.7 * 1 + 0.3 * var_unbiased, rtol=1e-6)
    assert int(bn.num_batches_tracked) == 1
    assert bn.running_mean.dtype == np.float32


def test_momentum_none_is_cumulative_average():
    bn = nn.BatchNorm1d(3, momentum=None)
    xs = [rng(s).normal(s, 1.0 + s, (5, 3)) for s in range(4)]
    for x in xs:
        bn(x)
    np.testing.assert_allclose(bn.running_mean, np.mean([x.mean(0) for x in xs], axis=0),
                               rtol=1e-5)
    np.testing.assert_allclose(bn.running_var,
                               np.mean([x.var(0, ddof=1) for x in xs], axis=0), rtol=1e-5)
    assert int(bn.num_batches_tracked) == 4


def test_eval_uses_running_stats_and_does_not_update():
    bn = with_affine(nn.BatchNorm1d(3)).to(np.float64)
    bn.running_mean = np.array([1.0, -2.0, 0.5])
    bn.running_var = np.array([4.0, 0.25, 1.0])
    bn.eval()
    x = rng().standard_normal((2, 3))
    y = bn(x)
    np.testing.assert_allclose(
        y, bn.weight.data * (x - bn.running_mean) / np.sqrt(bn.running_var + 1e-5)
        + bn.bias.data, rtol=1e-12)
    np.testing.assert_array_equal(bn.running_mean, [1.0, -2.0, 0.5])
    assert int(bn.num_batches_tracked) == 0
    # batch size 1 is fine in eval mode
    assert bn(x[:1]).shape == (1, 3)


def test_no_tracking_uses_batch_stats_in_eval():
    bn = nn.BatchNorm1d(3, track_running_stats=False, affine=False)
    assert bn.running_mean is None and "running_mean" not in bn.state_dict()
    x = rng().standard_normal((6, 3))
    np.testing.assert_allclose(bn.eval()(x), bn.train()(x), rtol=0)


def test_state_dict_keys_as_pytorch():
    assert list(nn.BatchNorm2d(4).state_dict()) == [
        "weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert nn.BatchNorm2d(4).num_parameters() == 8


# -- gradient checks ----------------------------------------------------------------------
@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm1d, (5, 3)), (nn.BatchNorm1d, (3, 2, 4)),
                                       (nn.BatchNorm2d, (2, 3, 3, 2)),
                                       (nn.BatchNorm3d, (2, 2, 2, 2, 2))])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradcheck(cls, shape, mode):
    refdl.manual_seed(0)
    bn = with_affine(cls(shape[1]))
    bn.running_mean[...] = rng(3).standard_normal(shape[1])
    bn.running_var[...] = rng(4).uniform(0.5, 2.0, shape[1])
    bn.train(mode == "train")
    x = rng(2).normal(1.0, 2.0, shape)
    check_module(bn, x)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradcheck_without_affine(mode):
    bn = nn.BatchNorm2d(2, affine=False).train(mode == "train")
    check_module(bn, rng().standard_normal((3, 2, 2, 2)))


def test_gradcheck_batch_size_one_where_defined():
    # BatchNorm2d with N = 1 still has H*W > 1 values per channel in training.
    bn = with_affine(nn.BatchNorm2d(3))
    check_module(bn, rng().standard_normal((1, 3, 2, 3)))
    # BatchNorm1d with N = 1: only defined in eval mode.
    bn1 = with_affine(nn.BatchNorm1d(3)).eval()
    check_module(bn1, rng().standard_normal((1, 3)))


def test_compact_backward_equals_elementwise_chain():
    """The compact formula against the step-by-step chain rule of CS231n."""
    x = rng().standard_normal((6, 4))
    g = rng(1).standard_normal((6, 4))
    bn = with_affine(nn.BatchNorm1d(4)).to(np.float64)
    bn(x)
    dx = bn.backward(g)
    gamma, eps, N = bn.weight.data, bn.eps, x.shape[0]
    mu = x.mean(0)
    xc = x - mu
    var = (xc ** 2).mean(0)
    std = np.sqrt(var + eps)
    dxhat = g * gamma
    dvar = (dxhat * xc).sum(0) * -0.5 * std ** -3
    dmu = -(dxhat / std).sum(0) + dvar * (-2 * xc).mean(0)
    dx_chain = dxhat / std + dvar * 2 * xc / N + dmu / N
    np.testing.assert_allclose(dx, dx_chain, rtol=1e-10, atol=1e-12)


# -- errors -------------------------------------------------------------------------------
def test_training_with_one_value_per_channel_is_an_error():
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when "
                                         r"training, got input size \(1, 3\)"):
        nn.BatchNorm1d(3)(np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"BatchNorm2d\(2.*\(1, 2, 1, 1\)"):
        nn.BatchNorm2d(2)(np.ones((1, 2, 1, 1)))


def test_wrong_channels_and_rank():
    with pytest.raises(ValueError, match=r"BatchNorm2d\(4, .*expected input with 4 channels.*"
                                         r"\(2, 3, 5, 5\)"):
        nn.BatchNorm2d(4)(np.ones((2, 3, 5, 5)))
    with pytest.raises(ValueError, match=r"expected a 5-D input \(N, C, D, H, W\), got shape "
                                         r"\(2, 3, 5, 5\)"):
        nn.BatchNorm3d(3)(np.ones((2, 3, 5, 5)))
    with pytest.raises(TypeError, match="floating-point"):
        nn.BatchNorm1d(3)(np.ones((2, 3), dtype=int))
    with pytest.raises(ValueError, match="backward: expected grad_out of shape"):
        bn = nn.BatchNorm1d(3)
        bn(np.ones((2, 3)))
        bn.backward(np.ones((3, 3)))


def test_eps_zero_constant_channel_gives_nan_without_warning():
    # PyTorch returns nan here too; refdl must not raise a RuntimeWarning doing so.
    y = nn.BatchNorm1d(1, eps=0.0, affine=False)(np.ones((3, 1)))
    assert np.all(np.isnan(y))
