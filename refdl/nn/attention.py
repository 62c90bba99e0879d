r"""Attention: scaled dot-product attention, MultiheadAttention, positional encodings.

Scaled dot-product attention (Vaswani et al. 2017), for queries q (..., L, E), keys
k (..., S, E) and values v (..., S, Ev):

    S_ij = scale * <q_i, k_j> + M_ij          (scores, (..., L, S); scale = 1/sqrt(E))
    P_i  = softmax(S_i)                         (row-wise: each row sums to 1)
    A    = dropout(P)                           (training only: A = P * keep / (1 - p))
    out  = A v                                  ((..., L, Ev))

Backward, with G = dL/dout and (optionally) G_A = dL/dA coming from the returned weights:

    dA = G v^T + G_A          dv = A^T G
    dP = dA * keep / (1 - p)
    dS = P * (dP - rowsum(dP * P))              (the softmax Jacobian diag(P) - P P^T)
    dq = scale * dS k         dk = scale * dS^T q

Derivation (including the softmax-Jacobian step): docs/derivations/attention.md

Masks -- the two PyTorch conventions, which are opposite for booleans:

* ``scaled_dot_product_attention`` / :class:`ScaledDotProductAttention` (like
  ``torch.nn.functional.scaled_dot_product_attention``): a boolean ``attn_mask`` entry
  **True means "takes part in attention"** (False entries are masked out); a float mask
  is *added* to the scores (use ``-inf`` to mask out).
* :class:`MultiheadAttention` (like ``torch.nn.MultiheadAttention``): a boolean
  ``attn_mask`` or ``key_padding_mask`` entry **True means "NOT allowed to attend"**
  (masked out); a float mask is added to the scores.

The causal-mask helpers name their convention: :func:`causal_attend_mask` (True = may
attend, for scaled_dot_product_attention), :func:`causal_block_mask` (True = blocked, for
MultiheadAttention and the Transformer layers) and the float
``Transformer.generate_square_subsequent_mask`` (0 / -inf, right for both). A boolean mask
passed in the wrong convention is refused when it can be detected: a boolean mask that
leaves some query row with no key at all (every entry masked) is an error naming the
convention (the "may attend" causal mask read as "blocked" masks the last query from
every key, and a token from itself), and so is the exact causal "may attend" pattern
where "blocked" is expected. The old ``causal_mask`` is a deprecated alias of
``causal_attend_mask``.

A row whose every entry is masked by a float mask (or by key_padding_mask) gets all-zero
attention weights (and a zero output) here; PyTorch gives NaN for it. A NaN in the input
stays NaN in the output (it is never hidden as a zero). No other difference.
"""
import math
import warnings
from typing import NamedTuple, Optional

import numpy as np

from .. import init
from ..random import get_rng
from .validate import check_float, check_grad, layer_name
from .linear import Linear
from .module import Module, Parameter

__all__ = ["scaled_dot_product_attention", "ScaledDotProductAttention", "MultiheadAttention",
           "SinusoidalPositionalEncoding", "LearnedPositionalEncoding",
           "sinusoidal_encoding", "causal_attend_mask", "causal_block_mask", "causal_mask",
           "blockwise_attention"]


# ---------------------------------------------------------------------------------------
# the core, on plain arrays
# ---------------------------------------------------------------------------------------
def causal_attend_mask(L, S=None):
    """Boolean (L, S) mask, **True where query i may attend to key j** (j <= i).

    scaled_dot_product_attention's convention (True = takes part). For MultiheadAttention
    and the Transformer layers (True = blocked) use :func:`causal_block_mask`, or the float
    ``nn.Transformer.generate_square_subsequent_mask(L)``, which both accept.
    """
    S = L if S is None else S
    return np.tril(np.ones((int(L), int(S)), dtype=bool))


def causal_block_mask(L, S=None):
    """Boolean (L, S) mask, **True where query i may NOT attend to key j** (j > i).

    MultiheadAttention's / the Transformer layers' convention (True = masked out); the
    negation of :func:`causal_attend_mask`.
    """
    return ~causal_attend_mask(L, S)


