r"""Transformers: the encoder and decoder layers and stacks and ``nn.Transformer``
(PyTorch's), the patch embedding of a Vision Transformer, and a windowed-attention encoder
for large images.

Every block's backward is the chain rule over its children, written out, with the
gradients of a value that fans out *added* (the residual stream: x feeds both the
sub-layer and the skip connection, so dL/dx = g + sub.backward(g); self-attention uses
x three times, as query, key and value, so its three returned gradients are summed;
cross-attention uses the encoder's output, the memory, twice, as key and value, and a
decoder stack uses it once per layer, so its gradients are summed too).
The children record their own per-call caches; a block records only a small cache of
its own (the output's shape, to check the upstream gradient).
Derivations: docs/derivations/transformer.md (encoder, patches, windows) and
docs/derivations/decoder.md (decoder, nn.Transformer, masks).

Masks follow MultiheadAttention's convention (boolean True = NOT allowed to attend, float
added to the scores): use ``Transformer.generate_square_subsequent_mask(L)`` (float, 0 on
and below the diagonal, -inf above) or ``nn.causal_block_mask(L)`` for a causal mask, or
``is_causal=True`` / ``tgt_is_causal=True`` alone.
"""
import copy
import math
from typing import NamedTuple

import numpy as np

from .. import init
from .validate import check_float, check_grad, layer_name
from .activation import GELU, ReLU
from .attention import MultiheadAttention
from .linear import Linear
from .dropout import Dropout
from .module import Module, ModuleList, Parameter
from .normalization import LayerNorm

__all__ = ["TransformerEncoderLayer", "TransformerEncoder", "TransformerDecoderLayer",
           "TransformerDecoder", "Transformer", "PatchEmbed", "patchify",
           "unpatchify", "window_partition", "window_reverse", "shifted_window_mask",
           "WindowedEncoderLayer", "PatchMerging", "WindowedEncoder"]


class BlockCache(NamedTuple):
    """One call of a composite block: the shape of its output y (the children keep the rest)."""
    y_shape: tuple


class DecoderCache(NamedTuple):
    """One call of a decoder layer/stack: the shapes of its output y and of the memory m."""
    y_shape: tuple
    m_shape: tuple


def _activation(name, who="TransformerEncoderLayer"):
    if isinstance(name, Module):
        return name
    if name == "relu":
        return ReLU()
    if name == "gelu":
        return GELU()
    raise ValueError(f"{who}: activation must be 'relu', 'gelu' or a Module, got {name!r}")


def _check_seq(layer, x, what, d_model, batch_first):
    x = check_float(layer, x, what)
    if x.ndim not in (2, 3) or x.shape[-1] != d_model:
        lay = "(N, L, E)" if batch_first else "(L, N, E)"
        raise ValueError(f"{layer_name(layer)}: expected {what} {lay} or (L, E) with E = "
                         f"{d_model}, got shape {tuple(x.shape)}")
    return x


class _FeedForward:
    """FF(x) = linear2(dropout(act(linear1(x)))) and its backward, shared by the layers."""

    # the tokens are flattened to (N L, E) rows around the feed-forward: one 2-D product
    # per Linear (a stacked 3-D matmul is far slower with a multithreaded BLAS)
    def _ff(self, x):
        y = self.linear2(self.dropout(self.activation(self.linear1(x.reshape(-1, x.shape[-1])))))
        return y.reshape(x.shape)

    def _ff_backward(self, g):
        shape = g.shape
        g = self.linear2.backward(g.reshape(-1, shape[-1]))
        g = self.dropout.backward(g)
        g = self.activation.backward(g)
        return self.linear1.backward(g).reshape(shape)


