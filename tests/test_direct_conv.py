"""The direct convolution (refdl.ext.conv_forward_direct, docs/derivations/conv.md).

Each output of a float32 direct convolution is a chain of fused multiply-adds over its
taps, from +0.0 in the order k = (c, kd, kh, kw), then plus the bias:

    a_0 = +0,  a_{k+1} = fl(w_k x_k + a_k)  (one rounding),  y = fl(a_K + b).

Here that chain is recomputed exactly (Python's fractions, rounded to the nearest
float32 by hand, ties to even) and must equal the kernel's bits in every build and with
every kernel a build runs; the rule that picks the direct path and the layer's report of
it; and the kernel's own checks of the tables it trusts. The differential fuzz test is
test_fuzz_kernels.py::test_fuzz_conv_direct_kernel.
"""
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

import refdl
from refdl import ext, nn

from conftest import KERNEL_VARIANTS, kernel_variant_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def round_f32(q):
    """The float32 nearest to the rational q (ties to even): the rounding of an IEEE fma."""
    f = np.float32(float(q))                    # within one float32 step of q
    candidates = [f, np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(-np.inf))]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - q),
                                          int(np.array(c).view(np.int32)) & 1))


def fma_chain_conv(x, W, b, stride, pad, fused=True):
    """The documented chain for a 2-D convolution (groups 1), exactly: (N, C_out, OH, OW).
    fused=False: the product rounded first, then the sum (two roundings per tap)."""
    N, C, H, Wd = x.shape
    Co, _, KH, KW = W.shape
    OH, OW = (H + 2 * pad - KH) // stride + 1, (Wd + 2 * pad - KW) // stride + 1
    xp = np.zeros((N, C, H + 2 * pad, Wd + 2 * pad), np.float32)
    xp[:, :, pad:pad + H, pad:pad + Wd] = x
    y = np.empty((N, Co, OH, OW), np.float32)
    for n in range(N):
        for co in range(Co):
            for oh in range(OH):
                for ow in range(OW):
                    acc = np.float32(0.0)
                    for c in range(C):
                        for kh in range(KH):
                            for kw in range(KW):
                                v = xp[n, c, oh * stride + kh, ow * stride + kw]
                                p = Fraction(float(W[co, c, kh, kw])) * Fraction(float(v))
                                if not fused:
                                    p = Fraction(float(round_f32(p)))
                                acc = round_f32(p + Fraction(float(acc)))
                    y[n, co, oh, ow] = acc + (b[co] if b is not None else np.float32(0))
    return y


