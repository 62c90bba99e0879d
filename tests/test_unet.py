"""U-Net 2-D and 3-D: shapes, skip errors, whole-model gradient checks, the video U-Net of
paper 004 Q3 (summary with every shape, a short reconstruction training run)."""
import numpy as np
import pytest

import refdl
from refdl import nn
from refdl.gradcheck import check_module

pytestmark = pytest.mark.usefixtures("single_blas_thread")   # tests/conftest.py


def rng(s=7):
    return np.random.default_rng(s)


def unet(gain=1.0, **kw):
    """A U-Net; ``gain`` scales every convolution weight (PyTorch's default init shrinks
    the signal level by level, and a gradient check needs the deep layers' gradients well
    above the finite differences' rounding noise)."""
    from refdl.models.unet import UNet
    refdl.manual_seed(kw.pop("seed", 0))
    m = UNet(**kw)
    for name, p in m.named_parameters():
        if p.data.ndim > 1:
            p.data *= gain
    return m


@pytest.mark.parametrize("up_mode", ["transpose", "nearest"])
def test_unet2d_shapes(up_mode):
    m = unet(in_channels=1, out_channels=2, depth=3, convs_per_level=2, base_channels=4,
             up_mode=up_mode)
    assert m(np.zeros((2, 1, 16, 16), dtype=np.float32)).shape == (2, 2, 16, 16)
    table = dict(m.shape_table((2, 1, 16, 16)))
    assert table["encoder 3 pool"] == (2, 16, 2, 2)
    assert table["bottleneck conv 2"] == (2, 32, 2, 2)
    assert table["decoder 3 up"] == (2, 16, 4, 4)
    assert table["decoder 3 concat"] == (2, 32, 4, 4)
    assert table["decoder 1 conv 2"] == (2, 4, 16, 16)


@pytest.mark.parametrize("up_mode", ["transpose", "nearest"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_tiny_unet2d_whole_model_gradcheck(up_mode, mode):
    m = unet(in_channels=1, out_channels=1, depth=2, convs_per_level=1, base_channels=1,
             up_mode=up_mode, norm="batch" if mode == "eval" else None, gain=3.0)
    m.train(mode == "train")
    check_module(m, rng().standard_normal((1, 1, 4, 4)))


def test_tiny_unet2d_group_norm_gradcheck():
    m = unet(in_channels=2, out_channels=1, depth=1, convs_per_level=1, base_channels=2,
             norm="group", gain=3.0)
    check_module(m, rng().standard_normal((2, 2, 2, 2)))


@pytest.mark.parametrize("up_mode", ["transpose", "nearest"])
def test_tiny_unet3d_whole_model_gradcheck(up_mode):
    m = unet(in_channels=1, out_channels=1, depth=1, convs_per_level=1, base_channels=1, dim=3,
             up_mode=up_mode, pool_kernel=(1, 2, 2), gain=3.0)
    check_module(m, rng().standard_normal((1, 1, 2, 2, 2)))


def test_unet_skip_mismatch_names_both_shapes():
    m = unet(in_channels=1, out_channels=1, depth=2, convs_per_level=1, base_channels=2)
    with pytest.raises(ValueError, match=r"skip connection at level 1: the up-sampled decoder "
                                         r"map has shape \(1, 4, 2, 2\) but the encoder's skip "
                                         r"has shape \(1, 4, 3, 3\)"):
        m(np.zeros((1, 1, 6, 6), dtype=np.float32))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 1, H, W\), got "
                                         r"\(1, 3, 8, 8\)"):
        m(np.zeros((1, 3, 8, 8), dtype=np.float32))
    from refdl.models.unet import UNet
    with pytest.raises(ValueError, match=r"skip connection at level 1.*\(1, 4, 4, 2, 2\).*"
                                         r"\(1, 4, 5, 2, 2\)"):
        refdl.manual_seed(0)
        UNet(1, 1, depth=2, convs_per_level=1, base_channels=2, dim=3)(
            np.zeros((1, 1, 10, 4, 4), dtype=np.float32))