class TransformerEncoderLayer(_FeedForward, Module):
    r"""Self-attention + feed-forward block, ``torch.nn.TransformerEncoderLayer``.

    TransformerEncoderLayer(d_model, nhead, dim_feedforward=2048, dropout=0.1,
                            activation='relu', layer_norm_eps=1e-5, batch_first=False,
                            norm_first=False, bias=True)

    forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False)
    src (L, N, E) ((N, L, E) with batch_first, (L, E) unbatched) -> same shape; N = 0
    gives an empty output. src_mask (L, S) or (N*nhead, L, S), src_key_padding_mask (N, L),
    MultiheadAttention's conventions (boolean True = NOT allowed to attend).
    With SA(x) = self_attn(x, x, x)[0] and FF(x) = linear2(dropout(act(linear1(x)))):

        post-norm (default):  x1 = norm1(x + dropout1(SA(x)));   y = norm2(x1 + dropout2(FF(x1)))
        pre-norm (norm_first): x1 = x + dropout1(SA(norm1(x)));  y = x1 + dropout2(FF(norm2(x1)))

    Backward (g = dL/dy), pre-norm:
        g1 = g + norm2.backward(FF.backward(dropout2.backward(g)))           # x1 fans out
        dq, dk, dv = self_attn.backward(dropout1.backward(g1))
        dL/dx = g1 + norm1.backward(dq + dk + dv)                            # x fans out
    post-norm:
        h = norm2.backward(g);   g1 = h + FF.backward(dropout2.backward(h))
        h = norm1.backward(g1);  dq, dk, dv = self_attn.backward(dropout1.backward(h))
        dL/dx = h + dq + dk + dv
    Cache per training-mode call: :class:`BlockCache` (y's shape); the children record
    theirs. Set ``store_attention = True`` to keep the head-averaged weights in
    ``attn_weights`` (N, L, S) after each forward (for plotting; they are not an output).
    Derivation: docs/derivations/transformer.md, section 1.
    """

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu",
                 layer_norm_eps=1e-5, batch_first=False, norm_first=False, bias=True,
                 dtype=np.float32, generator=None):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                            batch_first=batch_first, dtype=dtype,
                                            generator=generator)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype,
                              generator=generator)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype,
                              generator=generator)
        self.norm_first = bool(norm_first)
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = _activation(activation, "TransformerEncoderLayer")
        self.d_model, self.nhead = int(d_model), int(nhead)
        self.batch_first = bool(batch_first)
        self.store_attention = False
        self.attn_weights = None
        if dtype != np.float32:
            self.to(dtype)

    def extra_repr(self):
        return (f"d_model={self.d_model}, nhead={self.nhead}, "
                f"dim_feedforward={self.linear1.out_features}, norm_first={self.norm_first}")

    def _sa(self, x, attn_mask, key_padding_mask, is_causal):
        out, w = self.self_attn(x, x, x, key_padding_mask=key_padding_mask,
                                need_weights=self.store_attention, attn_mask=attn_mask,
                                is_causal=is_causal)
        self.attn_weights = w
        return self.dropout1(out)

    def _sa_backward(self, g):
        dq, dk, dv = self.self_attn.backward(self.dropout1.backward(g))
        return dq + dk + dv

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = _check_seq(self, src, "src", self.d_model, self.batch_first)
        m = (src_mask, src_key_padding_mask, is_causal)
        if self.norm_first:
            x = x + self._sa(self.norm1(x), *m)
            x = x + self.dropout2(self._ff(self.norm2(x)))
        else:
            x = self.norm1(x + self._sa(x, *m))
            x = self.norm2(x + self.dropout2(self._ff(x)))
        self.save_for_backward(BlockCache(y_shape=x.shape))
        return x

    def backward(self, grad_out):
        c = self.pop_saved()
        g = check_grad(self, grad_out, c.y_shape)
        if self.norm_first:
            g1 = g + self.norm2.backward(self._ff_backward(self.dropout2.backward(g)))
            return g1 + self.norm1.backward(self._sa_backward(g1))
        h = self.norm2.backward(g)
        g1 = h + self._ff_backward(self.dropout2.backward(h))
        h = self.norm1.backward(g1)
        return h + self._sa_backward(h)


