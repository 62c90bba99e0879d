"""TransformerEncoderLayer / TransformerEncoder, PatchEmbed, windowed attention blocks."""
import math

import numpy as np
import pytest

import refdl
from refdl import nn
from refdl.gradcheck import check_module
from refdl.nn import LayerNorm
from refdl.nn.vision_transformer import (_PatchProjection, patchify, shifted_window_mask,
                                         unpatchify, window_partition, window_reverse)


def rng(seed=0):
    return np.random.default_rng(seed)


def sharpen(module, factor=2.0):
    """Scale every self-attention's query/key projections so the softmax is not flat
    (its query/key gradients are then not tiny next to the loss)."""
    for m in module.modules():
        if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            m.in_proj_weight.data[:2 * m.embed_dim] *= factor
    return module


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_gradcheck_with_masks_and_dropout(norm_first, activation):
    refdl.manual_seed(0)
    layer = sharpen(nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.2,
                                               activation=activation, norm_first=norm_first))
    x = rng(1).standard_normal((3, 2, 4))
    kpm = np.array([[False, False, True], [False, False, False]])
    check_module(layer, x, forward_kwargs=dict(src_key_padding_mask=kpm))
    check_module(layer, x, forward_kwargs=dict(is_causal=True))


def test_encoder_layer_post_and_pre_norm_formulas():
    refdl.manual_seed(0)
    for nf in (False, True):
        layer = nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0, batch_first=True,
                                           norm_first=nf).to(np.float64)
        x = rng(2).standard_normal((2, 3, 4))
        sa = lambda z: layer.self_attn(z, z, z)[0]                           # noqa: E731
        ff = lambda z: layer.linear2(np.maximum(layer.linear1(z), 0))       # noqa: E731
        if nf:
            x1 = x + sa(layer.norm1(x))
            ref = x1 + ff(layer.norm2(x1))
        else:
            x1 = layer.norm1(x + sa(x))
            ref = layer.norm2(x1 + ff(x1))
        np.testing.assert_allclose(layer(x), ref, rtol=1e-13)


def test_encoder_layer_state_dict_keys_match_pytorch():
    layer = nn.TransformerEncoderLayer(8, 2, 16)
    assert list(layer.state_dict()) == [
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
        "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight",
        "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"]


def test_encoder_stack_gradcheck_and_keys():
    refdl.manual_seed(0)
    enc = sharpen(nn.TransformerEncoder(
        nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0, batch_first=True, norm_first=True),
        2, norm=LayerNorm(4)))
    keys = list(enc.state_dict())
    assert keys[0] == "layers.0.self_attn.in_proj_weight" and keys[-1] == "norm.bias"
    assert len(keys) == 2 * 12 + 2
    # deep copies: the layers do not share parameters
    assert enc.layers[0].linear1.weight is not enc.layers[1].linear1.weight
    x = rng(3).standard_normal((2, 3, 4))
    check_module(enc, x, forward_kwargs=dict(src_key_padding_mask=np.array(
        [[False, True, False], [False, False, False]])))


def test_encoder_layer_unbatched_and_attention_store():
    refdl.manual_seed(0)
    layer = nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0).to(np.float64)
    x = rng(4).standard_normal((3, 1, 4))
    np.testing.assert_allclose(layer(x[:, 0]), layer(x)[:, 0], rtol=1e-13)
    layer.store_attention = True
    layer(x)
    assert layer.attn_weights.shape == (1, 3, 3)
    np.testing.assert_allclose(layer.attn_weights.sum(-1), 1.0)


def test_encoder_layer_bad_input():
    layer = nn.TransformerEncoderLayer(4, 2, 6)
    with pytest.raises(ValueError, match=r"expected src \(L, N, E\) or \(L, E\) with E = 4"):
        layer(np.zeros((3, 2, 5)))
    with pytest.raises(ValueError, match="activation must be 'relu', 'gelu'"):
        nn.TransformerEncoderLayer(4, 2, 6, activation="swish")
    with pytest.raises(ValueError, match="embed_dim must be divisible by num_heads"):
        nn.TransformerEncoderLayer(6, 4)


# ----------------------------------------------------------------------------- patches
def test_patchify_round_trip_and_order():
    x = rng(5).standard_normal((2, 3, 4, 6))
    t = patchify(x, 2)
    assert t.shape == (2, 6, 12)
    np.testing.assert_array_equal(t[1, 4], x[1, :, 2:4, 2:4].ravel())   # patch (1, 1)
    np.testing.assert_array_equal(unpatchify(t, 2, 3, 4, 6), x)


