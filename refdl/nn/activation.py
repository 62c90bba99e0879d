r"""Activation functions as layers (PyTorch's names, arguments and semantics).

Every activation here is elementwise except Softmax and LogSoftmax, which act along one
dimension. Shapes: input (*) -> output (*), the same shape; dtype follows the input.
Backward, with g = dL/dy, is the elementwise product g * f'(x) (the Jacobian is diagonal),
except for the softmaxes, whose Jacobian couples the entries along ``dim``.
All of them are numerically stable: inputs of +-1e4 (and far beyond) give finite outputs
and gradients without floating-point warnings.
Derivations: docs/derivations/activation.md and docs/derivations/softmax.md.
"""
from typing import NamedTuple

import numpy as np

from ..functional import activation as F
from .validate import check_float, check_grad, layer_name
from .module import Module, Parameter

__all__ = ["ReLU", "LeakyReLU", "ELU", "Sigmoid", "Tanh", "Softplus", "GELU", "SiLU",
           "Softmax", "LogSoftmax", "PReLU", "ReLU6", "Hardtanh", "Hardsigmoid", "Hardswish",
           "SELU", "CELU", "Mish", "LogSigmoid", "Softsign", "Threshold", "GLU", "Softmin"]


class ActivationCache(NamedTuple):
    """One call of an elementwise activation: its input x and output y = f(x)."""
    x: np.ndarray
    y: np.ndarray


class SoftmaxCache(NamedTuple):
    """One call of Softmax (y = softmax(x)) or LogSoftmax (y = log softmax(x)) along axis."""
    y: np.ndarray
    axis: int


class _Elementwise(Module):
    """Shared plumbing of y = f(x): record (x, y), check shapes, apply dL/dx = g * f'(x)."""

    def forward(self, x):
        x = check_float(self, x)
        y = self._f(x)
        if self.recording:
            self.save_for_backward(ActivationCache(x=x, y=y))
        return y

    def backward(self, grad_out):
        c = self.pop_saved()
        g = check_grad(self, grad_out, c.x.shape)
        return g * self._df(c.x, c.y)

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
        axis = self._axis(x)
        y = F.softmax(x, axis=axis)
        if self.recording:
            self.save_for_backward(SoftmaxCache(y=y, axis=axis))
        return y

    def backward(self, grad_out):
        c = self.pop_saved()
        g = check_grad(self, grad_out, c.y.shape)
        return F.softmax_backward(c.y, g, axis=c.axis)


class LogSoftmax(_AlongDim):
    r"""y_i = x_i - log sum_j exp(x_j), the sum along ``dim`` (default -1, see Softmax).

    Shapes: x (*) -> y (*).
    Backward (Jacobian dy_i/dx_j = delta_ij - softmax(x)_j):
        dL/dx = g - softmax(x) * sum(g, dim),   softmax(x) = exp(y).
    """

    def forward(self, x):
        x = check_float(self, x)
        axis = self._axis(x)
        y = F.log_softmax(x, axis=axis)
        if self.recording:
            self.save_for_backward(SoftmaxCache(y=y, axis=axis))
        return y

    def backward(self, grad_out):
        c = self.pop_saved()
        g = check_grad(self, grad_out, c.y.shape)
        return g - np.exp(c.y) * np.sum(g, axis=c.axis, keepdims=True)


# -- the rest of torch.nn's activations ---------------------------------------------------

class PReLU(Module):
    r"""Parametric ReLU  y = max(0, x) + a min(0, x), with a learned slope a (He et al., 2015).

    ``num_parameters`` = 1 (one a shared by all channels) or C (one a per channel, the
    channel being dimension 1 of an input (N, C, *), or the only dimension of a 1-D
    input); ``init`` = 0.25 as in PyTorch. Shapes: x (*) -> y (*).
    Backward, with g = dL/dy:
        dL/dx = g * (1 if x > 0 else a)         dL/da_c = sum over all but c of g * min(0, x)
    Derivation: docs/derivations/activation.md (PReLU).
    """

    def __init__(self, num_parameters=1, init=0.25, dtype=np.float32):
        super().__init__()
        if not isinstance(num_parameters, (int, np.integer)) or num_parameters < 1:
            raise ValueError(f"PReLU: num_parameters must be a positive int, got "
                             f"{num_parameters!r}")
        self.num_parameters = int(num_parameters)
        self.weight = Parameter(np.full(self.num_parameters, init, dtype=dtype))

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"

    def _slope(self, x):
        """a broadcast against x: a scalar, or a_c along the channel dimension."""
        a = self.weight.data
        if self.num_parameters == 1:
            return a.reshape(()).astype(x.dtype, copy=False)
        ch = 0 if x.ndim == 1 else 1
        if x.ndim == 0 or x.shape[ch] != self.num_parameters:
            raise ValueError(f"{layer_name(self)}: expected {self.num_parameters} channels in "
                             f"dimension {ch} of the input, got shape {tuple(x.shape)}")
        shape = [1] * x.ndim
        shape[ch] = self.num_parameters
        return a.reshape(shape).astype(x.dtype, copy=False)

    def forward(self, x):
        x = check_float(self, x)
        a = self._slope(x)
        if self.recording:
            self.save_for_backward(ActivationCache(x=x, y=None))
        return np.where(x > 0, x, a * x)

    def backward(self, grad_out):
        x = self.pop_saved().x
        g = check_grad(self, grad_out, x.shape)
        a = self._slope(x)
        if self.weight.requires_grad:
            contrib = g * np.minimum(x, 0)
            if self.num_parameters == 1:
                self.weight.grad += contrib.sum()
            else:
                ch = 0 if x.ndim == 1 else 1
                axes = tuple(i for i in range(x.ndim) if i != ch)
                self.weight.grad += contrib.sum(axis=axes)
        return g * np.where(x > 0, 1, a).astype(x.dtype, copy=False)


