r"""Vision Transformers: ViT (global attention, class token) and WindowedViT (local windows).

ViT (Dosovitskiy et al. 2021), for an image x (N, C, H, W) and patch size p:

    t   = PatchEmbed(x)                       (N, P, D), P = (H/p)(W/p)
    z0  = [cls; t] + pos                      (N, P+1, D)  class token, learned positions
    z   = TransformerEncoder(z0)              pre-norm layers, then a final LayerNorm
    y   = head(z[:, 0])                       (N, num_classes)  logits from the class token

Backward: head -> scatter into the class-token row of a zero (N, P+1, D) gradient ->
encoder -> positional table (adds its sum over the batch) -> split: the class token's
gradient is summed over the batch (one parameter used N times), the rest goes to the
patch embedding.

WindowedViT replaces global attention by attention inside ws x ws windows of the patch
grid (shifted every second block) with patch merging between stages, so its attention
cost is linear in the number of patches (see docs/attention-cost.md).
"""
from typing import NamedTuple, Tuple

import numpy as np

from .. import init
from ..nn.attention import LearnedPositionalEncoding, SinusoidalPositionalEncoding
from ..nn.linear import Linear
from ..nn.module import Module, Parameter
from ..nn.normalization import LayerNorm
from ..nn.transformer import (PatchEmbed, TransformerEncoder,
                              TransformerEncoderLayer, WindowedEncoder)

__all__ = ["ViT", "WindowedViT", "attention_cost"]


class TokensCache(NamedTuple):
    """One call of ViT / WindowedViT: the shape of the encoder's output z, into which the
    pooling's backward spreads the head's gradient (the children keep the rest)."""
    z_shape: Tuple[int, ...]


def _check_shape(name, input_shape, patch_size):
    if len(input_shape) != 3:
        raise ValueError(f"{name}: input_shape must be (C, H, W), got {input_shape}")
    C, H, W = input_shape
    if H % patch_size or W % patch_size:
        raise ValueError(f"{name}: image size {H}x{W} is not a multiple of the patch size "
                         f"{patch_size}")
    return C, H // patch_size, W // patch_size


