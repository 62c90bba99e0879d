"""Exam items norm-1..3 (paper 001 Q8) and cnn-6..9 (paper 004 Q3, paper 003 Q10(c)),
each computed with refdl."""
import numpy as np
import pytest

import refdl
from refdl import nn


# -- norm ---------------------------------------------------------------------------------
def test_norm_1_layernorm_of_2x2():
    X = np.array([[8.0, 2.0], [0.0, 4.0]])
    Y = nn.LayerNorm(2, eps=0.0, elementwise_affine=False)(X)
    # row 1: mean 5, var 9 -> (+3, -3)/3; row 2: mean 2, var 4 -> (-2, +2)/2
    np.testing.assert_allclose(Y, [[1.0, -1.0], [-1.0, 1.0]], rtol=0, atol=1e-15)
    # the same as GroupNorm with one group, computed independently
    np.testing.assert_allclose(Y, nn.GroupNorm(1, 2, eps=0.0, affine=False)(X), atol=1e-15)


def test_norm_2_batchnorm_training_statistics():
    X = np.array([[2.0, 3.0, 4.0], [1.0, 2.0, 2.0]])
    bn = nn.BatchNorm1d(3, eps=0.0, affine=False).to(np.float64)
    Y = bn(X)
    np.testing.assert_allclose(Y, [[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], rtol=0, atol=1e-15)
    # with two examples every column is +-1 whatever its values (x - mu = +-sigma)
    # running stats updated with the unbiased variance: column 0 var = 0.25 -> 0.5
    np.testing.assert_allclose(bn.running_mean, 0.1 * np.array([1.5, 2.5, 3.0]))
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * np.array([0.5, 0.5, 2.0]))


def test_norm_3_batchnorm_forgotten_in_eval_mode_is_identity():
    """Paper: answer C. A BatchNorm left in eval mode during 'training' with fresh running
    stats (0, 1), eps = 0, no affine, passes its input through unchanged and never
    updates the running stats (option A is wrong: nothing is normalised)."""
    bn = nn.BatchNorm2d(4, eps=0.0, affine=False).to(np.float64).eval()
    x = np.random.default_rng(0).normal(5.0, 3.0, (8, 4, 3, 3))
    for _ in range(3):                            # several "training" steps
        with refdl.enable_grad():                 # eval mode records only when asked to
            y = bn(x)
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(bn.backward(np.ones_like(x)), np.ones_like(x))
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    assert int(bn.num_batches_tracked) == 0
    # the same layer in training mode does normalise (mean 0, var 1 per channel)
    y = bn.train()(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, atol=1e-12)


# -- cnn: the video U-Net of paper 004 Q3, skip connections of paper 003 Q10(c) ------------
needs_conv = pytest.mark.skipif(
    not all(hasattr(nn, n) for n in ("Conv3d", "ConvTranspose3d", "MaxPool3d", "Conv2d")),
    reason="needs the convolution layers")


@needs_conv
def test_cnn_6_first_convolution_of_the_video_unet():
    """X in R^{f x h x w x c} = 10 x 32 x 32 x 3, in refdl's (N, C, D, H, W) layout
    (1, 3, 10, 32, 32). A 3-D convolution slides a 3x3x3 kernel over (frames, height,
    width); each kernel spans all 3 input channels, so one kernel has 3 x 3 x 3 x 3 = 81
    weights and the layer with 16 kernels has weight shape (16, 3, 3, 3, 3), 16 biases.
    Padding 1 keeps the size: feature map 16 x 10 x 32 x 32 (unpadded: 16 x 8 x 30 x 30)."""
    refdl.manual_seed(0)
    x = np.random.default_rng(0).random((1, 10, 32, 32, 3)).transpose(0, 4, 1, 2, 3)
    conv = nn.Conv3d(3, 16, kernel_size=3, padding=1)
    assert conv.weight.shape == (16, 3, 3, 3, 3) and conv.bias.shape == (16,)
    assert conv.num_parameters() == 16 * 3 * 27 + 16 == 1312
    y = conv(x.astype(np.float32))
    assert y.shape == (1, 16, 10, 32, 32)
    assert nn.Conv3d(3, 16, 3)(x.astype(np.float32)).shape == (1, 16, 8, 30, 30)
    # one output entry is the sum over the 3 channels x 3 frames x 3 rows x 3 columns
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1), (1, 1)))
    t, i, j = 4, 7, 20
    ref = np.sum(conv.weight.data[5] * xp[0, :, t:t + 3, i:i + 3, j:j + 3]) + conv.bias.data[5]
    np.testing.assert_allclose(y[0, 5, t, i, j], ref, rtol=1e-5)