class TransformerEncoder(Module):
    r"""A stack of ``num_layers`` deep copies of ``encoder_layer``, then ``norm`` if given.

    ``torch.nn.TransformerEncoder(encoder_layer, num_layers, norm=None)``; keys
    ``layers.0.self_attn.in_proj_weight``, ..., ``norm.weight``.
    forward(src, mask=None, src_key_padding_mask=None, is_causal=None) -> same shape:
        x_0 = src,  x_k = layer_k(x_{k-1}),  y = norm(x_n).
    Backward: the chain rule in reverse, g <- norm.backward(g), then g <- layer_k.backward(g)
    for k = n..1. Cache per call: :class:`BlockCache`. Derivation: transformer.md, section 2.
    """

    def __init__(self, encoder_layer, num_layers, norm=None, enable_nested_tensor=True,
                 mask_check=True):
        super().__init__()
        if int(num_layers) <= 0:
            raise ValueError(f"TransformerEncoder: num_layers must be positive, got {num_layers}")
        self.layers = ModuleList([copy.deepcopy(encoder_layer) for _ in range(int(num_layers))])
        self.num_layers = int(num_layers)
        if norm is not None:
            self.norm = norm
        else:
            self.norm = None

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                      is_causal=bool(is_causal))
        if self.norm is not None:
            x = self.norm(x)
        self.save_for_backward(BlockCache(y_shape=x.shape))
        return x

    def backward(self, grad_out):
        c = self.pop_saved()
        g = check_grad(self, grad_out, c.y_shape)
        if self.norm is not None:
            g = self.norm.backward(g)
        for layer in reversed(list(self.layers)):
            g = layer.backward(g)
        return g


