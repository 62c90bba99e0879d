"""Scaled dot-product attention, MultiheadAttention and positional encodings.

The query/key projections are scaled up a little (x2) in the gradient checks so the
softmax is not nearly flat (its query/key gradients would then be tiny).
"""
import math

import numpy as np
import pytest

import refdl
from refdl import nn
from refdl.gradcheck import check_module
from refdl.functional import softmax as masked_softmax

def rng(seed=0):
    return np.random.default_rng(seed)


def mha(E=6, H=2, seed=0, **kw):
    refdl.manual_seed(seed)
    m = nn.MultiheadAttention(E, H, **kw)
    g = rng(seed + 100)
    if m.in_proj_weight is not None:
        m.in_proj_weight.data[:2 * E] *= 2
    else:
        m.q_proj_weight.data *= 2
        m.k_proj_weight.data *= 2
    if m.in_proj_bias is not None:
        m.in_proj_bias.data[...] = 0.3 * g.standard_normal(m.in_proj_bias.shape)
        m.out_proj.bias.data[...] = 0.3 * g.standard_normal(m.out_proj.bias.shape)
    return m


def naive_attention(q, k, v, add=None):
    """Loops over query rows: the formula, one row at a time."""
    L, S = q.shape[0], k.shape[0]
    out = np.zeros((L, v.shape[1]))
    A = np.zeros((L, S))
    for i in range(L):
        s = np.array([q[i] @ k[j] for j in range(S)]) / math.sqrt(q.shape[1])
        if add is not None:
            s = s + add[i]
        w = np.exp(s - s.max())
        A[i] = w / w.sum()
        out[i] = A[i] @ v
    return out, A


# ------------------------------------------------------------------ scaled dot-product
def test_sdpa_matches_naive_and_rows_sum_to_one():
    g = rng(1)
    q, k, v = g.standard_normal((4, 3)), g.standard_normal((5, 3)), g.standard_normal((5, 2))
    out, A = nn.ScaledDotProductAttention()(q, k, v, need_weights=True)
    ref, refA = naive_attention(q, k, v)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    np.testing.assert_allclose(A, refA, rtol=1e-12)
    np.testing.assert_allclose(A.sum(-1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(nn.scaled_dot_product_attention(q, k, v), ref, rtol=1e-12)


def test_sdpa_bool_mask_true_means_take_part():
    g = rng(2)
    q, k, v = g.standard_normal((3, 4)), g.standard_normal((5, 4)), g.standard_normal((5, 2))
    keep = g.random((3, 5)) > 0.4
    keep[:, 0] = True
    add = np.where(keep, 0.0, -np.inf)
    a = nn.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    b = nn.scaled_dot_product_attention(q, k, v, attn_mask=add)
    ref, A = naive_attention(q, k, v, add)
    np.testing.assert_allclose(a, ref, rtol=1e-12)
    np.testing.assert_allclose(b, ref, rtol=1e-12)
    assert np.all(A[~keep] == 0)


def test_sdpa_causal_equals_tril_mask():
    g = rng(3)
    q, k, v = (g.standard_normal((2, 4, 3)) for _ in range(3))
    a = nn.scaled_dot_product_attention(q, k, v, is_causal=True)
    b = nn.scaled_dot_product_attention(q, k, v, attn_mask=nn.causal_attend_mask(4))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a[:, 0], v[:, 0], rtol=1e-14)   # row 0 sees only key 0
    with pytest.raises(ValueError, match="either attn_mask or is_causal"):
        nn.scaled_dot_product_attention(q, k, v, attn_mask=nn.causal_attend_mask(4),
                                        is_causal=True)


def test_fully_masked_row_gives_zeros_without_warnings():
    S = np.array([[0.0, 1.0], [-np.inf, -np.inf]])
    P = masked_softmax(S)
    np.testing.assert_allclose(P[0].sum(), 1.0)
    assert np.all(P[1] == 0)
    g = rng(4)
    x = g.standard_normal((2, 3))
    add = np.array([[0.0, 0.0], [-np.inf, -np.inf]])
    out = nn.scaled_dot_product_attention(x, x, x, attn_mask=add)
    assert np.all(out[1] == 0) and np.all(np.isfinite(out))
    # the same rows as a boolean mask are refused: no query may be left with no key
    with pytest.raises(ValueError, match="masks every key for query row 1.*True = takes part"):
        nn.scaled_dot_product_attention(x, x, x, attn_mask=np.array([[True, True],
                                                                     [False, False]]))


def test_sdpa_extreme_scores_no_overflow():
    q = np.array([[1e4, 0.0]])
    k = np.array([[1e4, 0.0], [-1e4, 0.0]])
    out = nn.scaled_dot_product_attention(q, k, np.eye(2))
    np.testing.assert_allclose(out, [[1.0, 0.0]])


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(need_weights=True),
    dict(attn_mask="float", need_weights=True),
    dict(attn_mask="bool"),
    dict(is_causal=True, need_weights=True),
])
def test_sdpa_gradcheck(kwargs):
    g = rng(5)
    q, k, v = 2 * g.standard_normal((2, 4, 3)), 2 * g.standard_normal((2, 4, 3)), \
        g.standard_normal((2, 4, 2))
    kw = dict(kwargs)
    if kw.get("attn_mask") == "float":
        kw["attn_mask"] = g.standard_normal((4, 4))
    elif kw.get("attn_mask") == "bool":
        keep = g.random((2, 1, 4)) > 0.3          # broadcast over query rows
        keep[..., 0] = True
        kw["attn_mask"] = keep
    check_module(nn.ScaledDotProductAttention(), q, k, v, forward_kwargs=kw)