VIDEO_SHAPES = [
    ("input", (1, 3, 10, 32, 32)),
    ("encoder 1 conv 1", (1, 16, 10, 32, 32)),
    ("encoder 1 conv 2", (1, 16, 10, 32, 32)),
    ("encoder 1 pool", (1, 16, 10, 16, 16)),
    ("encoder 2 conv 1", (1, 32, 10, 16, 16)),
    ("encoder 2 conv 2", (1, 32, 10, 16, 16)),
    ("encoder 2 pool", (1, 32, 10, 8, 8)),
    ("encoder 3 conv 1", (1, 64, 10, 8, 8)),
    ("encoder 3 conv 2", (1, 64, 10, 8, 8)),
    ("encoder 3 pool", (1, 64, 10, 4, 4)),
    ("bottleneck conv 1", (1, 128, 10, 4, 4)),
    ("bottleneck conv 2", (1, 128, 10, 4, 4)),
    ("decoder 3 up", (1, 64, 10, 8, 8)),
    ("decoder 3 skip (from encoder 3)", (1, 64, 10, 8, 8)),
    ("decoder 3 concat", (1, 128, 10, 8, 8)),
    ("decoder 3 conv 1", (1, 64, 10, 8, 8)),
    ("decoder 3 conv 2", (1, 64, 10, 8, 8)),
    ("decoder 2 up", (1, 32, 10, 16, 16)),
    ("decoder 2 skip (from encoder 2)", (1, 32, 10, 16, 16)),
    ("decoder 2 concat", (1, 64, 10, 16, 16)),
    ("decoder 2 conv 1", (1, 32, 10, 16, 16)),
    ("decoder 2 conv 2", (1, 32, 10, 16, 16)),
    ("decoder 1 up", (1, 16, 10, 32, 32)),
    ("decoder 1 skip (from encoder 1)", (1, 16, 10, 32, 32)),
    ("decoder 1 concat", (1, 32, 10, 32, 32)),
    ("decoder 1 conv 1", (1, 16, 10, 32, 32)),
    ("decoder 1 conv 2", (1, 16, 10, 32, 32)),
    ("output (1x1 conv)", (1, 3, 10, 32, 32)),
]


def test_video_unet_shape_table_and_summary():
    from refdl.models.unet import video_unet
    refdl.manual_seed(0)
    m = video_unet()
    assert m.shape_table((1, 3, 10, 32, 32)) == VIDEO_SHAPES
    lines = []
    info = refdl.summary(m, (1, 3, 10, 32, 32), print_fn=lines.append)
    text = "\n".join(lines)
    shapes = {r["name"]: r["output_shape"] for r in info["rows"]}
    # every encoder output (the skip), every up-sampling and concatenation is printed
    assert shapes["encoders.0"] == (1, 16, 10, 32, 32)
    assert shapes["encoders.2"] == (1, 64, 10, 8, 8)
    assert shapes["pools.2"] == (1, 64, 10, 4, 4)
    assert shapes["bottleneck"] == (1, 128, 10, 4, 4)
    assert shapes["ups.0"] == (1, 64, 10, 8, 8) and shapes["cats.0"] == (1, 128, 10, 8, 8)
    assert shapes["cats.2"] == (1, 32, 10, 32, 32) and shapes["head"] == (1, 3, 10, 32, 32)
    assert "(1, 128, 10, 4, 4)" in text and "cats.1 (Concat)" in text
    assert info["trainable_params"] == m.num_parameters()


def test_video_unet_reconstruction_loss_falls_tenfold():
    """A small version of the full run (examples/video_unet.py): a 2-level video U-Net
    on 8 moving-shapes videos of 2 frames of 16x16, Adam (lr 5e-3), 100 steps (measured:
    MSE 0.130 -> 0.0079, 16x)."""
    from refdl.data.video import moving_shapes
    from refdl.models.unet import video_unet
    from refdl.optim import Adam
    refdl.manual_seed(0)
    videos = moving_shapes(8, frames=2, size=16, generator=np.random.default_rng(0))
    m = video_unet(depth=2, convs_per_level=1, base_channels=4)
    opt = Adam(m.parameters(), lr=5e-3)
    losses = []
    for step in range(100):
        x = videos[(step % 2) * 4:(step % 2) * 4 + 4]
        d = m(x) - x
        losses.append(float(np.mean(d ** 2)))
        opt.zero_grad()
        m.backward((2.0 / d.size) * d)
        opt.step()
    assert losses[-1] < losses[0] / 10, losses
