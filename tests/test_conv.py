"""Conv1d/2d/3d and ConvTranspose1d/2d/3d: gradient checks on both paths, shapes, adjoint
identity, PyTorch semantics (padding 'same'/'valid', padding modes, groups, unbatched
input, initialisation) and clear errors on bad input."""
import numpy as np
import pytest

import refdl
from refdl import ext, nn
from refdl.functional import conv_output_size, conv_transpose_output_size
from refdl.gradcheck import check_module


@pytest.fixture(params=["cython", "numpy"])
def path(request):
    """Run the test on the compiled kernels and on the NumPy reference."""
    if request.param == "cython" and ext.compiled_module() is None:
        pytest.skip("the compiled kernels are not built")
    with ext.numpy_path(request.param == "numpy"):
        assert ext.backend() == request.param
        yield request.param


def small(shape, seed=0):
    # Small values keep |L| = |<y, R>| small, so the rounding noise of the central
    # differences (~ eps |L| / h) stays far below rtol even for the smallest gradient
    # entries (corners reached by one kernel tap). The layers are linear in x, so the
    # gradients do not depend on the scale.
    return 0.1 * np.random.default_rng(seed).standard_normal(shape)


def gradcheck(m, x, **kw):
    if getattr(m, "bias", None) is not None:
        m.bias.data *= 0.1
    return check_module(m, x, **kw)


CONV_GRID = [
    # (class, in, out, kernel, kwargs, input shape)
    (nn.Conv1d, 2, 3, 3, {}, (2, 2, 7)),
    (nn.Conv1d, 4, 2, 2, dict(stride=2, padding=1, dilation=2, groups=2), (1, 4, 8)),
    (nn.Conv1d, 2, 2, 4, dict(padding="same", bias=False), (2, 2, 5)),
    (nn.Conv2d, 1, 2, (3, 2), {}, (2, 1, 5, 4)),                       # non-square
    (nn.Conv2d, 2, 3, (2, 3), dict(stride=(2, 1), padding=(1, 2)), (1, 2, 5, 4)),
    (nn.Conv2d, 4, 2, (3, 1), dict(dilation=(2, 1), groups=2), (2, 4, 6, 3)),
    (nn.Conv2d, 2, 4, 2, dict(stride=3, padding=1, groups=2), (1, 2, 5, 7)),
    (nn.Conv2d, 2, 2, (2, 3), dict(padding="same", dilation=(1, 2)), (1, 2, 4, 5)),
    (nn.Conv2d, 2, 2, 3, dict(padding=1, padding_mode="circular"), (2, 2, 3, 4)),
    (nn.Conv2d, 1, 2, (3, 2), dict(padding=(2, 1), padding_mode="reflect"), (1, 1, 4, 3)),
    (nn.Conv2d, 1, 2, 3, dict(padding=2, padding_mode="replicate"), (1, 1, 3, 3)),
    (nn.Conv3d, 2, 2, (2, 3, 1), dict(stride=(1, 2, 1), padding=(1, 0, 1)), (1, 2, 3, 5, 2)),
    (nn.Conv3d, 2, 2, 2, dict(groups=2, dilation=(1, 2, 1)), (2, 2, 3, 4, 3)),
]


@pytest.mark.parametrize("cls,cin,cout,k,kw,shape", CONV_GRID)
def test_conv_gradcheck_grid(path, cls, cin, cout, k, kw, shape):
    refdl.manual_seed(1)
    m = cls(cin, cout, k, **kw)
    x = small(shape)
    y = m(x.astype(np.float32))
    spatial = m.output_size(shape[2:])
    assert y.shape == (shape[0], cout) + spatial and y.dtype == np.float32
    gradcheck(m, x)


TCONV_GRID = [
    (nn.ConvTranspose1d, 2, 3, 3, dict(stride=2), (2, 2, 4)),
    (nn.ConvTranspose1d, 4, 2, 2, dict(stride=3, padding=1, output_padding=2, groups=2),
     (1, 4, 3)),
    (nn.ConvTranspose2d, 2, 2, (3, 2), dict(stride=(2, 1), padding=(1, 0),
                                            output_padding=(1, 0)), (1, 2, 3, 4)),
    (nn.ConvTranspose2d, 2, 4, (2, 3), dict(stride=2, dilation=(2, 1), groups=2,
                                            bias=False), (2, 2, 2, 3)),
    (nn.ConvTranspose2d, 1, 2, 3, dict(stride=1, dilation=2, output_padding=1), (1, 1, 2, 2)),
    (nn.ConvTranspose3d, 2, 2, (2, 1, 3), dict(stride=(2, 1, 2), padding=(0, 0, 1)),
     (1, 2, 2, 3, 2)),
]


