r"""The Transformer encoder: ``TransformerEncoderLayer`` and ``TransformerEncoder``
(PyTorch's), and the residual plumbing the decoder layer shares with it.

A layer is a list of sub-layers (self-attention, feed-forward; the decoder adds
cross-attention), each wrapped in a residual connection and a LayerNorm, placed after the
sum (post-norm, the default) or before the sub-layer (pre-norm, ``norm_first=True``):

    post-norm:  x <- norm_i(x + sublayer_i(x))        pre-norm:  x <- x + sublayer_i(norm_i(x))

Every block's backward is the chain rule over its children, written out, with the
gradients of a value that fans out *added* (the residual stream: x feeds both the
sub-layer and the skip connection, so dL/dx = g + sub.backward(g); self-attention uses
x three times, as query, key and value, so its three returned gradients are summed).
The children record their own per-call caches; a block records only a small cache of
its own (the output's shape, to check the upstream gradient).
Derivations: docs/derivations/transformer.md (encoder, patches, windows) and
docs/derivations/decoder.md (decoder, nn.Transformer, masks).
"""
import copy
from typing import NamedTuple

import numpy as np

from .validate import check_float, check_grad, layer_name
from .activation import GELU, ReLU
from .multihead_attention import MultiheadAttention
from .container import ModuleList
from .dropout import Dropout
from .linear import Linear
from .module import Module
from .normalization import LayerNorm

__all__ = ["TransformerEncoderLayer", "TransformerEncoder"]


class BlockCache(NamedTuple):
    """One call of a composite block: the shape of its output y (the children keep the rest)."""
    y_shape: tuple


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


def _get_clones(layer, num_layers, who):
    """``num_layers`` deep copies of ``layer`` in a ModuleList (PyTorch's _get_clones)."""
    if int(num_layers) <= 0:
        raise ValueError(f"{who}: num_layers must be positive, got {num_layers}")
    return ModuleList([copy.deepcopy(layer) for _ in range(int(num_layers))])


class _ResidualLayer:
    """What the encoder and decoder layers share: the feed-forward sub-layer, the norms
    and dropouts around the sub-layers, and the residual connection in either placement.

    A layer with ``n`` sub-layers (the feed-forward last) has, in PyTorch's order and
    names, linear1, dropout, linear2 (FF(x) = linear2(dropout(act(linear1(x))))),
    norm1..norm{n}, dropout1..dropout{n} (dropout{i} on sub-layer i's output) and
    activation.
    """

    def _init_feedforward(self, who, n, d_model, dim_feedforward, dropout, activation,
                          layer_norm_eps, norm_first, bias, dtype, generator):
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype,
                              generator=generator)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype,
                              generator=generator)
        self.norm_first = bool(norm_first)
        for i in range(1, n + 1):
            setattr(self, f"norm{i}", LayerNorm(d_model, eps=layer_norm_eps, bias=bias))
        for i in range(1, n + 1):
            setattr(self, f"dropout{i}", Dropout(dropout))
        self.activation = _activation(activation, who)

    def extra_repr(self):
        return (f"d_model={self.d_model}, nhead={self.nhead}, "
                f"dim_feedforward={self.linear1.out_features}, norm_first={self.norm_first}")

    def _residual(self, norm, sublayer, x):
        """x + sublayer(norm(x)) (pre-norm) or norm(x + sublayer(x)) (post-norm)."""
        if self.norm_first:
            return x + sublayer(norm(x))
        return norm(x + sublayer(x))

    def _residual_backward(self, norm, sublayer_backward, g):
        """dL/dx of :meth:`_residual` from g = dL/d(its output); x feeds both the skip
        and the sub-layer, so the two gradients add:
            pre-norm:   dL/dx = g + norm.backward(sublayer.backward(g))
            post-norm:  h = norm.backward(g),   dL/dx = h + sublayer.backward(h)
        """
        if self.norm_first:
            return g + norm.backward(sublayer_backward(g))
        h = norm.backward(g)
        return h + sublayer_backward(h)

    # the tokens are flattened to (N L, E) rows around the feed-forward: one 2-D product
    # per Linear (a stacked 3-D matmul is far slower with a multithreaded BLAS)
    def _ff(self, x):
        """FF(x) = linear2(dropout(act(linear1(x))))."""
        y = self.linear2(self.dropout(self.activation(self.linear1(x.reshape(-1, x.shape[-1])))))
        return y.reshape(x.shape)

    def _ff_backward(self, g):
        shape = g.shape
        g = self.linear2.backward(g.reshape(-1, shape[-1]))
        g = self.dropout.backward(g)
        g = self.activation.backward(g)
        return self.linear1.backward(g).reshape(shape)


class TransformerEncoderLayer(_ResidualLayer, Module):
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
        self._init_feedforward("TransformerEncoderLayer", 2, d_model, dim_feedforward,
                               dropout, activation, layer_norm_eps, norm_first, bias, dtype,
                               generator)
        self.d_model, self.nhead = int(d_model), int(nhead)
        self.batch_first = bool(batch_first)
        self.store_attention = False
        self.attn_weights = None
        if dtype != np.float32:
            self.to(dtype)

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal):
        """dropout1(SA(x))."""
        out, w = self.self_attn(x, x, x, key_padding_mask=key_padding_mask,
                                need_weights=self.store_attention, attn_mask=attn_mask,
                                is_causal=is_causal)
        self.attn_weights = w
        return self.dropout1(out)

    def _sa_block_backward(self, g):
        dq, dk, dv = self.self_attn.backward(self.dropout1.backward(g))
        return dq + dk + dv                     # x is query, key and value

    def _ff_block(self, x):
        """dropout2(FF(x))."""
        return self.dropout2(self._ff(x))

    def _ff_block_backward(self, g):
        return self._ff_backward(self.dropout2.backward(g))

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = _check_seq(self, src, "src", self.d_model, self.batch_first)
        m = (src_mask, src_key_padding_mask, is_causal)
        x = self._residual(self.norm1, lambda y: self._sa_block(y, *m), x)     # x1
        x = self._residual(self.norm2, self._ff_block, x)                      # y
        if self.recording:
            self.save_for_backward(BlockCache(y_shape=x.shape))
        return x

    def backward(self, grad_out):
        c = self.pop_saved()
        g = check_grad(self, grad_out, c.y_shape)
        g = self._residual_backward(self.norm2, self._ff_block_backward, g)     # dL/dx1
        return self._residual_backward(self.norm1, self._sa_block_backward, g)


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
        self.layers = _get_clones(encoder_layer, num_layers, "TransformerEncoder")
        self.num_layers = int(num_layers)
        self.norm = norm

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                      is_causal=bool(is_causal))
        if self.norm is not None:
            x = self.norm(x)
        if self.recording:
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
