r"""Per-example normalisation: GroupNorm and InstanceNorm1d/2d/3d (PyTorch's names).

Both normalise each example separately, so they behave the same in training and eval
(unless InstanceNorm tracks running statistics) and work with batch size 1.

GroupNorm(G, C): the C channels of an example are split into G groups of C/G channels;
each group (its C/G channels times all spatial positions, K values) is normalised with
its own mean and biased variance, then every channel gets its own affine gamma_c, beta_c:

    x: (N, C, *) -> view (N, G, K),   x_hat = (x - mu_ng) / sqrt(var_ng + eps)
    y = gamma_c x_hat + beta_c

InstanceNorm is GroupNorm with G = C (each channel of each example over its spatial
positions), with PyTorch's defaults affine=False, track_running_stats=False.

Backward, with g = dL/dy, g_hat = gamma_c g, sigma = sqrt(var + eps), sums over the K
values of one group of one example:

    dL/dbeta_c  = sum_{n, *} g           dL/dgamma_c = sum_{n, *} g x_hat
    dL/dx       = (1 / (K sigma)) (K g_hat - sum g_hat - x_hat sum(g_hat x_hat))

(the BatchNorm formula with the statistics' axes changed). With running statistics in
eval mode InstanceNorm is an affine map per channel: dL/dx = g_hat / sqrt(running_var + eps).
A training-mode forward records ``GroupNormCache(x_hat, inv_std)`` or
``InstanceNormCache(x_hat, inv_std, instance_stats, batched)``, inv_std = 1/sigma.
Derivation: docs/derivations/groupnorm.md
"""
from typing import NamedTuple

import numpy as np

from .validate import check_float, check_grad, layer_name
from .batchnorm import _NormBase, normalize_backward
from .module import Module, Parameter