class Hardtanh(_Elementwise):
    r"""y = clip(x, min_val, max_val).

    Shapes: x (*) -> y (*).
    Backward: dL/dx = g * 1[min_val < x < max_val]  (0 at the corners, as PyTorch).
    """

    def __init__(self, min_val=-1.0, max_val=1.0, inplace=False):
        super().__init__()
        if not min_val < max_val:
            raise ValueError(f"{type(self).__name__}: min_val must be below max_val, got "
                             f"{min_val} and {max_val}")
        self.min_val, self.max_val, self.inplace = float(min_val), float(max_val), inplace

    def extra_repr(self):
        return f"min_val={self.min_val}, max_val={self.max_val}"

    def _f(self, x):
        return np.clip(x, self.min_val, self.max_val).astype(x.dtype, copy=False)

    def _df(self, x, y):
        return ((x > self.min_val) & (x < self.max_val)).astype(x.dtype)


class ReLU6(Hardtanh):
    r"""y = min(max(x, 0), 6), i.e. Hardtanh(0, 6) (MobileNet).

    Shapes: x (*) -> y (*).  Backward: dL/dx = g * 1[0 < x < 6].
    """

    def __init__(self, inplace=False):
        super().__init__(0.0, 6.0, inplace)

    def extra_repr(self):
        return ""


class Hardsigmoid(_Elementwise):
    r"""y = 0 (x <= -3), 1 (x >= 3), x/6 + 1/2 between: a piecewise-linear sigmoid.

    Shapes: x (*) -> y (*).  Backward: dL/dx = g * (1/6 if -3 < x < 3 else 0).
    """

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def _f(self, x):
        return np.clip(x / 6 + 0.5, 0, 1).astype(x.dtype, copy=False)

    def _df(self, x, y):
        return np.where((x > -3) & (x < 3), 1 / 6, 0).astype(x.dtype)


class Hardswish(_Elementwise):
    r"""y = x * hardsigmoid(x) = 0 (x <= -3), x (x >= 3), x (x + 3) / 6 between (MobileNetV3).

    Shapes: x (*) -> y (*).
    Backward: dL/dx = g * (0 if x <= -3, x/3 + 1/2 if -3 < x < 3, 1 if x >= 3)
    (PyTorch's choice at the two kinks: the outer pieces' slopes).
    """

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def _f(self, x):
        return (x * np.clip(x / 6 + 0.5, 0, 1)).astype(x.dtype, copy=False)

    def _df(self, x, y):
        return np.where(x <= -3, 0, np.where(x < 3, x / 3 + 0.5, 1)).astype(x.dtype)


class SELU(_Elementwise):
    r"""Scaled ELU  y = scale (max(0, x) + min(0, alpha (exp(x) - 1))) (Klambauer et al.).

    alpha = 1.6732632423543772, scale = 1.0507009873554805: with LeCun-normal weights the
    activations keep mean 0 and variance 1 through the layers (self-normalising).
    Shapes: x (*) -> y (*).
    Backward: dL/dx = g * scale * (1 if x > 0 else alpha exp(x)).
    """

    alpha = 1.6732632423543772848170429916717
    scale = 1.0507009873554804934193349852946

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def _f(self, x):
        return (self.scale * F.elu(x, self.alpha)).astype(x.dtype, copy=False)

    def _df(self, x, y):
        return (self.scale * np.where(x > 0, 1.0, self.alpha * np.exp(np.minimum(x, 0)))
                ).astype(x.dtype, copy=False)


