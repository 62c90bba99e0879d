r"""Transformers for images: the patch embedding of a Vision Transformer and a
windowed-attention encoder (Swin-like) for large images.

Patches: an image (N, C, H, W) becomes (H/p)(W/p) tokens of width E by a strided
convolution (kernel = stride = p), the same thing as :func:`patchify` followed by one
matrix product. Windows: a pre-norm TransformerEncoderLayer applied inside ws x ws windows,
shifted by ws/2 every other layer, with patch merging between stages; attention then costs
N HW ws^2 instead of N (HW)^2.

Every block's backward is the chain rule over its children; a reshaping or permuting step
(patchify, window partition, roll) is sent back by its inverse (the adjoint of a
permutation is its inverse). The children record their own per-call caches; a block
records only a small cache of its own.
Derivations: docs/derivations/transformer.md (encoder, patches, windows).
"""
import math
from typing import NamedTuple

import numpy as np

from .. import init
from .validate import check_float, check_grad, layer_name
from .container import ModuleList
from .conv import Conv2d
from .linear import Linear
from .module import Module, Parameter
from .normalization import LayerNorm
from .transformer_encoder import TransformerEncoderLayer

__all__ = ["PatchEmbed", "patchify", "unpatchify", "window_partition", "window_reverse",
           "shifted_window_mask", "WindowedEncoderLayer", "PatchMerging", "WindowedEncoder"]