__all__ = ["GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class GroupNormCache(NamedTuple):
    """One call of GroupNorm: x_hat (the input's shape) and 1/sigma_ng (N, G, 1)."""
    x_hat: np.ndarray
    inv_std: np.ndarray


class InstanceNormCache(NamedTuple):
    """One call of InstanceNorm: x_hat (N, C, *S) and 1/sigma, broadcastable to it."""
    x_hat: np.ndarray         # batched: N = 1 for an unbatched input
    inv_std: np.ndarray
    instance_stats: bool      # mu, var from each instance (True) or the running statistics
    batched: bool             # whether the input had the batch axis


class GroupNorm(Module):
    """Group normalisation of (N, C, *) input (``nn.GroupNorm(num_groups, num_channels)``).

    See the module docstring for the forward and backward formulas.
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=np.float32):
        super().__init__()
        self.num_groups = int(num_groups)
        self.num_channels = int(num_channels)
        if self.num_groups <= 0 or self.num_channels <= 0:
            raise ValueError(f"GroupNorm: num_groups and num_channels must be positive, "
                             f"got ({num_groups}, {num_channels})")
        if self.num_channels % self.num_groups:
            raise ValueError(f"GroupNorm: num_channels must be divisible by num_groups, "
                             f"got num_channels={num_channels}, num_groups={num_groups}")
        self.eps = float(eps)
        self.affine = bool(affine)
        if self.affine:
            self.weight = Parameter(np.ones(self.num_channels, dtype=dtype))
            self.bias = Parameter(np.zeros(self.num_channels, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"

    def forward(self, x):
        x = check_float(self, x)
        if x.ndim < 2:
            raise ValueError(f"{layer_name(self)}: expected an input of shape (N, C, *), "
                             f"got {tuple(x.shape)}")
        if x.shape[1] != self.num_channels:
            raise ValueError(f"{layer_name(self)}: expected input with {self.num_channels} "
                             f"channels (axis 1), got shape {tuple(x.shape)} with "
                             f"{x.shape[1]} channels")
        n = x.shape[0]
        xg = x.reshape(n, self.num_groups, int(np.prod(x.shape[1:])) // self.num_groups)
        mean = xg.mean(axis=2, keepdims=True)
        xc = xg - mean
        var = (xc * xc).mean(axis=2, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):   # eps = 0, var = 0
            inv_std = 1.0 / np.sqrt(var + self.eps)
            x_hat = (xc * inv_std).reshape(x.shape)
        if self.recording:
            self.save_for_backward(GroupNormCache(x_hat=x_hat, inv_std=inv_std))
        if self.affine:
            shape = (1, self.num_channels) + (1,) * (x.ndim - 2)
            return x_hat * self.weight.data.reshape(shape) + self.bias.data.reshape(shape)
        return x_hat

    def backward(self, grad_out):
        c = self.pop_saved()
        x_hat = c.x_hat
        g = check_grad(self, grad_out, x_hat.shape)
        if self.affine:
            axes = (0,) + tuple(range(2, x_hat.ndim))
            shape = (1, self.num_channels) + (1,) * (x_hat.ndim - 2)
            if self.weight.requires_grad:
                self.weight.grad += (g * x_hat).sum(axis=axes).astype(self.weight.dtype)
            if self.bias.requires_grad:
                self.bias.grad += g.sum(axis=axes).astype(self.bias.dtype)
            g = g * self.weight.data.reshape(shape)
        n = x_hat.shape[0]
        per = int(np.prod(x_hat.shape[1:])) // self.num_groups     # C/G * prod(spatial)
        gx = normalize_backward(g.reshape(n, self.num_groups, per),
                                x_hat.reshape(n, self.num_groups, per), c.inv_std, (2,))
        return gx.reshape(x_hat.shape)


class _InstanceNorm(_NormBase):
    _rank = 1

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")

    def forward(self, x):
        x = check_float(self, x)
        k = self._rank
        if x.ndim not in (k + 1, k + 2):
            dims = ("L", "H, W", "D, H, W")[k - 1]
            raise ValueError(f"{layer_name(self)}: expected an input of shape (N, C, {dims})"
                             f" or (C, {dims}), got {tuple(x.shape)}")
        unbatched = x.ndim == k + 1
        if unbatched:
            x = x[None]
        if x.shape[1] != self.num_features:
            raise ValueError(f"{layer_name(self)}: expected input with {self.num_features} "
                             f"channels, got shape {tuple(x.shape)} with {x.shape[1]} channels")
        axes = tuple(range(2, x.ndim))
        K = int(np.prod(x.shape[2:]))
        shape = (1, self.num_features) + (1,) * k
        use_instance = self.training or not self.track_running_stats
        if use_instance:
            if self.training and K <= 1:
                raise ValueError(f"{layer_name(self)}: Expected more than 1 spatial element "
                                 f"when training, got input size {tuple(x.shape)}")
            mean = x.mean(axis=axes, keepdims=True)
            xc = x - mean
            var = (xc * xc).mean(axis=axes, keepdims=True)
            if self.training and self.track_running_stats and x.shape[0] > 0:
                self._update_running(mean.reshape(x.shape[:2]), var.reshape(x.shape[:2]), K)
        else:
            xc = x - self.running_mean.astype(x.dtype).reshape(shape)
            var = self.running_var.astype(x.dtype).reshape(shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_std = 1.0 / np.sqrt(var + self.eps)
            x_hat = xc * inv_std
        if self.recording:
            self.save_for_backward(InstanceNormCache(x_hat=x_hat, inv_std=inv_std,
                                                     instance_stats=use_instance,
                                                     batched=not unbatched))
        y = x_hat
        if self.affine:
            y = x_hat * self.weight.data.reshape(shape) + self.bias.data.reshape(shape)
        return y[0] if unbatched else y

    def _update_running(self, mean, var, K):
        # PyTorch: the running statistics move towards the batch average of the
        # per-instance statistics (the variance unbiased with K / (K - 1)).
        self.num_batches_tracked = self.num_batches_tracked + 1
        f = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
        dt = self.running_mean.dtype
        self.running_mean = ((1 - f) * self.running_mean + f * mean.mean(axis=0)).astype(dt)
        unbiased = var.mean(axis=0) * (K / (K - 1))
        self.running_var = ((1 - f) * self.running_var + f * unbiased).astype(dt)

    def backward(self, grad_out):
        c = self.pop_saved()
        x_hat = c.x_hat
        g = check_grad(self, grad_out, x_hat.shape if c.batched else x_hat.shape[1:])
        if not c.batched:
            g = g[None]
        axes = tuple(range(2, x_hat.ndim))
        if self.affine:
            shape = (1, self.num_features) + (1,) * self._rank
            if self.weight.requires_grad:
                self.weight.grad += (g * x_hat).sum(axis=(0,) + axes).astype(self.weight.dtype)
            if self.bias.requires_grad:
                self.bias.grad += g.sum(axis=(0,) + axes).astype(self.bias.dtype)
            g = g * self.weight.data.reshape(shape)
        if c.instance_stats:
            gx = normalize_backward(g, x_hat, c.inv_std, axes)
        else:
            gx = g * c.inv_std
        return gx if c.batched else gx[0]


class InstanceNorm1d(_InstanceNorm):
    """Instance normalisation of (N, C, L) or (C, L) input over L. See the module doc."""
    _rank = 1


class InstanceNorm2d(_InstanceNorm):
    """Instance normalisation of (N, C, H, W) or (C, H, W) input over H, W."""
    _rank = 2


class InstanceNorm3d(_InstanceNorm):
    """Instance normalisation of (N, C, D, H, W) or (C, D, H, W) input over D, H, W."""
    _rank = 3
