"""MaxPool/AvgPool/AdaptiveAvgPool/AdaptiveMaxPool 1-D/2-D/3-D and Upsample: gradient
checks on both paths, PyTorch's output sizes, divisors and indices, clear errors."""
import numpy as np
import pytest

from refdl import ext, nn
from refdl.functional import pool_output_size
from refdl.gradcheck import check_module


@pytest.fixture(params=["cython", "numpy"])
def path(request):
    if request.param == "cython" and ext.compiled_module() is None:
        pytest.skip("the compiled kernels are not built")
    with ext.numpy_path(request.param == "numpy"):
        yield request.param


def distinct(shape, seed=0):
    """Well-separated values (a random permutation of a grid), so no max is near a tie."""
    n = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(n).reshape(shape) / n - 0.5


POOL_GRID = [
    (nn.MaxPool1d, dict(kernel_size=3, stride=2, padding=1), (2, 2, 7)),
    (nn.MaxPool1d, dict(kernel_size=2, dilation=2, ceil_mode=True), (1, 2, 8)),
    (nn.MaxPool2d, dict(kernel_size=2), (2, 2, 4, 4)),
    (nn.MaxPool2d, dict(kernel_size=(3, 2), stride=(2, 1), padding=1, dilation=(1, 2)),
     (1, 2, 5, 6)),
    (nn.MaxPool2d, dict(kernel_size=(2, 3), stride=2, ceil_mode=True), (2, 1, 5, 7)),
    (nn.MaxPool3d, dict(kernel_size=(2, 1, 3), stride=(1, 2, 2), padding=(1, 0, 1)),
     (1, 2, 3, 4, 5)),
    (nn.AvgPool1d, dict(kernel_size=3, stride=2, padding=1, count_include_pad=False), (2, 2, 6)),
    (nn.AvgPool1d, dict(kernel_size=2, ceil_mode=True), (1, 2, 7)),
    (nn.AvgPool2d, dict(kernel_size=2), (2, 2, 4, 4)),
    (nn.AvgPool2d, dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), ceil_mode=True),
     (1, 2, 6, 5)),
    (nn.AvgPool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                        count_include_pad=False), (2, 1, 6, 6)),
    (nn.AvgPool2d, dict(kernel_size=2, divisor_override=3), (1, 2, 4, 5)),
    (nn.AvgPool3d, dict(kernel_size=(2, 3, 1), stride=(1, 2, 1), padding=(1, 1, 0),
                        count_include_pad=False), (1, 2, 3, 5, 2)),
    (nn.AdaptiveAvgPool1d, dict(output_size=3), (2, 2, 7)),
    (nn.AdaptiveAvgPool2d, dict(output_size=(3, None)), (1, 2, 5, 4)),
    (nn.AdaptiveAvgPool2d, dict(output_size=1), (2, 3, 3, 3)),
    (nn.AdaptiveAvgPool3d, dict(output_size=(2, 3, 1)), (1, 2, 3, 4, 5)),
    (nn.AdaptiveMaxPool1d, dict(output_size=4), (2, 2, 7)),
    (nn.AdaptiveMaxPool2d, dict(output_size=(2, 3)), (1, 2, 5, 5)),
    (nn.AdaptiveMaxPool3d, dict(output_size=2), (1, 1, 3, 4, 5)),
    (nn.Upsample, dict(scale_factor=2), (2, 2, 3, 2)),
    (nn.Upsample, dict(size=(5, 3)), (1, 2, 3, 2)),
    (nn.Upsample, dict(scale_factor=(2, 1, 3)), (1, 1, 2, 2, 2)),
    (nn.Upsample, dict(scale_factor=2, mode="linear", align_corners=False), (1, 2, 4)),
    (nn.Upsample, dict(size=(5, 7), mode="bilinear", align_corners=True), (1, 2, 3, 4)),
    (nn.Upsample, dict(scale_factor=1.5, mode="bilinear"), (1, 1, 4, 4)),
    (nn.Upsample, dict(scale_factor=2, mode="trilinear"), (1, 1, 2, 2, 3)),
    (nn.UpsamplingNearest2d, dict(scale_factor=3), (1, 1, 2, 2)),
    (nn.UpsamplingBilinear2d, dict(size=4), (1, 1, 2, 3)),
]


