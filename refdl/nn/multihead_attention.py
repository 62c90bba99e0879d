r"""Multi-head attention, ``torch.nn.MultiheadAttention``: H scaled dot-product
attentions (refdl/nn/attention.py) on learned projections of the query, key and value,
concatenated and projected back.

With D = E/H and head h using rows hD..(h+1)D of each projection:

    Q = query W_q^T + b_q,  K = key W_k^T + b_k,  V = value W_v^T + b_v
    O_h = softmax(Q_h K_h^T / sqrt(D) + M) V_h
    attn_output = concat_h(O_h) W_o^T + b_o

Backward is the chain rule through out_proj, the per-head attention and the three input
projections. Masks: a boolean ``attn_mask`` or ``key_padding_mask`` entry **True means
"NOT allowed to attend"** (the opposite of scaled_dot_product_attention's booleans); a
float mask is added to the scores. Derivation: docs/derivations/attention.md, section 2.
"""
import math
from typing import NamedTuple, Optional

import numpy as np

from .. import init
from ..random import get_rng
from .validate import check_float, check_grad, layer_name
from .attention import (AttentionCache, _additive_mask, _sdpa_backward, _sdpa_forward,
                        causal_block_mask)
from .linear import Linear
from .module import Module, Parameter

__all__ = ["MultiheadAttention"]


class MultiheadAttentionCache(NamedTuple):
    """One call of MultiheadAttention (docs/derivations/attention.md, section 2)."""
    query: np.ndarray               # the inputs, as (N, L, E), (N, S, kdim), (N, S, vdim):
    key: np.ndarray                 # dW_q += dQ^T query, ...
    value: np.ndarray
    attn: AttentionCache            # the heads: q, k, v = Q_h, K_h, V_h (N, H, len, D), P, A
    batched: bool                   # False for an unbatched (L, E) call
    weights_shape: Optional[tuple]  # shape of the returned attn_weights (None if not asked)
    average: bool                   # average_attn_weights


