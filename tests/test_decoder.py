"""TransformerDecoderLayer / TransformerDecoder / nn.Transformer, the mask conventions and
the causal-mask helpers, NaN propagation and empty batches in attention.

The query/key projections are scaled up (x2) in the gradient checks so that the softmax
is not nearly flat.
"""
import warnings

import numpy as np
import pytest

import refdl
from refdl import nn
from refdl.gradcheck import check_module


def rng(seed=0):
    return np.random.default_rng(seed)


def sharpen(module, factor=2.0):
    for m in module.modules():
        if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            m.in_proj_weight.data[:2 * m.embed_dim] *= factor
    return module


def randomise_norms(module, seed=7):
    """LayerNorms with non-trivial weight and bias (so their gradients are checked)."""
    g = rng(seed)
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            m.weight.data[...] = 1 + 0.3 * g.standard_normal(m.weight.shape)
            m.bias.data[...] = 0.3 * g.standard_normal(m.bias.shape)
    return module


# ------------------------------------------------------------------------ decoder layer
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_decoder_layer_gradcheck_tgt_memory_and_every_parameter(norm_first, activation):
    refdl.manual_seed(0)
    layer = randomise_norms(sharpen(nn.TransformerDecoderLayer(
        4, 2, dim_feedforward=6, dropout=0.2, activation=activation, norm_first=norm_first)))
    tgt = rng(1).standard_normal((3, 2, 4))          # (T, N, E): batch_first=False default
    mem = rng(2).standard_normal((5, 2, 4))          # (S, N, E)
    tkpm = np.array([[False, False, True], [False, False, False]])
    mkpm = np.array([[False, True, False, False, True], [False] * 5])
    mmask = rng(3).standard_normal((3, 5))           # a float memory_mask, added
    res = check_module(layer, tgt, mem, forward_kwargs=dict(
        tgt_mask=nn.Transformer.generate_square_subsequent_mask(3),
        tgt_key_padding_mask=tkpm, memory_key_padding_mask=mkpm, memory_mask=mmask))
    names = {t.name for t in res.tensors}
    assert {"input 0", "input 1", "multihead_attn.in_proj_weight", "norm3.weight"} <= names
    check_module(layer, tgt, mem, forward_kwargs=dict(tgt_is_causal=True))


def test_decoder_layer_formulas_post_and_pre_norm():
    refdl.manual_seed(0)
    for nf in (False, True):
        layer = nn.TransformerDecoderLayer(4, 2, 6, dropout=0.0, batch_first=True,
                                           norm_first=nf).to(np.float64)
        x = rng(2).standard_normal((2, 3, 4))
        m = rng(3).standard_normal((2, 5, 4))
        sa = lambda z: layer.self_attn(z, z, z)[0]                             # noqa: E731
        ca = lambda z: layer.multihead_attn(z, m, m)[0]                        # noqa: E731
        ff = lambda z: layer.linear2(np.maximum(layer.linear1(z), 0))         # noqa: E731
        if nf:
            x1 = x + sa(layer.norm1(x))
            x2 = x1 + ca(layer.norm2(x1))
            ref = x2 + ff(layer.norm3(x2))
        else:
            x1 = layer.norm1(x + sa(x))
            x2 = layer.norm2(x1 + ca(x1))
            ref = layer.norm3(x2 + ff(x2))
        with refdl.no_grad():
            np.testing.assert_allclose(layer(x, m), ref, rtol=1e-13)


def test_decoder_layer_state_dict_keys_match_pytorch():
    layer = nn.TransformerDecoderLayer(8, 2, 16)
    assert list(layer.state_dict()) == [
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
        "self_attn.out_proj.bias", "multihead_attn.in_proj_weight",
        "multihead_attn.in_proj_bias", "multihead_attn.out_proj.weight",
        "multihead_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight",
        "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
        "norm3.weight", "norm3.bias"]
    nobias = nn.TransformerDecoderLayer(8, 2, 16, bias=False)
    assert not any(k.endswith("bias") for k in nobias.state_dict())