class TransformerDecoderLayer(_FeedForward, Module):
    r"""Masked self-attention, cross-attention and feed-forward, ``torch.nn.TransformerDecoderLayer``.

    TransformerDecoderLayer(d_model, nhead, dim_feedforward=2048, dropout=0.1,
                            activation='relu', layer_norm_eps=1e-5, batch_first=False,
                            norm_first=False, bias=True)

    forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
            memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False)
    tgt (T, N, E), memory (S, N, E) ((N, T, E), (N, S, E) with batch_first; (T, E), (S, E)
    unbatched) -> y with tgt's shape. tgt_mask (T, T) or (N*nhead, T, T), memory_mask
    (T, S) or (N*nhead, T, S), tgt_key_padding_mask (N, T), memory_key_padding_mask (N, S);
    MultiheadAttention's conventions (boolean True = NOT allowed to attend; float added).
    tgt_is_causal=True without tgt_mask applies the causal mask (a GPT-style decoder).

    With SA(x) = self_attn(x, x, x)[0] (masked by tgt_mask), CA(x, m) =
    multihead_attn(x, m, m)[0] (queries from the decoder, keys and values from the
    memory m, masked by memory_mask) and FF(x) = linear2(dropout(act(linear1(x)))):

        post-norm (default):   x1 = norm1(x + dropout1(SA(x)))
                               x2 = norm2(x1 + dropout2(CA(x1, m)))
                               y  = norm3(x2 + dropout3(FF(x2)))
        pre-norm (norm_first): x1 = x + dropout1(SA(norm1(x)))
                               x2 = x1 + dropout2(CA(norm2(x1), m))
                               y  = x2 + dropout3(FF(norm3(x2)))

    backward(grad_out) -> (dtgt, dmemory). With g = dL/dy, pre-norm:
        g2 = g + norm3.backward(FF.backward(dropout3.backward(g)))            # x2 fans out
        dq, dk, dv = multihead_attn.backward(dropout2.backward(g2))
        g1 = g2 + norm2.backward(dq);   dL/dm = dk + dv                       # m: key and value
        dq, dk, dv = self_attn.backward(dropout1.backward(g1))
        dL/dx = g1 + norm1.backward(dq + dk + dv)
    post-norm:
        h = norm3.backward(g);  g2 = h + FF.backward(dropout3.backward(h))
        h = norm2.backward(g2); dq, dk, dv = multihead_attn.backward(dropout2.backward(h))
        g1 = h + dq;            dL/dm = dk + dv
        h = norm1.backward(g1); dq, dk, dv = self_attn.backward(dropout1.backward(h))
        dL/dx = h + dq + dk + dv
    Cache per training-mode call: :class:`DecoderCache` (shapes of y and m); the children
    record theirs. Derivation: docs/derivations/decoder.md, section 1.
    """

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu",
                 layer_norm_eps=1e-5, batch_first=False, norm_first=False, bias=True,
                 dtype=np.float32, generator=None):
        super().__init__()
        kw = dict(dropout=dropout, bias=bias, batch_first=batch_first, dtype=dtype,
                  generator=generator)
        self.self_attn = MultiheadAttention(d_model, nhead, **kw)
        self.multihead_attn = MultiheadAttention(d_model, nhead, **kw)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype,
                              generator=generator)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype,
                              generator=generator)
        self.norm_first = bool(norm_first)
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm3 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)
        self.activation = _activation(activation, "TransformerDecoderLayer")
        self.d_model, self.nhead = int(d_model), int(nhead)
        self.batch_first = bool(batch_first)
        if dtype != np.float32:
            self.to(dtype)

    def extra_repr(self):
        return (f"d_model={self.d_model}, nhead={self.nhead}, "
                f"dim_feedforward={self.linear1.out_features}, norm_first={self.norm_first}")

    def _sa(self, x, mask, kpm, is_causal):
        out, _ = self.self_attn(x, x, x, key_padding_mask=kpm, need_weights=False,
                                attn_mask=mask, is_causal=is_causal)
        return self.dropout1(out)

    def _ca(self, x, mem, mask, kpm, is_causal):
        out, _ = self.multihead_attn(x, mem, mem, key_padding_mask=kpm, need_weights=False,
                                     attn_mask=mask, is_causal=is_causal)
        return self.dropout2(out)

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False):
        x = _check_seq(self, tgt, "tgt", self.d_model, self.batch_first)
        m = _check_seq(self, memory, "memory", self.d_model, self.batch_first)
        if m.ndim != x.ndim:
            raise ValueError(f"{layer_name(self)}: tgt is {x.ndim}-D but memory is "
                             f"{m.ndim}-D (shapes {tuple(x.shape)} and {tuple(m.shape)}); "
                             "both batched or both unbatched")
        sa = (tgt_mask, tgt_key_padding_mask, bool(tgt_is_causal))
        ca = (memory_mask, memory_key_padding_mask, bool(memory_is_causal))
        if self.norm_first:
            x = x + self._sa(self.norm1(x), *sa)
            x = x + self._ca(self.norm2(x), m, *ca)
            x = x + self.dropout3(self._ff(self.norm3(x)))
        else:
            x = self.norm1(x + self._sa(x, *sa))
            x = self.norm2(x + self._ca(x, m, *ca))
            x = self.norm3(x + self.dropout3(self._ff(x)))
        self.save_for_backward(DecoderCache(y_shape=x.shape, m_shape=m.shape))
        return x

    def backward(self, grad_out):
        c = self.pop_saved()
        g = check_grad(self, grad_out, c.y_shape)
        if self.norm_first:
            g2 = g + self.norm3.backward(self._ff_backward(self.dropout3.backward(g)))
            dq, dk, dv = self.multihead_attn.backward(self.dropout2.backward(g2))
            g1 = g2 + self.norm2.backward(dq)
            dm = dk + dv
            dq, dk, dv = self.self_attn.backward(self.dropout1.backward(g1))
            return g1 + self.norm1.backward(dq + dk + dv), dm
        h = self.norm3.backward(g)
        g2 = h + self._ff_backward(self.dropout3.backward(h))
        h = self.norm2.backward(g2)
        dq, dk, dv = self.multihead_attn.backward(self.dropout2.backward(h))
        g1 = h + dq
        dm = dk + dv
        h = self.norm1.backward(g1)
        dq, dk, dv = self.self_attn.backward(self.dropout1.backward(h))
        return h + dq + dk + dv, dm