@pytest.mark.parametrize("variant", KERNEL_VARIANTS)
def test_direct_conv_is_the_fma_chain_in_every_build(variant, monkeypatch):
    mod = kernel_variant_module(variant)
    monkeypatch.setattr(ext, "_K", mod)
    rng = np.random.default_rng(7)
    # 18 output channels: a full block of lanes and a partial one (8 or 16 lanes); padding
    # 1 and stride 2: the zero-padded copy and a strided read
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    W = rng.standard_normal((18, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(18).astype(np.float32)
    want = fma_chain_conv(x, W, b, 2, 1)
    # the data tell a fused multiply-add from a product rounded before the sum
    assert not np.array_equal(want, fma_chain_conv(x, W, b, 2, 1, fused=False))
    with ext.numpy_path(False):
        for isa in mod.direct_isas():
            mod.set_direct_isa(isa)
            try:
                got = ext.conv_forward(x, W.reshape(18, -1), b, (3, 3), (2, 2),
                                       ((1, 1), (1, 1)), (1, 1), want.shape[2:], 1,
                                       direct=True)
            finally:
                mod.set_direct_isa(None)
            assert got.reshape(want.shape).tobytes() == want.tobytes(), (variant, isa)


def test_round_f32_rounds_to_nearest_even():
    one = Fraction(1)
    step = Fraction(1, 2 ** 23)                 # float32's spacing in [1, 2)
    assert round_f32(one + step / 2) == np.float32(1)          # a tie: to the even one
    assert round_f32(one + 3 * step / 2) == np.float32(1 + 2 * float(step))
    assert round_f32(one + step / 2 + Fraction(1, 2 ** 60)) == np.float32(1 + float(step))
    assert round_f32(-(one + step / 3)) == np.float32(-1)


def test_the_rule_and_the_layer_report(monkeypatch):
    if not ext.available():
        pytest.skip("the compiled kernels are not built (NumPy path only)")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6, 14, 14)).astype(np.float32)
    conv2 = nn.Conv2d(6, 16, 5).to(np.float32)
    y = conv2(x)
    assert conv2.last_algorithm == "direct"
    ref = nn.Conv2d(6, 16, 5)
    ref.weight.data[...] = conv2.weight.data
    ref.bias.data[...] = conv2.bias.data
    y64 = ref(x.astype(np.float64))
    assert ref.last_algorithm == "im2col"                      # float64: the GEMM path
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=1e-5)
    # its backward is the GEMM path's, as for im2col
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx = conv2.backward(g)
    dx64 = ref.backward(g.astype(np.float64))
    np.testing.assert_allclose(dx, dx64, rtol=1e-4, atol=1e-4)
    conv2.algorithm = "im2col"
    conv2(x)
    assert conv2.last_algorithm == "im2col"
    # a Conv1d with 5 taps per output, below DIRECT_MIN_TAPS; 3 output channels, below
    # DIRECT_MIN_CHANNELS
    short = nn.Conv1d(1, 32, 5).to(np.float32)
    short(rng.standard_normal((4, 1, 40)).astype(np.float32))
    assert short.last_algorithm == "im2col"
    few = nn.Conv2d(6, 3, 5).to(np.float32)
    few(x)
    assert few.last_algorithm == "im2col"
    # LeNet's conv1 (25 taps, 6 channels: on 8 lanes)
    conv1 = nn.Conv2d(1, 6, 5).to(np.float32)
    conv1(rng.standard_normal((4, 1, 28, 28)).astype(np.float32))
    assert conv1.last_algorithm == "direct"
    # a 1x1 convolution is a plain GEMM
    pw = nn.Conv2d(64, 64, 1).to(np.float32)
    pw(rng.standard_normal((2, 64, 4, 4)).astype(np.float32))
    assert pw.last_algorithm == "im2col"
    with ext.numpy_path(True):
        conv2.algorithm = "auto"
        conv2(x)
        assert conv2.last_algorithm == "im2col"


def test_rule_is_the_same_at_any_thread_count():
    if not ext.available():
        pytest.skip("the compiled kernels are not built (NumPy path only)")
    before = refdl.get_num_threads()
    args = ((64, 6, 14, 14), (16, 150), np.float32, (5, 5), (1, 1), ((0, 0), (0, 0)),
            (1, 1), (10, 10), 1)
    try:
        seen = set()
        for n in (1, 2):
            refdl.set_num_threads(n)
            seen.add(ext.conv_direct(*args))
    finally:
        refdl.set_num_threads(before)
    assert seen == {True}


def test_direct_kernel_checks_its_tables():
    if not ext.available():
        pytest.skip("the compiled kernels are not built (NumPy path only)")
    K = ext._K
    L = K.direct_lanes()
    x = np.ones((2, 3, 5, 5), np.float32).reshape(2, 3, 1, 5, 5)
    wp = np.ones((1, 1, 27, L), np.float32)
    y = np.empty((2, 4, 9), np.float32)
    s = np.zeros((4, 1024), np.float32)
    off, dims, rows, _ = ext._direct_plan(x.shape, (1, 3, 3, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 3, 3),
                                          1, L)
    geom = (*dims, 0, 0, 0, 1, 1, 1, 1, 3, 3, rows)
    K.conv_forward_direct(x, wp, np.zeros(0, np.float32), y, s, off, *geom)
    np.testing.assert_array_equal(y, 27)       # every output: 27 taps of 1 * 1
    bad = np.array(off)
    bad[-1] += 1                               # the last tap one entry past the image
    with pytest.raises(ValueError, match="reads outside"):
        K.conv_forward_direct(x, wp, np.zeros(0, np.float32), y, s, bad, *geom)
    bad[-1] = -1
    with pytest.raises(ValueError, match="reads outside"):
        K.conv_forward_direct(x, wp, np.zeros(0, np.float32), y, s, bad, *geom)
    with pytest.raises(ValueError, match="lanes"):
        K.conv_forward_direct(x, np.ones((1, 1, 27, L + 1), np.float32),
                              np.zeros(0, np.float32), y, s, off, *geom)
    with pytest.raises(ValueError, match="scratch"):
        K.conv_forward_direct(x, wp, np.zeros(0, np.float32), y, np.zeros((4, 8), np.float32), off, *geom)
    with pytest.raises(ValueError, match="inconsistent"):
        K.conv_forward_direct(x, wp, np.zeros(0, np.float32), np.empty((2, 4, 8), np.float32), s, off,
                              *geom)
    with pytest.raises(ValueError, match="set_direct_isa"):
        K.set_direct_isa("sse9")
    with pytest.raises(ValueError, match="float32"):
        ext.conv_forward(x.astype(np.float64)[:, :, 0], np.ones((4, 27)), None, (3, 3),
                         (1, 1), ((0, 0), (0, 0)), (1, 1), (3, 3), 1, direct=True)