def test_decoder_layer_equals_encoder_layer_when_cross_attention_is_silenced():
    """The decoder's self-attention block follows the encoder's conventions exactly: a
    pre-norm decoder layer with the cross-attention's output projection zeroed is the
    pre-norm encoder layer with the same weights (norm3 playing the encoder's norm2), for
    the same boolean/float masks, key padding and causal flag."""
    refdl.manual_seed(0)
    enc = randomise_norms(nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0, norm_first=True)
                          ).to(np.float64)
    dec = nn.TransformerDecoderLayer(4, 2, 6, dropout=0.0, norm_first=True).to(np.float64)
    sd = {k: v for k, v in enc.state_dict().items()}
    sd = {("norm3" + k[5:] if k.startswith("norm2") else k): v for k, v in sd.items()}
    dsd = dec.state_dict()
    dsd.update(sd)
    dsd["multihead_attn.out_proj.weight"][...] = 0
    dsd["multihead_attn.out_proj.bias"][...] = 0
    dec.load_state_dict(dsd)
    x = rng(4).standard_normal((4, 2, 4))
    mem = rng(5).standard_normal((3, 2, 4))
    kpm = np.array([[False, False, False, True], [False, True, False, False]])
    block = nn.causal_block_mask(4)
    with refdl.no_grad():
        for kw_e, kw_d in [
                (dict(src_mask=block), dict(tgt_mask=block)),
                (dict(src_mask=nn.Transformer.generate_square_subsequent_mask(4)),
                 dict(tgt_mask=nn.Transformer.generate_square_subsequent_mask(4))),
                (dict(is_causal=True), dict(tgt_is_causal=True)),
                (dict(src_key_padding_mask=kpm, is_causal=True),
                 dict(tgt_key_padding_mask=kpm, tgt_is_causal=True))]:
            np.testing.assert_allclose(dec(x, mem, **kw_d), enc(x, **kw_e), rtol=1e-12)


def test_decoder_is_causal_in_tgt_and_respects_memory_padding():
    refdl.manual_seed(0)
    layer = nn.TransformerDecoderLayer(4, 2, 6, dropout=0.0).to(np.float64)
    tgt = rng(6).standard_normal((4, 1, 4))
    mem = rng(7).standard_normal((5, 1, 4))
    mkpm = np.array([[False, False, True, False, False]])
    mask = nn.Transformer.generate_square_subsequent_mask(4)
    with refdl.no_grad():
        y = layer(tgt, mem, tgt_mask=mask, memory_key_padding_mask=mkpm)
        t2 = tgt.copy()
        t2[3] += 5.0                                 # a later target token changes
        m2 = mem.copy()
        m2[2] += 5.0                                 # a padded memory position changes
        y2 = layer(t2, m2, tgt_mask=mask, memory_key_padding_mask=mkpm)
    np.testing.assert_allclose(y2[:3], y[:3], rtol=1e-13)    # positions 0..2 do not see 3
    assert not np.allclose(y2[3], y[3])
    # and the memory gradient of the padded position is exactly zero
    out = layer(tgt, mem, tgt_mask=mask, memory_key_padding_mask=mkpm)
    _, dm = layer.backward(np.ones_like(out))
    assert np.all(dm[2] == 0) and np.all(dm[[0, 1, 3, 4]] != 0)


def test_decoder_layer_used_twice_gets_per_call_caches():
    """One decoder layer applied twice, y = L(L(x, m), m): two caches, consumed LIFO."""
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = sharpen(nn.TransformerDecoderLayer(4, 2, 6, dropout=0.0))

        def forward(self, x, m):
            return self.layer(self.layer(x, m, tgt_is_causal=True), m)

        def backward(self, g):
            g, dm2 = self.layer.backward(g)
            g, dm1 = self.layer.backward(g)
            return g, dm1 + dm2

    refdl.manual_seed(0)
    check_module(Twice(), rng(8).standard_normal((3, 2, 4)), rng(9).standard_normal((2, 2, 4)))


def test_decoder_backward_without_forward_is_a_cache_error():
    layer = nn.TransformerDecoderLayer(4, 2, 6)
    with pytest.raises(nn.CacheError, match="TransformerDecoderLayer"):
        layer.backward(np.zeros((3, 2, 4), np.float32))


