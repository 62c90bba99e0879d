r"""Pooling layers: MaxPool1d/2d/3d, AvgPool1d/2d/3d, AdaptiveAvgPool1d/2d/3d (PyTorch's).

Each channel is pooled on its own: x (N, C, *S) -> (N, C, *O) (or unbatched (C, *S)).
Output size along an axis (kernel k, stride s = k by default, padding p, dilation d):

    O = floor((L + 2p - d(k-1) - 1)/s) + 1     (ceil instead of floor with ceil_mode,
                                                  dropping a last window that would start
                                                  in the right padding)

Max pooling: y = max over the window (padding never wins); backward sends g to the
position of the (first) maximum and zero elsewhere: dx[argmax] += g.
Average pooling: y = sum over the window / divisor (PyTorch's divisor rules); backward
spreads g / divisor uniformly over the window.
Derivation: docs/derivations/pooling.md. The loops run in refdl/_ext when it is built.

What a training-mode forward records (one cache per call, see docs/caches.md):
``MaxPoolCache(argmax, x_shape, batched)`` (k*(o), the flat position of each window's
maximum), ``AvgPoolCache(x_shape, out_size, batched)`` and ``AdaptiveAvgPoolCache(A,
x_shape, batched)`` (the per-axis averaging matrices A_a).
"""
from typing import NamedTuple

import numpy as np

from .. import ext
from ..functional.conv import normalize_tuple, pool_output_size
from .validate import check_float, check_grad, layer_name
from .module import Module

__all__ = ["MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
           "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
           "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d"]

class MaxPoolCache(NamedTuple):
    """One call of MaxPool/AdaptiveMaxPool: k*(o), the flat position of each maximum."""
    argmax: np.ndarray        # (N, C, *O) int64 positions in the (N, C, *S) input's block
    x_shape: tuple            # (N, C, *S), batched
    batched: bool             # whether the input had the batch axis


class AvgPoolCache(NamedTuple):
    """One call of AvgPool: the geometry the scatter of g / D(o) needs."""
    x_shape: tuple            # (N, C, *S), batched
    out_size: tuple           # O per spatial axis
    batched: bool


class AdaptiveAvgPoolCache(NamedTuple):
    """One call of AdaptiveAvgPool: the averaging matrix A_a (O_a, S_a) of each axis."""
    A: list
    x_shape: tuple            # (N, C, *S), batched
    batched: bool


def _max_scatter(layer, grad_out):
    """dx[n, c, argmax[n, c, o]] += g[n, c, o]: the backward of every max pooling."""
    c = layer.pop_saved()
    shape = c.argmax.shape
    g = check_grad(layer, grad_out, shape if c.batched else shape[1:])
    if not c.batched:
        g = g[None]
    dx = ext.max_pool_backward(np.ascontiguousarray(g), c.argmax, c.x_shape)
    return dx if c.batched else dx[0]


_AXES = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}


def _batched(layer, x, r):
    x = check_float(layer, x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{layer_name(layer)}: expected a float32 or float64 input, got "
                        f"dtype {x.dtype}")
    if x.ndim not in (r + 1, r + 2):
        raise ValueError(f"{layer_name(layer)}: expected a {r + 1}-D (unbatched) or "
                         f"{r + 2}-D (batched) input {_AXES[r]}, got shape {tuple(x.shape)}")
    batched = x.ndim == r + 2
    if any(s == 0 for s in x.shape[int(batched):]):    # an empty batch (N = 0) is fine
        raise ValueError(f"{layer_name(layer)}: empty input of shape {tuple(x.shape)}")
    return np.ascontiguousarray(x if batched else x[None]), batched


class _PoolNd(Module):
    _rank = None

    def _geometry(self, kernel_size, stride, padding, dilation):
        r = self._rank
        name = type(self).__name__
        self.kernel_size = normalize_tuple(kernel_size, r, "kernel_size")
        self.stride = self.kernel_size if stride is None or stride == () else \
            normalize_tuple(stride, r, "stride")
        self.padding = normalize_tuple(padding, r, "padding")
        self.dilation = normalize_tuple(dilation, r, "dilation")
        for what, v in (("kernel_size", self.kernel_size), ("stride", self.stride),
                        ("dilation", self.dilation)):
            if any(a < 1 for a in v):
                raise ValueError(f"{name}: {what} must be positive, got {v}")
        if any(p < 0 or 2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding {self.padding} should be non-negative and at "
                             f"most half of the kernel size {self.kernel_size}")

    def _out_size(self, x, spatial):
        return _checked_out_size(layer_name(self), tuple(x.shape), tuple(spatial),
                                 self.kernel_size, self.stride, self.padding,
                                 self.dilation, self.ceil_mode)