@needs_conv
def test_cnn_7_encoder_shapes_N3_M2():
    """N = 3 encoder blocks, M = 2 convolutions (3x3x3, padding 1, ReLU) each, then a
    (1, 2, 2) max-pool (frames kept: 10 is not divisible by 2^3). Channels 16, 32, 64."""
    from refdl.models.unet import video_unet
    refdl.manual_seed(0)
    table = dict(video_unet(depth=3, convs_per_level=2).shape_table((1, 3, 10, 32, 32)))
    expected = {
        "encoder 1 conv 1": (16, 10, 32, 32), "encoder 1 conv 2": (16, 10, 32, 32),
        "encoder 1 pool": (16, 10, 16, 16),
        "encoder 2 conv 1": (32, 10, 16, 16), "encoder 2 conv 2": (32, 10, 16, 16),
        "encoder 2 pool": (32, 10, 8, 8),
        "encoder 3 conv 1": (64, 10, 8, 8), "encoder 3 conv 2": (64, 10, 8, 8),
        "encoder 3 pool": (64, 10, 4, 4),
        "bottleneck conv 2": (128, 10, 4, 4)}
    for k, v in expected.items():
        assert table[k] == (1,) + v, k
    # Pooling the frames too (2x2x2) works in the encoder (10 -> 5 -> 2 -> 1) but the
    # decoder's 1 -> 2 -> 4 cannot meet the skips 2 and 5: refdl names both shapes.
    from refdl.models.unet import UNet
    refdl.manual_seed(0)
    m = UNet(3, 3, depth=3, convs_per_level=1, base_channels=2, dim=3, pool_kernel=2)
    with pytest.raises(ValueError, match=r"level 1: .* \(1, 4, 4, 16, 16\) but the encoder's "
                                         r"skip has shape \(1, 4, 5, 16, 16\)"):
        m(np.zeros((1, 3, 10, 32, 32), dtype=np.float32))


@needs_conv
def test_cnn_8_decoder_shapes_and_skips():
    """Each decoder block: up-convolution (ConvTranspose3d, kernel = stride = (1, 2, 2))
    halves the channels and doubles H, W; the skip from the encoder block of the same
    level has exactly that shape; concatenation doubles the channels; M = 2 convolutions
    halve them again. A final 1x1x1 convolution maps 16 channels to the 3 of the video."""
    from refdl.models.unet import video_unet
    refdl.manual_seed(0)
    table = dict(video_unet().shape_table((1, 3, 10, 32, 32)))
    for level, (c, s) in {3: (64, 8), 2: (32, 16), 1: (16, 32)}.items():
        up = table[f"decoder {level} up"]
        skip = table[f"decoder {level} skip (from encoder {level})"]
        cat = table[f"decoder {level} concat"]
        assert up == skip == (1, c, 10, s, s)                  # spatial equality
        assert cat == (1, 2 * c, 10, s, s)                     # channel doubling
        assert table[f"decoder {level} conv 2"] == (1, c, 10, s, s)
        assert skip == table[f"encoder {level} conv 2"]        # the encoder's output
    assert table["output (1x1 conv)"] == (1, 3, 10, 32, 32)    # same shape as the input


def _stack_grad_norms(residual, blocks=12):
    refdl.manual_seed(0)
    net = nn.Sequential(*[nn.BasicBlock(4, 4, norm_layer=nn.Identity, residual=residual)
                          for _ in range(blocks)]).to(np.float64)
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 6))
    net(x)
    g = np.random.default_rng(1).standard_normal((2, 4, 6, 6))
    norms = [np.linalg.norm(g)]
    for block in reversed(list(net)):
        g = block.backward(g)
        norms.append(np.linalg.norm(g))
    return np.array(norms[::-1])           # ||dL/d(input of block k)||, k = 0 .. blocks


@needs_conv
def test_cnn_9_skip_connections_prevent_gradient_decay():
    """12 BasicBlocks (no normalisation, PyTorch's default init), the same random upstream
    gradient: without shortcuts the gradient reaching the input has shrunk by orders of
    magnitude (every block multiplies by a Jacobian of norm < 1); with identity shortcuts
    (dL/dx = J_F^T g + g) it arrives undiminished."""
    plain, res = _stack_grad_norms(False), _stack_grad_norms(True)
    assert plain[0] / plain[-1] < 1e-4
    assert res[0] / res[-1] > 0.5
    assert np.all(np.diff(plain) > 0)      # decays block by block towards the input
