r"""The Transformer decoder: ``TransformerDecoderLayer`` and ``TransformerDecoder``
(PyTorch's).

A decoder layer is the encoder layer's residual sub-layers (refdl/nn/transformer_encoder.py)
with a cross-attention in the middle: queries from the decoder, keys and values from the
encoder's output, the memory. The memory is used twice per layer (key and value) and once
per layer of a stack, so its gradients are summed. Masks follow MultiheadAttention's
convention (boolean True = NOT allowed to attend, float added to the scores).
Derivations: docs/derivations/decoder.md (decoder, nn.Transformer, masks), built on
docs/derivations/transformer.md (the encoder layer).
"""
from typing import NamedTuple

import numpy as np

from .validate import check_grad, layer_name
from .multihead_attention import MultiheadAttention
from .module import Module
from .transformer_encoder import _ResidualLayer, _check_seq, _get_clones

__all__ = ["TransformerDecoderLayer", "TransformerDecoder"]


class DecoderCache(NamedTuple):
    """One call of a decoder layer/stack: the shapes of its output y and of the memory m."""
    y_shape: tuple
    m_shape: tuple


class TransformerDecoderLayer(_ResidualLayer, Module):
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
        self._init_feedforward("TransformerDecoderLayer", 3, d_model, dim_feedforward,
                               dropout, activation, layer_norm_eps, norm_first, bias, dtype,
                               generator)
        self.d_model, self.nhead = int(d_model), int(nhead)
        self.batch_first = bool(batch_first)
        if dtype != np.float32:
            self.to(dtype)

    def _sa_block(self, x, mask, kpm, is_causal):
        """dropout1(SA(x))."""
        out, _ = self.self_attn(x, x, x, key_padding_mask=kpm, need_weights=False,
                                attn_mask=mask, is_causal=is_causal)
        return self.dropout1(out)

    def _sa_block_backward(self, g):
        dq, dk, dv = self.self_attn.backward(self.dropout1.backward(g))
        return dq + dk + dv                     # x is query, key and value

    def _mha_block(self, x, mem, mask, kpm, is_causal):
        """dropout2(CA(x, m))."""
        out, _ = self.multihead_attn(x, mem, mem, key_padding_mask=kpm, need_weights=False,
                                     attn_mask=mask, is_causal=is_causal)
        return self.dropout2(out)

    def _mha_block_backward(self, g, d_memory):
        """dL/dx of :meth:`_mha_block`; appends dL/dm = dk + dv (m is key and value)."""
        dq, dk, dv = self.multihead_attn.backward(self.dropout2.backward(g))
        d_memory.append(dk + dv)
        return dq

    def _ff_block(self, x):
        """dropout3(FF(x))."""
        return self.dropout3(self._ff(x))

    def _ff_block_backward(self, g):
        return self._ff_backward(self.dropout3.backward(g))

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
        x = self._residual(self.norm1, lambda y: self._sa_block(y, *sa), x)       # x1
        x = self._residual(self.norm2, lambda y: self._mha_block(y, m, *ca), x)   # x2
        x = self._residual(self.norm3, self._ff_block, x)                         # y
        if self.recording:
            self.save_for_backward(DecoderCache(y_shape=x.shape, m_shape=m.shape))
        return x

    def backward(self, grad_out):
        c = self.pop_saved()
        g = check_grad(self, grad_out, c.y_shape)
        g = self._residual_backward(self.norm3, self._ff_block_backward, g)        # dL/dx2
        dm = []
        g = self._residual_backward(self.norm2, lambda h: self._mha_block_backward(h, dm), g)
        return self._residual_backward(self.norm1, self._sa_block_backward, g), dm[0]


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
        self.layers = _get_clones(decoder_layer, num_layers, "TransformerDecoder")
        self.num_layers = int(num_layers)
        self.norm = norm

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
        if self.recording:
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
