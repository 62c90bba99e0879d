"""Exam items conv-1..7, pool-1..2, tconv-1..2, cnn-1..5 (see docs/exam.md), each computed
with refdl's layers."""
import itertools

import numpy as np
import pytest
import scipy.signal

import refdl
from refdl import nn
from refdl.functional import (conv_output_size, conv_transpose_output_size,
                              pool_output_size)
from refdl.gradcheck import check_module


def conv_with(weight, **kw):
    """A float64 bias-free Conv2d(1, 1) holding the given 2-D kernel."""
    m = nn.Conv2d(1, 1, weight.shape, bias=False, **kw).to(np.float64)
    m.weight.data[0, 0] = weight
    return m


# -- conv ------------------------------------------------------------------------------------

def test_conv_1_output_size_32_pad1_stride2_kernel3():
    assert conv_output_size(32, 3, stride=2, padding=1) == 16
    y = nn.Conv2d(1, 1, 3, stride=2, padding=1)(np.zeros((1, 1, 32, 32), np.float32))
    assert y.shape == (1, 1, 16, 16)


def test_conv_2_padded_cross_correlation():
    img = np.array([[2, 4, 5], [2, 1, 3], [3, 1, 5]], dtype=np.float64)
    k = np.array([[1, 0], [2, -1]], dtype=np.float64)
    y = conv_with(k, padding=1)(img[None, None])[0, 0]
    # refdl (like PyTorch) cross-correlates: the same as scipy's correlate2d 'full' here
    np.testing.assert_array_equal(y, scipy.signal.correlate2d(img, k, mode="full"))
    paper = np.array([[-2, 0, 3, 10], [-2, 5, 3, 11], [-3, 7, -2, 13], [0, 3, 1, 5]])
    np.testing.assert_array_equal(y, paper)        # the key is right (cross-correlation)
    # a textbook convolution (flipped kernel) would give a different answer
    flipped = scipy.signal.convolve2d(img, k, mode="full")
    assert not np.array_equal(flipped, paper)
    np.testing.assert_array_equal(conv_with(k[::-1, ::-1].copy(), padding=1)(
        img[None, None])[0, 0], flipped)


