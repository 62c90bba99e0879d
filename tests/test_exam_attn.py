"""Exam items attn-1..attn-5, attn-7 (papers 002 Q11-Q12, 004 Q4) and rnn-3 (003 Q6).

attn-6 (003 Q7, reading an attention map) is conceptual-only; see docs/exam.md.
Each answer is computed with refdl; where a paper's number appears it is compared with
refdl's result, never used as the result.
"""
import math

import numpy as np
import pytest
from scipy.spatial.distance import pdist

import refdl
from refdl import nn
from refdl.models.vit import attention_cost
from refdl.nn import attention as attention_module
from refdl.nn import multihead_attention as mha_module


def identity_mha(E):
    """One head, identity q/k/v and output projections, no biases (002 Q11's setting)."""
    m = nn.MultiheadAttention(E, 1, bias=False).to(np.float64)
    m.in_proj_weight.data[...] = np.vstack([np.eye(E)] * 3)
    m.out_proj.weight.data[...] = np.eye(E)
    return m


class CountingSDPA:
    """Wraps refdl's attention core and counts the multiplications of Q K^T it performs."""

    def __init__(self, monkeypatch):
        self.mults = 0
        orig = attention_module._sdpa_forward

        def counted(q, k, v, *a):
            *batch, L, E = q.shape
            S = k.shape[-2]
            self.mults += int(np.prod(batch, dtype=np.int64)) * L * S * E
            return orig(q, k, v, *a)
        # the core is looked up where it is called: the SDPA layer's module and
        # MultiheadAttention's
        for module in (attention_module, mha_module):
            monkeypatch.setattr(module, "_sdpa_forward", counted)


# --------------------------------------------------------------------------- attn-1
@pytest.mark.parametrize("H, W, C, h, w", [(6, 5, 2, 3, 2), (7, 7, 1, 2, 2), (5, 8, 3, 5, 3)])
def test_attn_1_overlapping_patch_self_attention_cost(monkeypatch, H, W, C, h, w):
    img = np.random.default_rng(0).standard_normal((H, W, C))
    # explicit stride-1 patch extraction, no padding
    patches = np.array([img[i:i + h, j:j + w, :].ravel()
                        for i in range(H - h + 1) for j in range(W - w + 1)])
    n, d = patches.shape
    assert n == (H - h + 1) * (W - w + 1) and d == h * w * C
    counter = CountingSDPA(monkeypatch)
    m = identity_mha(d)
    x = patches[:, None, :]                                  # (L, N=1, E)
    out, A = m(x, x, x)
    # refdl's weights are softmax of the raw patch dot products / sqrt(d)
    G = patches @ patches.T / math.sqrt(d)
    ref = np.exp(G - G.max(1, keepdims=True))
    np.testing.assert_allclose(A[0], ref / ref.sum(1, keepdims=True), rtol=1e-12)
    # the count of multiplications in Q K^T = the paper's O((H-h+1)^2 (W-w+1)^2 whC), exactly
    assert counter.mults == (H - h + 1) ** 2 * (W - w + 1) ** 2 * w * h * C


# --------------------------------------------------------------------------- attn-2
def test_attn_2_self_attention_is_permutation_equivariant_not_invariant():
    refdl.manual_seed(0)
    m = nn.MultiheadAttention(8, 2).to(np.float64)
    g = np.random.default_rng(1)
    x = g.standard_normal((6, 1, 8))
    perm = g.permutation(6)
    out, A = m(x, x, x)
    out_p, A_p = m(x[perm], x[perm], x[perm])
    np.testing.assert_allclose(out_p, out[perm], rtol=1e-12, atol=1e-14)     # equivariant
    np.testing.assert_allclose(A_p[0], A[0][np.ix_(perm, perm)], rtol=1e-12)
    assert np.abs(out_p - out).max() > 0.1                                   # not invariant
    # with a positional encoding added, permuting the tokens changes the result
    pe = nn.SinusoidalPositionalEncoding(8, batch_first=False)
    y, _ = m(pe(x), pe(x), pe(x))
    xp = x[perm]
    y_p, _ = m(pe(xp), pe(xp), pe(xp))
    assert np.abs(y_p - y[perm]).max() > 0.05