class ViT(Module):
    r"""Vision Transformer classifier with a class token.

    ViT(num_classes=10, input_shape=(1, 8, 8), patch_size=2, dim=64, depth=2, heads=4,
        mlp_dim=None (= 2 dim), dropout=0.1, activation='gelu', pos_encoding='learned'
        ('learned' | 'sinusoidal' | None), pool='cls' ('cls' | 'mean'))
    x (N, C, H, W) -> logits (N, num_classes). Keys: patch_embed.proj.*, cls_token
    (1, 1, dim), pos_embed.weight (P+1, dim), encoder.layers.i.*, encoder.norm.*, head.*.
    """

    def __init__(self, num_classes=10, input_shape=(1, 8, 8), patch_size=2, dim=64, depth=2,
                 heads=4, mlp_dim=None, dropout=0.1, activation="gelu",
                 pos_encoding="learned", pool="cls", dtype=np.float32, generator=None):
        super().__init__()
        C, hp, wp = _check_shape("ViT", tuple(input_shape), patch_size)
        if dim % heads:
            raise ValueError(f"ViT: dim must be divisible by heads, got dim={dim}, "
                             f"heads={heads}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"ViT: pool must be 'cls' or 'mean', got {pool!r}")
        self.input_shape, self.patch_size, self.dim = tuple(input_shape), patch_size, dim
        self.num_patches = hp * wp
        self.pool = pool
        self.patch_embed = PatchEmbed(patch_size, C, dim, dtype=dtype, generator=generator)
        self.cls_token = Parameter(np.zeros((1, 1, dim), dtype=dtype))
        init.trunc_normal_(self.cls_token, std=0.02, a=-0.04, b=0.04, generator=generator)
        L = self.num_patches + 1
        if pos_encoding == "learned":
            self.pos_embed = LearnedPositionalEncoding(L, dim, dtype=dtype, generator=generator)
        elif pos_encoding == "sinusoidal":
            self.pos_embed = SinusoidalPositionalEncoding(dim, max_len=L)
        elif pos_encoding is None:
            self.pos_embed = None
        else:
            raise ValueError(f"ViT: pos_encoding must be 'learned', 'sinusoidal' or None, "
                             f"got {pos_encoding!r}")
        layer = TransformerEncoderLayer(dim, heads, mlp_dim or 2 * dim, dropout, activation,
                                        batch_first=True, norm_first=True, dtype=dtype,
                                        generator=generator)
        self.encoder = TransformerEncoder(layer, depth, norm=LayerNorm(dim))
        if dtype != np.float32:
            self.encoder.to(dtype)
        self.head = Linear(dim, num_classes, dtype=dtype, generator=generator)

    def extra_repr(self):
        return (f"input_shape={self.input_shape}, patch_size={self.patch_size}, "
                f"dim={self.dim}, tokens={self.num_patches + 1}")

    def forward(self, x):
        t = self.patch_embed(x)                                       # (N, P, D)
        N = t.shape[0]
        cls = np.broadcast_to(self.cls_token.data.astype(t.dtype), (N, 1, self.dim))
        z = np.concatenate([cls, t], axis=1)
        if self.pos_embed is not None:
            z = self.pos_embed(z)
        z = self.encoder(z)
        self.save_for_backward(TokensCache(z_shape=z.shape))
        feat = z[:, 0] if self.pool == "cls" else z.mean(axis=1)
        return self.head(feat)

    def backward(self, grad_out):
        """Head, then the pooled token(s): the class token gets g (or mean pooling spreads g/T
        over the tokens), encoder, positional encoding; the class token parameter collects
        its column summed over the batch, the patch tokens go to the patch embedding."""
        z_shape = self.pop_saved().z_shape
        gf = self.head.backward(grad_out)
        if self.pool == "cls":
            gz = np.zeros(z_shape, dtype=gf.dtype)
            gz[:, 0] = gf
        else:
            gz = np.broadcast_to(gf[:, None, :] / z_shape[1], z_shape).copy()
        gz = self.encoder.backward(gz)
        if self.pos_embed is not None:
            gz = self.pos_embed.backward(gz)
        if self.cls_token.requires_grad:
            self.cls_token.grad += gz[:, :1].sum(axis=0, keepdims=True)
        return self.patch_embed.backward(np.ascontiguousarray(gz[:, 1:]))

    def attention_maps(self, x):
        """Head-averaged attention weights of every layer for images x, in evaluation mode
        (no dropout; the mode is restored): a list of (N, P+1, P+1) arrays (row = query
        token, column = key; token 0 = cls). Every row sums to 1."""
        was_training = self.training
        self.eval()
        for layer in self.encoder.layers:
            layer.store_attention = True
        try:
            self.forward(x)
            return [layer.attn_weights for layer in self.encoder.layers]
        finally:
            for layer in self.encoder.layers:
                layer.store_attention = False
            self.train(was_training)


class WindowedViT(Module):
    r"""A ViT for large images: windowed attention with patch merging (Swin-like).

    WindowedViT(num_classes=10, input_shape=(1, 8, 8), patch_size=1, dim=16,
                depths=(2, 2), heads=(2, 4), window_size=4, mlp_ratio=2.0, dropout=0.0)
    x (N, C, H, W) -> PatchEmbed -> (N, H/p, W/p, dim) + learned positions ->
    WindowedEncoder -> LayerNorm -> mean over tokens -> head -> (N, num_classes).
    The patch grid must be a multiple of window_size * 2^(stages-1).
    """

    def __init__(self, num_classes=10, input_shape=(1, 8, 8), patch_size=1, dim=16,
                 depths=(2, 2), heads=(2, 4), window_size=4, mlp_ratio=2.0, dropout=0.0,
                 dtype=np.float32, generator=None):
        super().__init__()
        C, hp, wp = _check_shape("WindowedViT", tuple(input_shape), patch_size)
        need = window_size * 2 ** (len(depths) - 1)
        if hp % need or wp % need:
            raise ValueError(f"WindowedViT: the patch grid {hp}x{wp} must be a multiple of "
                             f"window_size * 2^(stages-1) = {need}")
        self.grid = (hp, wp)
        self.dim = dim
        self.patch_embed = PatchEmbed(patch_size, C, dim, dtype=dtype, generator=generator)
        self.pos_embed = LearnedPositionalEncoding(hp * wp, dim, dtype=dtype,
                                                   generator=generator)
        self.encoder = WindowedEncoder(dim, depths, heads, window_size, mlp_ratio, dropout,
                                       dtype=dtype, generator=generator)
        self.norm = LayerNorm(self.encoder.out_dim)
        self.head = Linear(self.encoder.out_dim, num_classes, dtype=dtype, generator=generator)
        if dtype != np.float32:
            self.to(dtype)

    def extra_repr(self):
        return f"grid={self.grid}, dim={self.dim}"

    def forward(self, x):
        t = self.pos_embed(self.patch_embed(x))                       # (N, P, D)
        N = t.shape[0]
        z = self.encoder(t.reshape(N, self.grid[0], self.grid[1], self.dim))
        z = self.norm(z)
        self.save_for_backward(TokensCache(z_shape=z.shape))
        return self.head(z.mean(axis=(1, 2)))

    def backward(self, grad_out):
        """Head, the mean pooling spreads g/(h w) over the tokens, norm, encoder, positional
        encoding, patch embedding: the forward pass read backwards."""
        z_shape = self.pop_saved().z_shape
        N, h, w, C = z_shape
        gf = self.head.backward(grad_out)
        gz = np.broadcast_to(gf[:, None, None, :] / (h * w), z_shape).copy()
        gz = self.encoder.backward(self.norm.backward(gz))
        gt = self.pos_embed.backward(gz.reshape(N, -1, self.dim))
        return self.patch_embed.backward(gt)


def attention_cost(image_size, patch_size, dim=768, heads=12, window=None, channels=3,
                   dtype_bytes=4):
    r"""Tokens, multiply-adds and score memory of one attention layer on one image.

    image_size: an int (square) or (H, W); patch_size p; window: None for global
    attention, else the window side M in tokens (clipped to the token grid).
    With N = (H/p)(W/p) tokens and K keys per query (K = N globally, M^2 in windows):

        projections   4 N dim^2   multiply-adds (q, k, v and the output projection)
        attention     2 N K dim   (Q K^T: N K dim/heads per head, and A V: as many)
        scores        heads N K   entries (dtype_bytes each), per layer and image
        patch embed   N (C p^2) dim

    (Swin's count: Omega(MSA) = 4 N C^2 + 2 N^2 C, Omega(W-MSA) = 4 N C^2 + 2 M^2 N C.)
    """
    H, W = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
    if H % patch_size or W % patch_size:
        raise ValueError(f"attention_cost: image size {H}x{W} is not a multiple of the "
                         f"patch size {patch_size}")
    gh, gw = H // patch_size, W // patch_size
    N = gh * gw
    K = N if window is None else min(window, gh) * min(window, gw)
    return {"tokens": N, "grid": (gh, gw), "keys_per_query": K,
            "proj_macs": 4 * N * dim * dim, "attn_macs": 2 * N * K * dim,
            "total_macs": 4 * N * dim * dim + 2 * N * K * dim,
            "score_entries": heads * N * K, "score_bytes": heads * N * K * dtype_bytes,
            "embed_macs": N * channels * patch_size * patch_size * dim}