@pytest.mark.parametrize("cls,cin,cout,k,kw,shape", TCONV_GRID)
def test_conv_transpose_gradcheck_grid(path, cls, cin, cout, k, kw, shape):
    refdl.manual_seed(2)
    m = cls(cin, cout, k, **kw)
    x = small(shape)
    y = m(x)
    assert y.shape == (shape[0], cout) + m.output_size(shape[2:])
    assert y.shape[2:] == conv_transpose_output_size(
        shape[2:], m.kernel_size, m.stride, m.padding, m.output_padding, m.dilation)
    gradcheck(m, x)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_conv_transpose_is_the_adjoint_of_conv(path, r):
    """<conv(x), y> = <x, conv_transpose(y)> for shared weights, no bias."""
    rng = np.random.default_rng(r)
    k = (3, 2, 2)[:r]
    kw = dict(stride=(2, 1, 3)[:r], padding=(1, 0, 1)[:r], dilation=(1, 2, 1)[:r], groups=2)
    conv = getattr(nn, f"Conv{r}d")(4, 6, k, bias=False, **kw).to(np.float64)
    x = rng.standard_normal((2, 4) + (7, 6, 5)[:r])
    y = conv(x)
    # output_padding recovers the input size lost to the floor in the conv's size formula
    op = tuple(L - b for L, b in zip(x.shape[2:], conv_transpose_output_size(
        y.shape[2:], k, kw["stride"], kw["padding"], 0, kw["dilation"])))
    tconv = getattr(nn, f"ConvTranspose{r}d")(6, 4, k, output_padding=op, bias=False,
                                               **kw).to(np.float64)
    tconv.weight.data[...] = conv.weight.data
    v = rng.standard_normal(y.shape)
    xt = tconv(v)
    assert xt.shape == x.shape
    lhs, rhs = np.sum(y * v), np.sum(x * xt)
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))
    # and conv's input gradient is the transposed convolution of its upstream gradient
    np.testing.assert_allclose(conv.backward(v), xt, rtol=1e-12, atol=1e-13)


def test_conv2d_matches_a_direct_loop(path):
    rng = np.random.default_rng(0)
    m = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2),
                  groups=2).to(np.float64)
    x = rng.standard_normal((2, 4, 6, 5))
    y = m(x)
    W, b = m.weight.data, m.bias.data
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (2, 2)))
    ref = np.zeros_like(y)
    for n in range(2):
        for o in range(6):
            g = o // 3
            for i in range(y.shape[2]):
                for j in range(y.shape[3]):
                    patch = xp[n, 2 * g:2 * g + 2, 2 * i:2 * i + 3, j:j + 3:2]
                    ref[n, o, i, j] = np.sum(patch * W[o]) + b[o]
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_output_size_formula():
    assert conv_output_size(32, 3, 2, 1) == 16
    assert conv_output_size((13, 9), (5, 3), 2, (2, 1)) == (7, 5)
    assert conv_output_size(10, 3, 1, 0, dilation=3) == 4
    assert conv_transpose_output_size(16, 3, 2, 1, 1) == 32
    assert conv_transpose_output_size((4, 5), (2, 3), (2, 1), (0, 1), (1, 0), (1, 2)) == (9, 7)


