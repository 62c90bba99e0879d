"""TEMPORARY stand-ins for LayerNorm and Dropout, used by transformer.py only until the
real ones (refdl/nn/normalization.py, refdl/nn/dropout.py, helper actloss) are on main.
Same constructor arguments, parameter names and semantics as PyTorch's. Delete this file
once ``from .normalization import LayerNorm`` and ``from .dropout import Dropout`` work.
"""
import numpy as np

from ..random import get_rng
from ._validate import check_float, check_forward_called, check_grad
from .module import Module, Parameter


class LayerNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last len(shape) axes."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=np.float32):
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = float(eps)
        self.weight = Parameter(np.ones(self.normalized_shape, dtype=dtype))
        self.bias = Parameter(np.zeros(self.normalized_shape, dtype=dtype))
        self._cache = None

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"

    def forward(self, x):
        x = check_float(self, x)
        axes = tuple(range(x.ndim - len(self.normalized_shape), x.ndim))
        mu = x.mean(axis=axes, keepdims=True)
        xc = x - mu
        inv = 1.0 / np.sqrt((xc * xc).mean(axis=axes, keepdims=True) + self.eps)
        xh = xc * inv
        self._cache = (xh, inv, axes)
        return xh * self.weight.data + self.bias.data

    def backward(self, grad_out):
        check_forward_called(self, self._cache)
        xh, inv, axes = self._cache
        g = check_grad(self, grad_out, xh.shape)
        lead = tuple(range(xh.ndim - len(self.normalized_shape)))
        self.weight.grad += (g * xh).sum(axis=lead)
        self.bias.grad += g.sum(axis=lead)
        gx = g * self.weight.data
        return inv * (gx - gx.mean(axis=axes, keepdims=True)
                      - xh * (gx * xh).mean(axis=axes, keepdims=True))


class Dropout(Module):
    """Inverted dropout: y = x * m / (1 - p), m ~ Bernoulli(1 - p), in training mode."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        self.p = float(p)
        self._scale = None

    def extra_repr(self):
        return f"p={self.p}"

    def forward(self, x):
        x = check_float(self, x)
        if not self.training or self.p == 0.0:
            self._scale = 1.0
            return x
        if self.p >= 1.0:
            self._scale = np.zeros_like(x)
        else:
            self._scale = (get_rng().random(x.shape) >= self.p) / (1.0 - self.p)
        return x * self._scale

    def backward(self, grad_out):
        check_forward_called(self, self._scale)
        return grad_out * self._scale
