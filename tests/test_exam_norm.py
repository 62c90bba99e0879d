"""Exam items norm-1..3 (paper 001 Q8) and cnn-6..9 (paper 004 Q3, paper 003 Q10(c)),
each computed with refdl."""
import numpy as np
import pytest

import refdl
from refdl import nn


# -- norm ---------------------------------------------------------------------------------
def _layernorm(num_features, eps):
    """LayerNorm over the feature axis, no affine."""
    if hasattr(nn, "LayerNorm"):
        return nn.LayerNorm(num_features, eps=eps, elementwise_affine=False)
    return nn.GroupNorm(1, num_features, eps=eps, affine=False)   # same map on (N, C)


def test_norm_1_layernorm_of_2x2():
    X = np.array([[8.0, 2.0], [0.0, 4.0]])
    Y = _layernorm(2, eps=0.0)(X)
    # row 1: mean 5, var 9 -> (+3, -3)/3; row 2: mean 2, var 4 -> (-2, +2)/2
    np.testing.assert_allclose(Y, [[1.0, -1.0], [-1.0, 1.0]], rtol=0, atol=1e-15)
    # the same as GroupNorm with one group, computed independently
    np.testing.assert_allclose(Y, nn.GroupNorm(1, 2, eps=0.0, affine=False)(X), atol=1e-15)


def test_norm_2_batchnorm_training_statistics():
    X = np.array([[2.0, 3.0, 4.0], [1.0, 2.0, 2.0]])
    bn = nn.BatchNorm1d(3, eps=0.0, affine=False).to(np.float64)
    Y = bn(X)
    np.testing.assert_allclose(Y, [[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], rtol=0, atol=1e-15)
    # with two examples every column is +-1 whatever its values (x - mu = +-sigma)
    # running stats updated with the unbiased variance: column 0 var = 0.25 -> 0.5
    np.testing.assert_allclose(bn.running_mean, 0.1 * np.array([1.5, 2.5, 3.0]))
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * np.array([0.5, 0.5, 2.0]))


def test_norm_3_batchnorm_forgotten_in_eval_mode_is_identity():
    """Paper: answer C. A BatchNorm left in eval mode during 'training' with fresh running
    stats (0, 1), eps = 0, no affine, passes its input through unchanged and never
    updates the running stats (option A is wrong: nothing is normalised)."""
    bn = nn.BatchNorm2d(4, eps=0.0, affine=False).to(np.float64).eval()
    x = np.random.default_rng(0).normal(5.0, 3.0, (8, 4, 3, 3))
    for _ in range(3):                            # several "training" steps
        y = bn(x)
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(bn.backward(np.ones_like(x)), np.ones_like(x))
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    assert int(bn.num_batches_tracked) == 0
    # the same layer in training mode does normalise (mean 0, var 1 per channel)
    y = bn.train()(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, atol=1e-12)
