"""Linear (affine) layers and the shape-only layers Identity and Flatten."""
import math
from typing import NamedTuple

import numpy as np

from .. import init
from ..threads import serial_below
from .validate import check_float, check_grad, layer_name
from .module import Module, Parameter

__all__ = ["Linear", "Identity", "Flatten", "Unflatten"]


class LinearCache(NamedTuple):
    """One call of Linear: its input x (the only thing dW and dx need besides W)."""
    x: np.ndarray


class ReshapeCache(NamedTuple):
    """One call of Flatten/Unflatten: the input's shape, to reshape dL/dy back."""
    shape: tuple


class Linear(Module):
    r"""Affine map  y = x W^T + b  (PyTorch's ``nn.Linear``).

    Shapes: x (*, in_features), W (out_features, in_features), b (out_features,)
    -> y (*, out_features); * is any number of leading dimensions (N for a batch).

    Backward, with g = dL/dy flattened to (M, out) and x to (M, in):
        dL/dx = g W          dL/dW = g^T x          dL/db = sum_m g_m
    Derivation: docs/derivations/linear.md

    Initialisation (PyTorch's default): W, b ~ U(-1/sqrt(in), 1/sqrt(in)), i.e.
    ``kaiming_uniform_(W, a=sqrt(5))``.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, generator=None):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        if self.in_features <= 0 or self.out_features <= 0:
            raise ValueError(f"Linear: in_features and out_features must be positive, got "
                             f"({in_features}, {out_features})")
        self.weight = Parameter(np.empty((self.out_features, self.in_features), dtype=dtype))
        if bias:
            self.bias = Parameter(np.empty(self.out_features, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters(generator)

    def reset_parameters(self, generator=None):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=generator)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound, generator=generator)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")

    def forward(self, x):
        x = check_float(self, x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{layer_name(self)}: expected input of shape (*, "
                             f"{self.in_features}), got {tuple(x.shape)}")
        if self.recording:
            self.save_for_backward(LinearCache(x=x))
        # one (M, in) @ (in, out) product for any number of leading dimensions: NumPy's
        # matmul on a 3-D x loops over the batch in small products (slow, and it wakes the
        # BLAS threads for each); a small product runs on one BLAS thread (refdl/threads.py)
        x2 = x.reshape(-1, self.in_features)
        with serial_below(x2.size * self.out_features):
            y = x2 @ self.weight.data.T
        y = y.reshape(x.shape[:-1] + (self.out_features,))
        if self.bias is not None:
            y = y + self.bias.data
        return y

    accepts_input_grad = True

    def backward(self, grad_out, input_grad=True):
        """dW += g^T x, db += sum g; returns dx = g W, or None with ``input_grad=False``."""
        x = self.pop_saved().x
        g = check_grad(self, grad_out, x.shape[:-1] + (self.out_features,))
        g2 = g.reshape(-1, self.out_features)
        x2 = x.reshape(-1, self.in_features)
        dx = None
        with serial_below(x2.size * self.out_features):
            if self.weight.requires_grad:
                self.weight.grad += g2.T @ x2
            if input_grad:
                dx = (g2 @ self.weight.data).reshape(x.shape)
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += g2.sum(axis=0)
        return dx


class Identity(Module):
    """y = x;  dL/dx = dL/dy. Accepts and ignores constructor arguments, like PyTorch."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x

    def backward(self, grad_out):
        return grad_out


class Flatten(Module):
    """Merge dimensions start_dim..end_dim into one (default: all but the batch).

    (N, C, H, W) -> (N, C*H*W).  Backward reshapes dL/dy back to the input's shape.
    """

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"

    def forward(self, x):
        x = np.asarray(x)
        nd = x.ndim
        s = self.start_dim % nd if nd else 0
        e = self.end_dim % nd if nd else 0
        if nd == 0 or s > e:
            raise ValueError(f"{layer_name(self)}: cannot flatten dims {self.start_dim}.."
                             f"{self.end_dim} of an input of shape {tuple(x.shape)}")
        if self.recording:
            self.save_for_backward(ReshapeCache(shape=x.shape))
        # the flattened size explicitly: -1 is ambiguous for an empty batch (N = 0)
        return x.reshape(x.shape[:s] + (int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:])

    def backward(self, grad_out):
        return np.asarray(grad_out).reshape(self.pop_saved().shape)


class Unflatten(Module):
    """Split dimension ``dim`` into ``unflattened_size``; the inverse of Flatten.

    (N, C*H*W) -> (N, C, H, W) for dim=1. Backward reshapes dL/dy back to the input's shape.
    """

    def __init__(self, dim, unflattened_size):
        super().__init__()
        self.dim = dim
        self.unflattened_size = tuple(unflattened_size)

    def extra_repr(self):
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"

    def forward(self, x):
        d = self.dim % x.ndim
        if int(np.prod(self.unflattened_size)) != x.shape[d]:
            raise ValueError(f"{layer_name(self)}: dimension {self.dim} of input "
                             f"{tuple(x.shape)} has size {x.shape[d]}, which is not "
                             f"{self.unflattened_size} flattened")
        if self.recording:
            self.save_for_backward(ReshapeCache(shape=x.shape))
        return x.reshape(x.shape[:d] + self.unflattened_size + x.shape[d + 1:])

    def backward(self, grad_out):
        return np.asarray(grad_out).reshape(self.pop_saved().shape)
