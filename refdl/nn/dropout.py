r"""Dropout: inverted dropout of single entries (Dropout) or of whole channels
(Dropout1d/2d/3d), with PyTorch's semantics.

In training mode each kept entry (or channel) is scaled by 1/(1-p), so E[y] = x and
evaluation mode is exactly the identity: no rescaling at test time. The mask is drawn from
``refdl.random.get_rng(generator)`` (the library default unless a generator is given), so
``refdl.manual_seed`` makes it repeatable. A training-mode forward draws its mask whether
or not it records (under ``refdl.no_grad()`` too, as PyTorch), so the random stream does
not depend on the grad mode; it records ``DropoutCache(mask, x_shape)``.
Derivation: docs/derivations/dropout.md.
"""
from typing import NamedTuple, Optional

import numpy as np

from .. import random as _random
from .validate import check_float, check_grad, layer_name
from .module import Module

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d"]


class DropoutCache(NamedTuple):
    """One call of Dropout: the scaled mask m / (1 - p), or None where y = x (eval, p = 0)."""
    mask: Optional[np.ndarray]   # broadcastable to x (one entry per channel in Dropout2d)
    x_shape: tuple


class Dropout(Module):
    r"""Zero each entry with probability p in training, scale the rest by 1/(1-p).

    Shapes: x (*) -> y (*), the same shape.
    Forward (training):  m_i ~ Bernoulli(1 - p) i.i.d.,   y = x * m / (1 - p)
    Forward (eval, or p = 0):  y = x.      p = 1: y = 0 (every entry dropped).
    Backward: dL/dx = g * m / (1 - p), the same mask as the forward (g in eval mode);
    the cache's ``mask`` field holds m / (1 - p).
    ``inplace`` is accepted and ignored; ``generator`` (a numpy Generator) overrides the
    library's default source of randomness.
    """

    _rank = None             # entry-wise dropout; Dropout1d/2d/3d set 1/2/3

    def __init__(self, p=0.5, inplace=False, generator=None):
        super().__init__()
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}: dropout probability has to be between "
                             f"0 and 1, but got {p}")
        self.p = p
        self.inplace = inplace
        self.generator = generator

    def extra_repr(self):
        return f"p={self.p}"

    def _mask_shape(self, x):
        return x.shape

    def forward(self, x):
        x = check_float(self, x)
        shape = self._mask_shape(x)
        if not self.training or self.p == 0.0:
            mask = None                                   # the identity
        elif self.p == 1.0:
            mask = np.zeros(shape, dtype=x.dtype)
        else:                                             # drawn in every grad mode
            rng = _random.get_rng(self.generator)
            keep = rng.random(shape) >= self.p
            mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        if self.recording:
            self.save_for_backward(DropoutCache(mask=mask, x_shape=x.shape))
        return x if mask is None else x * mask

    def backward(self, grad_out):
        c = self.pop_saved()
        g = check_grad(self, grad_out, c.x_shape)
        return g if c.mask is None else g * c.mask


class _DropoutNd(Dropout):
    r"""Channel dropout: each channel (all of its spatial entries together) is kept or
    dropped. Batched (N, C, *spatial) or unbatched (C, *spatial) input."""

    def _mask_shape(self, x):
        s = self._rank
        if x.ndim not in (s + 1, s + 2):
            dims = {1: "L", 2: "H, W", 3: "D, H, W"}[s]
            raise ValueError(f"{layer_name(self)}: expected a {s + 2}-D input (N, C, {dims}) "
                             f"or a {s + 1}-D unbatched input (C, {dims}), got shape "
                             f"{tuple(x.shape)}")
        return x.shape[:x.ndim - s] + (1,) * s


class Dropout1d(_DropoutNd):
    r"""Zero whole channels of (N, C, L) or unbatched (C, L) input with probability p.

    Forward (training): m_{n,c} ~ Bernoulli(1 - p), y_{n,c,:} = x_{n,c,:} m_{n,c} / (1 - p).
    Backward: dL/dx_{n,c,:} = g_{n,c,:} m_{n,c} / (1 - p). Eval mode: the identity.
    """

    _rank = 1


class Dropout2d(_DropoutNd):
    r"""Zero whole channels (feature maps) of (N, C, H, W) or unbatched (C, H, W) input.

    Forward (training): m_{n,c} ~ Bernoulli(1 - p), y_{n,c} = x_{n,c} m_{n,c} / (1 - p).
    Backward: dL/dx_{n,c} = g_{n,c} m_{n,c} / (1 - p). Eval mode: the identity.
    A 3-D input is read as unbatched (C, H, W), as PyTorch's documentation says. (PyTorch
    2.13's implementation still warns and treats it as (N, C, L), announcing the (C, H, W)
    reading for a future release; use Dropout1d for channel dropout of (N, C, L).)
    """

    _rank = 2


class Dropout3d(_DropoutNd):
    r"""Zero whole channels of (N, C, D, H, W) or unbatched (C, D, H, W) input.

    Forward (training): m_{n,c} ~ Bernoulli(1 - p), y_{n,c} = x_{n,c} m_{n,c} / (1 - p).
    Backward: dL/dx_{n,c} = g_{n,c} m_{n,c} / (1 - p). Eval mode: the identity.
    """

    _rank = 3