def test_padding_same_and_valid_match_pytorch_rules(path):
    x = small((1, 2, 6, 7)).astype(np.float32)
    m = nn.Conv2d(2, 3, (4, 3), padding="same", dilation=(1, 2))
    assert m(x).shape == (1, 3, 6, 7)
    # an even total padding d(k-1) = 3 is split 1 before, 2 after (PyTorch)
    m2 = nn.Conv2d(2, 3, (4, 3), padding=0, dilation=(1, 2))
    m2.weight.data[...] = m.weight.data
    m2.bias.data[...] = m.bias.data
    xp = np.pad(x, ((0, 0), (0, 0), (1, 2), (2, 2)))
    np.testing.assert_allclose(m(x), m2(xp), rtol=1e-6)
    assert nn.Conv1d(1, 1, 3, padding="valid")(np.ones((1, 1, 5))).shape == (1, 1, 3)
    with pytest.raises(ValueError, match="padding='same' is not supported for strided"):
        nn.Conv2d(1, 1, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding must be"):
        nn.Conv2d(1, 1, 3, padding="full")


def test_circular_padding_is_periodic(path):
    rng = np.random.default_rng(0)
    m = nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular", bias=False).to(np.float64)
    x = rng.standard_normal((1, 1, 5, 6))
    tiled = np.tile(x, (1, 1, 3, 3))[:, :, 4:11, 5:13]      # x with a one-pixel wrap
    ref = nn.Conv2d(1, 1, 3, bias=False).to(np.float64)
    ref.weight.data[...] = m.weight.data
    np.testing.assert_allclose(m(x), ref(tiled), rtol=1e-12)


def test_unbatched_input_and_dtype_follow_pytorch(path):
    refdl.manual_seed(0)
    m = nn.Conv2d(2, 3, 3, padding=1)
    x = small((2, 5, 4)).astype(np.float32)
    with refdl.no_grad():                       # a reference output: records nothing
        yb = m(x[None])[0]
    y = m(x)
    assert y.shape == (3, 5, 4) and y.dtype == np.float32
    np.testing.assert_allclose(y, yb, rtol=1e-6)
    assert m.backward(np.ones_like(y)).shape == x.shape
    assert m(x.astype(np.float64)).dtype == np.float64
    t = nn.ConvTranspose1d(2, 3, 3, stride=2)
    assert t(small((2, 4))).shape == (3, 9)
    gradcheck(nn.Conv1d(2, 2, 3), small((2, 5)))


def test_conv_transpose_output_size_argument(path):
    m = nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1)
    x = small((1, 2, 4, 4)).astype(np.float32)
    assert m(x).shape == (1, 2, 7, 7)
    assert m(x, output_size=(8, 8)).shape == (1, 2, 8, 8)
    assert m(x, output_size=(1, 2, 7, 8)).shape == (1, 2, 7, 8)
    with pytest.raises(ValueError, match="not reachable"):
        m(x, output_size=(9, 9))


def test_default_initialisation_is_pytorchs():
    refdl.manual_seed(0)
    m = nn.Conv2d(8, 16, (3, 5), groups=2)
    fan_in = 4 * 3 * 5
    bound = 1 / np.sqrt(fan_in)        # kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in))
    assert m.weight.shape == (16, 4, 3, 5) and m.weight.dtype == np.float32
    assert np.abs(m.weight.data).max() <= bound and np.abs(m.weight.data).max() > 0.9 * bound
    assert np.abs(m.bias.data).max() <= bound
    t = nn.ConvTranspose2d(6, 4, 3, groups=2)
    assert t.weight.shape == (6, 2, 3, 3)
    assert np.abs(t.weight.data).max() <= 1 / np.sqrt(2 * 9)
    assert m.num_parameters() == 16 * 4 * 15 + 16
    assert [n for n, _ in nn.Conv1d(1, 1, 1, bias=False).named_parameters()] == ["weight"]


def test_non_contiguous_input_is_accepted(path):
    refdl.manual_seed(0)
    m = nn.Conv2d(3, 2, (2, 3), stride=(1, 2)).to(np.float64)
    base = np.random.default_rng(0).standard_normal((2, 6, 3, 5))
    x = base.transpose(0, 2, 1, 3)             # (2, 3, 6, 5), not C-contiguous
    assert not x.flags.c_contiguous
    np.testing.assert_allclose(m(x), m(np.ascontiguousarray(x)), rtol=1e-14)
    xs = base[:, ::2]                           # (2, 3, 3, 5) strided
    np.testing.assert_allclose(m(xs), m(xs.copy()), rtol=1e-14)


def test_column_buffer_is_reused_when_shapes_repeat(path):
    # NumPy path: backward hands the column buffer back, the next forward of the same shape
    # reuses it; a second forward while one is pending gets its own (each call keeps its
    # cache). Compiled path: no column matrix is kept (a call keeps x); the chunks' scratch
    # is one buffer reused by every call of the same shape.
    m = nn.Conv2d(2, 3, 3)
    x = small((2, 2, 6, 6)).astype(np.float32)
    g = np.ones((2, 3, 4, 4), np.float32)
    m(x)
    m.backward(g)
    buf = m._spare["chunks"] if path == "cython" else m._cols
    m.zero_grad()
    m(2 * x)
    if path == "cython":
        assert m._spare["chunks"] is buf
        assert not hasattr(m._saved[-1], "cols")
    else:
        assert m._saved[-1].cols is buf
    m(3 * x)                                    # a second pending call: its own cache
    if path == "cython":
        assert m._saved[-1].x is not m._saved[-2].x and m._spare["chunks"] is buf
    else:
        assert m._saved[-1].cols is not m._saved[-2].cols
    m.backward(g)                               # the 3x call's gradient ...
    m.backward(g)                               # ... then the 2x call's
    gw = m.weight.grad.copy()
    m2 = nn.Conv2d(2, 3, 3)
    m2.weight.data[...] = m.weight.data
    m2(2 * x)
    m2.backward(g)
    m2(3 * x)
    m2.backward(g)
    np.testing.assert_allclose(gw, m2.weight.grad, rtol=1e-6)