@pytest.mark.parametrize("cls,kw,shape", POOL_GRID)
def test_pool_gradcheck_grid(path, cls, kw, shape):
    m = cls(**kw)
    x = distinct(shape)
    y = m(x.astype(np.float32))
    assert y.dtype == np.float32
    if "kernel_size" in kw:
        assert y.shape[2:] == pool_output_size(shape[2:], m.kernel_size, m.stride,
                                               m.padding, getattr(m, "dilation", 1),
                                               m.ceil_mode)
    check_module(m, x)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_unbatched_pooling(path, r):
    x = distinct((2,) + (4, 5, 3)[:r])
    for m in (getattr(nn, f"MaxPool{r}d")(2), getattr(nn, f"AvgPool{r}d")(2),
              getattr(nn, f"AdaptiveAvgPool{r}d")(2)):
        y = m(x)
        yb = m(x[None])[0]
        np.testing.assert_allclose(m(x), yb, rtol=1e-14)
        assert m.backward(np.ones_like(y)).shape == x.shape


def test_maxpool_indices_are_pytorchs_flat_positions(path):
    x = distinct((2, 3, 5, 6), seed=3)
    y, idx = nn.MaxPool2d(3, stride=2, padding=1, return_indices=True)(x)
    assert idx.dtype == np.int64 and idx.shape == y.shape
    np.testing.assert_array_equal(np.take_along_axis(x.reshape(2, 3, -1),
                                                     idx.reshape(2, 3, -1), 2).reshape(y.shape),
                                  y)
    # a hand-checked window: output (0, 0) covers rows -1..1, cols -1..1 (padding ignored)
    assert idx[0, 0, 0, 0] == np.argmax(x[0, 0, :2, :2]) // 2 * 6 + np.argmax(x[0, 0, :2, :2]) % 2


def test_maxpool_ties_go_to_the_first_maximum_and_overlaps_add(path):
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 5.0                       # the centre wins all four overlapping windows
    m = nn.MaxPool2d(2, stride=1)
    y = m(x)
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), 5.0))
    dx = m.backward(np.ones_like(y))
    assert dx[0, 0, 1, 1] == 4.0 and dx.sum() == 4.0
    z = np.ones((1, 1, 2, 2))                 # all tied: the first one (0, 0) wins
    m2 = nn.MaxPool2d(2, return_indices=True)
    _, idx = m2(z)
    assert idx.ravel().tolist() == [0]


def test_maxpool_nan_propagates(path):
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    y = nn.MaxPool2d(2)(x)
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 1, 1])


def test_avgpool_divisors_follow_pytorch(path):
    x = np.ones((1, 1, 5, 5))
    # count_include_pad=True: corner window [-1, 1] x [-1, 1] holds 4 real ones of 9
    y = nn.AvgPool2d(3, stride=2, padding=1)(x)
    assert y.shape == (1, 1, 3, 3)
    np.testing.assert_allclose(y[0, 0, 0, 0], 4 / 9, rtol=1e-14)
    np.testing.assert_allclose(y[0, 0, 1, 1], 1.0, rtol=1e-14)
    y = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)(x)
    np.testing.assert_allclose(y, 1.0, rtol=1e-14)
    # ceil_mode: the last window hangs over the end; the overhang never counts
    y = nn.AvgPool1d(2, ceil_mode=True)(np.ones((1, 1, 5)))
    np.testing.assert_allclose(y, [[[1.0, 1.0, 1.0]]], rtol=1e-14)
    y = nn.AvgPool2d(2, divisor_override=1)(np.ones((1, 1, 4, 4)))
    np.testing.assert_allclose(y, 4.0)
    assert pool_output_size(5, 2, 2, 0, 1, ceil_mode=True) == 3
    assert pool_output_size(6, 3, 2, 1, 1, ceil_mode=True) == 4   # last window starts at 5
    # ceil((5 + 2 - 1 - 1)/2) + 1 = 4 windows, but the 4th would start at 6 = L + p, in the
    # right padding only, so it is dropped (PyTorch)
    assert pool_output_size(5, 2, 2, 1, 1, ceil_mode=True) == 3