class MultiheadAttention(Module):
    r"""Multi-head attention, ``torch.nn.MultiheadAttention``'s arguments, names and returns.

    MultiheadAttention(embed_dim, num_heads, dropout=0.0, bias=True, kdim=None, vdim=None,
                       batch_first=False)

    Parameters (PyTorch's state_dict keys): ``in_proj_weight`` (3E, E) holding
    [W_q; W_k; W_v] when kdim = vdim = E, else ``q_proj_weight`` (E, E), ``k_proj_weight``
    (E, kdim), ``v_proj_weight`` (E, vdim); ``in_proj_bias`` (3E,); ``out_proj.weight``
    (E, E), ``out_proj.bias`` (E,). Init as PyTorch: Xavier-uniform in_proj, zero biases.

    forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
            average_attn_weights=True, is_causal=False) -> (attn_output, attn_weights)

    Shapes (batch_first=False; with batch_first=True swap the first two axes; unbatched
    inputs drop N): query (L, N, E), key (S, N, kdim), value (S, N, vdim)
    -> attn_output (L, N, E); attn_weights (N, L, S) averaged over heads, or (N, H, L, S)
    with average_attn_weights=False, or None with need_weights=False. In training mode
    with dropout > 0 the returned weights are the dropped-out ones, as in PyTorch;
    ``generator`` draws the initial weights and then the dropout masks (None: refdl's
    global RNG).
    key_padding_mask (N, S); attn_mask (L, S) or (N*H, L, S). Boolean masks: **True = NOT
    allowed to attend** (the opposite of scaled_dot_product_attention's booleans; build a
    causal one with nn.causal_block_mask(L)); float masks are added to the scores. A
    boolean attn_mask that masks some query from every key is refused (it is almost
    surely a "may attend" mask, nn.causal_attend_mask, in the wrong convention).
    is_causal=True without attn_mask applies the causal mask (PyTorch requires attn_mask with it; refdl builds it for you); with attn_mask it
    is only a hint, as in PyTorch.

    Forward, with D = E/H and head h using rows hD..(h+1)D of each projection:
        Q = query W_q^T + b_q,  K = key W_k^T + b_k,  V = value W_v^T + b_v
        O_h = softmax(Q_h K_h^T / sqrt(D) + M) V_h      (dropout on the weights in training)
        attn_output = concat_h(O_h) W_o^T + b_o

    backward(d_out, d_weights=None) -> (dquery, dkey, dvalue): the chain rule through
    out_proj, the per-head attention (see ScaledDotProductAttention) and the three input
    projections: dW_q += dQ^T query, db_q += sum dQ, dquery = dQ W_q (likewise K, V).
    For self-attention (query is key is value) three gradients are still returned; the
    caller sums them (the input fans out to three uses). d_weights must have the shape of
    the returned attn_weights (head-averaged or not).
    Cache per training-mode call: :class:`MultiheadAttentionCache` (query, key, value and
    the heads' AttentionCache); out_proj records its own.
    An empty batch (N = 0) gives empty outputs and gradients, as in PyTorch.
    Derivation: docs/derivations/attention.md
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=False,
                 dtype=np.float32, generator=None):
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.num_heads = int(num_heads)
        if self.embed_dim <= 0 or self.num_heads <= 0:
            raise ValueError(f"MultiheadAttention: embed_dim and num_heads must be positive, "
                             f"got embed_dim={embed_dim}, num_heads={num_heads}")
        if self.embed_dim % self.num_heads != 0:
            raise ValueError(f"MultiheadAttention: embed_dim must be divisible by num_heads, "
                             f"got embed_dim={embed_dim}, num_heads={num_heads} "
                             f"({embed_dim} % {num_heads} = {embed_dim % num_heads})")
        if add_bias_kv or add_zero_attn:
            raise NotImplementedError("MultiheadAttention: add_bias_kv and add_zero_attn "
                                      "are not supported in refdl")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"MultiheadAttention: dropout must be in [0, 1], got {dropout}")
        self.head_dim = self.embed_dim // self.num_heads
        self.kdim = self.embed_dim if kdim is None else int(kdim)
        self.vdim = self.embed_dim if vdim is None else int(vdim)
        self._qkv_same_embed_dim = self.kdim == self.embed_dim and self.vdim == self.embed_dim
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        E = self.embed_dim
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(np.empty((3 * E, E), dtype=dtype))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.register_parameter("in_proj_weight", None)
            self.q_proj_weight = Parameter(np.empty((E, E), dtype=dtype))
            self.k_proj_weight = Parameter(np.empty((E, self.kdim), dtype=dtype))
            self.v_proj_weight = Parameter(np.empty((E, self.vdim), dtype=dtype))
        if bias:
            self.in_proj_bias = Parameter(np.zeros(3 * E, dtype=dtype))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(E, E, bias=bias, dtype=dtype, generator=generator)
        self._reset_parameters(generator)
        self.generator = generator      # and the source of the attention-dropout masks

    def _reset_parameters(self, generator=None):
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight, generator=generator)
        else:
            for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                init.xavier_uniform_(w, generator=generator)
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
            init.zeros_(self.out_proj.bias)

    def extra_repr(self):
        s = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if not self._qkv_same_embed_dim:
            s += f", kdim={self.kdim}, vdim={self.vdim}"
        if self.batch_first:
            s += ", batch_first=True"
        return s

    # the three projections: (weight, its grad, bias slice index)
    def _proj(self, i):
        E = self.embed_dim
        if self._qkv_same_embed_dim:
            W = self.in_proj_weight.data[i * E:(i + 1) * E]
        else:
            W = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)[i].data
        b = None if self.in_proj_bias is None else self.in_proj_bias.data[i * E:(i + 1) * E]
        return W, b

    def _add_proj_grads(self, i, dY, X):
        E = self.embed_dim
        dW = dY.reshape(-1, E).T @ X.reshape(-1, X.shape[-1])
        if self._qkv_same_embed_dim:
            if self.in_proj_weight.requires_grad:
                self.in_proj_weight.grad[i * E:(i + 1) * E] += dW
        else:
            p = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)[i]
            if p.requires_grad:
                p.grad += dW
        if self.in_proj_bias is not None and self.in_proj_bias.requires_grad:
            self.in_proj_bias.grad[i * E:(i + 1) * E] += dY.reshape(-1, E).sum(axis=0)

    def _to_nle(self, x, batched):
        """Input layout -> (N, L, E)."""
        if not batched:
            return x[None]
        return x if self.batch_first else np.swapaxes(x, 0, 1)

    def _from_nle(self, x, batched):
        if not batched:
            return x[0]
        return x if self.batch_first else np.swapaxes(x, 0, 1)

    def _check_inputs(self, query, key, value):
        q = check_float(self, query, "query")
        k = check_float(self, key, "key")
        v = check_float(self, value, "value")
        if q.ndim not in (2, 3):
            lay = "(N, L, E)" if self.batch_first else "(L, N, E)"
            raise ValueError(f"{layer_name(self)}: expected a 3-D query {lay} or a 2-D "
                             f"unbatched query (L, E), got shape {tuple(q.shape)}")
        batched = q.ndim == 3
        for name, x in (("key", k), ("value", v)):
            if x.ndim != q.ndim:
                raise ValueError(f"{layer_name(self)}: query is {q.ndim}-D, so {name} must be "
                                 f"{q.ndim}-D too, got {name} of shape {tuple(x.shape)}")
        for name, x, d in (("query", q, self.embed_dim), ("key", k, self.kdim),
                           ("value", v, self.vdim)):
            if x.shape[-1] != d:
                raise ValueError(f"{layer_name(self)}: expected {name} with last dimension "
                                 f"{d}, got shape {tuple(x.shape)}")
        qn, kn, vn = (self._to_nle(x, batched) for x in (q, k, v))
        if not (qn.shape[0] == kn.shape[0] == vn.shape[0]):
            raise ValueError(f"{layer_name(self)}: query, key and value must have the same "
                             f"batch size, got shapes {tuple(q.shape)}, {tuple(k.shape)}, "
                             f"{tuple(v.shape)}")
        if kn.shape[1] != vn.shape[1]:
            raise ValueError(f"{layer_name(self)}: key and value must have the same sequence "
                             f"length S, got shapes {tuple(k.shape)} and {tuple(v.shape)}")
        return qn, kn, vn, batched

    def _mask(self, attn_mask, key_padding_mask, is_causal, N, L, S, dtype, batched):
        H = self.num_heads
        add = None
        if attn_mask is None and is_causal:
            attn_mask = causal_block_mask(L, S)
        if attn_mask is not None:
            m = _additive_mask(attn_mask, dtype, True, layer_name(self), "attn_mask")
            want3 = (N * H, L, S) if batched else (H, L, S)
            if m.shape == (L, S):
                add = m
            elif m.shape == want3:
                add = m.reshape(N, H, L, S)
            else:
                raise ValueError(f"{layer_name(self)}: attn_mask must have shape (L, S) = "
                                 f"{(L, S)} or ({'N*num_heads' if batched else 'num_heads'}"
                                 f", L, S) = {want3}, got {tuple(m.shape)}")
        if key_padding_mask is not None:
            kpm = _additive_mask(key_padding_mask, dtype, True, layer_name(self),
                                 "key_padding_mask")
            want = (N, S) if batched else (S,)
            if kpm.shape != want:
                raise ValueError(f"{layer_name(self)}: key_padding_mask must have shape "
                                 f"{'(N, S)' if batched else '(S,)'} = {want}, got "
                                 f"{tuple(kpm.shape)}")
            kpm = kpm.reshape(N, 1, 1, S)
            add = kpm if add is None else add + kpm
        return add

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        q, k, v, batched = self._check_inputs(query, key, value)
        N, L, _ = q.shape
        S = k.shape[1]
        H, D = self.num_heads, self.head_dim
        add = self._mask(attn_mask, key_padding_mask, is_causal, N, L, S, q.dtype, batched)
        proj = []
        for i, x in enumerate((q, k, v)):
            W, b = self._proj(i)
            # one (N len, E_in) x (E_in, E) product: a stacked 3-D matmul is far slower
            # with a multithreaded BLAS
            y = x.reshape(-1, x.shape[-1]) @ W.T
            if b is not None:
                y = y + b
            # (N, len, E) -> (N, H, len, D); lengths spelled out so that N = 0 works
            proj.append(y.reshape(N, x.shape[1], H, D).transpose(0, 2, 1, 3))
        p = self.dropout if self.training else 0.0
        o, A, attn = _sdpa_forward(proj[0], proj[1], proj[2], add, p, 1.0 / math.sqrt(D),
                                   get_rng(self.generator))
        merged = o.transpose(0, 2, 1, 3).reshape(N * L, self.embed_dim)
        out = self._from_nle(self.out_proj(merged).reshape(N, L, self.embed_dim), batched)
        weights = None
        if need_weights:
            weights = A.mean(axis=1) if average_attn_weights else A
            if not batched:
                weights = weights[0]
        if self.recording:
            self.save_for_backward(MultiheadAttentionCache(
                query=q, key=k, value=v, attn=attn, batched=batched,
                weights_shape=None if weights is None else weights.shape,
                average=average_attn_weights))
        return out, weights

    def backward(self, d_out, d_weights=None):
        c = self.pop_saved()
        N, L, E = c.query.shape
        H, D = self.num_heads, self.head_dim
        g = check_grad(self, d_out, self._from_nle(c.query, c.batched).shape, "d_out")
        g = self._to_nle(g, c.batched)
        d_merged = self.out_proj.backward(g.reshape(N * L, E))     # dC = G W_o
        d_o = d_merged.reshape(N, L, H, D).transpose(0, 2, 1, 3)   # dO_h
        dA = None
        if c.weights_shape is not None and d_weights is not None and np.ndim(d_weights) > 0:
            gw = check_grad(self, d_weights, c.weights_shape, "d_weights")
            if not c.batched:
                gw = gw[None]
            dA = np.repeat(gw[:, None] / H, H, axis=1) if c.average else gw
        dQ, dK, dV = _sdpa_backward(d_o, dA, c.attn)
        grads = []
        for i, (dY, X) in enumerate(((dQ, c.query), (dK, c.key), (dV, c.value))):
            dY = dY.transpose(0, 2, 1, 3).reshape(N * X.shape[1], E)
            self._add_proj_grads(i, dY, X)
            W, _ = self._proj(i)
            grads.append(self._from_nle((dY @ W).reshape(X.shape), c.batched))
        return tuple(grads)