@pytest.mark.parametrize("variant", KERNEL_VARIANTS)
def test_direct_wide_rows_every_kernel_alike(variant, monkeypatch):
    # rows of 8 outputs and more (the vector kernels store 8 x 8 blocks transposed in
    # registers, the rest one by one), 1 to 40 output channels (8 and 16 lanes, partial
    # blocks), with and without bias and padding: every kernel of the build gives the
    # portable loop's bits, within the recursive-sum bound of a float64 reference
    mod = kernel_variant_module(variant)
    monkeypatch.setattr(ext, "_K", mod)
    rng = np.random.default_rng(11)
    with ext.numpy_path(False):
        for trial in range(12):
            C, Co = int(rng.integers(1, 5)), int(rng.integers(1, 41))
            k, pad = int(rng.integers(1, 4)), int(rng.integers(0, 3))
            W_in = int(rng.integers(8, 40))
            x = rng.standard_normal((2, C, 3, W_in)).astype(np.float32)
            w2 = rng.standard_normal((Co, C * k * k)).astype(np.float32)
            b = rng.standard_normal(Co).astype(np.float32) if trial % 2 else None
            out = (3 + 2 * pad - k + 1, W_in + 2 * pad - k + 1)
            args = ((k, k), (1, 1), ((pad, pad), (pad, pad)), (1, 1), out, 1)
            ys = {}
            for isa in mod.direct_isas():
                mod.set_direct_isa(isa)
                try:
                    ys[isa] = ext.conv_forward(x, w2, b, *args, direct=True)
                finally:
                    mod.set_direct_isa(None)
            for isa, y in ys.items():
                assert y.tobytes() == ys["portable"].tobytes(), (variant, isa, C, Co, k, W_in)
            xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
            ref = np.zeros((2, Co) + out)
            bound = np.zeros_like(ref)
            W4 = w2.astype(np.float64).reshape(Co, C, k, k)
            for kh in range(k):
                for kw in range(k):
                    win = xp[:, :, kh:kh + out[0], kw:kw + out[1]]
                    ref += np.einsum("oc,nchw->nohw", W4[:, :, kh, kw], win)
                    bound += np.einsum("oc,nchw->nohw", np.abs(W4[:, :, kh, kw]), np.abs(win))
            if b is not None:
                ref += b[:, None, None]
            err = np.abs(ys["portable"] - ref)
            assert (err <= (C * k * k + 1) * 2.0 ** -24 * bound + 2.0 ** -24 * np.abs(ref)
                    + 1e-30).all()


@pytest.mark.parametrize("variant", KERNEL_VARIANTS)
def test_the_fastest_direct_kernel_is_chosen_at_import(variant):
    # before any call: a first call with few channels (8 lanes) must not find the choice
    # unmade and run the portable loop
    kernel_variant_module(variant)             # skips where the build is missing
    code = ("import refdl.ext as e; K = e.load_variant(%r); "
            "print(K.direct_isa(), K.direct_isas()[-1])" % variant)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    assert out[0] == out[1], out
