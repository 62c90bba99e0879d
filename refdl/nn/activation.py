r"""Activation functions as layers (PyTorch's names, arguments and semantics).

Every activation here is elementwise except Softmax and LogSoftmax, which act along one
dimension. Shapes: input (*) -> output (*), the same shape; dtype follows the input.
Backward, with g = dL/dy, is the elementwise product g * f'(x) (the Jacobian is diagonal),
except for the softmaxes, whose Jacobian couples the entries along ``dim``.
All of them are numerically stable: inputs of +-1e4 (and far beyond) give finite outputs
and gradients without floating-point warnings.
Derivations: docs/derivations/activation.md and docs/derivations/softmax.md.
"""
import numpy as np

from ..functional import activation as F
from ._validate import check_float, check_forward_called, check_grad, layer_name
from .module import Module

__all__ = ["ReLU", "LeakyReLU", "ELU", "Sigmoid", "Tanh", "Softplus", "GELU", "SiLU",
           "Softmax", "LogSoftmax"]


class _Elementwise(Module):
    """Shared plumbing: cache the input (and output), check shapes, apply g * f'(x)."""

    def __init__(self):
        super().__init__()
        self._x = None
        self._y = None

    def forward(self, x):
        x = check_float(self, x)
        y = self._f(x)
        self._x, self._y = x, y
        return y

    def backward(self, grad_out):
        check_forward_called(self, self._x)
        g = check_grad(self, grad_out, self._x.shape)
        return g * self._df(self._x, self._y)

    def _f(self, x):
        raise NotImplementedError

    def _df(self, x, y):
        raise NotImplementedError


class ReLU(_Elementwise):
    r"""Rectified linear unit  y = max(x, 0).

    Shapes: x (*) -> y (*).
    Backward: dL/dx = g * 1[x > 0]  (the subgradient 0 is used at x = 0, as PyTorch).
    ``inplace`` is accepted for compatibility and ignored (refdl never overwrites inputs).
    """

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def _f(self, x):
        return np.maximum(x, 0)

    def _df(self, x, y):
        return (x > 0).astype(x.dtype)


class LeakyReLU(_Elementwise):
    r"""y = x if x >= 0 else negative_slope * x.

    Shapes: x (*) -> y (*).
    Backward: dL/dx = g * (1 if x > 0 else negative_slope)  (negative_slope at x = 0,
    as PyTorch). ``negative_slope`` may be any float (also > 1 or negative).
    """

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = float(negative_slope)
        if not np.isfinite(self.negative_slope):
            raise ValueError(f"LeakyReLU: negative_slope must be a finite number, got "
                             f"{negative_slope!r}")
        self.inplace = inplace

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"

    def _f(self, x):
        return F.leaky_relu(x, self.negative_slope).astype(x.dtype, copy=False)

    def _df(self, x, y):
        return np.where(x > 0, 1.0, self.negative_slope).astype(x.dtype)


class ELU(_Elementwise):
    r"""Exponential linear unit  y = x if x > 0 else alpha (exp(x) - 1).

    Shapes: x (*) -> y (*).
    Backward: dL/dx = g * (1 if x > 0 else alpha exp(x) = y + alpha).
    exp is only taken of min(x, 0), so large positive x cannot overflow.
    """

    def __init__(self, alpha=1.0, inplace=False):
        super().__init__()
        self.alpha = float(alpha)
        self.inplace = inplace

    def extra_repr(self):
        return f"alpha={self.alpha}"

    def _f(self, x):
        return F.elu(x, self.alpha).astype(x.dtype, copy=False)

    def _df(self, x, y):
        return np.where(x > 0, 1.0, y + self.alpha).astype(x.dtype, copy=False)


class Sigmoid(_Elementwise):
    r"""Logistic sigmoid  y = 1 / (1 + exp(-x)).

    Shapes: x (*) -> y (*).
    Backward: dL/dx = g * y (1 - y)  (at most 1/4, reached at x = 0: the source of
    vanishing gradients in deep sigmoid networks).
    Evaluated as exp(min(x, 0)) / (1 + exp(-|x|)): no overflow for any x.
    """

    def _f(self, x):
        return F.sigmoid(x).astype(x.dtype, copy=False)

    def _df(self, x, y):
        return y * (1 - y)


class Tanh(_Elementwise):
    r"""y = tanh(x).

    Shapes: x (*) -> y (*).
    Backward: dL/dx = g * (1 - y^2).
    """

    def _f(self, x):
        return np.tanh(x)

    def _df(self, x, y):
        return 1 - y * y


