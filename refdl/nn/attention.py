r"""Attention: scaled dot-product attention, masks, positional encodings (MultiheadAttention
is in multihead_attention.py).

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
from ..functional import softmax, softmax_backward
from ..random import get_rng
from .validate import check_float, check_grad, layer_name
from .module import Module, Parameter

__all__ = ["scaled_dot_product_attention", "ScaledDotProductAttention",
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
    P = softmax(scores)
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
        Dropout with probability ``dropout`` on the weights, in training mode only; the
        masks come from ``generator`` (None: refdl's global RNG).

        S = scale q k^T + M,  P = softmax_rows(S),  A = dropout(P),  out = A v

    backward(d_out, d_weights=None) -> (dq, dk, dv):
        dA = d_out v^T + d_weights,  dv = A^T d_out,  dP = dA * keep / (1-p),
        dS = P * (dP - rowsum(dP * P)),  dq = c dS k,  dk = c dS^T q   (c = scale).

    Cache per training-mode call: :class:`AttentionCache` (q, k, v, P, A, keep, p, c).

    In self-attention (query is key is value) the three gradients are still returned
    separately; the caller sums them (the input fans out to three uses).
    Derivation: docs/derivations/attention.md
    """

    def __init__(self, dropout=0.0, scale=None, generator=None):
        super().__init__()
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"ScaledDotProductAttention: dropout must be in [0, 1], got "
                             f"{dropout}")
        self.dropout = float(dropout)
        self.scale = scale
        get_rng(generator)                  # refuse a bad generator now, not mid-training
        self.generator = generator          # the source of the dropout masks

    def extra_repr(self):
        s = f"dropout={self.dropout}"
        return s + (f", scale={self.scale}" if self.scale is not None else "")

    def forward(self, query, key, value, attn_mask=None, is_causal=False, need_weights=False):
        q, k, v = _check_qkv(self, query, key, value)
        add = _sdpa_mask(self, attn_mask, is_causal, q, k)
        scale = 1.0 / math.sqrt(q.shape[-1]) if self.scale is None else float(self.scale)
        p = self.dropout if self.training else 0.0
        out, A, cache = _sdpa_forward(q, k, v, add, p, scale, get_rng(self.generator))
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
        if self.recording:
            self.save_for_backward(PositionCache(shape=x.shape, seq_axis=ax))
        return x + (pe[:, None, :] if (x.ndim == 3 and ax == 0) else pe)

    def backward(self, grad_out):
        c = self.pop_saved()
        return check_grad(self, grad_out, c.shape)


class LearnedPositionalEncoding(Module):
    r"""x + P[:L] with a trained table ``weight`` (max_len, d_model) (ViT's pos_embed).

    x (N, L, d) with batch_first=True (default), (L, N, d) otherwise, or (L, d).
    Backward: dL/dx = g;  dL/dP[l] += sum over the batch of g[:, l].
    Init: N(0, 0.02^2) truncated to [-0.04, 0.04] (+-2 std). (timm's
    trunc_normal_(std=0.02) keeps its default bounds +-2, i.e. +-100 std: in effect no
    truncation.)
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
        if self.recording:
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
    S = k.shape[-2]
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