def test_adaptive_avg_pool_bins(path):
    x = np.arange(7, dtype=np.float64).reshape(1, 1, 7)
    y = nn.AdaptiveAvgPool1d(3)(x)        # bins [0,3), [2,5), [4,7)
    np.testing.assert_allclose(y.ravel(), [1.0, 3.0, 5.0])
    x = distinct((2, 3, 6, 4))
    np.testing.assert_allclose(nn.AdaptiveAvgPool2d(1)(x)[..., 0, 0], x.mean(axis=(2, 3)),
                               rtol=1e-13)
    np.testing.assert_allclose(nn.AdaptiveAvgPool2d((3, 2))(x), nn.AvgPool2d(2)(x), rtol=1e-13)


def test_upsample_nearest_and_bilinear_values():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    y = nn.Upsample(scale_factor=2)(x)
    np.testing.assert_array_equal(y[0, 0], np.repeat(np.repeat(x[0, 0], 2, 0), 2, 1))
    y = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)(x)
    np.testing.assert_allclose(y[0, 0, 0], [1, 4 / 3, 5 / 3, 2], rtol=1e-14)
    y = nn.Upsample(scale_factor=2, mode="bilinear")(x)    # align_corners=False
    np.testing.assert_allclose(y[0, 0, 0], [1, 1.25, 1.75, 2], rtol=1e-14)


BAD = [
    (lambda: nn.MaxPool2d(2)(np.zeros((4, 4), np.float32)), ValueError,
     r"MaxPool2d\(kernel_size=\(2, 2\).*expected a 3-D \(unbatched\) or 4-D \(batched\) "
     r"input \(N, C, H, W\), got shape \(4, 4\)"),
    (lambda: nn.MaxPool2d(5)(np.zeros((1, 1, 3, 3), np.float32)), ValueError,
     r"output would be empty .* input of shape \(1, 1, 3, 3\)"),
    (lambda: nn.AvgPool2d(2, padding=2), ValueError, r"at most half of the kernel size"),
    (lambda: nn.MaxPool1d(2)(np.zeros((1, 1, 4), np.int64)), TypeError,
     r"MaxPool1d.*floating-point input.*int64"),
    (lambda: nn.AvgPool3d(2)(np.zeros((1, 1, 4, 4, 4), bool)), TypeError, r"floating-point"),
    (lambda: nn.AdaptiveAvgPool2d((2, 2, 2)), ValueError, r"output_size must have 2 entries"),
    (lambda: nn.MaxPool2d(2)(np.zeros((1, 1, 4, 4), np.float16)), TypeError,
     r"MaxPool2d.*float32 or float64 input, got dtype float16"),
    (lambda: nn.Upsample(size=3, scale_factor=2), ValueError, r"exactly one of size"),
    (lambda: nn.Upsample(scale_factor=2, mode="bilinear")(np.zeros((1, 1, 4), np.float32)),
     ValueError, r"needs a 4-D input"),
]


@pytest.mark.parametrize("make,err,match", BAD)
def test_pool_bad_input_gives_clear_errors(path, make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_pool_non_contiguous_input(path):
    base = distinct((2, 6, 3, 5))
    x = base.transpose(0, 2, 1, 3)
    for m in (nn.MaxPool2d(2), nn.AvgPool2d(2, stride=1)):
        np.testing.assert_array_equal(m(x), m(np.ascontiguousarray(x)))