class CELU(_Elementwise):
    r"""y = max(0, x) + min(0, alpha (exp(x / alpha) - 1)): ELU made C^1 for every alpha.

    Shapes: x (*) -> y (*).
    Backward: dL/dx = g * (1 if x > 0 else exp(x / alpha)).
    """

    def __init__(self, alpha=1.0, inplace=False):
        super().__init__()
        if alpha == 0:
            raise ValueError("CELU: alpha must not be 0")
        self.alpha, self.inplace = float(alpha), inplace

    def extra_repr(self):
        return f"alpha={self.alpha}"

    def _f(self, x):
        neg = self.alpha * np.expm1(np.minimum(x, 0) / self.alpha)
        return np.where(x > 0, x, neg).astype(x.dtype, copy=False)

    def _df(self, x, y):
        return np.where(x > 0, 1.0, np.exp(np.minimum(x, 0) / self.alpha)).astype(x.dtype)


class Mish(_Elementwise):
    r"""y = x tanh(softplus(x)) (Misra, 2019).

    Shapes: x (*) -> y (*).
    Backward: with t = tanh(softplus(x)) and softplus' = sigmoid,
        dL/dx = g * (t + x sigmoid(x) (1 - t^2)).
    """

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def _f(self, x):
        return (x * np.tanh(F.softplus(x))).astype(x.dtype, copy=False)

    def _df(self, x, y):
        t = np.tanh(F.softplus(x))
        return (t + x * F.sigmoid(x) * (1 - t * t)).astype(x.dtype, copy=False)


class LogSigmoid(_Elementwise):
    r"""y = log sigmoid(x) = -softplus(-x).

    Shapes: x (*) -> y (*).  Backward: dL/dx = g * sigmoid(-x) = g * (1 - sigmoid(x)).
    """

    def _f(self, x):
        return F.log_sigmoid(x).astype(x.dtype, copy=False)

    def _df(self, x, y):
        return F.sigmoid(-x).astype(x.dtype, copy=False)


class Softsign(_Elementwise):
    r"""y = x / (1 + |x|).

    Shapes: x (*) -> y (*).  Backward: dL/dx = g / (1 + |x|)^2.
    """

    def _f(self, x):
        return x / (1 + np.abs(x))

    def _df(self, x, y):
        return 1 / (1 + np.abs(x)) ** 2


class Threshold(_Elementwise):
    r"""y = x if x > threshold else value.

    Shapes: x (*) -> y (*).  Backward: dL/dx = g * 1[x > threshold].
    """

    def __init__(self, threshold, value, inplace=False):
        super().__init__()
        self.threshold, self.value, self.inplace = float(threshold), float(value), inplace

    def extra_repr(self):
        return f"threshold={self.threshold}, value={self.value}"

    def _f(self, x):
        return np.where(x > self.threshold, x, self.value).astype(x.dtype, copy=False)

    def _df(self, x, y):
        return (x > self.threshold).astype(x.dtype)


class GLUCache(NamedTuple):
    """One call of GLU: the two halves a, b and sigma(b), and the split axis."""
    a: np.ndarray
    b: np.ndarray
    sigma_b: np.ndarray
    axis: int


class GLU(_AlongDim):
    r"""Gated linear unit  y = a * sigmoid(b), where (a, b) are the two halves of x along dim.

    Shapes: x (*, 2m, *) -> y (*, m, *) along ``dim`` (default -1, as PyTorch).
    Backward, with g = dL/dy and s = sigmoid(b):
        dL/da = g * s          dL/db = g * a * s (1 - s)       dL/dx = concat(dL/da, dL/db)
    """

    def forward(self, x):
        x = check_float(self, x)
        axis = self._axis(x)
        if x.shape[axis] % 2:
            raise ValueError(f"{layer_name(self)}: dimension {self.dim} of the input must "
                             f"have an even size, got shape {tuple(x.shape)}")
        a, b = np.split(x, 2, axis=axis)
        s = F.sigmoid(b).astype(x.dtype, copy=False)
        if self.recording:
            self.save_for_backward(GLUCache(a=a, b=b, sigma_b=s, axis=axis))
        return a * s

    def backward(self, grad_out):
        c = self.pop_saved()
        g = check_grad(self, grad_out, c.a.shape)
        return np.concatenate([g * c.sigma_b, g * c.a * c.sigma_b * (1 - c.sigma_b)],
                              axis=c.axis)


class Softmin(_AlongDim):
    r"""y = softmax(-x) along ``dim`` (default -1).

    Shapes: x (*) -> y (*).
    Backward (the softmax's, with the sign of the inner derivative):
        dL/dx = -y * (g - sum(g * y, dim)).
    """

    def forward(self, x):
        x = check_float(self, x)
        axis = self._axis(x)
        y = F.softmax(-x, axis=axis)
        if self.recording:
            self.save_for_backward(SoftmaxCache(y=y, axis=axis))
        return y

    def backward(self, grad_out):
        c = self.pop_saved()
        g = check_grad(self, grad_out, c.y.shape)
        return -F.softmax_backward(c.y, g, axis=c.axis)