@ext.shape_memo
def _checked_out_size(name, x_shape, spatial, kernel_size, stride, padding, dilation,
                      ceil_mode):
    """The pooled size of ``spatial``, validated (memoised: a layer sees the same shapes
    every step)."""
    out = pool_output_size(spatial, kernel_size, stride, padding, dilation, ceil_mode)
    if any(o < 1 for o in out):
        raise ValueError(f"{name}: the output would be empty ({out}) for input of shape "
                         f"{x_shape}: the (dilated) kernel is larger than the padded input")
    ext.check_geometry(name, spatial, kernel_size, stride, tuple((p, p) for p in padding),
                       dilation, out, pool_pad_limit=True, every_window_reads_input=True)
    return out


class _MaxPoolNd(_PoolNd):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        self._geometry(kernel_size, stride, padding, dilation)
        self.return_indices = bool(return_indices)
        self.ceil_mode = bool(ceil_mode)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, "
                f"ceil_mode={self.ceil_mode}")

    def forward(self, x):
        xb, batched = _batched(self, x, self._rank)
        out = self._out_size(x, xb.shape[2:])
        # the kernel finds every maximum's position anyway (no cheaper path to skip to)
        y, idx = ext.max_pool_forward(xb, self.kernel_size, self.stride, self.padding,
                                      self.dilation, out)
        if self.recording:
            self.save_for_backward(MaxPoolCache(argmax=idx, x_shape=xb.shape, batched=batched))
        if not batched:
            y, idx = y[0], idx[0]
        return (y, idx) if self.return_indices else y

    def backward(self, grad_out, grad_indices=None):
        """dx[n, c, argmax[n, c, o]] += g[n, c, o]. (The indices output has no gradient.)"""
        return _max_scatter(self, grad_out)


class MaxPool1d(_MaxPoolNd):
    r"""Max over windows of length k: (N, C, L) -> (N, C, L_out).

    y[n, c, o] = max_j x_pad[n, c, o*s + j*d] (padding is -inf);
    L_out = floor((L + 2p - d(k-1) - 1)/s) + 1 (ceil with ceil_mode); s defaults to k.
    Backward: dL/dx[argmax] += g, zero elsewhere. ``return_indices`` also returns the
    flat input positions of the maxima (int64).
    """
    _rank = 1


class MaxPool2d(_MaxPoolNd):
    r"""Max over kH x kW windows: (N, C, H, W) -> (N, C, H_out, W_out).

    y[n, c, i, j] = max_{u, v} x_pad[n, c, i*s_h + u*d_h, j*s_w + v*d_w] (padding -inf);
    H_out = floor((H + 2p_h - d_h(kH-1) - 1)/s_h) + 1 (ceil with ceil_mode), likewise W_out;
    stride defaults to the kernel size.
    Backward: dL/dx[n, c, argmax] += g[n, c, i, j]; every other entry gets zero (ties go to
    the first maximum in scan order, as in PyTorch). docs/derivations/pooling.md
    """
    _rank = 2


class MaxPool3d(_MaxPoolNd):
    r"""Max over kD x kH x kW windows: (N, C, D, H, W) -> (N, C, D_out, H_out, W_out).

    Output size per axis as MaxPool1d. Backward: dL/dx[argmax] += g.
    """
    _rank = 3


