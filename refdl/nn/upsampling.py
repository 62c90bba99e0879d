r"""Upsample (PyTorch's ``nn.Upsample``): nearest and (bi/tri)linear interpolation.

Every mode is separable: along each spatial axis the output is a fixed matrix times the
input, y = A x with A of shape (out, in). So the backward is the transpose, dx = A^T g
(applied axis by axis). For 'nearest' each row of A has a single 1 at
src = min(floor(dst * scale), in - 1), scale = in/out (or 1/scale_factor when
scale_factor is given, as PyTorch does); the backward adds up the gradients of all copies
of an input entry. For 'linear'/'bilinear'/'trilinear' a row holds the two interpolation
weights (1 - lam, lam), with PyTorch's align_corners convention.
A training-mode forward records ``UpsampleCache(A, x_shape)``, the matrices A_a.
Derivation: docs/derivations/pooling.md (Upsampling).
"""
import math
from typing import NamedTuple

import numpy as np

from .validate import check_float, check_grad, layer_name
from .module import Module

__all__ = ["Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d", "interpolation_matrix"]

_LINEAR = {"linear": 1, "bilinear": 2, "trilinear": 3}


class UpsampleCache(NamedTuple):
    """One call of Upsample: the interpolation matrix A_a (out_a, in_a) of each axis."""
    A: list
    x_shape: tuple            # (N, C, *S)


def interpolation_matrix(in_size, out_size, mode="nearest", align_corners=False,
                         scale_factor=None, dtype=np.float64):
    """The (out_size, in_size) matrix of 1-D nearest or linear interpolation (PyTorch's)."""
    A = np.zeros((out_size, in_size), dtype=dtype)
    dst = np.arange(out_size)
    if mode == "nearest":
        scale = 1.0 / scale_factor if scale_factor else in_size / out_size
        src = np.minimum(np.floor(dst * scale).astype(np.int64), in_size - 1)
        A[dst, src] = 1.0
        return A
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = dst * scale
    else:
        scale = 1.0 / scale_factor if scale_factor else in_size / out_size
        src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = src - i0
    np.add.at(A, (dst, i0), 1.0 - lam)
    np.add.at(A, (dst, i1), lam)
    return A


class Upsample(Module):
    r"""Upsample (N, C, *S) -> (N, C, *S') by ``size`` or ``scale_factor``.

    S'_a = size_a, or floor(S_a * scale_factor_a). Modes: 'nearest' (any rank),
    'linear' (3-D input), 'bilinear' (4-D), 'trilinear' (5-D).
    Forward: y = x x_1 A_1 ... x_r A_r (one interpolation matrix per axis).
    Backward: dx = g x_1 A_1^T ... x_r A_r^T.
    """

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None):
        super().__init__()
        if (size is None) == (scale_factor is None):
            raise ValueError("Upsample: give exactly one of size and scale_factor")
        if mode not in ("nearest",) + tuple(_LINEAR):
            raise ValueError(f"Upsample: mode must be 'nearest', 'linear', 'bilinear' or "
                             f"'trilinear', got {mode!r}")
        if mode == "nearest" and align_corners:
            raise ValueError("Upsample: align_corners only applies to the linear modes")
        self.size = size
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = align_corners

    def extra_repr(self):
        what = f"size={self.size}" if self.size is not None else \
            f"scale_factor={self.scale_factor}"
        return f"{what}, mode={self.mode!r}"

    def _out(self, x, r):
        if self.size is not None:
            size = self.size if isinstance(self.size, (tuple, list)) else (self.size,) * r
            if len(size) != r:
                raise ValueError(f"{layer_name(self)}: size must have {r} entries for "
                                 f"input of shape {tuple(x.shape)}")
            return tuple(int(s) for s in size), (None,) * r
        sf = self.scale_factor
        sf = tuple(sf) if isinstance(sf, (tuple, list)) else (sf,) * r
        if len(sf) != r or any(float(f) <= 0 for f in sf):
            raise ValueError(f"{layer_name(self)}: scale_factor must be {r} positive "
                             f"numbers for input of shape {tuple(x.shape)}")
        return (tuple(int(math.floor(L * float(f))) for L, f in zip(x.shape[2:], sf)),
                tuple(float(f) for f in sf))

    def forward(self, x):
        x = check_float(self, x)
        if x.ndim not in (3, 4, 5):
            raise ValueError(f"{layer_name(self)}: expected a 3-D, 4-D or 5-D input "
                             f"(N, C, *S), got shape {tuple(x.shape)}")
        r = x.ndim - 2
        if self.mode in _LINEAR and _LINEAR[self.mode] != r:
            raise ValueError(f"{layer_name(self)}: mode {self.mode!r} needs a "
                             f"{_LINEAR[self.mode] + 2}-D input, got shape {tuple(x.shape)}")
        out, sf = self._out(x, r)
        if any(o < 1 for o in out):
            raise ValueError(f"{layer_name(self)}: empty output size {out}")
        mats = [interpolation_matrix(L, O, self.mode, bool(self.align_corners), f,
                                     dtype=x.dtype)
                for L, O, f in zip(x.shape[2:], out, sf)]
        if self.recording:
            self.save_for_backward(UpsampleCache(A=mats, x_shape=x.shape))
        y = x
        for a, A in enumerate(mats):
            y = np.moveaxis(np.tensordot(y, A, axes=([2 + a], [1])), -1, 2 + a)
        return np.ascontiguousarray(y)

    def backward(self, grad_out):
        c = self.pop_saved()
        g = check_grad(self, grad_out, c.x_shape[:2] + tuple(A.shape[0] for A in c.A))
        for a, A in enumerate(c.A):
            g = np.moveaxis(np.tensordot(g, A.T, axes=([2 + a], [1])), -1, 2 + a)
        return np.ascontiguousarray(g)


class UpsamplingNearest2d(Upsample):
    """Upsample(size, scale_factor, mode='nearest') for 4-D inputs."""

    def __init__(self, size=None, scale_factor=None):
        super().__init__(size, scale_factor, mode="nearest")


class UpsamplingBilinear2d(Upsample):
    """Upsample(size, scale_factor, mode='bilinear', align_corners=True) (PyTorch's)."""

    def __init__(self, size=None, scale_factor=None):
        super().__init__(size, scale_factor, mode="bilinear", align_corners=True)