def causal_mask(L, S=None):
    """Deprecated: :func:`causal_attend_mask` (True = may attend; SDPA's convention).

    The name does not say which boolean convention it follows, and passed as
    MultiheadAttention's ``attn_mask`` (True = blocked) it would invert the mask. Use
    ``causal_attend_mask`` for scaled_dot_product_attention and ``causal_block_mask`` (or
    ``nn.Transformer.generate_square_subsequent_mask``) for MultiheadAttention/Transformer.
    """
    warnings.warn("nn.causal_mask is deprecated: its True means 'may attend' (the "
                  "convention of scaled_dot_product_attention), the opposite of "
                  "MultiheadAttention's. Use nn.causal_attend_mask (SDPA) or "
                  "nn.causal_block_mask / nn.Transformer.generate_square_subsequent_mask "
                  "(MultiheadAttention, Transformer layers).", DeprecationWarning,
                  stacklevel=2)
    return causal_attend_mask(L, S)


def masked_softmax(scores):
    """Row softmax along the last axis that tolerates ``-inf`` entries (masked scores).

    Entries equal to -inf get probability 0; a row that is entirely -inf gives all zeros
    (PyTorch gives NaN there). A NaN score is not a masked one: its row stays NaN (a NaN
    in q, k or v is never turned into zeros). Never warns: the row maximum is subtracted
    only where it is finite.
    """
    m = np.max(scores, axis=-1, keepdims=True)
    m = np.where(m == -np.inf, 0.0, m)             # a fully masked row: exp(-inf) = 0
    with np.errstate(invalid="ignore"):            # inf - inf in a row holding +inf
        e = np.exp(scores - m)
    s = np.sum(e, axis=-1, keepdims=True)
    # only rows whose sum is exactly 0 (every entry masked) are set to 0; a NaN row
    # (NaN != 0) is divided, and stays NaN
    return np.divide(e, s, out=np.zeros_like(e), where=s != 0)


def softmax_backward(P, dP):
    r"""dS from dP for P = softmax(S) along the last axis: P * (dP - sum_j dP_j P_j)."""
    return P * (dP - np.sum(dP * P, axis=-1, keepdims=True))


def _convention_help(true_means_masked):
    if true_means_masked:
        return ("here a boolean attn_mask means True = NOT allowed to attend "
                "(MultiheadAttention's and the Transformer layers' convention); for a causal "
                "mask use nn.causal_block_mask(L) or the float "
                "nn.Transformer.generate_square_subsequent_mask(L), or pass ~mask if the "
                "mask means 'may attend' (nn.causal_attend_mask, "
                "scaled_dot_product_attention's convention)")
    return ("here a boolean attn_mask means True = takes part in attention "
            "(scaled_dot_product_attention's convention); for a causal mask use "
            "nn.causal_attend_mask(L) or is_causal=True, or pass ~mask if the mask means "
            "'blocked' (nn.causal_block_mask, MultiheadAttention's convention)")


def _check_bool_convention(mask, true_means_masked, who, what):
    """Refuse a boolean attn_mask whose convention is detectably the other one.

    Two signs: a query row with every key masked (no valid softmax; the "may attend" causal
    mask read as "blocked" masks the last query from every key), and the exact causal
    pattern of the other convention (it masks every token from itself).
    """
    if mask.ndim < 2 or mask.size == 0:
        return
    masked = mask if true_means_masked else ~mask
    full = masked.all(axis=-1)
    if full.any():
        row = tuple(int(i) for i in np.argwhere(full)[0])
        raise ValueError(f"{who}: {what} of shape {tuple(mask.shape)} masks every key for "
                         f"query row {row[-1]} (index {row}), which leaves that query "
                         f"nothing to attend to; {_convention_help(true_means_masked)}")
    L, S = mask.shape[-2:]
    if L > 1:
        attend = np.tril(np.ones((L, S), dtype=bool))
        wrong = attend if true_means_masked else ~attend
        if np.array_equal(mask, np.broadcast_to(wrong, mask.shape)):
            kind = "'may attend'" if true_means_masked else "'blocked'"
            raise ValueError(f"{who}: {what} is the causal mask in the {kind} convention, "
                             f"the opposite of this layer's; "
                             f"{_convention_help(true_means_masked)}")