def conv2d_loops(x, w, b, p):
    """Direct strided cross-correlation, kernel = stride = p (the definition)."""
    N, C, H, W = x.shape
    E = w.shape[0]
    out = np.zeros((N, E, H // p, W // p))
    for n in range(N):
        for e in range(E):
            for i in range(H // p):
                for j in range(W // p):
                    out[n, e, i, j] = np.sum(x[n, :, i * p:(i + 1) * p, j * p:(j + 1) * p]
                                             * w[e]) + b[e]
    return out


def test_patch_embed_is_a_strided_convolution():
    refdl.manual_seed(0)
    pe = nn.PatchEmbed(2, 3, 5).to(np.float64)
    x = rng(6).standard_normal((2, 3, 4, 6))
    y = pe(x)
    assert y.shape == (2, 6, 5)
    ref = conv2d_loops(x, pe.proj.weight.data, pe.proj.bias.data, 2)
    np.testing.assert_allclose(y, ref.reshape(2, 5, 6).transpose(0, 2, 1), rtol=1e-12)
    assert [(k, v.shape) for k, v in pe.state_dict().items()] == [
        ("proj.weight", (5, 3, 2, 2)), ("proj.bias", (5,))]
    pe2 = nn.PatchEmbed(2, 3, 5, flatten=False).to(np.float64)
    pe2.load_state_dict(pe.state_dict())
    np.testing.assert_allclose(pe2(x), ref, rtol=1e-12)


def test_patch_embed_conv2d_and_patchify_paths_agree():
    refdl.manual_seed(0)
    a = nn.PatchEmbed(2, 3, 5, use_conv=True).to(np.float64)
    b = nn.PatchEmbed(2, 3, 5, use_conv=False).to(np.float64)
    assert type(a.proj).__name__ == "Conv2d"
    b.load_state_dict(a.state_dict())
    x = rng(7).standard_normal((2, 3, 4, 6))
    np.testing.assert_allclose(a(x), b(x), rtol=1e-12, atol=1e-13)
    g = rng(8).standard_normal((2, 6, 5))
    np.testing.assert_allclose(a.backward(g), b.backward(g), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(a.proj.weight.grad, b.proj.weight.grad, rtol=1e-12)


def test_patch_embed_gradcheck():
    refdl.manual_seed(0)
    x = rng(9).standard_normal((2, 2, 4, 6))
    check_module(nn.PatchEmbed(2, 2, 3), x)
    check_module(nn.PatchEmbed(2, 2, 3, flatten=False), x)
    check_module(_PatchProjection(2, 3, 2), x)


def test_patch_embed_bad_input():
    pe = nn.PatchEmbed(4, 3, 8)
    with pytest.raises(ValueError, match=r"image size 10x8 is not a multiple of the patch "
                                         r"size 4"):
        pe(np.zeros((1, 3, 10, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"expected input \(N, 3, H, W\), got shape "
                                         r"\(1, 1, 8, 8\)"):
        pe(np.zeros((1, 1, 8, 8), dtype=np.float32))


# ----------------------------------------------------------------------------- windows
def test_window_partition_round_trip():
    x = rng(10).standard_normal((2, 4, 6, 3))
    w = window_partition(x, 2)
    assert w.shape == (2 * 2 * 3, 4, 3)
    np.testing.assert_array_equal(w[1], x[0, 0:2, 2:4].reshape(4, 3))
    np.testing.assert_array_equal(window_reverse(w, 2, 4, 6), x)


def test_shifted_window_mask_regions():
    m = shifted_window_mask(8, 8, 4, 2)
    assert m.shape == (4, 16, 16)
    assert not m[0].any()                                   # the interior window: one region
    assert m[3].sum() > 0 and np.array_equal(m[3], m[3].T)  # the corner window: four regions
    assert len({tuple(r) for r in m[3]}) == 4


@pytest.mark.parametrize("shift", [0, 1])
def test_windowed_layer_gradcheck(shift):
    refdl.manual_seed(0)
    layer = sharpen(nn.WindowedEncoderLayer(4, 2, window_size=2, shift_size=shift,
                                            mlp_ratio=1.5))
    check_module(layer, rng(11).standard_normal((1, 4, 4, 4)))


def test_patch_merging_gradcheck_and_layout():
    refdl.manual_seed(0)
    pm = nn.PatchMerging(3)
    x = rng(12).standard_normal((2, 4, 2, 3))
    check_module(pm, x)
    pm = pm.to(np.float64)
    cat = np.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                          x[:, 1::2, 1::2]], axis=-1)
    np.testing.assert_allclose(pm(x), pm.reduction(pm.norm(cat)), rtol=1e-14)
    assert pm(x).shape == (2, 2, 1, 6)


def test_windowed_encoder_gradcheck_and_shapes():
    refdl.manual_seed(0)
    enc = sharpen(nn.WindowedEncoder(4, depths=(2, 1), num_heads=(2, 2), window_size=2,
                                     mlp_ratio=1.0))
    assert [b.shift_size for b in enc.stages[0]] == [0, 1]
    check_module(enc, rng(13).standard_normal((1, 4, 4, 4)))
    assert enc(np.zeros((2, 8, 8, 4))).shape == (2, 4, 4, 8) and enc.out_dim == 8


def test_windowed_bad_input():
    layer = nn.WindowedEncoderLayer(4, 2, window_size=4)
    with pytest.raises(ValueError, match="token grid 6x8 is not a multiple of the window "
                                         "size 4"):
        layer(np.zeros((1, 6, 8, 4)))
    with pytest.raises(ValueError, match=r"shift_size must be in \[0, window_size\)"):
        nn.WindowedEncoderLayer(4, 2, window_size=4, shift_size=4)
    with pytest.raises(ValueError, match="even H and W"):
        nn.PatchMerging(4)(np.zeros((1, 3, 4, 4)))


def test_windowed_attention_cost_is_linear_in_tokens():
    """Score entries actually computed by WindowedEncoderLayer vs a global layer."""
    refdl.manual_seed(0)
    layer = nn.WindowedEncoderLayer(4, 1, window_size=2).to(np.float64)
    layer.block.store_attention = True
    sizes = []
    for side in (4, 8, 16):
        layer(np.zeros((1, side, side, 4)))
        sizes.append(layer.block.attn_weights.size)
    assert sizes == [side * side * 4 for side in (4, 8, 16)]          # HW * ws^2
    assert math.isclose(sizes[2] / sizes[1], 4.0)                     # x4 tokens -> x4