class TransformerDecoder(Module):
    r"""A stack of ``num_layers`` deep copies of ``decoder_layer``, then ``norm`` if given.

    ``torch.nn.TransformerDecoder(decoder_layer, num_layers, norm=None)``; keys
    ``layers.0.self_attn.in_proj_weight``, ``layers.0.multihead_attn...``, ``norm.weight``.
    forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
            memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False)
        x_0 = tgt,  x_k = layer_k(x_{k-1}, m),  y = norm(x_n)       (every layer sees m)
    backward(grad_out) -> (dtgt, dmemory): g <- norm.backward(g), then for k = n..1
    (g, dm_k) = layer_k.backward(g); dL/dm = sum_k dm_k (the memory fans out to every
    layer). Cache per call: :class:`DecoderCache`. Derivation: decoder.md, section 2.
    """

    def __init__(self, decoder_layer, num_layers, norm=None):
        super().__init__()
        if int(num_layers) <= 0:
            raise ValueError(f"TransformerDecoder: num_layers must be positive, got {num_layers}")
        self.layers = ModuleList([copy.deepcopy(decoder_layer) for _ in range(int(num_layers))])
        self.num_layers = int(num_layers)
        if norm is not None:
            self.norm = norm
        else:
            self.norm = None

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False):
        x = tgt
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                      tgt_key_padding_mask=tgt_key_padding_mask,
                      memory_key_padding_mask=memory_key_padding_mask,
                      tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal)
        if self.norm is not None:
            x = self.norm(x)
        self.save_for_backward(DecoderCache(y_shape=x.shape, m_shape=np.shape(memory)))
        return x

    def backward(self, grad_out):
        c = self.pop_saved()
        g = check_grad(self, grad_out, c.y_shape)
        if self.norm is not None:
            g = self.norm.backward(g)
        dm = np.zeros(c.m_shape, dtype=g.dtype)
        for layer in reversed(list(self.layers)):
            g, dm_k = layer.backward(g)
            dm = dm + dm_k
        return g, dm