def _additive_mask(mask, dtype, true_means_masked, who, what):
    """A boolean or float mask as an additive float mask (0 or -inf for booleans)."""
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        if what == "attn_mask":
            _check_bool_convention(mask, true_means_masked, who, what)
        masked = mask if true_means_masked else ~mask
        return np.where(masked, -np.inf, 0.0).astype(dtype)
    if np.issubdtype(mask.dtype, np.floating):
        return mask.astype(dtype, copy=False)
    raise TypeError(f"{who}: only bool and floating {what} are supported, got dtype "
                    f"{mask.dtype} (bool: True = "
                    f"{'masked out' if true_means_masked else 'takes part'}; "
                    "float: added to the scores)")


class AttentionCache(NamedTuple):
    """One call of scaled dot-product attention (docs/derivations/attention.md, section 1)."""
    q: np.ndarray                   # queries (..., L, E)
    k: np.ndarray                   # keys (..., S, E)
    v: np.ndarray                   # values (..., S, Ev)
    P: np.ndarray                   # softmax of the scores (..., L, S)
    A: np.ndarray                   # the weights after dropout, A = P * keep / (1 - p)
    keep: Optional[np.ndarray]      # dropout's keep mask B of the page (None without dropout)
    p: float                        # dropout probability
    c: float                        # the scale (1/sqrt(E) by default)


def _sdpa_forward(q, k, v, add_mask, dropout_p, scale, rng):
    """Forward on arrays; returns (out, A, AttentionCache). ``add_mask`` is additive."""
    scores = (q @ np.swapaxes(k, -1, -2)) * scale
    if add_mask is not None:
        # a masked entry (-inf in the mask) is -inf whatever its score, even NaN: masked
        # entries get weight exactly 0, and only they
        scores = np.where(add_mask == -np.inf, -np.inf, scores + add_mask)
    P = masked_softmax(scores)
    keep = None
    if dropout_p >= 1.0:
        keep = np.zeros(P.shape, dtype=bool)
        A = np.zeros_like(P)
    elif dropout_p > 0.0:
        keep = rng.random(P.shape) >= dropout_p
        A = P * keep / (1.0 - dropout_p)
    else:
        A = P
    out = A @ v
    return out, A, AttentionCache(q=q, k=k, v=v, P=P, A=A, keep=keep, p=float(dropout_p),
                                  c=scale)