# --------------------------------------------------------------------------- attn-3
def test_attn_3_sinusoidal_encoding_properties():
    # rotation property: PE(p + k) = R(k) PE(p), so <PE(p), PE(p+k)> depends on k only
    pe = nn.sinusoidal_encoding(np.arange(300), 8)
    for k in (1, 5, 40):
        np.testing.assert_allclose(np.diagonal(pe @ pe.T, k), np.diagonal(pe @ pe.T, k)[0],
                                   atol=1e-11)
    # statement 5: one-to-one on integer positions (all pairwise distances > 0) ...
    for d in (4, 8):
        assert pdist(nn.sinusoidal_encoding(np.arange(600), d)).min() > 0.2
    # ... but not one-to-one on real positions: exact common periods 200 pi (d=4, the
    # frequencies 1, 1/100) and 2000 pi (d=8, frequencies 1, 1/10, 1/100, 1/1000)
    for d, period in ((4, 200 * math.pi), (8, 2000 * math.pi)):
        a, b = nn.sinusoidal_encoding([0.0, period], d)
        np.testing.assert_allclose(a, b, atol=1e-11)
    # ... for these d only. The frequencies w_i = 10000^(-2i/d) = 10^(-8i/d) (read back
    # from refdl's encoding at p = 1) have rational ratios only when d divides 8; PE(p) =
    # PE(0) needs p w_0 = p in 2 pi Z, i.e. p = 2 pi k, and then every p w_i in 2 pi Z too.
    # For d = 16, 64, 512 the ratio w_1 / w_0 = 10^(-8/d) is irrational (8/d is not an
    # integer), so no real p != 0 gives PE(p) = PE(0) and the encoding IS one-to-one on
    # the reals: statement 5 is then true. Over the candidates p = 2 pi k the distance to
    # PE(0) stays far from 0 (it only approaches 0 slowly as k -> infinity, by Kronecker).
    for d in (4, 8, 16, 64, 512):
        pe1 = nn.sinusoidal_encoding([1.0], d)[0]
        w = np.arctan2(pe1[0::2], pe1[1::2])
        np.testing.assert_allclose(w, 10.0 ** (-8 * np.arange(d // 2) / d), rtol=1e-12)
    for d, K, floor in ((16, 100_000, 0.5), (64, 100_000, 1.0), (512, 10_000, 1.0)):
        assert 8 % d != 0
        dist = np.linalg.norm(nn.sinusoidal_encoding(2 * math.pi * np.arange(1, K + 1), d)
                              - nn.sinusoidal_encoding([0.0], d), axis=1)
        assert dist.min() > floor
    # statement 2: the base must suit the largest position. d=4: positions beyond the
    # longest wavelength 2 pi base^(1/2) come close to earlier ones (near-collisions)
    min_dist = {(base, T): pdist(nn.sinusoidal_encoding(np.arange(T), 4, base)).min()
                for base in (10000.0, 100.0) for T in (100, 600, 3000)}
    assert min_dist[(10000.0, 600)] == pytest.approx(min_dist[(10000.0, 100)], rel=1e-9)
    assert min_dist[(10000.0, 3000)] < 0.25 * min_dist[(10000.0, 600)]   # 3000 > 628
    assert min_dist[(100.0, 600)] < 0.1 * min_dist[(100.0, 100)]         # 600 > 62.8


# --------------------------------------------------------------------------- attn-4
def test_attn_4_time_and_memory_quadratic_in_the_number_of_inputs(monkeypatch):
    counter = CountingSDPA(monkeypatch)
    g = np.random.default_rng(2)
    att = nn.ScaledDotProductAttention()
    mults, buffers = [], []
    for n in (16, 32, 64):
        x = g.standard_normal((n, 8))
        counter.mults = 0
        out, A = att(x, x, x, need_weights=True)
        mults.append(counter.mults)
        buffers.append(A.size)
        # a blockwise (online-softmax) evaluation gives the same output with an O(n B)
        # score buffer: the memory need not be quadratic, the arithmetic still is
        blk, buf = nn.blockwise_attention(x, x, x, block_size=8)
        np.testing.assert_allclose(blk, out, rtol=1e-12, atol=1e-14)
        assert buf == n * 8
    assert mults[1] / mults[0] == 4 and mults[2] / mults[1] == 4          # time: n^2
    assert buffers[1] / buffers[0] == 4 and buffers[2] / buffers[1] == 4  # memory: n^2


# --------------------------------------------------------------------------- attn-5
def test_attn_5_attention_matrix_is_not_symmetric():
    refdl.manual_seed(0)
    m = nn.MultiheadAttention(6, 1).to(np.float64)
    W = m.in_proj_weight.data
    W[6:12] = W[:6]                          # W_k = W_q: the scores Q K^T are symmetric ...
    x = np.random.default_rng(3).standard_normal((5, 1, 6))
    _, A = m(x, x, x)
    A = A[0]
    q = x[:, 0] @ W[:6].T
    S = q @ q.T
    np.testing.assert_allclose(S, S.T)
    np.testing.assert_allclose(A.sum(axis=1), 1.0, rtol=1e-14)      # ... rows sum to 1
    assert np.abs(A.sum(axis=0) - 1).max() > 0.05                    # columns do not
    assert np.abs(A - A.T).max() > 0.05                              # so A != A^T


# --------------------------------------------------------------------------- attn-7
def test_attn_7_high_resolution_vit_costs():
    g8 = attention_cost(4096, 8)
    g128 = attention_cost(4096, 128)
    w8 = attention_cost(4096, 8, window=8)
    assert g8["tokens"] == 262_144 and g128["tokens"] == 1_024
    assert g8["score_entries"] // 12 == 262_144 ** 2 == 68_719_476_736   # per head, layer
    assert g8["score_bytes"] / 2 ** 30 == pytest.approx(3072.0)          # 3 TiB, 12 heads
    assert g128["score_bytes"] == 12 * 1024 ** 2 * 4                     # 48 MiB
    assert w8["keys_per_query"] == 64
    assert g8["score_entries"] / w8["score_entries"] == 4096             # N / M^2
    assert g8["attn_macs"] / w8["attn_macs"] == 4096
    # Swin's formulas with C = 768: Omega(MSA) = 4NC^2 + 2N^2C, Omega(W-MSA) = 4NC^2 + 2M^2NC
    N, C, M = 262_144, 768, 8
    assert g8["total_macs"] == 4 * N * C ** 2 + 2 * N ** 2 * C
    assert w8["total_macs"] == 4 * N * C ** 2 + 2 * M ** 2 * N * C
    assert g8["total_macs"] / w8["total_macs"] == pytest.approx(
        (4 * C + 2 * N) / (4 * C + 2 * M * M), rel=1e-12)                 # ~165x per layer
    # the token count and the score matrix shape, read from refdl's layers on a small image
    refdl.manual_seed(0)
    pe = nn.PatchEmbed(patch_size=8, in_chans=3, embed_dim=16)
    t = pe(np.zeros((1, 3, 64, 96), dtype=np.float32))
    assert t.shape == (1, attention_cost((64, 96), 8)["tokens"], 16)
    _, A = nn.MultiheadAttention(16, 2, batch_first=True)(t, t, t)
    assert A.shape == (1, 96, 96)


def block_diagonal_mask(H, W, ws):
    """(HW, HW) booleans over row-major tokens, True where two tokens lie in different
    ws x ws windows (MultiheadAttention's convention: True = NOT allowed to attend)."""
    r, c = np.divmod(np.arange(H * W), W)
    win = (r // ws) * (W // ws) + c // ws
    return win[:, None] != win[None, :]


def test_attn_7_window_attention_equals_block_diagonally_masked_full_attention():
    refdl.manual_seed(0)
    H = W = 8
    ws, C = 4, 8
    layer = nn.WindowedEncoderLayer(C, 2, window_size=ws, shift_size=0).to(np.float64)
    x = np.random.default_rng(4).standard_normal((2, H, W, C))
    y = layer(x)
    full = layer.block                        # the same weights, applied to all 64 tokens
    yf = full(x.reshape(2, H * W, C), src_mask=block_diagonal_mask(H, W, ws))
    np.testing.assert_allclose(y.reshape(2, H * W, C), yf, rtol=1e-12, atol=1e-13)
    # scores actually computed: 4 windows x 16^2 instead of 64^2 -> a quarter (= ws^2/HW)
    full.store_attention = True
    layer(x)
    assert full.attn_weights.shape == (2 * 4, 16, 16)
    windowed_scores = full.attn_weights.size
    full(x.reshape(2, H * W, C))
    assert full.attn_weights.shape == (2, 64, 64)
    assert windowed_scores / full.attn_weights.size == ws * ws / (H * W)


def test_attn_7_shifted_windows_mix_information_across_windows():
    refdl.manual_seed(0)
    x = np.zeros((1, 8, 8, 8))
    x[0, 0, 0, :3] = [1.0, -2.0, 0.5]                      # a signal in window (0, 0)
    unshifted = nn.WindowedEncoderLayer(8, 2, 4, 0).to(np.float64).eval()
    shifted = nn.WindowedEncoderLayer(8, 2, 4, 2).to(np.float64).eval()
    base = unshifted(np.zeros_like(x))
    d1 = np.abs(unshifted(x) - base).sum(-1)[0]
    assert d1[:4, :4].max() > 0 and d1[4:, :].max() == 0 and d1[:, 4:].max() == 0
    # two blocks, the second shifted: the signal reaches tokens outside window (0, 0)
    two = lambda z: shifted(unshifted(z))                  # noqa: E731
    d2 = np.abs(two(x) - two(np.zeros_like(x))).sum(-1)[0]
    assert d2[4:6, 4:6].min() > 0          # original (2..5, 2..5) formed one shifted window
    # the cyclic roll put original (6..7, 6..7) and (0..1, 0..1) in one window; the mask
    # keeps them apart, so nothing leaks around the border
    assert d2[6:, 6:].max() < 1e-14


# --------------------------------------------------------------------------- rnn-3
def test_rnn_3_rnn_is_order_sensitive_attention_pooling_is_not():
    g = np.random.default_rng(5)
    T, d, hdim = 6, 4, 5
    x = g.standard_normal((T, 1, d))
    perm = g.permutation(T)
    if hasattr(nn, "RNN"):
        refdl.manual_seed(0)
        rnn = nn.RNN(d, hdim).to(np.float64)
        last = lambda s: rnn(s)[1][-1]                     # noqa: E731  final hidden state
    else:                                                  # a minimal recurrence
        Wx, Wh = g.standard_normal((hdim, d)), 0.5 * g.standard_normal((hdim, hdim))

        def last(s):
            h = np.zeros((1, hdim))
            for t in range(T):
                h = np.tanh(s[t] @ Wx.T + h @ Wh.T)
            return h
    assert np.abs(last(x[perm]) - last(x)).max() > 1e-2   # the order changes the state
    # attention pooling: one learned query attends over the sequence (no positions)
    refdl.manual_seed(0)
    pool = nn.MultiheadAttention(d, 2).to(np.float64)
    q = g.standard_normal((1, 1, d))
    a, _ = pool(q, x, x)
    b, _ = pool(q, x[perm], x[perm])
    np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)  # invariant to the order
    # an RNN therefore needs no positional encoding; adding one is possible (003 Q6 a)
    pe = nn.SinusoidalPositionalEncoding(d, batch_first=False)
    assert pe(x).shape == x.shape
