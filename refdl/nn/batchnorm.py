r"""Batch normalisation: BatchNorm1d, BatchNorm2d, BatchNorm3d (PyTorch's ``nn.BatchNorm*``).

Every channel c is normalised with statistics over the batch and the spatial positions,
i.e. over all axes except axis 1 (m = N * prod(spatial) values per channel):

    mu_c = (1/m) sum x            var_c = (1/m) sum (x - mu_c)^2      (biased)
    x_hat = (x - mu_c) / sqrt(var_c + eps)          y = gamma_c x_hat + beta_c

Backward, with g = dL/dy, g_hat = gamma g, sigma = sqrt(var + eps), sums over the m
values of a channel:

    dL/dbeta  = sum g              dL/dgamma = sum g x_hat
    dL/dx     = (1 / (m sigma)) (m g_hat - sum g_hat - x_hat sum(g_hat x_hat))   (training)
    dL/dx     = g_hat / sqrt(running_var + eps)                                  (eval)

A training-mode forward records ``BatchNormCache(x_hat, inv_std, batch_stats)`` with
inv_std = 1/sigma; in training mode the running statistics are updated whether or not the
call records (under ``refdl.no_grad()`` too, as PyTorch). Derivation:
docs/derivations/batchnorm.md
"""
from typing import NamedTuple

import numpy as np

from .validate import check_float, check_grad, layer_name
from .module import Module, Parameter

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class BatchNormCache(NamedTuple):
    """One call of BatchNorm: x_hat and 1/sigma (docs/derivations/batchnorm.md)."""
    x_hat: np.ndarray         # (x - mu) / sigma
    inv_std: np.ndarray       # 1/sigma = 1/sqrt(var + eps), broadcastable to x_hat
    batch_stats: bool         # mu, var computed from x (True) or the running statistics


def normalize_backward(g_hat, x_hat, inv_std, axes):
    r"""dL/dx of x_hat = (x - mean(x)) * inv_std with biased statistics over ``axes``.

    ``g_hat`` is dL/dx_hat, ``inv_std`` = 1/sqrt(var + eps) broadcastable to x. Returns

        (inv_std / m) (m g_hat - sum g_hat - x_hat sum(g_hat x_hat)),

    the compact form derived in docs/derivations/batchnorm.md (shared with GroupNorm and
    InstanceNorm, which only differ in the axes the statistics run over).
    """
    m = 1
    for a in axes:
        m *= x_hat.shape[a]
    if g_hat.size == 0:                  # an empty batch: nothing flows back
        return np.zeros_like(g_hat)
    s1 = g_hat.sum(axis=axes, keepdims=True)
    s2 = (g_hat * x_hat).sum(axis=axes, keepdims=True)
    return (inv_std / m) * (m * g_hat - s1 - x_hat * s2)