# ---------------------------------------------------------------------------------------
# patches
# ---------------------------------------------------------------------------------------
def patchify(x, p):
    """(N, C, H, W) -> (N, (H/p)(W/p), C p p): non-overlapping p x p patches, row-major,
    each flattened in (C, ph, pw) order (the order of a Conv2d weight (E, C, p, p))."""
    N, C, H, W = x.shape
    return (x.reshape(N, C, H // p, p, W // p, p).transpose(0, 2, 4, 1, 3, 5)
            .reshape(N, (H // p) * (W // p), C * p * p))


def unpatchify(t, p, C, H, W):
    """The inverse of :func:`patchify`: (N, (H/p)(W/p), C p p) -> (N, C, H, W)."""
    N = t.shape[0]
    return (t.reshape(N, H // p, W // p, C, p, p).transpose(0, 3, 1, 4, 2, 5)
            .reshape(N, C, H, W))


class PatchCache(NamedTuple):
    """One call of _PatchProjection: the patch matrix T (N, P, C p p) and x's shape."""
    T: np.ndarray
    x_shape: tuple


class WindowCache(NamedTuple):
    """One call of WindowedEncoderLayer: x's shape and the shift s actually used."""
    x_shape: tuple
    s: int


class ShapeCache(NamedTuple):
    """One call of a reshaping block: the shape to send the gradient back in."""
    shape: tuple


class _PatchProjection(Module):
    r"""Conv2d(C, E, kernel_size=p, stride=p) written as patchify + matrix product.

    Same parameters (weight (E, C, p, p), bias (E,)), init and output (N, E, H/p, W/p) as
    the strided convolution: with T = patchify(x) (N, P, C p p) and W2 = weight (E, C p p),
    y = T W2^T + b. Backward: dW2 = sum_n g_n^T T_n, db = sum g, dT = g W2, dx = unpatchify.
    PatchEmbed uses refdl.nn.Conv2d; ``PatchEmbed(..., use_conv=False)`` uses this class
    instead (same state_dict; tests/test_transformer.py checks that both agree in forward
    and backward).
    """

    def __init__(self, in_chans, embed_dim, patch_size, bias=True, dtype=np.float32,
                 generator=None):
        super().__init__()
        self.in_channels, self.out_channels, self.p = in_chans, embed_dim, patch_size
        self.weight = Parameter(np.empty((embed_dim, in_chans, patch_size, patch_size),
                                         dtype=dtype))
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=generator)
        if bias:
            self.bias = Parameter(np.empty(embed_dim, dtype=dtype))
            bound = 1.0 / math.sqrt(in_chans * patch_size * patch_size)
            init.uniform_(self.bias, -bound, bound, generator=generator)
        else:
            self.register_parameter("bias", None)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.p}, "
                f"stride={self.p}")

    def forward(self, x):
        N, C, H, W = x.shape
        T = patchify(x, self.p)
        W2 = self.weight.data.reshape(self.out_channels, -1)
        y = T @ W2.T
        if self.bias is not None:
            y = y + self.bias.data
        if self.recording:
            self.save_for_backward(PatchCache(T=T, x_shape=x.shape))
        return y.transpose(0, 2, 1).reshape(N, self.out_channels, H // self.p, W // self.p)

    def backward(self, grad_out):
        c = self.pop_saved()
        T, (N, C, H, W) = c.T, c.x_shape
        g = grad_out.reshape(N, self.out_channels, -1).transpose(0, 2, 1)     # (N, P, E)
        if self.weight.requires_grad:
            self.weight.grad += (g.reshape(-1, self.out_channels).T
                                 @ T.reshape(-1, T.shape[-1])).reshape(self.weight.shape)
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += g.sum(axis=(0, 1))
        dT = g @ self.weight.data.reshape(self.out_channels, -1)
        return unpatchify(dT, self.p, C, H, W)


class PatchEmbed(Module):
    r"""Image to patch tokens: a strided convolution, kernel = stride = patch size.

    PatchEmbed(patch_size=16, in_chans=3, embed_dim=768, flatten=True, bias=True)
    x (N, C, H, W) -> (N, (H/p)(W/p), E) (flatten=True, row-major patch order) or
    (N, E, H/p, W/p) (flatten=False). H and W must be multiples of p.
    ``proj`` is ``Conv2d(C, E, kernel_size=p, stride=p)`` (keys proj.weight (E, C, p, p),
    proj.bias (E,)); the same thing as patchify + a matrix product (``use_conv=False``
    selects that path, _PatchProjection; both give the same output and gradients;
    ``use_conv=None``, the default, means True).
    Backward: reshape g to (N, E, H/p, W/p), then proj.backward.
    """

    def __init__(self, patch_size=16, in_chans=3, embed_dim=768, flatten=True, bias=True,
                 dtype=np.float32, generator=None, use_conv=None):
        super().__init__()
        self.patch_size = int(patch_size)
        self.in_chans, self.embed_dim = int(in_chans), int(embed_dim)
        self.flatten = bool(flatten)
        if use_conv is None or use_conv:
            self.proj = Conv2d(self.in_chans, self.embed_dim, self.patch_size,
                               stride=self.patch_size, bias=bias, dtype=dtype,
                               generator=generator)
        else:
            self.proj = _PatchProjection(self.in_chans, self.embed_dim, self.patch_size,
                                         bias=bias, dtype=dtype, generator=generator)

    def extra_repr(self):
        return (f"patch_size={self.patch_size}, in_chans={self.in_chans}, "
                f"embed_dim={self.embed_dim}")

    def forward(self, x):
        x = check_float(self, x)
        p = self.patch_size
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{layer_name(self)}: expected input (N, {self.in_chans}, H, W), "
                             f"got shape {tuple(x.shape)}")
        if x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"{layer_name(self)}: image size {x.shape[2]}x{x.shape[3]} is "
                             f"not a multiple of the patch size {p} (crop or pad the image "
                             f"to a multiple of {p})")
        y = self.proj(x)                                   # (N, E, H/p, W/p)
        if self.recording:
            self.save_for_backward(ShapeCache(shape=y.shape))
        if self.flatten:
            y = y.reshape(y.shape[0], self.embed_dim, -1).transpose(0, 2, 1)
        return y

    def backward(self, grad_out):
        c = self.pop_saved()
        N, E, Hp, Wp = c.shape
        if self.flatten:
            g = check_grad(self, grad_out, (N, Hp * Wp, E))
            g = g.transpose(0, 2, 1).reshape(N, E, Hp, Wp)
        else:
            g = check_grad(self, grad_out, c.shape)
        return self.proj.backward(np.ascontiguousarray(g))


# ---------------------------------------------------------------------------------------
# windowed attention for high resolution
# ---------------------------------------------------------------------------------------
def window_partition(x, ws):
    """(N, H, W, C) -> (N (H/ws)(W/ws), ws*ws, C): non-overlapping ws x ws windows."""
    N, H, W, C = x.shape
    return (x.reshape(N, H // ws, ws, W // ws, ws, C).transpose(0, 1, 3, 2, 4, 5)
            .reshape(-1, ws * ws, C))


def window_reverse(w, ws, H, W):
    """The inverse of :func:`window_partition`: (N nW, ws*ws, C) -> (N, H, W, C)."""
    C = w.shape[-1]
    N = w.shape[0] // ((H // ws) * (W // ws))
    return (w.reshape(N, H // ws, W // ws, ws, ws, C).transpose(0, 1, 3, 2, 4, 5)
            .reshape(N, H, W, C))


def shifted_window_mask(H, W, ws, shift):
    """Swin's mask for a cyclic shift: (nW, ws*ws, ws*ws) booleans, True = blocked.

    After rolling the map by -shift, a window at the border holds tokens from up to four
    regions that are not neighbours in the image; tokens may attend only within their
    own region (MultiheadAttention's convention: True = NOT allowed to attend).
    """
    label = np.zeros((1, H, W, 1))
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            label[:, hs, wsl] = cnt
            cnt += 1
    lw = window_partition(label, ws)[..., 0]           # (nW, ws*ws)
    return lw[:, :, None] != lw[:, None, :]


class WindowedEncoderLayer(Module):
    r"""A pre-norm transformer block applied inside ws x ws windows (Swin's W-MSA/SW-MSA).

    x (N, H, W, C) -> (N, H, W, C); H and W multiples of window_size.
    y = roll(R^{-1}(block(R(roll(x, -s)), mask)), +s), where R = window_partition, block is
    a TransformerEncoderLayer(norm_first=True, batch_first=True) on the (N nW, ws^2, C)
    window sequences and s = shift_size (0 or ws/2; the shifted windows straddle the
    previous layer's borders, so information crosses windows; ``mask`` keeps the tokens
    that the cyclic roll brought together from attending to each other).
    Attention cost: N (HW/ws^2) windows of (ws^2)^2 scores = N HW ws^2, linear in HW
    (global attention: N (HW)^2).
    Backward: roll(g, -s) -> partition -> block.backward -> reverse -> roll(., +s)
    (the adjoint of a permutation is its inverse).
    """

    def __init__(self, dim, num_heads, window_size=4, shift_size=0, mlp_ratio=2.0,
                 dropout=0.0, activation="gelu", layer_norm_eps=1e-5, dtype=np.float32,
                 generator=None):
        super().__init__()
        self.dim, self.window_size, self.shift_size = int(dim), int(window_size), int(shift_size)
        if not 0 <= self.shift_size < self.window_size:
            raise ValueError(f"WindowedEncoderLayer: shift_size must be in [0, window_size), "
                             f"got shift_size={shift_size}, window_size={window_size}")
        self.block = TransformerEncoderLayer(dim, num_heads, int(dim * mlp_ratio), dropout,
                                             activation, layer_norm_eps, batch_first=True,
                                             norm_first=True, dtype=dtype, generator=generator)

    def extra_repr(self):
        return (f"dim={self.dim}, num_heads={self.block.nhead}, "
                f"window_size={self.window_size}, shift_size={self.shift_size}")

    def forward(self, x):
        x = check_float(self, x)
        ws = self.window_size
        if x.ndim != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"{layer_name(self)}: expected input (N, H, W, {self.dim}), got "
                             f"shape {tuple(x.shape)}")
        N, H, W, C = x.shape
        if H % ws or W % ws:
            raise ValueError(f"{layer_name(self)}: the token grid {H}x{W} is not a multiple "
                             f"of the window size {ws}")
        s = self.shift_size if min(H, W) > ws else 0
        xs = np.roll(x, (-s, -s), axis=(1, 2)) if s else x
        win = window_partition(xs, ws)
        mask = None
        if s:
            m = shifted_window_mask(H, W, ws, s)                    # (nW, L, L)
            mask = np.repeat(np.tile(m, (N, 1, 1)), self.block.nhead, axis=0)
        y = window_reverse(self.block(win, src_mask=mask), ws, H, W)
        if self.recording:
            self.save_for_backward(WindowCache(x_shape=x.shape, s=s))
        return np.roll(y, (s, s), axis=(1, 2)) if s else y

    def backward(self, grad_out):
        c = self.pop_saved()
        shape, s = c.x_shape, c.s
        g = check_grad(self, grad_out, shape)
        N, H, W, C = shape
        ws = self.window_size
        g = np.roll(g, (-s, -s), axis=(1, 2)) if s else g
        g = window_reverse(self.block.backward(window_partition(g, ws)), ws, H, W)
        return np.roll(g, (s, s), axis=(1, 2)) if s else g


class PatchMerging(Module):
    r"""Halve the token grid, double the width: (N, H, W, C) -> (N, H/2, W/2, 2C).

    y = reduction(norm(concat[x00, x10, x01, x11])), x_ab = x[:, a::2, b::2] (2x2
    neighbours side by side, 4C), norm = LayerNorm(4C), reduction = Linear(4C, 2C,
    bias=False). Backward: through reduction and norm, then scatter the 4C gradient back
    to the four interleaved sub-grids.
    """

    def __init__(self, dim, dtype=np.float32, generator=None):
        super().__init__()
        self.dim = int(dim)
        self.norm = LayerNorm(4 * self.dim, dtype=dtype)
        self.reduction = Linear(4 * self.dim, 2 * self.dim, bias=False, dtype=dtype,
                                generator=generator)

    def extra_repr(self):
        return f"dim={self.dim}"

    _OFFSETS = ((0, 0), (1, 0), (0, 1), (1, 1))

    def forward(self, x):
        x = check_float(self, x)
        if x.ndim != 4 or x.shape[-1] != self.dim or x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(f"{layer_name(self)}: expected input (N, H, W, {self.dim}) with "
                             f"even H and W, got shape {tuple(x.shape)}")
        if self.recording:
            self.save_for_backward(ShapeCache(shape=x.shape))
        cat = np.concatenate([x[:, a::2, b::2] for a, b in self._OFFSETS], axis=-1)
        return self.reduction(self.norm(cat))

    def backward(self, grad_out):
        c = self.pop_saved()
        g = self.norm.backward(self.reduction.backward(grad_out))
        dx = np.zeros(c.shape, dtype=g.dtype)
        C = self.dim
        for i, (a, b) in enumerate(self._OFFSETS):
            dx[:, a::2, b::2] = g[..., i * C:(i + 1) * C]
        return dx


class WindowedEncoder(Module):
    r"""Stages of windowed-attention blocks with patch merging in between (Swin-like).

    WindowedEncoder(embed_dim, depths=(2, 2), num_heads=(2, 4), window_size=4,
                    mlp_ratio=2.0, dropout=0.0, activation='gelu')
    x (N, H, W, C=embed_dim) -> (N, H / 2^(S-1), W / 2^(S-1), embed_dim 2^(S-1)) for S
    stages. Within a stage, blocks alternate shift 0 and window_size // 2. Keys:
    ``stages.i.j.block...`` and ``merges.i.norm/reduction``.
    Backward: the chain rule in reverse through blocks and merges.
    """

    def __init__(self, embed_dim, depths=(2, 2), num_heads=(2, 4), window_size=4,
                 mlp_ratio=2.0, dropout=0.0, activation="gelu", dtype=np.float32,
                 generator=None):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"WindowedEncoder: depths {depths} and num_heads {num_heads} "
                             "must have the same length (one entry per stage)")
        self.window_size = int(window_size)
        self.stages = ModuleList()
        self.merges = ModuleList()
        dim = int(embed_dim)
        for i, (d, h) in enumerate(zip(depths, num_heads)):
            blocks = ModuleList([WindowedEncoderLayer(
                dim, h, window_size, 0 if j % 2 == 0 else window_size // 2, mlp_ratio,
                dropout, activation, dtype=dtype, generator=generator) for j in range(d)])
            self.stages.append(blocks)
            if i < len(depths) - 1:
                self.merges.append(PatchMerging(dim, dtype=dtype, generator=generator))
                dim *= 2
        self.out_dim = dim

    def forward(self, x):
        for i, blocks in enumerate(self.stages):
            for b in blocks:
                x = b(x)
            if i < len(self.merges):
                x = self.merges[i](x)
        return x

    def backward(self, grad_out):
        g = grad_out
        for i in reversed(range(len(self.stages))):
            if i < len(self.merges):
                g = self.merges[i].backward(g)
            for b in reversed(list(self.stages[i])):
                g = b.backward(g)
        return g
