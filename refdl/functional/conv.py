r"""Convolution arithmetic and the pure-NumPy im2col / col2im reference (1-D, 2-D, 3-D).

This is the readable version of the compiled kernels in ``refdl/_ext``: it gives the same
numbers (float64 to 1e-12, float32 to 1e-5 relative) and is used whenever the extension
is not built or ``REFDL_DISABLE_EXT=1`` is set (see ``refdl.ext``).

Output size of a convolution along one axis (PyTorch's formula), input length L, kernel
k, stride s, padding p on each side, dilation d:

    L_out = floor((L + 2p - d(k - 1) - 1) / s) + 1

(with padding p_lo before and p_hi after, 2p becomes p_lo + p_hi). A transposed
convolution inverts it:

    L_out = (L - 1) s - 2p + d(k - 1) + output_padding + 1.

The column matrix
-----------------
For x of shape (N, C, *S) (S = (L,), (H, W) or (D, H, W)) and a kernel of shape K,
``im2col`` returns a matrix ``cols`` of shape (C * prod(K), N * prod(O)) whose row
(c, k_1, ..., k_r) and column (n, o_1, ..., o_r) holds

    cols[(c, k), (n, o)] = x_pad[n, c, o_1 s_1 + k_1 d_1, ..., o_r s_r + k_r d_r]

(x_pad is x with the padding added, filled with ``fill``). A convolution is then one
matrix product: y[:, n, o] = W.reshape(C_out, C*prod(K)) @ cols. ``col2im`` is the
adjoint (the transpose) of ``im2col``: it *adds* every column entry back to the input
position it was read from, so <im2col(x), M> = <x, col2im(M)> for every x and M.
"""
import itertools
import math

import numpy as np

__all__ = ["conv_output_size", "conv_transpose_output_size", "pool_output_size",
           "normalize_tuple", "same_padding", "im2col", "col2im"]