class Transformer(Module):
    r"""Encoder-decoder Transformer, ``torch.nn.Transformer``.

    Transformer(d_model=512, nhead=8, num_encoder_layers=6, num_decoder_layers=6,
                dim_feedforward=2048, dropout=0.1, activation='relu', custom_encoder=None,
                custom_decoder=None, layer_norm_eps=1e-5, batch_first=False,
                norm_first=False, bias=True)

    ``encoder`` = TransformerEncoder(layer, num_encoder_layers, norm=LayerNorm(d_model)),
    ``decoder`` = TransformerDecoder(layer, num_decoder_layers, norm=LayerNorm(d_model))
    (PyTorch's keys: ``encoder.layers.0...``, ``encoder.norm.weight``, ``decoder...``).
    Every parameter with more than one dimension is re-initialised Xavier-uniform, as in
    PyTorch.

    forward(src, tgt, src_mask=None, tgt_mask=None, memory_mask=None,
            src_key_padding_mask=None, tgt_key_padding_mask=None,
            memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None,
            memory_is_causal=False)
    src (S, N, E), tgt (T, N, E) ((N, S, E), (N, T, E) with batch_first; unbatched
    (S, E), (T, E)) -> (T, N, E):
        m = encoder(src, src_mask),   y = decoder(tgt, m, tgt_mask, memory_mask)
    backward(grad_out) -> (dsrc, dtgt):
        (dtgt, dm) = decoder.backward(g),   dsrc = encoder.backward(dm)
    A causal tgt_mask: ``Transformer.generate_square_subsequent_mask(T)``.
    Derivation: docs/derivations/decoder.md, section 3.
    """

    def __init__(self, d_model=512, nhead=8, num_encoder_layers=6, num_decoder_layers=6,
                 dim_feedforward=2048, dropout=0.1, activation="relu", custom_encoder=None,
                 custom_decoder=None, layer_norm_eps=1e-5, batch_first=False,
                 norm_first=False, bias=True, dtype=np.float32, generator=None):
        super().__init__()
        kw = dict(dim_feedforward=dim_feedforward, dropout=dropout, activation=activation,
                  layer_norm_eps=layer_norm_eps, batch_first=batch_first,
                  norm_first=norm_first, bias=bias, dtype=dtype, generator=generator)
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            self.encoder = TransformerEncoder(
                TransformerEncoderLayer(d_model, nhead, **kw), num_encoder_layers,
                LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype))
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            self.decoder = TransformerDecoder(
                TransformerDecoderLayer(d_model, nhead, **kw), num_decoder_layers,
                LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype))
        self.d_model, self.nhead = int(d_model), int(nhead)
        self.batch_first = bool(batch_first)
        for p in self.parameters():
            if p.data.ndim > 1:
                init.xavier_uniform_(p, generator=generator)

    def extra_repr(self):
        return f"d_model={self.d_model}, nhead={self.nhead}, batch_first={self.batch_first}"

    @staticmethod
    def generate_square_subsequent_mask(sz, device=None, dtype=np.float32):
        """The (sz, sz) float causal mask: 0 on and below the diagonal, -inf above.

        Added to the scores, it lets position i attend to j <= i only. A float mask means
        the same to MultiheadAttention and scaled_dot_product_attention, so it cannot be
        read in the wrong boolean convention. ``device`` is accepted and ignored.
        """
        sz = int(sz)
        return np.triu(np.full((sz, sz), -np.inf, dtype=dtype), k=1)

    def forward(self, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None,
                src_key_padding_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None,
                memory_is_causal=False):
        src = check_float(self, src, "src")
        tgt = check_float(self, tgt, "tgt")
        if src.ndim == 3 and tgt.ndim == 3:
            ax = 0 if self.batch_first else 1
            if src.shape[ax] != tgt.shape[ax]:
                raise ValueError(f"{layer_name(self)}: the batch number of src and tgt must "
                                 f"be equal, got src {tuple(src.shape)} and tgt "
                                 f"{tuple(tgt.shape)} (batch axis {ax})")
        if src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            raise ValueError(f"{layer_name(self)}: the feature number of src and tgt must be "
                             f"equal to d_model = {self.d_model}, got src {tuple(src.shape)} "
                             f"and tgt {tuple(tgt.shape)}")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask,
                              is_causal=src_is_causal)
        y = self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                         tgt_key_padding_mask=tgt_key_padding_mask,
                         memory_key_padding_mask=memory_key_padding_mask,
                         tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)
        self.save_for_backward(BlockCache(y_shape=y.shape))
        return y

    def backward(self, grad_out):
        c = self.pop_saved()
        g = check_grad(self, grad_out, c.y_shape)
        dtgt, dm = self.decoder.backward(g)
        return self.encoder.backward(dm), dtgt


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


def _conv2d_class():
    try:
        from .conv import Conv2d
        return Conv2d
    except ImportError:
        return None


class PatchEmbed(Module):
    r"""Image to patch tokens: a strided convolution, kernel = stride = patch size.

    PatchEmbed(patch_size=16, in_chans=3, embed_dim=768, flatten=True, bias=True)
    x (N, C, H, W) -> (N, (H/p)(W/p), E) (flatten=True, row-major patch order) or
    (N, E, H/p, W/p) (flatten=False). H and W must be multiples of p.
    ``proj`` is ``Conv2d(C, E, kernel_size=p, stride=p)`` (keys proj.weight (E, C, p, p),
    proj.bias (E,)); the same thing as patchify + a matrix product (``use_conv=False``
    selects that path, _PatchProjection; both give the same output and gradients).
    Backward: reshape g to (N, E, H/p, W/p), then proj.backward.
    """

    def __init__(self, patch_size=16, in_chans=3, embed_dim=768, flatten=True, bias=True,
                 dtype=np.float32, generator=None, use_conv=None):
        super().__init__()
        self.patch_size = int(patch_size)
        self.in_chans, self.embed_dim = int(in_chans), int(embed_dim)
        self.flatten = bool(flatten)
        Conv2d = _conv2d_class() if use_conv in (None, True) else None
        if use_conv and Conv2d is None:
            raise ImportError("PatchEmbed: refdl.nn.Conv2d is not available")
        if Conv2d is not None:
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