def test_conv_3_odd_image_odd_filter_stride_2_same_padding():
    # the catalog's instance: 13x9 image, 5x3 filter, padding (2, 1), stride 2 -> 7x5
    m = nn.Conv2d(1, 1, (5, 3), stride=2, padding=(2, 1))
    assert m(np.zeros((1, 1, 13, 9), np.float32)).shape == (1, 1, 7, 5)
    # the general claim: odd M, odd m, zero padding (m-1)/2, stride 2 -> floor(M/2) + 1
    for M, mk in itertools.product(range(1, 40, 2), range(1, 12, 2)):
        if mk <= M + (mk - 1):
            assert conv_output_size(M, mk, 2, (mk - 1) // 2) == M // 2 + 1


def test_conv_4_parameter_count_of_one_3x3_filter_on_32_channels():
    m = nn.Conv2d(32, 1, 3)
    assert m.weight.shape == (1, 32, 3, 3)
    assert m.num_parameters() == 3 * 3 * 32 + 1 == 289
    assert m(np.zeros((1, 32, 256, 256), np.float32)[:, :, :8, :8]).shape == (1, 1, 6, 6)


@pytest.mark.parametrize("size,kernel,padding", [(32, 32, 0), (6, 3, 0), (5, 3, 1)])
def test_conv_5_weight_gradient_of_squared_error(size, kernel, padding):
    rng = np.random.default_rng(size)
    m = nn.Conv2d(1, 1, kernel, padding=padding, bias=False).to(np.float64)
    x = rng.standard_normal((1, 1, size, size))
    yhat = m(x)
    y = rng.standard_normal(yhat.shape)
    m.zero_grad()
    m.backward(2 * (yhat - y))                 # dL/dyhat of L = sum (yhat - y)^2
    e = (yhat - y)[0, 0]
    xp = np.pad(x[0, 0], padding)
    # the true gradient: dL/dW[u, v] = 2 sum_ij e[i, j] x_pad[i + u, j + v], a correlation
    # of the (padded) input with the error
    truth = 2 * scipy.signal.correlate2d(xp, e, mode="valid")
    np.testing.assert_allclose(m.weight.grad[0, 0], truth, rtol=1e-12, atol=1e-12)
    # the key's last line, evaluated as written: 2 sum_ij (yhat[i,j] - y[i,j]) x[i,j] with
    # i, j over the output (the only indices yhat has) is ONE number, not a kernel-shaped
    # array; it is the gradient of the single weight W[0, 0] only
    last_line = 2 * np.sum(e * xp[:e.shape[0], :e.shape[1]])
    assert np.ndim(last_line) == 0 and m.weight.grad[0, 0].shape == (kernel, kernel)
    assert last_line == pytest.approx(m.weight.grad[0, 0, 0, 0], rel=1e-12)
    assert not np.allclose(m.weight.grad[0, 0], last_line)
    if size == kernel:
        # 1024 weights, a 1x1 output: the key's next-to-last line 2 (yhat - y) x, with the
        # scalar error broadcast over the 32x32 input, is the whole gradient
        assert m.weight.size == 1024 and yhat.shape == (1, 1, 1, 1)
        np.testing.assert_allclose(m.weight.grad[0, 0], 2 * e[0, 0] * x[0, 0], rtol=1e-12)
        # summing it over i, j "with broadcasting" gives 2 e sum(x): again one number
        assert 2 * e[0, 0] * x.sum() == pytest.approx(m.weight.grad.sum(), rel=1e-10)
    # and the layer's backward passes the numeric check
    small = nn.Conv2d(1, 1, min(kernel, 4), padding=padding, bias=False)
    check_module(small, x[:, :, :min(size, 6), :min(size, 6)])


def test_conv_6_conv_is_a_sparse_shared_weight_matrix():
    refdl.manual_seed(0)
    m = nn.Conv2d(1, 1, 3, bias=False).to(np.float64)
    H = W = 5
    # materialise the linear map column by column from the basis vectors
    M = np.stack([m(np.eye(H * W)[i].reshape(1, 1, H, W)).ravel() for i in range(H * W)], 1)
    assert M.shape == (9, 25)
    x = np.random.default_rng(0).standard_normal((1, 1, H, W))
    np.testing.assert_allclose(M @ x.ravel(), m(x).ravel(), rtol=1e-12)   # linear
    nonzero = M != 0
    assert nonzero.sum(axis=1).tolist() == [9] * 9          # local: 9 of 25 inputs per row
    assert nonzero.mean() == 81 / 225                        # 64% of the matrix is zero
    assert len(np.unique(M[nonzero])) == 9                   # shared: 9 distinct weights
    np.testing.assert_array_equal(np.sort(np.unique(M[nonzero])),
                                  np.sort(m.weight.data.ravel()))
    assert nn.Linear(25, 9, bias=False).num_parameters() == 225


def test_conv_7_convnets_are_translation_invariant_only():
    refdl.manual_seed(0)
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular").to(np.float64)
    net = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = rng.standard_normal((1, 1, 8, 8))
    shift = np.roll(x, (2, 3), axis=(2, 3))
    # convolution is shift-equivariant, conv + global average pooling shift-invariant
    np.testing.assert_allclose(conv(shift), np.roll(conv(x), (2, 3), axis=(2, 3)),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(net(shift), net(x), rtol=1e-12)
    # not rotation-invariant (a generic kernel is not rotation-symmetric) ...
    rot = np.rot90(x, axes=(2, 3)).copy()
    assert np.abs(net(rot) - net(x)).max() > 1e-2
    # ... nor brightness/contrast-invariant (y = a x + b changes the features)
    assert np.abs(net(1.5 * x + 0.5) - net(x)).max() > 1e-2


# -- pool ------------------------------------------------------------------------------------

def test_pool_1_maxpool_2x2_stride_2():
    x = np.array([[2, 4, 5, 0], [2, 1, 3, 1], [3, 1, 5, 0], [0, 1, 0, 1]], dtype=np.float32)
    y = nn.MaxPool2d(2, stride=2)(x[None, None])[0, 0]
    np.testing.assert_array_equal(y, [[4, 5], [3, 5]])


def test_pool_2_maxpool_shrinks_and_is_locally_translation_invariant():
    pool = nn.MaxPool2d(2)
    x = np.zeros((1, 1, 8, 8))
    x[0, 0, 2, 2] = 1.0                              # a sparse feature
    y = pool(x)
    assert y.size == x.size // 4                     # 4x fewer activations
    # moving the feature inside its 2x2 window leaves the pooled map unchanged
    for di, dj in [(0, 1), (1, 0), (1, 1)]:
        np.testing.assert_array_equal(pool(np.roll(x, (di, dj), axis=(2, 3))), y)
    # crossing a window boundary moves it: the invariance is only approximate and local
    moved = pool(np.roll(x, (0, 2), axis=(2, 3)))
    assert not np.array_equal(moved, y)
    np.testing.assert_array_equal(moved, np.roll(y, 1, axis=3))


# -- tconv -----------------------------------------------------------------------------------

def zero_insertion_conv(x, W, stride, padding, output_padding, dilation):
    """Transposed convolution as a 'fractionally strided' convolution: put stride-1 zeros
    between the input entries, pad by d(k-1) - p (plus output_padding after), and run an
    ordinary stride-1 convolution with the flipped kernel, in/out channels swapped."""
    r = x.ndim - 2
    N, C = x.shape[:2]
    up = np.zeros((N, C) + tuple((L - 1) * s + 1 for L, s in zip(x.shape[2:], stride)))
    up[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)] = x
    pads = [(d * (k - 1) - p, d * (k - 1) - p + op) for k, p, op, d in
            zip(W.shape[2:], padding, output_padding, dilation)]
    up = np.pad(up, [(0, 0), (0, 0)] + pads)
    conv = getattr(nn, f"Conv{r}d")(W.shape[0], W.shape[1], W.shape[2:], dilation=dilation,
                                    bias=False).to(np.float64)
    conv.weight.data = np.flip(W, axis=tuple(range(2, 2 + r))).swapaxes(0, 1).copy()
    return conv(up)


def test_tconv_1_fractional_stride_transposed_convolution():
    refdl.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4))
    t = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1,
                           bias=False).to(np.float64)
    y = t(x)
    # stride 2 transposed = stride 1/2 ("fractional") convolution: output grows ~2x ...
    assert y.shape == (1, 3, 8, 8) == (1, 3) + (conv_transpose_output_size(4, 3, 2, 1, 1),) * 2
    np.testing.assert_allclose(y, zero_insertion_conv(x, t.weight.data, (2, 2), (1, 1), (1, 1),
                                                      (1, 1)), rtol=1e-12, atol=1e-12)
    # ... while an ordinary convolution with the same integer stride shrinks it
    assert nn.Conv2d(2, 3, 3, stride=2, padding=1)(x).shape == (1, 3, 2, 2)
    # overlap counts: with kernel 3 and stride 2 some outputs receive 4 kernel taps, others
    # 1 or 2 -- the uneven pattern behind checkerboard artefacts (none when s divides k)
    ones = nn.ConvTranspose2d(1, 1, 3, stride=2, bias=False).to(np.float64)
    ones.weight.data[...] = 1.0
    count = ones(np.ones((1, 1, 4, 4)))[0, 0]
    assert sorted(np.unique(count).tolist()) == [1.0, 2.0, 4.0]
    even = nn.ConvTranspose2d(1, 1, 2, stride=2, bias=False).to(np.float64)
    even.weight.data[...] = 1.0
    assert np.unique(even(np.ones((1, 1, 4, 4)))).tolist() == [1.0]


