r"""Convolutions (PyTorch's Conv1d/2d/3d and ConvTranspose1d/2d/3d), by im2col + one GEMM.

Like PyTorch (and every deep-learning library) a "convolution" is a cross-correlation,
NCHW layout (N, C, L) / (N, C, H, W) / (N, C, D, H, W); unbatched inputs (C, *S) are
accepted and give unbatched outputs.

Forward, for x (N, C_in, *S), W (C_out, C_in/G, *K), b (C_out,), groups G:

    y[n, o, p] = b[o] + sum_{c in group(o)} sum_k W[o, c, k] x_pad[n, c, p*s + k*d]

computed as   cols = im2col(x)                      (C_in*prod(K), N*prod(O))
              y_g  = W_g @ cols_g                   one GEMM per group
Backward, with g = dL/dy reshaped to (C_out, N*prod(O)) per group:

    dL/dW_g = g_g cols_g^T        dL/db = sum over n and p of g
    dL/dx   = col2im(W_g^T g_g)   (the adjoint of im2col adds each column back)

dL/dx is itself a convolution: the *transposed* convolution of g with the same W, which
is exactly what ConvTranspose computes in its forward. Derivation:
docs/derivations/conv.md.

im2col/col2im run in the compiled kernels of refdl/_ext when they are built
(``refdl.ext.available()``), else in the NumPy reference of refdl.functional.conv.

A 3x3, stride-1, undilated, ungrouped Conv2d with zero padding can instead run Winograd's
F(2x2, 3x3) algorithm (refdl.functional.winograd, docs/derivations/winograd.md): the same
convolution with 2.25x fewer multiplications. ``layer.algorithm`` chooses: "auto" (the
default, DEFAULT_ALGORITHM) picks Winograd where it measured faster (compiled kernels, at
least WINOGRAD_MIN_CHANNELS input and output channels), "winograd" forces it (an error
where it does not apply), "im2col" forces the GEMM path. Where neither Winograd nor "im2col"
is chosen, a float32 convolution on the compiled path that ``refdl.ext.conv_direct``
accepts runs the direct convolution instead (no columns; docs/derivations/conv.md):
``layer.last_algorithm`` is then "direct". Its backward is the im2col path's.
"""
import math
from typing import NamedTuple, Optional

import numpy as np

from .. import ext, init
from ..functional import winograd
from ..functional.conv import (conv_output_size, conv_transpose_output_size,
                               normalize_tuple, same_padding)
from ..threads import serial_below
from .validate import check_float, check_grad, layer_name
from .module import Module, Parameter

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
           "ConvTranspose3d"]

_NP_PAD_MODE = {"circular": "wrap", "reflect": "reflect", "replicate": "edge"}
ALGORITHMS = ("auto", "im2col", "winograd")
DEFAULT_ALGORITHM = "auto"
# Winograd's 16 GEMMs have K = C_in: with few channels they run far below the GEMM rate
# and the transforms dominate. Against the chunked im2col path (refdl.ext.conv_forward),
# since Winograd's loop runs compiled on the team (third stop), it is faster from 16 in
# and out channels ((64,16,32,32)->16: fwd+bwd 12.8 ms im2col, 10.7 Winograd at 1 thread;
# 7.3 and 5.9 at 2; (32,16,16,16)->32 even: 2.76 / 2.61 and 1.60 / 1.59) and even or
# slower with 8 ((64,8,32,32)->8: forward 0.82 / 0.89 ms at 2 threads);
# benchmarks/_winograd_select_threads.py and docs/performance.md. (From the second stop
# to the third it was 32: Winograd's Python loop over ranges cost more.)
WINOGRAD_MIN_CHANNELS = 16
_AXES = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}


def _fmt(t):
    return "x".join(str(v) for v in t)


class ConvCache(NamedTuple):
    """One call of Conv1d/2d/3d on the im2col path (symbols of docs/derivations/conv.md)."""
    cols: np.ndarray            # im2col(x_pad) (C_in*prod(K), N*prod(O)); backward turns it
    #                             into dL/dcols in place
    x_shape: tuple              # shape of the (index-map padded) input col2im returns
    pads: tuple                 # zero padding as (before, after) pairs
    out: tuple                  # output spatial size O
    batched: bool               # False for an unbatched (C, *S) input
    pad_map: Optional[np.ndarray] = None   # index map of a non-zero padding mode
    spatial: tuple = ()         # the input's own spatial size (before the index map)