class _NormBase(Module):
    """What BatchNorm and InstanceNorm share (PyTorch's _NormBase): the affine parameters
    ``weight`` (gamma, ones) and ``bias`` (beta, zeros) of shape (C,), and the buffers
    ``running_mean``, ``running_var``, ``num_batches_tracked`` when statistics are tracked."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32):
        super().__init__()
        self.num_features = int(num_features)
        if self.num_features <= 0:
            raise ValueError(f"{type(self).__name__}: num_features must be positive, "
                             f"got {num_features}")
        if eps < 0:
            raise ValueError(f"{type(self).__name__}: eps must be >= 0, got {eps}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{type(self).__name__}: momentum must be in [0, 1] or None, "
                             f"got {momentum}")
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        if self.affine:
            self.weight = Parameter(np.ones(self.num_features, dtype=dtype))
            self.bias = Parameter(np.zeros(self.num_features, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(self.num_features, dtype=dtype))
            self.register_buffer("running_var", np.ones(self.num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean = np.zeros_like(self.running_mean)
            self.running_var = np.ones_like(self.running_var)
            self.num_batches_tracked = np.array(0, dtype=np.int64)


class _BatchNorm(_NormBase):
    _input_ndims = ()      # the input ranks it accepts (x.ndim), not the spatial rank
    _shape_hint = ""

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            self.weight.data[...] = 1
            self.bias.data[...] = 0

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")

    def _shape(self, x):
        return (1, self.num_features) + (1,) * (x.ndim - 2)

    def forward(self, x):
        x = check_float(self, x)
        if x.ndim not in self._input_ndims:
            want = " or ".join(f"{n}-D" for n in self._input_ndims)
            raise ValueError(f"{layer_name(self)}: expected a {want} input "
                             f"{self._shape_hint}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{layer_name(self)}: expected input with "
                             f"{self.num_features} channels (axis 1), got shape "
                             f"{tuple(x.shape)} with {x.shape[1]} channels")
        axes = (0,) + tuple(range(2, x.ndim))
        m = x.size // self.num_features
        use_batch = self.training or not self.track_running_stats
        shape = self._shape(x)
        if use_batch and x.shape[0] == 0:
            # an empty batch (PyTorch): an empty output; the running statistics stay as
            # they are, only num_batches_tracked counts the call
            mean = np.zeros(self.num_features, dtype=x.dtype)
            var = np.ones(self.num_features, dtype=x.dtype)
            xc = x.copy()
            if self.training and self.track_running_stats:
                self.num_batches_tracked = self.num_batches_tracked + 1
        elif use_batch:
            if m <= 1:
                raise ValueError(f"{layer_name(self)}: Expected more than 1 value per "
                                 f"channel when training, got input size {tuple(x.shape)}")
            mean = x.mean(axis=axes)
            xc = x - mean.reshape(shape)
            var = (xc * xc).mean(axis=axes)
            if self.training and self.track_running_stats:
                self._update_running(mean, var, m)
        else:
            mean = self.running_mean.astype(x.dtype, copy=False)
            var = self.running_var.astype(x.dtype, copy=False)
            xc = x - mean.reshape(shape)
        with np.errstate(divide="ignore", invalid="ignore"):   # eps = 0, var = 0: inf/nan
            inv_std = (1.0 / np.sqrt(var + self.eps)).reshape(shape)  # as PyTorch
            x_hat = xc * inv_std
        if self.recording:
            self.save_for_backward(BatchNormCache(x_hat=x_hat, inv_std=inv_std,
                                                  batch_stats=use_batch))
        if self.affine:
            return x_hat * self.weight.data.reshape(shape) + self.bias.data.reshape(shape)
        return x_hat

    def _update_running(self, mean, var, m):
        self.num_batches_tracked = self.num_batches_tracked + 1
        if self.momentum is None:            # cumulative moving average
            f = 1.0 / float(self.num_batches_tracked)
        else:
            f = self.momentum
        unbiased = var * (m / (m - 1))
        dt = self.running_mean.dtype
        self.running_mean = ((1 - f) * self.running_mean + f * mean).astype(dt)
        self.running_var = ((1 - f) * self.running_var + f * unbiased).astype(dt)

    def backward(self, grad_out):
        c = self.pop_saved()
        x_hat = c.x_hat
        g = check_grad(self, grad_out, x_hat.shape)
        axes = (0,) + tuple(range(2, x_hat.ndim))
        shape = self._shape(x_hat)
        if self.affine:
            if self.weight.requires_grad:
                self.weight.grad += (g * x_hat).sum(axis=axes).astype(self.weight.dtype)
            if self.bias.requires_grad:
                self.bias.grad += g.sum(axis=axes).astype(self.bias.dtype)
            g_hat = g * self.weight.data.reshape(shape)
        else:
            g_hat = g
        if c.batch_stats:
            return normalize_backward(g_hat, x_hat, c.inv_std, axes)
        return g_hat * c.inv_std


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) input over N (and L). See the module doc."""
    _input_ndims = (2, 3)
    _shape_hint = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) input over N, H, W. See the module doc."""
    _input_ndims = (4,)
    _shape_hint = "(N, C, H, W)"


class BatchNorm3d(_BatchNorm):
    """Batch normalisation of (N, C, D, H, W) input over N, D, H, W. See the module doc."""
    _input_ndims = (5,)
    _shape_hint = "(N, C, D, H, W)"