def normalize_tuple(value, n, name="argument"):
    """``3 -> (3, 3)`` for n = 2; a tuple/list of length n is returned as a tuple of ints."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),) * n
    if isinstance(value, (tuple, list)) and len(value) == n and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        return tuple(int(v) for v in value)
    raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")


def same_padding(kernel_size, dilation):
    """Per-axis (before, after) padding for ``padding='same'`` at stride 1.

    The total padding is d(k - 1); when it is odd the extra zero goes after (PyTorch).
    """
    pads = []
    for k, d in zip(kernel_size, dilation):
        total = d * (k - 1)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def _pairs(padding, n):
    """Padding as n (before, after) pairs, from an int, n ints, or n pairs."""
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        return ((int(padding), int(padding)),) * n
    if not isinstance(padding, (tuple, list)):
        raise TypeError(f"padding must be an int, {n} ints or {n} (before, after) pairs of "
                        f"ints, got {padding!r}")
    padding = tuple(padding)
    if len(padding) != n:
        raise ValueError(f"padding must have {n} entries, got {padding!r}")
    out = []
    for p in padding:
        pair = tuple(p) if isinstance(p, (tuple, list)) else (p, p)
        if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and
                                     not isinstance(v, bool) for v in pair):
            raise TypeError(f"padding entries must be ints or (before, after) pairs of "
                            f"ints, got {padding!r}")
        out.append((int(pair[0]), int(pair[1])))
    return tuple(out)


def conv_output_size(size, kernel_size, stride=1, padding=0, dilation=1):
    """floor((L + p_lo + p_hi - d(k-1) - 1)/s) + 1 per axis (an int for ints, else a tuple).

    ``padding`` may be an int, a tuple of ints (symmetric) or of (before, after) pairs.
    """
    scalar = isinstance(size, (int, np.integer))
    sizes = (int(size),) if scalar else tuple(int(s) for s in size)
    n = len(sizes)
    ks = normalize_tuple(kernel_size, n, "kernel_size")
    ss = normalize_tuple(stride, n, "stride")
    ds = normalize_tuple(dilation, n, "dilation")
    ps = _pairs(padding, n)
    out = tuple((L + lo + hi - d * (k - 1) - 1) // s + 1
                for L, k, s, (lo, hi), d in zip(sizes, ks, ss, ps, ds))
    return out[0] if scalar else out


def conv_transpose_output_size(size, kernel_size, stride=1, padding=0, output_padding=0,
                               dilation=1):
    """(L - 1) s - 2p + d(k - 1) + output_padding + 1 per axis."""
    scalar = isinstance(size, (int, np.integer))
    sizes = (int(size),) if scalar else tuple(int(s) for s in size)
    n = len(sizes)
    ks, ss, ps, ops, ds = (normalize_tuple(v, n, name) for v, name in (
        (kernel_size, "kernel_size"), (stride, "stride"), (padding, "padding"),
        (output_padding, "output_padding"), (dilation, "dilation")))
    out = tuple((L - 1) * s - 2 * p + d * (k - 1) + op + 1
                for L, k, s, p, op, d in zip(sizes, ks, ss, ps, ops, ds))
    return out[0] if scalar else out


def pool_output_size(size, kernel_size, stride, padding=0, dilation=1, ceil_mode=False):
    """Pooling output length (PyTorch): floor or ceil of (L + 2p - d(k-1) - 1)/s, plus 1.

    With ``ceil_mode`` the last window may hang over the end, but it must start inside
    the input or the left padding: if (L_out - 1) s >= L + p, L_out is reduced by one.
    """
    scalar = isinstance(size, (int, np.integer))
    sizes = (int(size),) if scalar else tuple(int(s) for s in size)
    n = len(sizes)
    ks, ss, ps, ds = (normalize_tuple(v, n, name) for v, name in (
        (kernel_size, "kernel_size"), (stride, "stride"), (padding, "padding"),
        (dilation, "dilation")))
    out = []
    for L, k, s, p, d in zip(sizes, ks, ss, ps, ds):
        span = L + 2 * p - d * (k - 1) - 1
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= L + p:
            o -= 1
        out.append(o)
    out = tuple(out)
    return out[0] if scalar else out


def _geometry(x_shape, kernel_size, stride, padding, dilation, out_size):
    spatial = tuple(x_shape[2:])
    n = len(spatial)
    ks = normalize_tuple(kernel_size, n, "kernel_size")
    ss = normalize_tuple(stride, n, "stride")
    ds = normalize_tuple(dilation, n, "dilation")
    ps = _pairs(padding, n)
    if out_size is None:
        out_size = conv_output_size(spatial, ks, ss, ps, ds)
    out_size = tuple(int(o) for o in out_size)
    # pad after far enough that every window (including ceil-mode overhang) is inside
    ps = tuple((lo, max(hi, (o - 1) * s + d * (k - 1) + 1 - L - lo))
               for (lo, hi), o, s, d, k, L in zip(ps, out_size, ss, ds, ks, spatial))
    return spatial, ks, ss, ps, ds, out_size


def im2col(x, kernel_size, stride=1, padding=0, dilation=1, out_size=None, fill=0.0):
    """The column matrix of x: (N, C, *S) -> (C * prod(K), N * prod(O)).

    One strided slice of the padded input per kernel offset k:
    ``cols[c, k, n, o] = x_pad[n, c, o * s + k * d]``. ``out_size`` defaults to the
    convolution output size; ``fill`` is the value of the padding (0 for convolution,
    -inf for max pooling).
    """
    x = np.asarray(x)
    N, C = x.shape[:2]
    spatial, ks, ss, ps, ds, out = _geometry(x.shape, kernel_size, stride, padding,
                                             dilation, out_size)
    xp = np.pad(x, ((0, 0), (0, 0)) + ps, constant_values=fill)
    cols = np.empty((C,) + ks + (N,) + out, dtype=x.dtype)
    for k in itertools.product(*(range(kk) for kk in ks)):
        window = tuple(slice(ki * d, ki * d + s * (o - 1) + 1, s)
                       for ki, d, s, o in zip(k, ds, ss, out))
        # x_pad[:, :, window] is (N, C, *O); the column block wants (C, N, *O)
        cols[(slice(None),) + k] = xp[(slice(None), slice(None)) + window].swapaxes(0, 1)
    return cols.reshape(C * math.prod(ks), N * math.prod(out))


def col2im(cols, x_shape, kernel_size, stride=1, padding=0, dilation=1, out_size=None):
    """The adjoint of :func:`im2col`: (C * prod(K), N * prod(O)) -> (N, C, *S).

    Every column entry is added back to the input position it was read from (positions
    read by several windows receive the sum); entries that came from the padding are
    dropped.
    """
    cols = np.asarray(cols)
    N, C = x_shape[:2]
    spatial, ks, ss, ps, ds, out = _geometry(x_shape, kernel_size, stride, padding,
                                             dilation, out_size)
    c6 = cols.reshape((C,) + ks + (N,) + out)
    padded = tuple(L + lo + hi for L, (lo, hi) in zip(spatial, ps))
    xp = np.zeros((N, C) + padded, dtype=cols.dtype)
    for k in itertools.product(*(range(kk) for kk in ks)):
        window = tuple(slice(ki * d, ki * d + s * (o - 1) + 1, s)
                       for ki, d, s, o in zip(k, ds, ss, out))
        xp[(slice(None), slice(None)) + window] += c6[(slice(None),) + k].swapaxes(0, 1)
    crop = tuple(slice(lo, lo + L) for (lo, _), L in zip(ps, spatial))
    return np.ascontiguousarray(xp[(slice(None), slice(None)) + crop])


def direct_extent(spatial, geom):
    """((Dp, Hp, Wp), padded): the plane the direct convolution's taps address for an
    input of spatial size (D, H, W) (see :func:`direct_taps`)."""
    KD, KH, KW, sd, sh, sw, pd, ph, pw, dd, dh, dw, OD, OH, OW = geom
    extent = ((OD - 1) * sd + (KD - 1) * dd + 1, (OH - 1) * sh + (KH - 1) * dh + 1,
              (OW - 1) * sw + (KW - 1) * dw + 1)
    padded = (pd, ph, pw) != (0, 0, 0) or any(e > n for e, n in zip(extent, spatial))
    return (extent if padded else tuple(spatial)), padded


def direct_taps(x5_shape, geom, groups=1):
    """Where each tap of the direct convolution reads (refdl.ext.conv_forward_direct,
    docs/derivations/conv.md): (off, (Dp, Hp, Wp), padded) for x of shape (N, C, D, H, W)
    and geom = (KD, KH, KW, sd, sh, sw, pd, ph, pw, dd, dh, dw, OD, OH, OW), with pd, ph,
    pw the padding before each axis. The taps address a plane set (C/groups, Dp, Hp, Wp):
    x itself when no padding is needed (padded False), else the zero-padded extent the
    outputs read, ((O - 1) s + (K - 1) d + 1 along each axis). Tap k = (c, kd, kh, kw)
    reads off[k] = c Dp Hp Wp + kd dd Hp Wp + kh dh Wp + kw dw past its output's window
    corner."""
    KD, KH, KW, dd, dh, dw = geom[0], geom[1], geom[2], geom[9], geom[10], geom[11]
    (Dp, Hp, Wp), padded = direct_extent(x5_shape[2:], geom)
    c, kd, kh, kw = np.meshgrid(np.arange(x5_shape[1] // groups), np.arange(KD),
                                np.arange(KH), np.arange(KW), indexing="ij")
    off = (c * (Dp * Hp * Wp) + kd * (dd * Hp * Wp) + kh * (dh * Wp) + kw * dw).ravel()
    off = off.astype(np.intp)
    off.flags.writeable = False                 # memoised by refdl.ext: shared
    return off, (Dp, Hp, Wp), padded