class ConvChunkCache(NamedTuple):
    """One call of Conv1d/2d/3d on the compiled im2col path, which runs a chunk of images at
    a time (refdl.ext.conv_forward): it keeps x, and backward recomputes each chunk's
    columns from it while they fit in cache (x is prod(K)/stride^r times smaller than cols)."""
    x: np.ndarray               # the (index-map padded) input, batched
    pads: tuple
    out: tuple
    batched: bool
    pad_map: Optional[np.ndarray] = None
    spatial: tuple = ()

    @property
    def x_shape(self):
        return self.x.shape


class WinogradCache(NamedTuple):
    """One call of Conv2d on the Winograd path (symbols of docs/derivations/winograd.md)."""
    x: np.ndarray               # the input (backward recomputes its tiles' B^T d B from it)
    U: np.ndarray               # G W G^T (16, C_out, C_in)
    x_shape: tuple
    pads: tuple
    out: tuple
    batched: bool


class ConvTransposeCache(NamedTuple):
    """One call of ConvTranspose1d/2d/3d: its input x as (G, C_in/G, N*L_in) matrices."""
    x: np.ndarray
    x_shape: tuple
    out: tuple
    batched: bool


class _ConvBase(Module):
    """Shared machinery: arguments, parameters, input checks, grouped GEMMs."""

    _rank = None
    transposed = False

    def _common_init(self, in_channels, out_channels, kernel_size, stride, dilation,
                     groups, bias, dtype, generator):
        r = self._rank
        name = type(self).__name__
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        if self.in_channels <= 0 or self.out_channels <= 0:
            raise ValueError(f"{name}: in_channels and out_channels must be positive, got "
                             f"({in_channels}, {out_channels})")
        self.kernel_size = normalize_tuple(kernel_size, r, "kernel_size")
        self.stride = normalize_tuple(stride, r, "stride")
        self.dilation = normalize_tuple(dilation, r, "dilation")
        for what, v in (("kernel_size", self.kernel_size), ("stride", self.stride),
                        ("dilation", self.dilation)):
            if any(a < 1 for a in v):
                raise ValueError(f"{name}: {what} must be positive, got {v}")
        self.groups = int(groups)
        if self.groups < 1:
            raise ValueError(f"{name}: groups must be a positive integer, got {groups}")
        if self.in_channels % self.groups:
            raise ValueError(f"{name}: in_channels ({self.in_channels}) must be divisible "
                             f"by groups ({self.groups})")
        if self.out_channels % self.groups:
            raise ValueError(f"{name}: out_channels ({self.out_channels}) must be divisible "
                             f"by groups ({self.groups})")
        if self.transposed:
            wshape = (self.in_channels, self.out_channels // self.groups) + self.kernel_size
        else:
            wshape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self.weight = Parameter(np.empty(wshape, dtype=dtype))
        if bias:
            self.bias = Parameter(np.empty(self.out_channels, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters(generator)
        # scratch reused while the shapes repeat (a fresh 10-70 MB array costs thousands of
        # page faults): the column matrix, which a cache takes along and backward hands
        # back, and Winograd's per-thread scratch (used only during a call)
        self._cols = None
        self._spare = {}
        self._geom = None      # (input shape, settings) -> geometry of the last forward
        self.algorithm = DEFAULT_ALGORITHM
        self.last_algorithm = None   # "im2col", "direct" or "winograd": the last forward's

    def reset_parameters(self, generator=None):
        """PyTorch's default: kaiming_uniform_(W, a=sqrt(5)), b ~ U(+-1/sqrt(fan_in)).

        That is W ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = W.shape[1]*prod(K).
        """
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=generator)
        if self.bias is not None:
            fan_in, _ = init.calculate_fan_in_and_fan_out(self.weight)
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            init.uniform_(self.bias, -bound, bound, generator=generator)

    # -- input handling -------------------------------------------------------------------
    def _batched(self, x, channels):
        """Validate x and return it as a contiguous batched array (plus the batch flag)."""
        r = self._rank
        x = check_float(self, x)
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"{layer_name(self)}: expected a float32 or float64 input, got "
                            f"dtype {x.dtype}")
        if x.ndim not in (r + 1, r + 2):
            raise ValueError(f"{layer_name(self)}: expected a {r + 1}-D (unbatched) or "
                             f"{r + 2}-D (batched) input {_AXES[r]}, got shape "
                             f"{tuple(x.shape)}")
        batched = x.ndim == r + 2
        xb = x if batched else x[None]
        if xb.shape[1] != channels:
            raise ValueError(f"{layer_name(self)}: expected input with {channels} channels "
                             f"{_AXES[r]} with C={channels}, got shape {tuple(x.shape)}")
        if any(s == 0 for s in xb.shape[2:]):     # an empty batch (N = 0) is fine
            raise ValueError(f"{layer_name(self)}: empty input of shape {tuple(x.shape)}")
        return np.ascontiguousarray(xb), batched

    def _weight(self, dtype):
        return self.weight.data.astype(dtype, copy=False)

    def _add_param_grads(self, dW, g):
        if self.weight.requires_grad:
            self.weight.grad += dW.reshape(self.weight.shape)
        if self.bias is not None and self.bias.requires_grad:
            # sum the contiguous spatial axis first (one streaming pass), then the batch
            self.bias.grad += g.reshape(g.shape[0], g.shape[1], math.prod(g.shape[2:])).sum(axis=2).sum(axis=0)

    def _pending(self):
        """The newest pending cache, left in place: a grad_out of the wrong shape is refused
        without losing the call's cache (pop_saved raises CacheError when none is pending)."""
        return self._saved[-1] if self._saved else self.pop_saved()


class _ConvNd(_ConvBase):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", dtype=np.float32,
                 generator=None):
        super().__init__()
        r = self._rank
        name = type(self).__name__
        if padding_mode not in ("zeros", "circular", "reflect", "replicate"):
            raise ValueError(f"{name}: padding_mode must be 'zeros', 'circular', 'reflect' "
                             f"or 'replicate', got {padding_mode!r}")
        self.padding_mode = padding_mode
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{name}: padding must be an int, a tuple, 'same' or "
                                 f"'valid', got {padding!r}")
            if padding == "same" and any(s != 1 for s in normalize_tuple(stride, r)):
                raise ValueError(f"{name}: padding='same' is not supported for strided "
                                 f"convolutions (stride={stride})")
            self.padding = padding
        else:
            self.padding = normalize_tuple(padding, r, "padding")
            if any(p < 0 for p in self.padding):
                raise ValueError(f"{name}: padding must be non-negative, got {padding}")
        self._common_init(in_channels, out_channels, kernel_size, stride, dilation, groups,
                          bias, dtype, generator)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        pad = repr(self.padding) if isinstance(self.padding, str) else self.padding
        if self.padding != (0,) * self._rank:
            s += f", padding={pad}"
        if self.dilation != (1,) * self._rank:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s

    def _pads(self):
        """Padding as (before, after) pairs."""
        if self.padding == "valid":
            return ((0, 0),) * self._rank
        if self.padding == "same":
            return same_padding(self.kernel_size, self.dilation)
        return tuple((p, p) for p in self.padding)

    def output_size(self, spatial):
        """The output's spatial size for an input of spatial size ``spatial``."""
        return conv_output_size(tuple(spatial), self.kernel_size, self.stride, self._pads(),
                                self.dilation)

    # -- padding modes other than zeros: an index map and its adjoint -----------------------
    def _pad_index(self, spatial, pads):
        idx = np.arange(math.prod(spatial)).reshape(spatial)
        return np.pad(idx, pads, mode=_NP_PAD_MODE[self.padding_mode])

    def _geometry(self, xb, x):
        """(pads, pad_map, out) for a batched input xb, validated once per input shape and
        setting (later calls with the same shape reuse it: the layer's own overhead stays
        small next to the kernels in small layers)."""
        key = (xb.shape, self.kernel_size, self.stride, self.padding, self.dilation,
               self.padding_mode, self.groups)
        if self._geom is not None and self._geom[0] == key:
            return self._geom[1]
        spatial = xb.shape[2:]
        pads = self._pads()
        padded = tuple(L + lo + hi for L, (lo, hi) in zip(spatial, pads))
        span = tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))
        if any(sp > p for sp, p in zip(span, padded)):
            raise ValueError(
                f"{layer_name(self)}: the kernel (dilated size {_fmt(span)}) is larger than "
                f"the padded input ({_fmt(padded)}) for input of shape {tuple(x.shape)}")
        pad_map = None
        if self.padding_mode != "zeros" and any(lo or hi for lo, hi in pads):
            for L, (lo, hi) in zip(spatial, pads):
                limit = L - 1 if self.padding_mode == "reflect" else L
                if self.padding_mode != "replicate" and max(lo, hi) > limit:
                    raise ValueError(f"{layer_name(self)}: {self.padding_mode} padding "
                                     f"{max(lo, hi)} is too large for input of shape "
                                     f"{tuple(x.shape)}")
            pad_map = self._pad_index(spatial, pads)
            padded_shape = pad_map.shape
            pads = ((0, 0),) * self._rank
        else:
            padded_shape = spatial
        out = conv_output_size(padded_shape, self.kernel_size, self.stride, pads,
                               self.dilation)
        geom = (pads, pad_map, out)
        self._geom = (key, geom)
        return geom

    def _winograd_applies(self, C, out):
        """True when this call runs Winograd F(2x2, 3x3) (see the module docstring)."""
        algo = self.algorithm
        if algo not in ALGORITHMS:
            raise ValueError(f"{layer_name(self)}: algorithm must be one of {ALGORITHMS}, "
                             f"got {algo!r}")
        if algo == "im2col":
            return False
        ok = self._rank == 2 and winograd.supported(self.kernel_size, self.stride,
                                                    self.dilation, self.groups,
                                                    self.padding_mode)
        if algo == "winograd":
            if not ok:
                raise ValueError(f"{layer_name(self)}: algorithm='winograd' needs a 3x3 "
                                 f"Conv2d with stride 1, dilation 1, groups 1 and zero "
                                 f"padding, got {self.extra_repr()}")
            return True
        return (ok and ext.available()
                and min(C, self.out_channels) >= WINOGRAD_MIN_CHANNELS)

    def forward(self, x):
        xb, batched = self._batched(x, self.in_channels)
        N, C = xb.shape[:2]
        spatial = xb.shape[2:]
        pads, pad_map, out = self._geometry(xb, x)
        if pad_map is not None:
            xb = xb.reshape(N, C, math.prod(spatial))[:, :, pad_map]
        bias = self.bias.data if self.bias is not None else None
        recording = self.recording
        if self._winograd_applies(C, out):
            self.last_algorithm = "winograd"
            y, xw, U = winograd.conv2d(xb, self._weight(xb.dtype), bias, pads,
                                       buffers=self._spare)     # its scratch, kept across calls
            if recording:
                self.save_for_backward(WinogradCache(x=xw, U=U, x_shape=xb.shape, pads=pads,
                                                     out=out, batched=batched))
            return y if batched else y[0]
        self.last_algorithm = "im2col"
        if ext.conv_chunked(C * math.prod(self.kernel_size), self.out_channels, out):
            # compiled: im2col and the GEMMs a chunk of images at a time, in cache, or
            # the direct convolution
            W2 = self._weight(xb.dtype).reshape(self.out_channels, -1)
            direct = self.algorithm != "im2col" and ext.conv_direct(
                xb.shape, W2.shape, xb.dtype, self.kernel_size, self.stride, pads,
                self.dilation, out, self.groups)
            if direct:
                self.last_algorithm = "direct"
            y = ext.conv_forward(xb, W2, bias, self.kernel_size, self.stride, pads,
                                 self.dilation, out, self.groups, buffers=self._spare,
                                 direct=direct)
            if recording:
                self.save_for_backward(ConvChunkCache(x=xb, pads=pads,
                                                      out=out, batched=batched,
                                                      pad_map=pad_map, spatial=spatial))
        else:
            y, cols = self._forward_whole_batch(xb, bias, pads, out)
            if recording:
                self.save_for_backward(ConvCache(cols=cols, x_shape=xb.shape, pads=pads,
                                                 out=out, batched=batched, pad_map=pad_map,
                                                 spatial=spatial))
            else:
                self._cols = cols                  # nothing pending uses it: reuse it
        return y if batched else y[0]

    def _forward_whole_batch(self, xb, bias, pads, out):
        """(y, cols): im2col of the whole batch, then one GEMM per group."""
        N = xb.shape[0]
        cols = ext.im2col(xb, self.kernel_size, self.stride, pads, self.dilation, out,
                          out=self._cols)
        self._cols = None                          # the cache holds it until backward
        G = self.groups
        cog = self.out_channels // G
        W = self._weight(xb.dtype).reshape(G, cog, -1)
        L = math.prod(out)
        # cols viewed as (G, N, C_in/G*K, L): for each group, W_g @ cols_g lands directly
        # in y[:, group] (N, C_out/G, L), without a transposed copy of the output
        colsg = cols.reshape(G, cols.shape[0] // G, N, L).transpose(0, 2, 1, 3)
        y = np.empty((N, G, cog, L), dtype=xb.dtype)
        with serial_below(cols.size * cog):
            np.matmul(W[:, None], colsg, out=y.transpose(1, 0, 2, 3))
        y = y.reshape((N, self.out_channels) + out)
        if bias is not None:
            y += bias.astype(y.dtype, copy=False).reshape((-1,) + (1,) * self._rank)
        return y, cols

    accepts_input_grad = True

    def backward(self, grad_out, input_grad=True):
        """dW and db accumulated; returns dx, or None with ``input_grad=False`` (its GEMM
        and col2im are skipped, as PyTorch does for data that does not require grad)."""
        c = self._pending()
        N = c.x_shape[0]
        shape = (N, self.out_channels) + c.out
        g = check_grad(self, grad_out, shape if c.batched else shape[1:])
        self.pop_saved()
        if not c.batched:
            g = g[None]
        wgrad = self.weight.requires_grad
        if isinstance(c, WinogradCache):
            g = np.ascontiguousarray(g, dtype=c.x.dtype)
            dx, dW = winograd.conv2d_backward(g, c.x, c.U, c.x_shape, c.pads,
                                              need_dx=input_grad, need_dw=wgrad,
                                              buffers=self._spare)
            self._add_param_grads(dW, g)
            return self._batch_out(dx, c)
        if isinstance(c, ConvChunkCache):
            W2 = self._weight(c.x.dtype).reshape(self.out_channels, -1)
            dx, dW = ext.conv_backward(c.x, W2, g, self.kernel_size, self.stride, c.pads,
                                       self.dilation, c.out, self.groups,
                                       need_dx=input_grad, need_dw=wgrad,
                                       buffers=self._spare)
            self._add_param_grads(dW, g)
            return self._batch_out(self._unpad(dx, c), c)
        return self._batch_out(self._unpad(self._backward_whole_batch(c, g, input_grad), c),
                               c)

    def _backward_whole_batch(self, c, g, input_grad):
        """dW, db from the cached columns (one GEMM per group); dx = col2im(W^T g), or None
        without input_grad."""
        N = c.x_shape[0]
        wgrad = self.weight.requires_grad
        G = self.groups
        cols = c.cols
        CKg = cols.shape[0] // G
        colsg = cols.reshape(G, CKg, cols.shape[1])
        cog = self.out_channels // G
        gm = np.ascontiguousarray(
            g.reshape(N, self.out_channels, math.prod(c.out)).transpose(1, 0, 2)).astype(cols.dtype,
                                                                          copy=False)
        gm = gm.reshape(G, cog, gm.shape[1] * gm.shape[2])  # (G, C_out/G, N*L)
        W = self._weight(cols.dtype).reshape(G, cog, -1)
        with serial_below(cols.size * cog):
            if wgrad:
                # dW^T = cols g^T: (C_in/G*K, N*L) @ (N*L, C_out/G); OpenBLAS runs this
                # orientation of the long-K product faster than g cols^T
                dWT = np.matmul(colsg, gm.transpose(0, 2, 1))
                self._add_param_grads(dWT.transpose(0, 2, 1), g)
            else:
                self._add_param_grads(None, g)
            if input_grad:
                # cols is not needed any more: dcols = W^T g overwrites it (no new big
                # buffer)
                np.matmul(W.transpose(0, 2, 1), gm, out=colsg)
        dx = None
        if input_grad:
            dx = ext.col2im(cols, c.x_shape, self.kernel_size, self.stride, c.pads,
                            self.dilation, c.out)
        self._cols = cols                          # free for the next forward's im2col
        return dx

    @staticmethod
    def _batch_out(dx, c):
        """dx as the input came (without the batch axis when it had none); None stays."""
        return dx if dx is None or c.batched else dx[0]

    def _unpad(self, dx, c):
        """The adjoint of a non-zero padding mode's index map: dx of the padded input
        (N, C, *P) summed back onto the input's own positions (N, C, *S)."""
        if dx is None or c.pad_map is None:
            return dx
        N = dx.shape[0]
        flat = np.zeros((N * self.in_channels, math.prod(c.spatial)), dtype=dx.dtype)
        np.add.at(flat, (slice(None), c.pad_map.ravel()),
                  dx.reshape(N * self.in_channels, math.prod(dx.shape[2:])))
        return flat.reshape((N, self.in_channels) + tuple(c.spatial))


class Conv1d(_ConvNd):
    r"""1-D convolution (cross-correlation) over (N, C_in, L) -> (N, C_out, L_out).

    W: (C_out, C_in/groups, k), b: (C_out,).
    y[n, o, l] = b[o] + sum_{c, j} W[o, c, j] x_pad[n, c, l*s + j*d]
    L_out = floor((L + 2p - d(k-1) - 1)/s) + 1;  padding 'same' keeps L (stride 1).
    Backward (g = dL/dy): dW = g cols^T, db = sum_{n,l} g, dx = col2im(W^T g)
    (a transposed convolution of g). Derivation: docs/derivations/conv.md
    """
    _rank = 1


class Conv2d(_ConvNd):
    r"""2-D convolution (cross-correlation) over (N, C_in, H, W) -> (N, C_out, H_out, W_out).

    W: (C_out, C_in/groups, kH, kW), b: (C_out,).
    y[n, o, i, j] = b[o] + sum_{c, u, v} W[o, c, u, v] x_pad[n, c, i*s_h + u*d_h, j*s_w + v*d_w]
    H_out = floor((H + 2p_h - d_h(kH-1) - 1)/s_h) + 1, and likewise W_out.
    Backward (g = dL/dy, cols = im2col(x)): dL/dW = g cols^T, dL/db = sum_{n,i,j} g,
    dL/dx = col2im(W^T g), the transposed convolution of g with W.
    Derivation: docs/derivations/conv.md
    """
    _rank = 2


class Conv3d(_ConvNd):
    r"""3-D convolution over (N, C_in, D, H, W) -> (N, C_out, D_out, H_out, W_out).

    W: (C_out, C_in/groups, kD, kH, kW); each output size as in Conv1d per axis.
    Backward: dW = g cols^T, db = sum g, dx = col2im(W^T g). docs/derivations/conv.md
    """
    _rank = 3


class _ConvTransposeNd(_ConvBase):
    transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 dtype=np.float32, generator=None):
        super().__init__()
        r = self._rank
        name = type(self).__name__
        if padding_mode != "zeros":
            raise ValueError(f"{name}: only padding_mode='zeros' is supported, got "
                             f"{padding_mode!r}")
        self.padding_mode = padding_mode
        self.padding = normalize_tuple(padding, r, "padding")
        self.output_padding = normalize_tuple(output_padding, r, "output_padding")
        if any(p < 0 for p in self.padding + self.output_padding):
            raise ValueError(f"{name}: padding and output_padding must be non-negative")
        self._common_init(in_channels, out_channels, kernel_size, stride, dilation, groups,
                          bias, dtype, generator)
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):
                raise ValueError(f"{name}: output_padding {self.output_padding} must be "
                                 f"smaller than either stride {self.stride} or dilation "
                                 f"{self.dilation}")

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0,) * self._rank:
            s += f", padding={self.padding}"
        if self.output_padding != (0,) * self._rank:
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1,) * self._rank:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s

    def output_size(self, spatial, output_padding=None):
        op = self.output_padding if output_padding is None else output_padding
        return conv_transpose_output_size(tuple(spatial), self.kernel_size, self.stride,
                                          self.padding, op, self.dilation)

    def forward(self, x, output_size=None):
        """``output_size`` (optional, spatial or full shape) picks output_padding per call,
        as in PyTorch."""
        xb, batched = self._batched(x, self.in_channels)
        N = xb.shape[0]
        spatial = xb.shape[2:]
        op = self.output_padding
        if output_size is not None:
            want = tuple(int(v) for v in output_size)[-self._rank:]
            base = self.output_size(spatial, (0,) * self._rank)
            op = tuple(w - b for w, b in zip(want, base))
            if any(o < 0 or o >= max(s, d) for o, s, d in zip(op, self.stride,
                                                                  self.dilation)):
                raise ValueError(f"{layer_name(self)}: requested output size {want} is not "
                                 f"reachable from input {tuple(x.shape)} (valid sizes: "
                                 f"{base} plus less than max(stride, dilation))")
        out = self.output_size(spatial, op)
        if any(o < 1 for o in out):
            raise ValueError(f"{layer_name(self)}: input of shape {tuple(x.shape)} gives "
                             f"an empty output {out}")
        G = self.groups
        cin_g = self.in_channels // G
        xg = np.ascontiguousarray(xb.reshape(N, self.in_channels, math.prod(spatial)).transpose(1, 0, 2))
        xg = xg.reshape(G, cin_g, xg.shape[1] * xg.shape[2])  # (G, C_in/G, N*L_in)
        W = self._weight(xb.dtype).reshape(G, cin_g, -1)    # (G, C_in/G, C_out/G*K)
        shape = (G, W.shape[2], xg.shape[2])                # (G, C_out/G*K, N*L_in)
        buf = self._cols
        if buf is None or buf.size != np.prod(shape) or buf.dtype != xg.dtype:
            buf = np.empty((shape[0] * shape[1], shape[2]), dtype=xg.dtype)
        self._cols = buf.reshape(shape[0] * shape[1], shape[2])
        cols = self._cols
        np.matmul(W.transpose(0, 2, 1), xg, out=cols.reshape(shape))
        pads = tuple((p, p) for p in self.padding)
        y = ext.col2im(cols, (N, self.out_channels) + out, self.kernel_size, self.stride,
                       pads, self.dilation, spatial)
        if self.bias is not None:
            y += self.bias.data.astype(y.dtype, copy=False).reshape(
                (-1,) + (1,) * self._rank)
        self.save_for_backward(ConvTransposeCache(x=xg, x_shape=xb.shape, out=out,
                                                  batched=batched))
        return y if batched else y[0]

    def backward(self, grad_out):
        c = self._pending()
        N = c.x_shape[0]
        shape = (N, self.out_channels) + c.out
        g = check_grad(self, grad_out, shape if c.batched else shape[1:])
        self.pop_saved()
        if not c.batched:
            g = g[None]
        g = np.ascontiguousarray(g, dtype=c.x.dtype)
        G = self.groups
        cin_g = self.in_channels // G
        spatial = c.x_shape[2:]
        pads = tuple((p, p) for p in self.padding)
        self._cols = ext.im2col(g, self.kernel_size, self.stride, pads, self.dilation,
                                spatial, out=self._cols)
        gcols = self._cols.reshape(G, self._cols.shape[0] // G, self._cols.shape[1])
        W = self._weight(g.dtype).reshape(G, cin_g, -1)
        self._add_param_grads(np.matmul(c.x, gcols.transpose(0, 2, 1)), g)
        dx = np.matmul(W, gcols).reshape(self.in_channels, N, math.prod(spatial)).transpose(1, 0, 2)
        dx = np.ascontiguousarray(dx).reshape(c.x_shape)
        return dx if c.batched else dx[0]


class ConvTranspose1d(_ConvTransposeNd):
    r"""1-D transposed convolution (the adjoint of Conv1d): (N, C_in, L) -> (N, C_out, L_out).

    W: (C_in, C_out/groups, k). L_out = (L-1)s - 2p + d(k-1) + output_padding + 1.
    Forward: y = col2im(W^T x) + b, i.e. every input entry scatters a copy of the kernel
    scaled by itself into the output at stride s ("fractionally strided" convolution).
    Backward: cols = im2col(g);  dx = W cols (an ordinary convolution of g),
    dW = x cols^T, db = sum g. docs/derivations/conv.md
    """
    _rank = 1


class ConvTranspose2d(_ConvTransposeNd):
    r"""2-D transposed convolution (the adjoint of Conv2d): (N, C_in, H, W) -> (N, C_out, H', W').

    W: (C_in, C_out/groups, kH, kW).
    H' = (H-1)s_h - 2p_h + d_h(kH-1) + output_padding_h + 1, and likewise W'.
    Forward: y = col2im(W^T x) + b. Backward (cols = im2col(g)): dx = W cols (Conv2d of g
    with the same weights), dW = x cols^T, db = sum g. docs/derivations/conv.md
    """
    _rank = 2


class ConvTranspose3d(_ConvTransposeNd):
    r"""3-D transposed convolution (the adjoint of Conv3d): (N, C_in, D, H, W) -> (N, C_out, ...).

    W: (C_in, C_out/groups, kD, kH, kW); each output size as in ConvTranspose1d per axis.
    Forward y = col2im(W^T x) + b; backward dx = W im2col(g), dW = x im2col(g)^T.
    """
    _rank = 3