def test_tconv_2_unet_up_convolution_on_video_features():
    refdl.manual_seed(0)
    rng = np.random.default_rng(0)
    # decoder block: (B, 64, 2, 4, 4) features -> ConvTranspose3d(k=2, s=2) doubles (f, h, w)
    up = nn.ConvTranspose3d(64, 32, kernel_size=2, stride=2)
    z = rng.standard_normal((2, 64, 2, 4, 4)).astype(np.float32)
    u = up(z)
    assert u.shape == (2, 32, 4, 8, 8)
    skip = rng.standard_normal((2, 32, 4, 8, 8)).astype(np.float32)
    cat = np.concatenate([u, skip], axis=1)               # the skip connection
    assert nn.Conv3d(64, 32, 3, padding=1)(cat).shape == (2, 32, 4, 8, 8)
    assert up.num_parameters() == 64 * 32 * 8 + 32
    # an odd size lost to pooling (5 -> 2) comes back with output_padding / output_size
    t = nn.ConvTranspose3d(4, 2, 2, stride=2, output_padding=(1, 0, 0))
    small = rng.standard_normal((1, 4, 2, 3, 3))
    assert t(small).shape == (1, 2, 5, 6, 6)
    assert t(small, output_size=(4, 7, 6)).shape == (1, 2, 4, 7, 6)
    # the same numbers as the zero-insertion ('fractionally strided') convolution
    t = nn.ConvTranspose3d(2, 3, (3, 2, 3), stride=(2, 2, 1), padding=(1, 0, 1),
                           output_padding=(1, 1, 0), bias=False).to(np.float64)
    x = rng.standard_normal((1, 2, 3, 2, 4))
    np.testing.assert_allclose(t(x), zero_insertion_conv(x, t.weight.data, (2, 2, 1),
                                                         (1, 0, 1), (1, 1, 0), (1, 1, 1)),
                               rtol=1e-12, atol=1e-12)


# -- cnn -------------------------------------------------------------------------------------

def consistent_geometries(cin, cout, params, size_in, size_out):
    """Every (k, s, p) with k <= 9, s <= 4, p <= 3 whose Conv2d has the given number of
    parameters and maps size_in to size_out."""
    found = []
    for k, s, p in itertools.product(range(1, 10), range(1, 5), range(0, 4)):
        if nn.Conv2d(cin, cout, k).num_parameters() == params and \
                conv_output_size(size_in, k, s, p) == size_out:
            found.append((k, s, p))
    return found