def _unbroadcast(g, shape):
    """Sum g over the axes along which an array of ``shape`` was broadcast."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for ax, n in enumerate(shape):
        if n == 1 and g.shape[ax] != 1:
            g = g.sum(axis=ax, keepdims=True)
    return g


def _sdpa_backward(d_out, d_A, c):
    """(dq, dk, dv) from dL/dout and optionally dL/dA (the weights); c: AttentionCache."""
    dA = d_out @ np.swapaxes(c.v, -1, -2)
    if d_A is not None:
        dA = dA + d_A
    dv = np.swapaxes(c.A, -1, -2) @ d_out
    if c.keep is not None:
        dP = dA * c.keep / (1.0 - c.p) if c.p < 1.0 else np.zeros_like(dA)
    else:
        dP = dA
    dS = softmax_backward(c.P, dP) * c.c
    dq = dS @ c.k
    dk = np.swapaxes(dS, -1, -2) @ c.q
    return (_unbroadcast(dq, c.q.shape), _unbroadcast(dk, c.k.shape),
            _unbroadcast(dv, c.v.shape))


def _check_qkv(who, q, k, v):
    q = check_float(who, q, "query")
    k = check_float(who, k, "key")
    v = check_float(who, v, "value")
    for name, x in (("query", q), ("key", k), ("value", v)):
        if x.ndim < 2:
            raise ValueError(f"{layer_name(who)}: expected {name} of shape (..., L, E), got "
                             f"{tuple(x.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{layer_name(who)}: query (..., L, E) and key (..., S, E) must have "
                         f"the same last dimension, got query {tuple(q.shape)} and key "
                         f"{tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"{layer_name(who)}: key (..., S, E) and value (..., S, Ev) must have "
                         f"the same length S, got key {tuple(k.shape)} and value "
                         f"{tuple(v.shape)}")
    return q, k, v


def _sdpa_mask(who, attn_mask, is_causal, q, k):
    L, S = q.shape[-2], k.shape[-2]
    if is_causal and attn_mask is not None:
        raise ValueError(f"{layer_name(who)}: give either attn_mask or is_causal=True, not "
                         "both (as PyTorch)")
    if is_causal:
        return _additive_mask(causal_attend_mask(L, S), q.dtype, False, layer_name(who),
                              "is_causal")
    if attn_mask is None:
        return None
    m = _additive_mask(attn_mask, q.dtype, False, layer_name(who), "attn_mask")
    target = np.broadcast_shapes(q.shape[:-2], k.shape[:-2]) + (L, S)
    try:
        ok = np.broadcast_shapes(m.shape, target) == target
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{layer_name(who)}: attn_mask of shape {tuple(m.shape)} cannot be "
                         f"broadcast to the scores' shape {target} (..., L, S)")
    return m


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, generator=None):
    r"""softmax(q k^T * scale + M) v, as ``torch.nn.functional.scaled_dot_product_attention``.

    query (..., L, E), key (..., S, E), value (..., S, Ev) -> (..., L, Ev).
    ``attn_mask``: boolean (True = takes part) or float (added), broadcastable to
    (..., L, S). ``is_causal``: query i sees keys j <= i. ``scale`` defaults to 1/sqrt(E).
    ``dropout_p`` > 0 drops attention weights (always: the function has no train/eval
    mode, like PyTorch's). Forward only; :class:`ScaledDotProductAttention` has a backward.
    """
    who = "scaled_dot_product_attention"
    q, k, v = _check_qkv(who, query, key, value)
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"{who}: dropout_p must be in [0, 1], got {dropout_p}")
    add = _sdpa_mask(who, attn_mask, is_causal, q, k)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out, _, _ = _sdpa_forward(q, k, v, add, dropout_p, scale, get_rng(generator))
    return out


class ScaledDotProductAttention(Module):
    r"""Scaled dot-product attention as a layer with a backward.

    forward(query, key, value, attn_mask=None, is_causal=False, need_weights=False):
        query (..., L, E), key (..., S, E), value (..., S, Ev) -> out (..., L, Ev),
        and the weights A (..., L, S) too when ``need_weights`` (returns (out, A)).
        ``attn_mask``: boolean (True = takes part, SDPA's convention) or float (added).
        Dropout with probability ``dropout`` on the weights, in training mode only.

        S = scale q k^T + M,  P = softmax_rows(S),  A = dropout(P),  out = A v

    backward(d_out, d_weights=None) -> (dq, dk, dv):
        dA = d_out v^T + d_weights,  dv = A^T d_out,  dP = dA * keep / (1-p),
        dS = P * (dP - rowsum(dP * P)),  dq = c dS k,  dk = c dS^T q   (c = scale).

    Cache per training-mode call: :class:`AttentionCache` (q, k, v, P, A, keep, p, c).

    In self-attention (query is key is value) the three gradients are still returned
    separately; the caller sums them (the input fans out to three uses).
    Derivation: docs/derivations/attention.md
    """

    def __init__(self, dropout=0.0, scale=None):
        super().__init__()
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"ScaledDotProductAttention: dropout must be in [0, 1], got "
                             f"{dropout}")
        self.dropout = float(dropout)
        self.scale = scale

    def extra_repr(self):
        s = f"dropout={self.dropout}"
        return s + (f", scale={self.scale}" if self.scale is not None else "")

    def forward(self, query, key, value, attn_mask=None, is_causal=False, need_weights=False):
        q, k, v = _check_qkv(self, query, key, value)
        add = _sdpa_mask(self, attn_mask, is_causal, q, k)
        scale = 1.0 / math.sqrt(q.shape[-1]) if self.scale is None else float(self.scale)
        p = self.dropout if self.training else 0.0
        out, A, cache = _sdpa_forward(q, k, v, add, p, scale, get_rng())
        self.save_for_backward(cache)
        return (out, A) if need_weights else out

    def backward(self, d_out, d_weights=None):
        c = self.pop_saved()
        g = check_grad(self, d_out, c.A.shape[:-1] + c.v.shape[-1:])
        gA = None
        if d_weights is not None and np.ndim(d_weights) > 0:
            gA = check_grad(self, d_weights, c.A.shape, "d_weights")
        return _sdpa_backward(g, gA, c)


# ---------------------------------------------------------------------------------------
# MultiheadAttention
# ---------------------------------------------------------------------------------------
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
    with dropout > 0 the returned weights are the dropped-out ones, as in PyTorch.
    key_padding_mask (N, S); attn_mask (L, S) or (N*H, L, S). Boolean masks: **True = NOT
    allowed to attend** (the opposite of scaled_dot_product_attention's booleans; build a
    causal one with nn.causal_block_mask(L)); float masks are added to the scores. A
    boolean attn_mask that masks some query from every key is refused (it is almost
    surely a "may attend" mask, nn.causal_attend_mask, in the wrong convention). is_causal=True without attn_mask applies the causal
    mask (PyTorch requires attn_mask with it; refdl builds it for you); with attn_mask it
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
                                   get_rng())
        merged = o.transpose(0, 2, 1, 3).reshape(N * L, self.embed_dim)
        out = self._from_nle(self.out_proj(merged).reshape(N, L, self.embed_dim), batched)
        weights = None
        if need_weights:
            weights = A.mean(axis=1) if average_attn_weights else A
            if not batched:
                weights = weights[0]
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


# ---------------------------------------------------------------------------------------
# positional encodings
# ---------------------------------------------------------------------------------------
def sinusoidal_encoding(positions, d_model, base=10000.0):
    r"""The sinusoidal encoding of Vaswani et al. for (possibly real) positions.

    PE(p)_{2i} = sin(p w_i),  PE(p)_{2i+1} = cos(p w_i),  w_i = base^(-2i/d_model).
    positions: array of shape (T,) (integers or reals) -> (T, d_model) float64.
    Property: <PE(p), PE(p + k)> = sum_i cos(k w_i) depends on the offset k only, and
    PE(p + k) = R(k) PE(p) with R(k) block-diagonal 2x2 rotations by k w_i.
    """
    d_model = int(d_model)
    if d_model <= 0:
        raise ValueError(f"sinusoidal_encoding: d_model must be positive, got {d_model}")
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 1)
    i = np.arange(0, d_model, 2, dtype=np.float64)
    w = float(base) ** (-i / d_model)
    pe = np.zeros((pos.shape[0], d_model))
    pe[:, 0::2] = np.sin(pos * w)
    pe[:, 1::2] = np.cos(pos * w[: d_model // 2])
    return pe


class PositionCache(NamedTuple):
    """One call of a positional encoding: the input's shape and its sequence axis."""
    shape: tuple
    seq_axis: int


def _seq_axis(who, x, batch_first, d_model):
    x = check_float(who, x)
    if x.ndim not in (2, 3) or x.shape[-1] != d_model:
        lay = "(N, L, d)" if batch_first else "(L, N, d)"
        raise ValueError(f"{layer_name(who)}: expected input {lay} or (L, d) with d = "
                         f"{d_model}, got shape {tuple(x.shape)}")
    return x, (1 if (x.ndim == 3 and batch_first) else 0)


class SinusoidalPositionalEncoding(Module):
    r"""x + PE[:L]: the fixed sinusoidal encoding (no parameters), added to every sequence.

    x (N, L, d) with batch_first=True (the default here), (L, N, d) with batch_first=False,
    or (L, d) -> same shape.  PE(p)_{2i} = sin(p / base^(2i/d)), PE(p)_{2i+1} = cos(...).
    Backward: dL/dx = dL/dy (the encoding is a constant).
    """

    def __init__(self, d_model, max_len=5000, base=10000.0, batch_first=True):
        super().__init__()
        self.d_model, self.max_len, self.base = int(d_model), int(max_len), float(base)
        self.batch_first = bool(batch_first)
        self.pe = sinusoidal_encoding(np.arange(self.max_len), self.d_model, self.base)

    def extra_repr(self):
        return f"d_model={self.d_model}, max_len={self.max_len}, base={self.base:g}"

    def forward(self, x):
        x, ax = _seq_axis(self, x, self.batch_first, self.d_model)
        L = x.shape[ax]
        if L > self.max_len:
            raise ValueError(f"{layer_name(self)}: sequence length {L} exceeds max_len "
                             f"{self.max_len}")
        pe = self.pe[:L].astype(x.dtype)
        self.save_for_backward(PositionCache(shape=x.shape, seq_axis=ax))
        return x + (pe[:, None, :] if (x.ndim == 3 and ax == 0) else pe)

    def backward(self, grad_out):
        c = self.pop_saved()
        return check_grad(self, grad_out, c.shape)


class LearnedPositionalEncoding(Module):
    r"""x + P[:L] with a trained table ``weight`` (max_len, d_model) (ViT's pos_embed).

    x (N, L, d) with batch_first=True (default), (L, N, d) otherwise, or (L, d).
    Backward: dL/dx = g;  dL/dP[l] += sum over the batch of g[:, l].
    Init: N(0, 0.02^2) truncated to +-2 std... (timm's trunc_normal_(std=0.02)).
    """

    def __init__(self, max_len, d_model, batch_first=True, dtype=np.float32, generator=None):
        super().__init__()
        self.max_len, self.d_model = int(max_len), int(d_model)
        self.batch_first = bool(batch_first)
        self.weight = Parameter(np.empty((self.max_len, self.d_model), dtype=dtype))
        init.trunc_normal_(self.weight, std=0.02, a=-0.04, b=0.04, generator=generator)

    def extra_repr(self):
        return f"max_len={self.max_len}, d_model={self.d_model}"

    def forward(self, x):
        x, ax = _seq_axis(self, x, self.batch_first, self.d_model)
        L = x.shape[ax]
        if L > self.max_len:
            raise ValueError(f"{layer_name(self)}: sequence length {L} exceeds max_len "
                             f"{self.max_len}")
        self.save_for_backward(PositionCache(shape=x.shape, seq_axis=ax))
        P = self.weight.data[:L]
        return x + (P[:, None, :] if (x.ndim == 3 and ax == 0) else P)

    def backward(self, grad_out):
        c = self.pop_saved()
        shape, ax = c.shape, c.seq_axis
        g = check_grad(self, grad_out, shape)
        if self.weight.requires_grad:
            if g.ndim == 2:
                gP = g
            else:
                gP = g.sum(axis=1 - ax)
            self.weight.grad[:shape[ax]] += gP
        return g


# ---------------------------------------------------------------------------------------
# memory-bounded attention: the same result computed in blocks of keys
# ---------------------------------------------------------------------------------------
def blockwise_attention(query, key, value, block_size, scale=None):
    r"""softmax(q k^T * scale) v computed over key blocks with an online softmax.

    Only a (..., L, block_size) block of scores exists at any time (the running row max
    m, row sum l and output accumulator o are O(L)): the memory of the scores is linear in
    S, while the arithmetic is still L*S*E multiply-adds (quadratic time). Forward only.
    Returns (out, largest score buffer in entries).

        for each block B:  s = q k_B^T scale;  m' = max(m, max_j s);
                           l = l e^{m-m'} + sum_j e^{s-m'};  o = o e^{m-m'} + e^{s-m'} v_B
        out = o / l
    """
    q, k, v = _check_qkv("blockwise_attention", query, key, value)
    block_size = int(block_size)
    if block_size <= 0:
        raise ValueError(f"blockwise_attention: block_size must be positive, got {block_size}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    L, S = q.shape[-2], k.shape[-2]
    m = np.full(q.shape[:-1] + (1,), -np.inf)
    lsum = np.zeros(q.shape[:-1] + (1,))
    o = np.zeros(q.shape[:-1] + (v.shape[-1],))
    biggest = 0
    for s0 in range(0, S, block_size):
        kb, vb = k[..., s0:s0 + block_size, :], v[..., s0:s0 + block_size, :]
        s = (q @ np.swapaxes(kb, -1, -2)) * scale
        biggest = max(biggest, s.size)
        m_new = np.maximum(m, s.max(axis=-1, keepdims=True))
        corr = np.exp(np.where(np.isfinite(m), m - m_new, -np.inf))
        e = np.exp(s - m_new)
        lsum = lsum * corr + e.sum(axis=-1, keepdims=True)
        o = o * corr + e @ vb
        m = m_new
    return (o / lsum).astype(np.result_type(q, k, v)), biggest