class _AvgPoolNd(_PoolNd):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        self._geometry(kernel_size, stride, padding, 1)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        if divisor_override is not None and (int(divisor_override) != divisor_override
                                             or divisor_override <= 0):
            raise ValueError(f"{type(self).__name__}: divisor_override must be a positive "
                             f"int, got {divisor_override!r}")
        self.divisor_override = None if divisor_override is None else int(divisor_override)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")

    def forward(self, x):
        xb, batched = _batched(self, x, self._rank)
        out = self._out_size(x, xb.shape[2:])
        y = ext.avg_pool_forward(xb, self.kernel_size, self.stride, self.padding, out,
                                 self.count_include_pad, self.divisor_override)
        if self.recording:
            self.save_for_backward(AvgPoolCache(x_shape=xb.shape, out_size=out, batched=batched))
        return y if batched else y[0]

    def backward(self, grad_out):
        """dx[window] += g / divisor for every output position."""
        c = self.pop_saved()
        shape = c.x_shape[:2] + c.out_size
        g = check_grad(self, grad_out, shape if c.batched else shape[1:])
        if not c.batched:
            g = g[None]
        dx = ext.avg_pool_backward(np.ascontiguousarray(g), c.x_shape, self.kernel_size,
                                   self.stride, self.padding, c.out_size,
                                   self.count_include_pad, self.divisor_override)
        return dx if c.batched else dx[0]


class AvgPool1d(_AvgPoolNd):
    r"""Mean over windows of length k: (N, C, L) -> (N, C, L_out).

    y[n, c, o] = (1/divisor) sum_j x_pad[n, c, o*s + j]; the divisor is the window length
    counting the zero padding (count_include_pad=True) or only the real entries.
    L_out as MaxPool1d (dilation 1). Backward: dx[window] += g / divisor.
    """
    _rank = 1

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)


class AvgPool2d(_AvgPoolNd):
    r"""Mean over kH x kW windows: (N, C, H, W) -> (N, C, H_out, W_out).

    y = (1/divisor) * sum over the window of x_pad. The divisor follows PyTorch: the
    window clipped to the padded input (count_include_pad=True), or to the real input
    (False), or ``divisor_override``. Backward: dx[window] += g / divisor.
    docs/derivations/pooling.md
    """
    _rank = 2


class AvgPool3d(_AvgPoolNd):
    r"""Mean over kD x kH x kW windows: (N, C, D, H, W) -> (N, C, D_out, H_out, W_out).

    As AvgPool2d, per axis. Backward: dx[window] += g / divisor.
    """
    _rank = 3


# -- adaptive pooling: per-axis bin matrices ------------------------------------------------

