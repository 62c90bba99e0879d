r"""Pure-NumPy reference of max and average pooling (1-D, 2-D, 3-D), built on im2col.

Each channel of each sample is pooled on its own, so x (N, C, *S) is viewed as N*C
one-channel images and ``im2col`` lays every window out as one column:
cols (prod(K), N*C*prod(O)). Then

    max pooling:      y = max over the column,  index = where that max was read from
    average pooling:  y = sum over the column / divisor

Backward: max pooling sends g to the one input position that won (a scatter-add: a
position that wins several overlapping windows gets the sum); average pooling spreads
g / divisor over the window, which is ``col2im`` of the broadcast column.

Indices are flat positions in the input's spatial block, as PyTorch returns them
(h * W + w for 2-D). The compiled kernels of ``refdl/_ext`` give the same numbers.
"""
import math

import numpy as np

from .conv import col2im, im2col

__all__ = ["max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward",
           "avg_pool_divisor"]


def max_pool_forward(x, kernel_size, stride, padding, dilation, out_size):
    """(y, indices) for x (N, C, *S); all geometry arguments are tuples of length r."""
    N, C = x.shape[:2]
    spatial = x.shape[2:]
    planes = x.reshape((N * C, 1) + spatial)
    cols = im2col(planes, kernel_size, stride, padding, dilation, out_size, fill=-np.inf)
    win = np.argmax(cols, axis=0)                   # first maximum, like PyTorch
    y = np.take_along_axis(cols, win[None], axis=0)[0]
    # window offset -> input coordinate, per axis: o * s - p + k * d
    o = np.unravel_index(np.arange(math.prod(out_size)), out_size)
    k = np.unravel_index(win.reshape(N * C, math.prod(out_size)), kernel_size)
    pos = [o_a * s - p + k_a * d
           for o_a, k_a, s, p, d in zip(o, k, stride, padding, dilation)]
    idx = np.ravel_multi_index(pos, spatial)
    shape = (N, C) + tuple(out_size)
    return y.reshape(shape), idx.reshape(shape).astype(np.int64)


def max_pool_backward(grad_out, indices, x_shape):
    """Scatter-add grad_out to the input positions in ``indices``."""
    N, C = x_shape[:2]
    S = math.prod(x_shape[2:])
    planes = np.arange(N * C).reshape((N, C) + (1,) * (grad_out.ndim - 2))
    flat = (planes * S + indices).ravel()
    dx = np.bincount(flat, weights=grad_out.ravel().astype(np.float64), minlength=N * C * S)
    return dx.astype(grad_out.dtype).reshape(x_shape)


def avg_pool_divisor(spatial, kernel_size, stride, padding, out_size, count_include_pad,
                     divisor_override=None):
    """The divisor of every output position, shape out_size (PyTorch's rule).

    Along each axis a window starts at o*s - p and ends at min(start + k, L + p): the
    padded window (its length counts when count_include_pad). Clipped to [0, L) it is the
    part that holds real input (its length counts otherwise). The divisor is the product
    over axes, or ``divisor_override``.
    """
    if divisor_override:
        return np.full(out_size, float(divisor_override))
    div = np.ones((), dtype=np.float64)
    for L, k, s, p, O in zip(spatial, kernel_size, stride, padding, out_size):
        start = np.arange(O) * s - p
        end = np.minimum(start + k, L + p)
        if count_include_pad:
            n = end - start
        else:
            n = np.minimum(end, L) - np.maximum(start, 0)
        div = np.multiply.outer(div, n.astype(np.float64))
    return div


def avg_pool_forward(x, kernel_size, stride, padding, out_size, count_include_pad=True,
                     divisor_override=None):
    N, C = x.shape[:2]
    spatial = x.shape[2:]
    planes = x.reshape((N * C, 1) + spatial)
    cols = im2col(planes, kernel_size, stride, padding, 1, out_size)
    div = avg_pool_divisor(spatial, kernel_size, stride, padding, out_size,
                           count_include_pad, divisor_override).astype(x.dtype)
    y = cols.sum(axis=0).reshape((N * C,) + tuple(out_size)) / div
    return y.reshape((N, C) + tuple(out_size))


def avg_pool_backward(grad_out, x_shape, kernel_size, stride, padding, out_size,
                      count_include_pad=True, divisor_override=None):
    N, C = x_shape[:2]
    spatial = tuple(x_shape[2:])
    div = avg_pool_divisor(spatial, kernel_size, stride, padding, out_size,
                           count_include_pad, divisor_override).astype(grad_out.dtype)
    share = (grad_out.reshape((N * C,) + tuple(out_size)) / div).reshape(1, -1)
    cols = np.broadcast_to(share, (math.prod(kernel_size), share.shape[1]))
    dx = col2im(cols, (N * C, 1) + spatial, kernel_size, stride, padding, 1, out_size)
    return dx.reshape(x_shape)
