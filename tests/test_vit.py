"""ViT and WindowedViT: whole-model gradient checks, shapes, errors, training on digits."""
import importlib.util
import os

import numpy as np
import pytest

import refdl
from refdl.gradcheck import check_module
from refdl.models import vit as vit_module
from refdl.models.vit import ViT, WindowedViT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rng(seed=0):
    return np.random.default_rng(seed)


def small_vit(**kw):
    kw.setdefault("dropout", 0.0)
    refdl.manual_seed(0)
    m = ViT(num_classes=3, input_shape=(1, 4, 4), patch_size=2, dim=4, depth=2, heads=2,
            mlp_dim=6, **kw)
    g = rng(100)
    m.cls_token.data[...] = g.standard_normal(m.cls_token.shape)
    if m.pos_embed is not None and hasattr(m.pos_embed, "weight"):
        m.pos_embed.weight.data[...] = 0.5 * g.standard_normal(m.pos_embed.weight.shape)
    for layer in m.encoder.layers:
        layer.self_attn.in_proj_weight.data[:8] *= 2
    return m


def test_vit_gradcheck_whole_model():
    check_module(small_vit(), rng(1).standard_normal((2, 1, 4, 4)))


def test_vit_gradcheck_mean_pool_sinusoidal_dropout():
    m = small_vit(pool="mean", pos_encoding="sinusoidal", dropout=0.1)
    check_module(m, rng(2).standard_normal((2, 1, 4, 4)))


def test_windowed_vit_gradcheck():
    refdl.manual_seed(0)
    m = WindowedViT(num_classes=3, input_shape=(1, 4, 4), patch_size=1, dim=4, depths=(1, 1),
                    heads=(2, 2), window_size=2, mlp_ratio=1.0)
    check_module(m, rng(3).standard_normal((1, 1, 4, 4)))


def test_vit_shapes_keys_and_parameter_count():
    refdl.manual_seed(0)
    m = ViT()                                  # the registry default: digits, 8x8
    x = rng(4).standard_normal((5, 1, 8, 8)).astype(np.float32)
    y = m(x)
    assert y.shape == (5, 10) and y.dtype == np.float32
    keys = list(m.state_dict())
    assert keys[:4] == ["cls_token", "patch_embed.proj.weight", "patch_embed.proj.bias",
                        "pos_embed.weight"]
    assert keys[-2:] == ["head.weight", "head.bias"]
    D, P = 64, 16
    per_layer = 3 * D * D + 3 * D + D * D + D + 2 * (D * 2 * D) + 2 * D + D + 4 * D
    assert m.num_parameters() == (D * 4 + D) + D + (P + 1) * D + 2 * per_layer + 2 * D \
        + D * 10 + 10
    maps = m.attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (5, 17, 17)
    np.testing.assert_allclose(maps[1].sum(-1), 1.0, rtol=1e-5)
    assert m.encoder.layers[0].store_attention is False


def test_windowed_vit_high_resolution_shapes():
    refdl.manual_seed(0)
    m = WindowedViT(num_classes=2, input_shape=(3, 64, 64), patch_size=4, dim=8,
                    depths=(1, 1), heads=(2, 2), window_size=4)
    assert m(np.zeros((1, 3, 64, 64), dtype=np.float32)).shape == (1, 2)
    assert m.grid == (16, 16)


def test_vit_bad_input():
    with pytest.raises(ValueError, match="image size 9x8 is not a multiple of the patch size 2"):
        ViT(input_shape=(1, 9, 8))
    with pytest.raises(ValueError, match="dim must be divisible by heads"):
        ViT(dim=30, heads=4)
    m = ViT(input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="image size 7x8 is not a multiple of the patch size 2"):
        m(np.zeros((1, 1, 7, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"patch grid 8x8 must be a multiple of "
                                         r"window_size \* 2\^\(stages-1\) = 16"):
        WindowedViT(input_shape=(1, 8, 8), window_size=8, depths=(1, 1), heads=(1, 1))
    with pytest.raises(ValueError, match="image size 100x100 is not a multiple"):
        vit_module.attention_cost(100, 8)


def load_script():
    spec = importlib.util.spec_from_file_location(
        "train_vit_digits", os.path.join(ROOT, "scripts", "train_vit_digits.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_vit_trains_on_digits_and_plots_attention(tmp_path):
    """A short seeded run (94.2%; the full run, 30 epochs of dim 64, reaches 96.0%)."""
    script = load_script()
    model, acc, history, (Xte, yte) = script.train(epochs=15, dim=32, heads=4, lr=4e-3,
                                                   batch_size=32, dropout=0.0,
                                                   verbose=False)
    assert acc >= 0.90
    assert history[-1] < 0.25 * history[0]
    path = tmp_path / "attn.png"
    maps = script.plot_attention(model, Xte, yte, str(path))
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_allclose(maps[-1].sum(-1), 1.0, rtol=1e-5)


def test_patch_merging_dtype_reaches_every_parameter():
    import numpy as np
    from refdl import nn
    pm = nn.PatchMerging(4, dtype=np.float64)
    assert {p.dtype for p in pm.parameters()} == {np.dtype(np.float64)}
