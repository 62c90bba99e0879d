r"""Layer normalisation (PyTorch's ``nn.LayerNorm``).

BatchNorm lives in batchnorm.py, GroupNorm and InstanceNorm in instancenorm.py.
"""
from typing import NamedTuple

import numpy as np

from .. import init
from .validate import check_float, check_grad, layer_name
from .module import Module, Parameter

__all__ = ["LayerNorm"]


class LayerNormCache(NamedTuple):
    """One call of LayerNorm: x_hat and 1/sigma, all the backward needs (layernorm.md)."""
    x_hat: np.ndarray         # (x - mu) / sigma, the input's shape
    inv_sigma: np.ndarray     # 1 / sigma, shape (*, 1, ..., 1)
    axes: tuple               # the normalised (trailing) axes


class LayerNorm(Module):
    r"""Normalise each sample over its trailing ``normalized_shape`` dimensions.

    Shapes: x (*, *normalized_shape) -> y of the same shape; weight (gamma) and bias (beta)
    have shape ``normalized_shape``. For each sample (each index of the leading *), with
    the K = prod(normalized_shape) entries of its trailing block:

        mu = mean(x)   var = mean((x - mu)^2)  (biased)   sigma = sqrt(var + eps)
        x_hat = (x - mu) / sigma                y = gamma * x_hat + beta

    Backward, with g = dL/dy, g_hat = g * gamma and means over the same K entries:

        dL/dx     = (1/sigma) (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat))
        dL/dgamma = sum over the leading dims of g * x_hat
        dL/dbeta  = sum over the leading dims of g

    Unlike BatchNorm, the statistics are per sample, so training and evaluation agree
    and there are no running statistics. ``elementwise_affine=False`` drops gamma and
    beta; ``bias=False`` drops beta only. A training-mode forward records
    ``LayerNormCache(x_hat, inv_sigma, axes)``. Derivation: docs/derivations/layernorm.md.
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=np.float32):
        super().__init__()
        if isinstance(normalized_shape, (int, np.integer)):
            normalized_shape = (int(normalized_shape),)
        self.normalized_shape = tuple(int(s) for s in normalized_shape)
        if not self.normalized_shape or any(s <= 0 for s in self.normalized_shape):
            raise ValueError(f"LayerNorm: normalized_shape must be a non-empty tuple of "
                             f"positive sizes, got {normalized_shape}")
        self.eps = float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        if self.elementwise_affine:
            self.weight = Parameter(np.empty(self.normalized_shape, dtype=dtype))
            if bias:
                self.bias = Parameter(np.empty(self.normalized_shape, dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        """gamma = 1, beta = 0 (PyTorch's initialisation)."""
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")

    def _axes(self, x):
        k = len(self.normalized_shape)
        if x.ndim < k or tuple(x.shape[x.ndim - k:]) != self.normalized_shape:
            raise ValueError(f"{layer_name(self)}: expected input of shape (*, "
                             f"{', '.join(map(str, self.normalized_shape))}), "
                             f"got {tuple(x.shape)}")
        return tuple(range(x.ndim - k, x.ndim))

    def forward(self, x):
        x = check_float(self, x)
        axes = self._axes(x)
        mu = np.mean(x, axis=axes, keepdims=True)
        xc = x - mu
        var = np.mean(xc * xc, axis=axes, keepdims=True)
        inv_sigma = 1.0 / np.sqrt(var + np.asarray(self.eps, dtype=x.dtype))
        x_hat = xc * inv_sigma
        if self.recording:
            self.save_for_backward(LayerNormCache(x_hat=x_hat, inv_sigma=inv_sigma, axes=axes))
        y = x_hat
        if self.weight is not None:
            y = y * self.weight.data
        if self.bias is not None:
            y = y + self.bias.data
        return y

    def backward(self, grad_out):
        c = self.pop_saved()
        x_hat, axes = c.x_hat, c.axes
        g = check_grad(self, grad_out, x_hat.shape)
        lead = tuple(range(x_hat.ndim - len(axes)))
        if self.weight is not None and self.weight.requires_grad:
            self.weight.grad += np.sum(g * x_hat, axis=lead)
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += np.sum(g, axis=lead)
        g_hat = g * self.weight.data if self.weight is not None else g
        return c.inv_sigma * (g_hat - np.mean(g_hat, axis=axes, keepdims=True)
                              - x_hat * np.mean(g_hat * x_hat, axis=axes, keepdims=True))