def test_decoder_layer_bad_input():
    layer = nn.TransformerDecoderLayer(4, 2, 6)
    with pytest.raises(ValueError, match=r"expected tgt \(L, N, E\) or \(L, E\) with E = 4"):
        layer(np.zeros((3, 2, 5)), np.zeros((3, 2, 4)))
    with pytest.raises(ValueError, match=r"expected memory"):
        layer(np.zeros((3, 2, 4)), np.zeros((3, 2, 3)))
    with pytest.raises(ValueError, match="both batched or both unbatched"):
        layer(np.zeros((3, 2, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="same batch size"):
        layer(np.zeros((3, 2, 4)), np.zeros((3, 1, 4)))
    with pytest.raises(ValueError, match="TransformerDecoderLayer: activation must be"):
        nn.TransformerDecoderLayer(4, 2, activation="swish")


# -------------------------------------------------------------------------------- stacks
def test_decoder_stack_gradcheck_memory_gradient_sums_over_layers():
    refdl.manual_seed(0)
    dec = randomise_norms(sharpen(nn.TransformerDecoder(
        nn.TransformerDecoderLayer(4, 2, 6, dropout=0.0, batch_first=True, norm_first=True),
        2, norm=nn.LayerNorm(4))))
    keys = list(dec.state_dict())
    assert keys[0] == "layers.0.self_attn.in_proj_weight" and keys[-1] == "norm.bias"
    assert len(keys) == 2 * 18 + 2
    assert dec.layers[0].linear1.weight is not dec.layers[1].linear1.weight
    tgt = rng(10).standard_normal((2, 3, 4))
    mem = rng(11).standard_normal((2, 4, 4))
    check_module(dec, tgt, mem, forward_kwargs=dict(
        tgt_is_causal=True, memory_key_padding_mask=np.array([[False, True, False, False],
                                                              [False] * 4])))


def test_transformer_defaults_shapes_and_keys():
    refdl.manual_seed(0)
    t = nn.Transformer(d_model=8, nhead=2, num_encoder_layers=2, num_decoder_layers=1,
                       dim_feedforward=16)
    assert t.batch_first is False
    keys = list(t.state_dict())
    assert keys[0] == "encoder.layers.0.self_attn.in_proj_weight"
    assert "encoder.norm.weight" in keys and keys[-1] == "decoder.norm.bias"
    assert "decoder.layers.0.multihead_attn.in_proj_weight" in keys
    src, tgt = rng(12).standard_normal((5, 3, 8)), rng(13).standard_normal((4, 3, 8))
    out = t(src, tgt, tgt_mask=nn.Transformer.generate_square_subsequent_mask(4))
    assert out.shape == (4, 3, 8)
    t.discard_saved()
    # Xavier-uniform for every matrix: bound sqrt(6 / (fan_in + fan_out))
    W = t.encoder.layers[0].linear1.weight.data
    assert np.abs(W).max() <= np.sqrt(6 / (8 + 16)) and np.abs(W).max() > 0.8 * np.sqrt(6 / 24)
    with pytest.raises(ValueError, match="batch number of src and tgt must be equal"):
        t(src, rng(1).standard_normal((4, 2, 8)))
    with pytest.raises(ValueError, match="feature number of src and tgt"):
        t(src, rng(1).standard_normal((4, 3, 6)))


def test_transformer_gradcheck_src_tgt_and_every_parameter_with_masks():
    refdl.manual_seed(0)
    t = randomise_norms(sharpen(nn.Transformer(
        d_model=4, nhead=2, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=6,
        dropout=0.1, batch_first=True)))
    src, tgt = rng(14).standard_normal((2, 4, 4)), rng(15).standard_normal((2, 3, 4))
    res = check_module(t, src, tgt, forward_kwargs=dict(
        tgt_mask=nn.Transformer.generate_square_subsequent_mask(3),
        src_key_padding_mask=np.array([[False, False, True, False], [False] * 4]),
        memory_key_padding_mask=np.array([[False, False, True, False], [False] * 4])))
    assert len(res.tensors) == 2 + len(list(t.parameters()))


def test_transformer_batch_first_and_unbatched_agree():
    refdl.manual_seed(0)
    a = nn.Transformer(8, 2, 1, 1, 16, dropout=0.0).to(np.float64)
    b = nn.Transformer(8, 2, 1, 1, 16, dropout=0.0, batch_first=True).to(np.float64)
    b.load_state_dict(a.state_dict())
    src, tgt = rng(16).standard_normal((5, 2, 8)), rng(17).standard_normal((3, 2, 8))
    mask = nn.Transformer.generate_square_subsequent_mask(3)
    with refdl.no_grad():
        ya = a(src, tgt, tgt_mask=mask)
        yb = b(src.transpose(1, 0, 2), tgt.transpose(1, 0, 2), tgt_mask=mask)
        yu = a(src[:, 1], tgt[:, 1], tgt_mask=mask)
    np.testing.assert_allclose(yb.transpose(1, 0, 2), ya, rtol=1e-12)
    np.testing.assert_allclose(yu, ya[:, 1], rtol=1e-12)


def test_generate_square_subsequent_mask_is_pytorchs():
    m = nn.Transformer.generate_square_subsequent_mask(4)
    assert m.dtype == np.float32 and m.shape == (4, 4)
    i, j = np.indices((4, 4))
    assert np.all(m[j > i] == -np.inf) and np.all(m[j <= i] == 0)


# ----------------------------------------------------------------- the mask conventions
def test_causal_mask_helpers_name_their_convention():
    a, b = nn.causal_attend_mask(3), nn.causal_block_mask(3)
    i, j = np.indices((3, 3))
    np.testing.assert_array_equal(a, j <= i)
    np.testing.assert_array_equal(b, j > i)
    with pytest.warns(DeprecationWarning, match="causal_attend_mask"):
        np.testing.assert_array_equal(nn.causal_mask(3), a)


def test_attend_mask_given_to_the_encoder_is_refused_not_silently_inverted():
    """Before: nn.causal_mask(L) (True = may attend) as the encoder's mask= (True = masked)
    let position 0 see position 3. Now the wrong convention is detected and named."""
    refdl.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0), 1)
    x = rng(18).standard_normal((4, 1, 4))
    with pytest.raises(ValueError, match="True = NOT allowed to attend.*causal_block_mask"):
        enc(x, mask=nn.causal_attend_mask(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = nn.causal_mask(4)
    with pytest.raises(ValueError, match="masks every key for query row 3"):
        enc(x, mask=old)
    mha = nn.MultiheadAttention(4, 2)
    q, kv = rng(19).standard_normal((3, 1, 4)), rng(20).standard_normal((5, 1, 4))
    with pytest.raises(ValueError, match="causal mask in the 'may attend' convention"):
        mha(q, kv, kv, attn_mask=nn.causal_attend_mask(3, 5))     # no all-masked row here
    dec = nn.TransformerDecoderLayer(4, 2, 6)
    with pytest.raises(ValueError, match="MultiheadAttention.*NOT allowed"):
        dec(x, x, tgt_mask=nn.causal_attend_mask(4))
    # the right conventions pass and agree with each other
    with refdl.no_grad():
        a = enc(x, mask=nn.causal_block_mask(4))
        b = enc(x, mask=nn.Transformer.generate_square_subsequent_mask(4))
        c = enc(x, is_causal=True)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(a, c, rtol=1e-6)


def test_block_mask_given_to_sdpa_is_refused():
    q = rng(21).standard_normal((4, 3))
    with pytest.raises(ValueError, match="True = takes part.*causal_attend_mask"):
        nn.scaled_dot_product_attention(q, q, q, attn_mask=nn.causal_block_mask(4))
    k = rng(22).standard_normal((6, 3))
    with pytest.raises(ValueError, match="causal mask in the 'blocked' convention"):
        nn.scaled_dot_product_attention(q, k, k, attn_mask=nn.causal_block_mask(4, 6))
    np.testing.assert_allclose(
        nn.scaled_dot_product_attention(q, q, q, attn_mask=nn.causal_attend_mask(4)),
        nn.scaled_dot_product_attention(q, q, q, is_causal=True), rtol=1e-14)


# ------------------------------------------------------------------ NaN and empty batch
def test_nan_in_the_query_stays_nan_in_sdpa():
    g = rng(23)
    q, k, v = g.standard_normal((3, 4)), g.standard_normal((5, 4)), g.standard_normal((5, 2))
    q[1, 2] = np.nan
    out = nn.scaled_dot_product_attention(q, k, v)
    assert np.all(np.isnan(out[1]))                      # not zeros
    ref = nn.scaled_dot_product_attention(q[[0, 2]], k, v)
    np.testing.assert_allclose(out[[0, 2]], ref, rtol=1e-14)
    # a masked entry is still an exact 0 next to a NaN elsewhere
    k2 = k.copy()
    k2[4, 0] = np.nan
    keep = np.ones((3, 5), bool)
    keep[:, 4] = False
    out2, A = nn.ScaledDotProductAttention()(np.ones_like(q), k2, v, attn_mask=keep,
                                             need_weights=True)
    assert np.all(np.isfinite(out2)) and np.all(A[:, 4] == 0)


def test_nan_in_the_query_stays_nan_in_multihead_attention():
    refdl.manual_seed(0)
    m = nn.MultiheadAttention(4, 2).to(np.float64)
    x = rng(24).standard_normal((3, 2, 4))
    x[1, 0, 0] = np.nan                                   # query position 1, batch 0
    out, w = m(x, x.copy(), x.copy())
    # position 1's key is NaN too, so every query of batch 0 sees it: all NaN
    assert np.all(np.isnan(out[:, 0])) and np.all(np.isfinite(out[:, 1]))
    q = x.copy()
    kv = rng(25).standard_normal((3, 2, 4))
    out, w = m(q, kv, kv)
    assert np.all(np.isnan(out[1, 0])) and np.all(np.isnan(w[0, 1]))
    assert np.all(np.isfinite(np.delete(out, 1, axis=0)))


def test_empty_batch_multihead_attention_forward_and_backward():
    refdl.manual_seed(0)
    m = nn.MultiheadAttention(4, 2)
    q, kv = np.zeros((3, 0, 4), np.float32), np.zeros((5, 0, 4), np.float32)
    out, w = m(q, kv, kv)
    assert out.shape == (3, 0, 4) and w.shape == (0, 3, 5)
    dq, dk, dv = m.backward(np.zeros_like(out))
    assert dq.shape == (3, 0, 4) and dk.shape == (5, 0, 4) and dv.shape == (5, 0, 4)
    assert all(np.all(p.grad == 0) for p in m.parameters())
    mb = nn.MultiheadAttention(4, 2, batch_first=True)
    out, w = mb(np.zeros((0, 3, 4)), np.zeros((0, 5, 4)), np.zeros((0, 5, 4)),
                average_attn_weights=False,
                key_padding_mask=np.zeros((0, 5), bool))
    assert out.shape == (0, 3, 4) and w.shape == (0, 2, 3, 5)


def test_empty_batch_transformer_layers():
    refdl.manual_seed(0)
    enc = nn.TransformerEncoderLayer(4, 2, 6)
    y = enc(np.zeros((3, 0, 4), np.float32), is_causal=True)
    assert y.shape == (3, 0, 4)
    assert enc.backward(np.zeros_like(y)).shape == (3, 0, 4)
    dec = nn.TransformerDecoderLayer(4, 2, 6, batch_first=True)
    y = dec(np.zeros((0, 3, 4), np.float32), np.zeros((0, 5, 4), np.float32),
            tgt_is_causal=True)
    assert y.shape == (0, 3, 4)
    dt, dm = dec.backward(np.zeros_like(y))
    assert dt.shape == (0, 3, 4) and dm.shape == (0, 5, 4)
    t = nn.Transformer(4, 2, 1, 1, 6)
    y = t(np.zeros((5, 0, 4), np.float32), np.zeros((3, 0, 4), np.float32))
    assert y.shape == (3, 0, 4)
    ds, dt = t.backward(np.zeros_like(y))
    assert ds.shape == (5, 0, 4) and dt.shape == (3, 0, 4)