def test_sdpa_dropout_gradcheck_and_eval_identity():
    g = rng(6)
    q, k, v = 2 * g.standard_normal((3, 4)), 2 * g.standard_normal((5, 4)), g.standard_normal((5, 2))
    att = nn.ScaledDotProductAttention(dropout=0.3)
    check_module(att, q, k, v, forward_kwargs=dict(need_weights=True))
    refdl.manual_seed(0)
    _, A = att(q, k, v, need_weights=True)
    P = masked_softmax(q @ k.T / 2.0)
    kept = A != 0
    np.testing.assert_allclose(A[kept], P[kept] / 0.7, rtol=1e-12)   # inverted dropout
    assert 0 < kept.mean() < 1
    _, A_eval = att.eval()(q, k, v, need_weights=True)
    np.testing.assert_allclose(A_eval, P, rtol=1e-12)


def test_sdpa_dtype_follows_input():
    x = rng(7).standard_normal((3, 4)).astype(np.float32)
    assert nn.ScaledDotProductAttention()(x, x, x).dtype == np.float32


def test_sdpa_bad_input():
    att = nn.ScaledDotProductAttention()
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(2, 4\) cannot be broadcast"):
        att(x, x, x, attn_mask=np.ones((2, 4), dtype=bool))
    with pytest.raises(TypeError, match="only bool and floating attn_mask.*int64"):
        att(x, x, x, attn_mask=np.ones((3, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="same last dimension"):
        att(x, np.zeros((3, 5)), x)
    with pytest.raises(TypeError, match="floating-point query"):
        att(np.zeros((3, 4), dtype=int), x, x)
    with pytest.raises(RuntimeError, match="before forward"):
        nn.ScaledDotProductAttention().backward(x)


# ------------------------------------------------------------------ MultiheadAttention
def test_mha_parameter_names_shapes_and_init():
    m = nn.MultiheadAttention(8, 2)
    sd = m.state_dict()
    assert list(sd) == ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    assert sd["in_proj_weight"].shape == (24, 8) and sd["in_proj_bias"].shape == (24,)
    assert np.all(sd["in_proj_bias"] == 0) and np.all(sd["out_proj.bias"] == 0)
    bound = math.sqrt(6 / (8 + 24))                                   # Xavier-uniform
    assert np.abs(sd["in_proj_weight"]).max() <= bound
    m2 = nn.MultiheadAttention(8, 2, kdim=3, vdim=5, bias=False)
    assert [(k, v.shape) for k, v in m2.state_dict().items()] == [
        ("q_proj_weight", (8, 8)), ("k_proj_weight", (8, 3)), ("v_proj_weight", (8, 5)),
        ("out_proj.weight", (8, 8))]
    assert m.num_parameters() == 3 * 64 + 24 + 64 + 8


def reference_mha(m, q, k, v, add):
    """Per-head loops over one batch element with (L, E) inputs; add: (H, L, S) or None."""
    E, H = m.embed_dim, m.num_heads
    D = E // H
    W, b = m.in_proj_weight.data, m.in_proj_bias.data
    Q, K, V = q @ W[:E].T + b[:E], k @ W[E:2 * E].T + b[E:2 * E], v @ W[2 * E:].T + b[2 * E:]
    heads, As = [], []
    for h in range(H):
        sl = slice(h * D, (h + 1) * D)
        o, A = naive_attention(Q[:, sl], K[:, sl], V[:, sl], None if add is None else add[h])
        heads.append(o)
        As.append(A)
    out = np.concatenate(heads, axis=1) @ m.out_proj.weight.data.T + m.out_proj.bias.data
    return out, np.array(As)


def test_mha_matches_reference_with_pytorch_mask_convention():
    m = mha(6, 3).to(np.float64)
    g = rng(8)
    L, S, N = 3, 4, 2
    q, k, v = g.standard_normal((L, N, 6)), g.standard_normal((S, N, 6)), g.standard_normal((S, N, 6))
    kpm = np.array([[False, False, False, True], [False, True, False, False]])   # True = pad
    am = np.zeros((L, S), dtype=bool)
    am[0, 2] = True                                                              # True = blocked
    out, w = m(q, k, v, key_padding_mask=kpm, attn_mask=am, average_attn_weights=False)
    assert out.shape == (L, N, 6) and w.shape == (N, 3, L, S)
    for n in range(N):
        add = np.where(am | kpm[n][None, :], -np.inf, 0.0)
        ref, refA = reference_mha(m, q[:, n], k[:, n], v[:, n], np.broadcast_to(add, (3, L, S)))
        np.testing.assert_allclose(out[:, n], ref, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(w[n], refA, rtol=1e-12, atol=1e-15)
    assert np.all(w[0, :, :, 3] == 0) and np.all(w[1, :, :, 1] == 0) and np.all(w[:, :, 0, 2] == 0)
    _, wavg = m(q, k, v, key_padding_mask=kpm, attn_mask=am)
    np.testing.assert_allclose(wavg, w.mean(axis=1), rtol=1e-14)
    # a float mask of -inf/0 is the same as the boolean one
    out2, _ = m(q, k, v, key_padding_mask=np.where(kpm, -np.inf, 0.0),
                attn_mask=np.where(am, -np.inf, 0.0))
    np.testing.assert_allclose(out2, out, rtol=1e-14)


def test_mha_batch_first_and_unbatched_agree():
    m = mha(4, 2).to(np.float64)
    g = rng(9)
    x = g.standard_normal((3, 2, 4))
    out, w = m(x, x, x)
    mb = mha(4, 2, batch_first=True).to(np.float64)
    outb, wb = mb(x.transpose(1, 0, 2), x.transpose(1, 0, 2), x.transpose(1, 0, 2))
    np.testing.assert_allclose(outb.transpose(1, 0, 2), out, rtol=1e-13)
    np.testing.assert_allclose(wb, w, rtol=1e-13)
    ou, wu = m(x[:, 1], x[:, 1], x[:, 1])
    assert ou.shape == (3, 4) and wu.shape == (3, 3)
    np.testing.assert_allclose(ou, out[:, 1], rtol=1e-13)
    o2, w2 = m(x, x, x, need_weights=False)
    assert w2 is None and np.allclose(o2, out)


def test_mha_gradcheck_self_attention_with_masks():
    m = mha(6, 2)
    g = rng(10)
    x = g.standard_normal((3, 2, 6))
    kpm = np.array([[False, False, True], [False, False, False]])
    check_module(m, x, x, x, forward_kwargs=dict(key_padding_mask=kpm,
                                                 attn_mask=g.standard_normal((3, 3))))


def test_mha_gradcheck_causal_dropout_per_head_weights():
    m = mha(6, 2, dropout=0.2)
    x = rng(11).standard_normal((3, 2, 6))
    check_module(m, x, x, x, forward_kwargs=dict(is_causal=True, average_attn_weights=False))


def test_mha_gradcheck_cross_attention_kdim_vdim_batch_first():
    m = mha(4, 2, kdim=3, vdim=5, batch_first=True)
    g = rng(12)
    q, k, v = g.standard_normal((2, 3, 4)), g.standard_normal((2, 4, 3)), g.standard_normal((2, 4, 5))
    am = np.zeros((2 * 2, 3, 4), dtype=bool)                 # (N*H, L, S), True = blocked
    am[1, :, 2] = True
    am[2, 0, :2] = True
    check_module(m, q, k, v, forward_kwargs=dict(attn_mask=am))
    check_module(m, q, k, v, forward_kwargs=dict(need_weights=False))


def test_mha_gradcheck_unbatched_no_bias():
    m = mha(4, 2, bias=False)
    x = rng(13).standard_normal((3, 4))
    check_module(m, x, x, x, forward_kwargs=dict(key_padding_mask=np.array([0.0, -1.0, 0.5])))


def test_mha_self_attention_gradient_is_the_sum_of_three():
    m = mha(4, 2).to(np.float64)
    g = rng(14)
    x = g.standard_normal((3, 1, 4))
    R = g.standard_normal((3, 1, 4))

    def loss(x):
        return float(np.sum(m(x, x, x, need_weights=False)[0] * R))
    m(x, x, x, need_weights=False)
    dq, dk, dv = m.backward(R)
    h, e = 1e-5, np.zeros_like(x)
    e[1, 0, 2] = h
    num = (loss(x + e) - loss(x - e)) / (2 * h)
    assert abs((dq + dk + dv)[1, 0, 2] - num) < 1e-8 * max(1, abs(num))
    assert abs(dq[1, 0, 2] - num) > 1e-6          # one of them alone is not the gradient


def test_mha_bad_input():
    with pytest.raises(ValueError, match=r"embed_dim must be divisible by num_heads, got "
                                         r"embed_dim=10, num_heads=4"):
        nn.MultiheadAttention(10, 4)
    m = nn.MultiheadAttention(4, 2)
    x = np.zeros((3, 2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"attn_mask must have shape \(L, S\) = \(3, 3\) or "
                                         r"\(N\*num_heads, L, S\) = \(4, 3, 3\), got \(3, 4\)"):
        m(x, x, x, attn_mask=np.zeros((3, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(N, S\) = "
                                         r"\(2, 3\), got \(3, 2\)"):
        m(x, x, x, key_padding_mask=np.zeros((3, 2), dtype=bool))
    with pytest.raises(TypeError, match="only bool and floating key_padding_mask.*int64"):
        m(x, x, x, key_padding_mask=np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"expected query with last dimension 4, got shape "
                                         r"\(3, 2, 5\)"):
        m(np.zeros((3, 2, 5)), x, x)
    with pytest.raises(ValueError, match="same sequence length"):
        m(x, x, np.zeros((2, 2, 4)))
    with pytest.raises(ValueError, match=r"expected a 3-D query \(L, N, E\)"):
        m(np.zeros((1, 3, 2, 4)), x, x)


# ------------------------------------------------------------------ positional encodings
def test_sinusoidal_values_and_shape():
    pe = nn.sinusoidal_encoding(np.arange(5), 6)
    p, i = 3, 1
    assert pe[p, 2 * i] == pytest.approx(math.sin(p / 10000 ** (2 * i / 6)))
    assert pe[p, 2 * i + 1] == pytest.approx(math.cos(p / 10000 ** (2 * i / 6)))
    np.testing.assert_array_equal(pe[0], [0, 1, 0, 1, 0, 1])
    assert nn.sinusoidal_encoding(np.arange(4), 5).shape == (4, 5)     # odd d works


def test_sinusoidal_inner_products_depend_on_offset_only():
    pe = nn.sinusoidal_encoding(np.arange(200), 16)
    G = pe @ pe.T
    for k in (0, 1, 7, 50):
        diag = np.diagonal(G, offset=k)
        np.testing.assert_allclose(diag, diag[0], atol=1e-11)
        w = 10000.0 ** (-np.arange(0, 16, 2) / 16)
        assert diag[0] == pytest.approx(np.cos(k * w).sum(), abs=1e-11)
    # and PE(p + k) = R(k) PE(p) with 2x2 rotations by k w_i
    k, w = 5, 10000.0 ** (-np.arange(0, 16, 2) / 16)
    for p in (0, 13, 120):
        s, c = pe[p, 0::2], pe[p, 1::2]
        np.testing.assert_allclose(pe[p + k, 0::2], s * np.cos(k * w) + c * np.sin(k * w),
                                   atol=1e-12)
        np.testing.assert_allclose(pe[p + k, 1::2], c * np.cos(k * w) - s * np.sin(k * w),
                                   atol=1e-12)


def test_positional_encodings_gradcheck_and_layouts():
    g = rng(15)
    x = g.standard_normal((2, 3, 4))
    sin = nn.SinusoidalPositionalEncoding(4, max_len=10)
    check_module(sin, x)
    np.testing.assert_allclose(sin(x) - x, np.broadcast_to(sin.pe[:3], x.shape), atol=1e-15)
    sin_lnd = nn.SinusoidalPositionalEncoding(4, max_len=10, batch_first=False)
    np.testing.assert_allclose(sin_lnd(x.transpose(1, 0, 2)).transpose(1, 0, 2), sin(x))
    refdl.manual_seed(0)
    lrn = nn.LearnedPositionalEncoding(5, 4)
    assert list(lrn.state_dict()) == ["weight"] and np.abs(lrn.weight.data).max() <= 0.04
    lrn.weight.data[...] = g.standard_normal((5, 4))
    check_module(lrn, x)
    check_module(nn.LearnedPositionalEncoding(5, 4, batch_first=False), x)
    check_module(lrn, x[0])
    with pytest.raises(ValueError, match="sequence length 6 exceeds max_len 5"):
        lrn(np.zeros((1, 6, 4)))
    with pytest.raises(ValueError, match=r"expected input \(N, L, d\) or \(L, d\) with d = 4"):
        sin(np.zeros((2, 3, 5)))


def test_blockwise_attention_equals_naive():
    g = rng(16)
    q, k, v = g.standard_normal((2, 7, 4)), g.standard_normal((2, 10, 4)), g.standard_normal((2, 10, 3))
    ref = nn.scaled_dot_product_attention(q, k, v)
    for B in (1, 3, 10, 16):
        out, buf = nn.blockwise_attention(q, k, v, B)
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-14)
        assert buf == 2 * 7 * min(B, 10)


def test_sdpa_gradcheck_keys_broadcast_over_the_batch():
    g = rng(17)
    q = 2 * g.standard_normal((2, 3, 4))          # two query sets ...
    k, v = 2 * g.standard_normal((5, 4)), g.standard_normal((5, 2))   # ... one key set
    att = nn.ScaledDotProductAttention()
    out = att(q, k, v)
    np.testing.assert_allclose(out[1], naive_attention(q[1], k, v)[0], rtol=1e-12)
    check_module(att, q, k, v)


def test_attention_dropout_masks_come_from_the_layers_generator():
    """The house rule for ``generator`` (docs/architecture.md): it is the source of
    everything random the layer does, the dropout masks included. Two layers built with
    generators of the same seed drop the same weights in training mode, whatever the
    global RNG does in between; the global RNG is left untouched."""
    import refdl
    from refdl.random import get_rng_state
    x = np.random.default_rng(1).standard_normal((2, 5, 8)).astype(np.float64)
    outs = []
    for seed_global in (0, 123):
        refdl.manual_seed(seed_global)
        state = get_rng_state()
        sdpa = nn.ScaledDotProductAttention(dropout=0.5,
                                            generator=np.random.default_rng(7))
        mha = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True,
                                    dtype=np.float64, generator=np.random.default_rng(7))
        a = sdpa(x, x, x, need_weights=True)[1]
        b = mha(x, x, x)[1]
        sdpa.discard_saved(), mha.discard_saved()
        assert get_rng_state() == state          # the global RNG drew nothing
        outs.append((a, b))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert (outs[0][0] == 0).any()                # dropout did drop something