def paper_net(p2=0):
    return nn.Sequential(nn.Conv2d(1, 2, 7, stride=1, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
                         nn.Conv2d(2, 4, 3, stride=4, padding=p2), nn.BatchNorm2d(4),
                         nn.ReLU())


def test_cnn_1_parameter_counts_layer_by_layer():
    # the figure is not in the text: recover the layers from the counts and the shapes
    assert consistent_geometries(1, 2, 100, 224, 220) == [(7, 1, 1)]
    assert consistent_geometries(2, 4, 76, 220, 55) == [(3, 4, 0), (3, 4, 1)]
    net = paper_net()
    counts = [m.num_parameters() for m in net]
    assert counts == [100, 4, 0, 76, 8, 0]     # Conv1, BN1, ReLU1, Conv2, BN2, ReLU2
    assert counts[0] == 2 * 1 * 7 * 7 + 2 and counts[3] == 4 * 2 * 3 * 3 + 4


@pytest.mark.parametrize("p2", [0, 1])
def test_cnn_2_activation_shapes(p2):
    B = 2
    info = refdl.summary(paper_net(p2), (B, 1, 224, 224), print_fn=None)
    shapes = [r["output_shape"] for r in info["rows"][1:]]
    assert shapes == [(B, 2, 220, 220)] * 3 + [(B, 4, 55, 55)] * 3


def test_cnn_3_resnet_style_classifier_head():
    B, C6, H6, n_c = 3, 4, 55, 10
    z6 = np.random.default_rng(0).standard_normal((B, C6, H6, H6))
    head = nn.Sequential(nn.AvgPool2d(H6), nn.Flatten(), nn.Linear(C6, n_c))  # a, b, c
    pooled = head[0](z6)
    assert pooled.shape == (B, C6, 1, 1)
    np.testing.assert_allclose(pooled[:, :, 0, 0], z6.mean(axis=(2, 3)), rtol=1e-12)
    assert head(z6).shape == (B, n_c)
    assert pool_output_size(H6, H6, H6) == 1


def test_cnn_5_conv_versus_mlp_parameters_and_spatial_structure():
    """003 Q2(a). The conv layer as a matrix (materialised from refdl's forward on the
    basis vectors) has the shape of the equivalent Linear layer but few free values:
    on (3, 8, 8) -> (16, 8, 8) it is 1024 x 192 with 432 distinct weights, against refdl's
    Linear(192, 1024) with 197,632 parameters. (For 32 x 32 images the counts, 448 against
    50,348,032, are the same formulas k*k*C_in*C_out + C_out and n_in*n_out + n_out:
    arithmetic, not allocated.)"""
    refdl.manual_seed(0)
    H = W = 8
    conv = nn.Conv2d(3, 16, 3, padding=1).to(np.float64)
    assert conv.num_parameters() == 16 * 3 * 9 + 16 == 448
    n_in, n_out = 3 * H * W, 16 * H * W
    bias_out = conv(np.zeros((1, 3, H, W))).ravel()
    M = np.stack([conv(np.eye(n_in)[i].reshape(1, 3, H, W)).ravel() - bias_out
                  for i in range(n_in)], 1)
    assert M.shape == (n_out, n_in)
    x = np.random.default_rng(0).standard_normal((1, 3, H, W))
    np.testing.assert_allclose(M @ x.ravel() + bias_out, conv(x).ravel(), rtol=1e-12,
                               atol=1e-12)
    fc = nn.Linear(n_in, n_out)
    assert fc.weight.shape == M.shape and fc.num_parameters() == n_in * n_out + n_out
    assert len(np.unique(M[M != 0])) == 16 * 3 * 9          # shared: only the kernels
    assert (M != 0).mean() < 0.15                             # local: mostly zeros
    # an MLP is blind to the pixel order: permuting the pixels (and its weights alike)
    # gives the same outputs, so flattening throws the spatial layout away ...
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 6, 6))
    perm = rng.permutation(36)
    mlp = nn.Linear(36, 5).to(np.float64)
    mlp_p = nn.Linear(36, 5).to(np.float64)
    mlp_p.weight.data = mlp.weight.data[:, perm]
    mlp_p.bias.data = mlp.bias.data
    xs = x.reshape(2, 36)
    np.testing.assert_allclose(mlp_p(xs[:, perm]), mlp(xs), rtol=1e-12)
    # ... whereas a convolution's output depends on which pixels are neighbours
    c = nn.Conv2d(1, 1, 3).to(np.float64)
    scrambled = xs[:, perm].reshape(2, 1, 6, 6)
    assert not np.allclose(np.sort(c(scrambled).ravel()), np.sort(c(x).ravel()))
