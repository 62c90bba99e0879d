"""Add, Concat and the residual blocks: forward, fan-in/fan-out backward, gradient checks."""
import numpy as np
import pytest

import refdl
from refdl import nn
from refdl.gradcheck import check_function, check_module


def rng(s=7):
    return np.random.default_rng(s)


def needs(*names):
    missing = [n for n in names if not hasattr(nn, n)]
    return pytest.mark.skipif(bool(missing), reason=f"needs nn.{', nn.'.join(missing)}")


# -- Add, Concat ---------------------------------------------------------------------------
def test_add_forward_backward():
    a, b, c = (rng(s).standard_normal((2, 3)) for s in (1, 2, 3))
    add = nn.Add()
    np.testing.assert_array_equal(add(a, b, c), a + b + c)
    ga, gb, gc = add.backward(np.ones((2, 3)))
    assert all(np.array_equal(g, np.ones((2, 3))) for g in (ga, gb, gc))
    check_module(nn.Add(), a, b)


def test_concat_forward_backward():
    a = rng(1).standard_normal((2, 3, 4))
    b = rng(2).standard_normal((2, 1, 4))
    cat = nn.Concat(dim=1)
    y = cat(a, b)
    assert y.shape == (2, 4, 4)
    np.testing.assert_array_equal(y[:, :3], a)
    check_module(nn.Concat(1), a, b)
    check_module(nn.Concat(-1), a, rng(3).standard_normal((2, 3, 2)))


def test_concat_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"Concat\(dim=1\): inputs must have the same shape "
                                         r"except along dim 1, got input 0 \(2, 4, 8, 8\) and "
                                         r"input 1 \(2, 4, 7, 7\)"):
        nn.Concat(1)(np.ones((2, 4, 8, 8)), np.ones((2, 4, 7, 7)))
    with pytest.raises(ValueError, match=r"Add\(\): all inputs must have the same shape, got "
                                         r"input 0 \(2, 3\) and input 1 \(3, 2\)"):
        nn.Add()(np.ones((2, 3)), np.ones((3, 2)))


def test_fan_out_gradients_are_summed():
    """y = Add(x, Linear(x)): x is used twice, dL/dx = g + g W (the two paths summed)."""
    refdl.manual_seed(0)
    lin = nn.Linear(3, 3).to(np.float64)
    add = nn.Add()
    x = rng().standard_normal((4, 3))

    def f(x):
        return add(x, lin(x))

    def vjp(g, x):
        f(x)
        gx_direct, gx_lin = add.backward(g)
        return gx_direct + lin.backward(gx_lin)

    check_function(f, [x], vjp)