BAD = [
    (lambda: nn.Conv2d(3, 4, 5)(np.zeros((1, 3, 2, 2), np.float32)), ValueError,
     r"Conv2d\(3, 4, kernel_size=\(5, 5\).*kernel \(dilated size 5x5\) is larger than the "
     r"padded input \(2x2\) for input of shape \(1, 3, 2, 2\)"),
    (lambda: nn.Conv2d(3, 4, 3, padding=1, dilation=3)(np.zeros((1, 3, 4, 4), np.float32)),
     ValueError, r"dilated size 7x7\) is larger than the padded input \(6x6\)"),
    (lambda: nn.Conv2d(3, 4, 3, groups=2), ValueError,
     r"in_channels \(3\) must be divisible by groups \(2\)"),
    (lambda: nn.Conv1d(4, 3, 3, groups=2), ValueError,
     r"out_channels \(3\) must be divisible by groups \(2\)"),
    (lambda: nn.Conv2d(3, 4, 3)(np.zeros((3, 8), np.float32)), ValueError,
     r"Conv2d\(3, 4.*expected a 3-D \(unbatched\) or 4-D \(batched\) input \(N, C, H, W\), "
     r"got shape \(3, 8\)"),
    (lambda: nn.Conv3d(3, 4, 3)(np.zeros((1, 3, 8, 8), np.float32)), ValueError,
     r"expected input with 3 channels"),
    (lambda: nn.Conv2d(3, 4, 3)(np.zeros((1, 2, 8, 8), np.float32)), ValueError,
     r"expected input with 3 channels \(N, C, H, W\) with C=3, got shape \(1, 2, 8, 8\)"),
    (lambda: nn.Conv2d(3, 4, 3)(np.zeros((1, 3, 8, 8), np.int64)), TypeError,
     r"Conv2d\(3, 4.*expected a floating-point input .*got dtype int64"),
    (lambda: nn.Conv2d(1, 1, 3)(np.zeros((1, 1, 4, 4), np.float16)), TypeError,
     r"Conv2d\(1, 1.*expected a float32 or float64 input, got dtype float16"),
    (lambda: nn.ConvTranspose2d(2, 2, 3)(np.zeros((1, 2, 4, 4), np.int32)), TypeError,
     r"ConvTranspose2d.*floating-point"),
    (lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2), ValueError,
     r"output_padding \(2, 2\) must be smaller than either stride"),
    (lambda: nn.ConvTranspose2d(2, 2, 2, padding=3)(np.zeros((1, 2, 2, 2), np.float32)),
     ValueError, r"gives an empty output"),
    (lambda: nn.Conv2d(1, 1, 3, padding=3, padding_mode="reflect")(
        np.zeros((1, 1, 3, 3), np.float32)), ValueError, r"reflect padding 3 is too large"),
    (lambda: nn.Conv2d(1, 1, 0), ValueError, r"kernel_size must be positive"),
    (lambda: nn.Conv2d(1, 1, (2, 2, 2)), TypeError, r"kernel_size must be an int or a tuple"),
    (lambda: nn.Conv2d(1, 1, 3)("image"), TypeError, r"expected input to be a numpy array"),
]


@pytest.mark.parametrize("make,err,match", BAD)
def test_conv_bad_input_gives_clear_errors(path, make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_backward_checks(path):
    m = nn.Conv2d(1, 2, 3)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        m.backward(np.zeros((1, 2, 2, 2), np.float32))
    m(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected grad_out of shape \(1, 2, 2, 2\)"):
        m.backward(np.zeros((1, 2, 3, 3), np.float32))
    m.backward(np.zeros((1, 2, 2, 2), np.float32))
    # one backward per forward (each consumes its call's cache)
    with pytest.raises(nn.CacheError, match="call backward once per forward"):
        m.backward(np.zeros((1, 2, 2, 2), np.float32))