class Softplus(_Elementwise):
    r"""y = (1/beta) log(1 + exp(beta x)), and y = x where beta x > threshold (PyTorch).

    Shapes: x (*) -> y (*).
    Backward: dL/dx = g * sigmoid(beta x), and g where beta x > threshold (the linear
    branch, exactly as PyTorch's backward).
    Evaluated as (max(bx, 0) + log1p(exp(-|bx|))) / beta: no overflow.
    """

    def __init__(self, beta=1.0, threshold=20.0):
        super().__init__()
        self.beta = float(beta)
        self.threshold = float(threshold)
        if not (np.isfinite(self.beta) and self.beta != 0) or np.isnan(self.threshold):
            raise ValueError(f"Softplus: beta must be a finite non-zero number and threshold "
                             f"a number, got beta={beta!r}, threshold={threshold!r} "
                             f"(softplus(x) = log(1 + exp(beta x)) / beta)")

    def extra_repr(self):
        return f"beta={self.beta}, threshold={self.threshold}"

    def _f(self, x):
        return F.softplus(x, self.beta, self.threshold).astype(x.dtype, copy=False)

    def _df(self, x, y):
        bx = self.beta * x
        return np.where(bx > self.threshold, 1.0, F.sigmoid(bx)).astype(x.dtype, copy=False)


class GELU(_Elementwise):
    r"""Gaussian error linear unit  y = x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2.

    With ``approximate='tanh'``: y = x/2 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
    Shapes: x (*) -> y (*).
    Backward: dL/dx = g * (Phi(x) + x phi(x)), phi(x) = exp(-x^2/2) / sqrt(2 pi);
    tanh form: dL/dx = g * (1/2 (1 + t) + x/2 (1 - t^2) sqrt(2/pi) (1 + 3*0.044715 x^2)),
    t = tanh(u).
    """

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def extra_repr(self):
        return f"approximate={self.approximate!r}"

    def _f(self, x):
        return F.gelu(x, self.approximate).astype(x.dtype, copy=False)

    def _df(self, x, y):
        return F.gelu_grad(x, self.approximate).astype(x.dtype, copy=False)


class SiLU(_Elementwise):
    r"""Sigmoid linear unit (swish)  y = x sigma(x).

    Shapes: x (*) -> y (*).
    Backward: dL/dx = g * (s + x s (1 - s)) = g * s (1 + x (1 - s)),  s = sigma(x).
    """

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def _f(self, x):
        return F.silu(x).astype(x.dtype, copy=False)

    def _df(self, x, y):
        s = F.sigmoid(x).astype(x.dtype, copy=False)
        return s * (1 + x * (1 - s))


class _AlongDim(Module):
    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim
        self._y = None

    def extra_repr(self):
        return f"dim={self.dim}"

    def _axis(self, x):
        if self.dim is None:
            raise ValueError(f"{layer_name(self)}: dim=None is not supported; pass the "
                             "dimension to normalise over (PyTorch's implicit choice is "
                             "deprecated)")
        if x.ndim == 0:
            raise ValueError(f"{layer_name(self)}: expected an input with at least one "
                             "dimension, got a 0-d array")
        if not -x.ndim <= self.dim < x.ndim:
            raise ValueError(f"{layer_name(self)}: dim {self.dim} is out of range for an "
                             f"input of shape {tuple(x.shape)} ({x.ndim} dimensions)")
        return self.dim % x.ndim


class Softmax(_AlongDim):
    r"""y_i = exp(x_i) / sum_j exp(x_j), the sum along ``dim``.

    Shapes: x (*) -> y (*), each slice along ``dim`` sums to 1.
    ``dim`` defaults to -1 (PyTorch requires it in practice: its ``dim=None`` picks a
    dimension by a deprecated rule; refdl uses the last dimension instead).
    Backward (Jacobian dy_i/dx_j = y_i (delta_ij - y_j)):
        dL/dx = y * (g - sum(g * y, dim))
    Evaluated with the maximum along ``dim`` subtracted: no overflow.
    """

    def forward(self, x):
        x = check_float(self, x)
        self._axis_ = self._axis(x)
        self._y = F.softmax(x, axis=self._axis_)
        return self._y

    def backward(self, grad_out):
        y = self._y
        check_forward_called(self, y)
        g = check_grad(self, grad_out, y.shape)
        return y * (g - np.sum(g * y, axis=self._axis_, keepdims=True))


class LogSoftmax(_AlongDim):
    r"""y_i = x_i - log sum_j exp(x_j), the sum along ``dim`` (default -1, see Softmax).

    Shapes: x (*) -> y (*).
    Backward (Jacobian dy_i/dx_j = delta_ij - softmax(x)_j):
        dL/dx = g - softmax(x) * sum(g, dim),   softmax(x) = exp(y).
    """

    def forward(self, x):
        x = check_float(self, x)
        self._axis_ = self._axis(x)
        self._y = F.log_softmax(x, axis=self._axis_)
        return self._y

    def backward(self, grad_out):
        y = self._y
        check_forward_called(self, y)
        g = check_grad(self, grad_out, y.shape)
        return g - np.exp(y) * np.sum(g, axis=self._axis_, keepdims=True)