def _bins(L, O):
    """PyTorch's adaptive bins: bin i covers [floor(i L / O), ceil((i+1) L / O))."""
    start = (np.arange(O) * L) // O
    end = -((-(np.arange(1, O + 1) * L)) // O)
    return start, end


def _apply_axes(x, mats, first_axis=2):
    """Multiply x along each spatial axis a by mats[a] (shape (out_a, in_a))."""
    for a, A in enumerate(mats):
        ax = first_axis + a
        x = np.moveaxis(np.tensordot(x, A, axes=([ax], [1])), -1, ax)
    return x


def _parse_output_size(layer, output_size):
    r = layer._rank
    name = type(layer).__name__
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != r:
            raise ValueError(f"{name}: output_size must have {r} entries, got "
                             f"{output_size!r}")
        out = tuple(None if o is None else int(o) for o in output_size)
    else:
        out = (int(output_size),) * r
    if any(o is not None and o < 1 for o in out):
        raise ValueError(f"{name}: output_size must be positive, got {output_size!r}")
    return out


class _AdaptiveAvgPoolNd(Module):
    _rank = None

    def __init__(self, output_size):
        super().__init__()
        self.output_size = _parse_output_size(self, output_size)

    def extra_repr(self):
        o = self.output_size
        return f"output_size={o[0] if len(set(o)) == 1 else o}"

    def forward(self, x):
        xb, batched = _batched(self, x, self._rank)
        spatial = xb.shape[2:]
        out = tuple(L if o is None else o for o, L in zip(self.output_size, spatial))
        mats = []
        for L, O in zip(spatial, out):
            A = np.zeros((O, L), dtype=xb.dtype)
            start, end = _bins(L, O)
            for i, (a, b) in enumerate(zip(start, end)):
                A[i, a:b] = 1.0 / (b - a)
            mats.append(A)
        if self.recording:
            self.save_for_backward(AdaptiveAvgPoolCache(A=mats, x_shape=xb.shape,
                                                        batched=batched))
        y = np.ascontiguousarray(_apply_axes(xb, mats))
        return y if batched else y[0]

    def backward(self, grad_out):
        """The transpose of each averaging matrix: dx = g x_a A_a^T along every axis."""
        c = self.pop_saved()
        shape = c.x_shape[:2] + tuple(A.shape[0] for A in c.A)
        g = check_grad(self, grad_out, shape if c.batched else shape[1:])
        if not c.batched:
            g = g[None]
        dx = np.ascontiguousarray(_apply_axes(g, [A.T for A in c.A]))
        return dx if c.batched else dx[0]


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    r"""Average over O bins of (N, C, L) -> (N, C, O); bin i is [floor(iL/O), ceil((i+1)L/O)).

    As a matrix along the axis: y = x A^T with A[i, j] = 1/|bin i| for j in bin i.
    Backward: dx = g A.
    """
    _rank = 1


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    r"""Average over an output grid: (N, C, H, W) -> (N, C, *output_size).

    Separable: y = A_H x A_W^T per channel, A the bin-averaging matrices (PyTorch's bins
    [floor(iL/O), ceil((i+1)L/O))). ``AdaptiveAvgPool2d(1)`` is global average pooling.
    Backward: dx = A_H^T g A_W. A None entry keeps that axis's size.
    """
    _rank = 2


class AdaptiveAvgPool3d(_AdaptiveAvgPoolNd):
    r"""Average over an output grid: (N, C, D, H, W) -> (N, C, *output_size).

    Separable bin-averaging matrices per axis; backward applies their transposes.
    """
    _rank = 3


class _AdaptiveMaxPoolNd(Module):
    _rank = None

    def __init__(self, output_size, return_indices=False):
        super().__init__()
        self.output_size = _parse_output_size(self, output_size)
        self.return_indices = bool(return_indices)

    def extra_repr(self):
        o = self.output_size
        return f"output_size={o[0] if len(set(o)) == 1 else o}"

    def forward(self, x):
        xb, batched = _batched(self, x, self._rank)
        N, C = xb.shape[:2]
        spatial = xb.shape[2:]
        out = tuple(L if o is None else o for o, L in zip(self.output_size, spatial))
        bins = [_bins(L, O) for L, O in zip(spatial, out)]
        y = np.empty((N, C) + out, dtype=xb.dtype)
        need_idx = self.return_indices or self.recording      # argmax only for backward
        idx = np.empty((N, C) + out, dtype=np.int64) if need_idx else None
        flat = xb.reshape(N, C, int(np.prod(spatial)))
        for o in np.ndindex(*out):
            sl = tuple(slice(b[0][i], b[1][i]) for b, i in zip(bins, o))
            pos = np.ravel_multi_index(np.meshgrid(*[np.arange(s.start, s.stop) for s in sl],
                                                   indexing="ij"), spatial).ravel()
            win = flat[:, :, pos]
            k = np.argmax(win, axis=2)
            y[(slice(None), slice(None)) + o] = np.take_along_axis(win, k[..., None], 2)[..., 0]
            if need_idx:
                idx[(slice(None), slice(None)) + o] = pos[k]
        if self.recording:
            self.save_for_backward(MaxPoolCache(argmax=idx, x_shape=xb.shape, batched=batched))
        if not self.return_indices:
            return y if batched else y[0]
        return (y, idx) if batched else (y[0], idx[0])

    def backward(self, grad_out, grad_indices=None):
        """dx[n, c, argmax[n, c, o]] += g[n, c, o]: the scatter of max pooling, per bin."""
        return _max_scatter(self, grad_out)


class AdaptiveMaxPool1d(_AdaptiveMaxPoolNd):
    """Maximum over O bins (AdaptiveAvgPool1d's bins); backward: dx[argmax] += g."""
    _rank = 1


class AdaptiveMaxPool2d(_AdaptiveMaxPoolNd):
    """Maximum over an output grid of bins; backward: dx[argmax] += g."""
    _rank = 2


class AdaptiveMaxPool3d(_AdaptiveMaxPoolNd):
    """Maximum over an output grid of bins; backward: dx[argmax] += g."""
    _rank = 3
