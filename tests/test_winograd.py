"""Winograd F(2x2, 3x3) (refdl.functional.winograd, Conv2d(algorithm='winograd')).

Independent references: the 1-D and 2-D identities checked against the direct sums
written out, a brute-force convolution loop, the im2col path (a different algorithm), the
adjoint identity <T a, b> = <a, T* b> of every tile map, and numeric gradients.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refdl
from refdl import ext, nn
from refdl.functional import conv as fconv
from refdl.functional import winograd as wg
from refdl.gradcheck import check_module

PATHS = [pytest.param(False, id="compiled"), pytest.param(True, id="numpy")]


def _skip_if_absent(use_numpy):
    if not use_numpy and not ext.available():
        pytest.skip("compiled kernels not built")


def direct_conv(x, w, b, pads):
    """Brute-force cross-correlation: a loop over kernel taps with a padded copy."""
    (pt, pb), (pl, pr) = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    N, C, Hp, Wp = xp.shape
    O = w.shape[0]
    OH, OW = Hp - 2, Wp - 2
    y = np.zeros((N, O, OH, OW))
    for u in range(3):
        for v in range(3):
            y += np.einsum("nchw,oc->nohw", xp[:, :, u:u + OH, v:v + OW], w[:, :, u, v])
    return y + (0 if b is None else b.reshape(1, -1, 1, 1))


def test_f23_one_dimensional_identity():
    # F(2,3): 4 multiplications give both outputs of a 3-tap correlation over 4 inputs
    rng = np.random.default_rng(0)
    d, w = rng.standard_normal(4), rng.standard_normal(3)
    y = wg.AT @ ((wg.G @ w) * (wg.BT @ d))
    assert np.allclose(y, [d[0] * w[0] + d[1] * w[1] + d[2] * w[2],
                           d[1] * w[0] + d[2] * w[1] + d[3] * w[2]], rtol=0, atol=1e-14)


def test_f2x2_3x3_one_tile_matches_direct_sum():
    rng = np.random.default_rng(1)
    d, w = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
    Y = wg.AT @ ((wg.G @ w @ wg.G.T) * (wg.BT @ d @ wg.BT.T)) @ wg.AT.T
    direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * w) for j in range(2)]
                       for i in range(2)])
    assert np.allclose(Y, direct, rtol=0, atol=1e-13)


@pytest.mark.parametrize("use_numpy", PATHS)
@pytest.mark.parametrize("shape,O,pads", [
    ((2, 3, 7, 6), 4, ((1, 1), (1, 1))),      # odd output height: a cropped tile row
    ((1, 2, 3, 3), 3, ((0, 0), (0, 0))),      # a single output pixel
    ((2, 2, 4, 9), 2, ((2, 0), (0, 1))),      # asymmetric padding
    ((1, 1, 1, 1), 2, ((1, 1), (1, 1))),      # a 1x1 input, all padding
    ((1, 2, 5, 4), 1, ((3, 3), (2, 2))),      # padding wider than the input
])
def test_conv2d_matches_brute_force(use_numpy, shape, O, pads):
    _skip_if_absent(use_numpy)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((O, shape[1], 3, 3))
    b = rng.standard_normal(O)
    with ext.numpy_path(use_numpy):
        y, V, U = wg.conv2d(x, w, b, pads)
    assert np.allclose(y, direct_conv(x, w, b, pads), rtol=1e-12, atol=1e-12)


def _im2col_conv_and_grads(x, w, g, pads):
    """y, dx, dW by im2col + GEMM + col2im (NumPy reference)."""
    N, C, H, W = x.shape
    O = w.shape[0]
    OH, OW = g.shape[2:]
    cols = fconv.im2col(x, (3, 3), 1, pads, 1, (OH, OW))
    y = (w.reshape(O, -1) @ cols).reshape(O, N, OH, OW).transpose(1, 0, 2, 3)
    gm = g.transpose(1, 0, 2, 3).reshape(O, -1)
    dW = (gm @ cols.T).reshape(w.shape)
    dx = fconv.col2im(w.reshape(O, -1).T @ gm, x.shape, (3, 3), 1, pads, 1, (OH, OW))
    return y, dx, dW


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 5), O=st.integers(1, 5),
       H=st.integers(1, 9), W=st.integers(1, 9),
       pads=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2),
                      st.integers(0, 2)),
       use_numpy=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_differential_against_im2col(N, C, O, H, W, pads, use_numpy, seed):
    pt, pb, pl, pr = pads
    if H + pt + pb < 3 or W + pl + pr < 3:
        return                                   # the kernel does not fit
    if not use_numpy and not ext.available():
        use_numpy = True
    P = ((pt, pb), (pl, pr))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((O, C, 3, 3))
    with ext.numpy_path(use_numpy):
        y, V, U = wg.conv2d(x, w, None, P)
        g = rng.standard_normal(y.shape)
        dx, dW = wg.conv2d_backward(g, V, U, x.shape, P)
    yr, dxr, dWr = _im2col_conv_and_grads(x, w, g, P)
    assert np.allclose(y, yr, rtol=1e-11, atol=1e-11)
    assert np.allclose(dx, dxr, rtol=1e-11, atol=1e-11)
    assert np.allclose(dW, dWr, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("use_numpy", PATHS)
def test_tile_maps_are_adjoint_pairs(use_numpy):
    _skip_if_absent(use_numpy)
    rng = np.random.default_rng(3)
    N, C, O, H, W = 2, 3, 4, 7, 8
    pads = ((1, 1), (1, 0))
    OH, OW = H + 2 - 2, W + 1 - 2
    TH, TW = wg.tiles((OH, OW))
    P = N * TH * TW
    x, V = rng.standard_normal((N, C, H, W)), rng.standard_normal((16, C, P))
    M, g = rng.standard_normal((16, O, P)), rng.standard_normal((N, O, OH, OW))
    with ext.numpy_path(use_numpy):
        Tx = wg.input_transform(x, pads, TH, TW)
        TsV = wg.input_transform_adjoint(V.copy(), x.shape, pads, TH, TW)
        SM = wg.output_transform(M, (N, O, OH, OW))
        Ssg = wg.output_transform_adjoint(g)
    assert np.isclose(np.sum(Tx * V), np.sum(x * TsV), rtol=1e-12)
    assert np.isclose(np.sum(SM * g), np.sum(M * Ssg), rtol=1e-12)
    w, dU = rng.standard_normal((O, C, 3, 3)), rng.standard_normal((16, O, C))
    assert np.isclose(np.sum(wg.weight_transform(w) * dU),
                      np.sum(w * wg.weight_transform_adjoint(dU, (O, C))), rtol=1e-12)


def test_compiled_equals_numpy_reference_float32():
    _skip_if_absent(False)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5, 9, 10)).astype(np.float32)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    pads = ((1, 1), (1, 1))
    out = {}
    for path in (False, True):
        with ext.numpy_path(path):
            y, V, U = wg.conv2d(x, w, b, pads)
            g = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
            dx, dW = wg.conv2d_backward(g, V, U, x.shape, pads)
        out[path] = (y, dx, dW)
    for a, r in zip(out[False], out[True]):
        assert a.dtype == np.float32 and r.dtype == np.float32
        assert np.allclose(a, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_numpy", PATHS)
def test_conv2d_layer_gradcheck_winograd(use_numpy):
    _skip_if_absent(use_numpy)
    refdl.manual_seed(0)
    m = nn.Conv2d(3, 4, 3, padding=1)
    m.algorithm = "winograd"
    x = np.random.default_rng(6).standard_normal((2, 3, 5, 6))
    with ext.numpy_path(use_numpy):
        check_module(m, x)


@pytest.mark.parametrize("use_numpy", PATHS)
def test_layer_winograd_equals_im2col(use_numpy):
    _skip_if_absent(use_numpy)
    refdl.manual_seed(0)
    m = nn.Conv2d(4, 5, 3, padding=(1, 2)).to(np.float64)
    x = np.random.default_rng(7).standard_normal((3, 4, 8, 7))
    res = {}
    with ext.numpy_path(use_numpy):
        for algo in ("winograd", "im2col"):
            m.algorithm = algo
            m.zero_grad()
            y = m(x)
            g = np.random.default_rng(8).standard_normal(y.shape)
            dx = m.backward(g)
            res[algo] = (y, dx, m.weight.grad.copy(), m.bias.grad.copy())
    for a, b in zip(res["winograd"], res["im2col"]):
        assert np.allclose(a, b, rtol=1e-11, atol=1e-11)


def test_unbatched_input_and_padding_same():
    refdl.manual_seed(0)
    m = nn.Conv2d(2, 3, 3, padding="same").to(np.float64)
    x = np.random.default_rng(9).standard_normal((2, 6, 5))
    m.algorithm = "winograd"
    y = m(x)
    dx = m.backward(np.ones_like(y))
    m.algorithm = "im2col"
    y2 = m(x)
    dx2 = m.backward(np.ones_like(y2))
    assert y.shape == (3, 6, 5)
    assert np.allclose(y, y2, atol=1e-12) and np.allclose(dx, dx2, atol=1e-12)


def test_forcing_winograd_where_it_does_not_apply_is_a_clear_error():
    x = np.zeros((1, 2, 6, 6), np.float32)
    for kw in (dict(kernel_size=3, stride=2), dict(kernel_size=5),
               dict(kernel_size=3, dilation=2), dict(kernel_size=3, groups=2),
               dict(kernel_size=3, padding=1, padding_mode="reflect")):
        m = nn.Conv2d(2, 2, **kw)
        m.algorithm = "winograd"
        with pytest.raises(ValueError, match=r"Conv2d.*winograd"):
            m(x)
    m = nn.Conv2d(2, 2, 3)
    m.algorithm = "fft"
    with pytest.raises(ValueError, match=r"Conv2d.*algorithm must be one of"):
        m(x)


def test_auto_selects_winograd_only_where_it_measured_faster():
    from refdl.nn import conv as conv_mod
    c = conv_mod.WINOGRAD_MIN_CHANNELS
    big = nn.Conv2d(c, c, 3, padding=1).eval()
    small = nn.Conv2d(3, c, 3, padding=1).eval()
    fewer = nn.Conv2d(c - 1, 2 * c, 3, padding=1).eval()
    strided = nn.Conv2d(c, c, 3, padding=1, stride=2).eval()
    xc = np.zeros((1, c, 8, 8), np.float32)
    big(xc)
    small(np.zeros((1, 3, 8, 8), np.float32))
    fewer(np.zeros((1, c - 1, 8, 8), np.float32))
    strided(xc)
    compiled = ext.available()
    assert big.last_algorithm == ("winograd" if compiled else "im2col")
    # the others run the GEMM path, or (compiled, float32, at least 27 taps) the direct
    # convolution, never Winograd
    assert small.last_algorithm == fewer.last_algorithm == strided.last_algorithm == \
        ("direct" if compiled else "im2col")
    with ext.numpy_path():
        big(xc)
        assert big.last_algorithm == "im2col"   # the NumPy path keeps im2col unless forced


def test_backward_twice_after_one_forward_is_refused():
    m = nn.Conv2d(2, 2, 3)
    m.algorithm = "winograd"
    y = m(np.ones((1, 2, 4, 4)))
    m.backward(np.ones_like(y))
    with pytest.raises(nn.CacheError, match="Conv2d.*backward called before forward"):
        m.backward(np.ones_like(y))


@pytest.mark.parametrize("use_numpy", PATHS)
def test_chunked_products_with_an_uneven_last_chunk(use_numpy, monkeypatch):
    # 5 images, chunks of 2: (0, 2), (2, 4), (4, 5); the M buffer is reused between calls
    _skip_if_absent(use_numpy)
    rng = np.random.default_rng(11)
    N, C, O, H, W = 5, 3, 4, 6, 7
    pads = ((1, 1), (1, 1))
    T = 3 * 4                                       # tiles per image: ceil(6/2)*ceil(7/2)
    monkeypatch.setattr(wg, "CHUNK_BYTES", 2 * 16 * O * T * 8)
    assert wg._chunks(N, T, O, 8) == [(0, 2), (2, 4), (4, 5)]
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((O, C, 3, 3))
    b = rng.standard_normal(O)
    bufs = {}
    with ext.numpy_path(use_numpy):
        for _ in range(2):
            y, V, U = wg.conv2d(x, w, b, pads, buffers=bufs)
            g = rng.standard_normal(y.shape)
            dx, dW = wg.conv2d_backward(g, V, U, x.shape, pads, buffers=bufs)
            yr, dxr, dWr = _im2col_conv_and_grads(x, w, g, pads)
            assert np.allclose(y, yr + b.reshape(1, -1, 1, 1), rtol=1e-11, atol=1e-11)
            assert np.allclose(dx, dxr, rtol=1e-11, atol=1e-11)
            assert np.allclose(dW, dWr, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("algo", ["winograd", "im2col"])
def test_one_layer_called_twice_gets_both_gradients(algo):
    # per-call caches: two pending forwards, backwards in reverse order; the reference is
    # two separate copies of the layer, each called once
    import copy
    refdl.manual_seed(0)
    m = nn.Conv2d(16, 16, 3, padding=1).to(np.float64)
    m.algorithm = algo
    rng = np.random.default_rng(12)
    x1, x2 = rng.standard_normal((2, 16, 6, 6)), rng.standard_normal((3, 16, 6, 6))
    g1, g2 = rng.standard_normal((2, 16, 6, 6)), rng.standard_normal((3, 16, 6, 6))
    a, b = copy.deepcopy(m), copy.deepcopy(m)
    m(x1)
    m(x2)
    assert m.num_saved == 2
    dx2 = m.backward(g2)
    dx1 = m.backward(g1)
    a(x1)
    b(x2)
    assert np.allclose(dx1, a.backward(g1), atol=1e-12)
    assert np.allclose(dx2, b.backward(g2), atol=1e-12)
    assert np.allclose(m.weight.grad, a.weight.grad + b.weight.grad, atol=1e-11)
    assert np.allclose(m.bias.grad, a.bias.grad + b.bias.grad, atol=1e-11)


@pytest.mark.parametrize("algo", ["winograd", "im2col"])
def test_inference_records_nothing_and_a_bad_grad_keeps_the_cache(algo):
    m = nn.Conv2d(16, 16, 3, padding=1)
    m.algorithm = algo
    x = np.ones((1, 16, 5, 5), np.float32)
    with refdl.no_grad():
        for _ in range(3):
            m(x)
    m.eval()
    m(x)
    assert m.num_saved == 0
    m.train()
    y = m(x)
    with pytest.raises(ValueError, match=r"Conv2d.*expected grad_out of shape"):
        m.backward(np.ones((1, 16, 4, 4), np.float32))
    assert m.num_saved == 1
    assert m.backward(np.ones_like(y)).shape == x.shape


@pytest.mark.parametrize("rows", [1, 2, 3, 10])
def test_ranges_of_tile_rows_with_an_uneven_last_range(rows, monkeypatch):
    # the compiled path runs ranges of whole tile rows (RANGE_BYTES); forced small here so
    # that an image is split into several ranges, the last one shorter (rows 1-3), or
    # that a range holds two whole images and the last one image (rows 10); odd output
    # sizes (cropped tiles) and asymmetric padding; reference: im2col + GEMM + col2im
    _skip_if_absent(False)
    rng = np.random.default_rng(13)
    N, C, O, H, W = 3, 3, 5, 9, 8
    pads = ((1, 2), (0, 1))
    OH, OW = H + 3 - 2, W + 1 - 2
    TH, TW = wg.tiles((OH, OW))                      # 5 x 4 tiles
    monkeypatch.setattr(wg, "RANGE_BYTES", 16 * (C + O) * 8 * rows * TW)
    k = wg._range_tiles(C, O, 8)
    ranges = wg._row_ranges((0, N), TH, TW, k)
    if rows < TH:
        R = wg._rows_per_range(TH, TW, k)
        assert R == rows and len(ranges) == N * -(-TH // R)
        assert all(len(segs) == 1 for segs in ranges)
        assert any(t1 - t0 < R for [(_, t0, t1)] in ranges) or TH % R == 0
    else:
        assert ranges == [[(0, 0, TH), (1, 0, TH)], [(2, 0, TH)]]
    assert wg._range_capacity(TH, TW, k) == min(rows, 2 * TH) * TW
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((O, C, 3, 3))
    b = rng.standard_normal(O)
    bufs = {}
    for _ in range(2):                               # the scratch buffers are reused
        y, xs, U = wg.conv2d(x, w, b, pads, buffers=bufs)
        g = rng.standard_normal(y.shape)
        dx, dW = wg.conv2d_backward(g, xs, U, x.shape, pads, buffers=bufs)
        yr, dxr, dWr = _im2col_conv_and_grads(x, w, g, pads)
        assert np.allclose(y, yr + b.reshape(1, -1, 1, 1), rtol=1e-11, atol=1e-11)
        assert np.allclose(dx, dxr, rtol=1e-11, atol=1e-11)
        assert np.allclose(dW, dWr, rtol=1e-11, atol=1e-11)


def test_chunks_leave_work_for_a_second_thread_only_where_it_pays():
    # M of (64,32,16,16)->32 is 64 images of 16*32*64 floats (128 KiB each): one 8 MiB
    # chunk would leave a second thread idle, so four groups of 2 MiB; (16,64,8,8)->64
    # (16 tiles per image) makes two groups of 128 tiles, (8,128,8,8)->128 stays one
    # (groups of fewer tiles cost more than they save)
    assert wg._chunks(64, 64, 32, 4) == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert wg._chunks(16, 16, 64, 4) == [(0, 8), (8, 16)]
    assert wg._chunks(8, 16, 128, 4) == [(0, 8)]
    big = wg._chunks(64, 256, 64, 4)                    # 1 MiB per image: 8 per chunk
    assert big == [(n, n + 8) for n in range(0, 64, 8)]
    for N in (0, 1, 5, 63, 64, 65):                     # always a partition, in order
        ch = wg._chunks(N, 64, 32, 4)
        assert [a for a, _ in ch] == list(range(0, N, ch[0][1] - ch[0][0])) if N else ch == []
        assert all(b > a for a, b in ch) and (not ch or (ch[0][0], ch[-1][1]) == (0, N))
        assert all(ch[i][1] == ch[i + 1][0] for i in range(len(ch) - 1))


def test_team_kernels_on_every_build_against_im2col(kernel_build, monkeypatch):
    # winograd_forward / winograd_backward of each build (baseline, AVX2) against im2col
    # + GEMM + col2im: asymmetric padding, odd outputs (cropped tiles), images split into
    # ranges of tile rows and ranges holding several images, one and several chunks,
    # float64 and float32, with and without dx / dW; the same bits on 1 and 2 threads
    rng = np.random.default_rng(21)
    cases = [((3, 3, 9, 8), 5, ((1, 2), (0, 1)), 1 << 30, 1),
             ((3, 3, 9, 8), 5, ((1, 2), (0, 1)), 1, 2),
             ((4, 2, 5, 7), 3, ((0, 0), (2, 1)), 1, 40),
             ((2, 4, 12, 11), 2, ((1, 1), (1, 1)), 1 << 30, 3)]
    before = refdl.get_num_threads()
    try:
        for shape, O, pads, chunk_bytes, rows in cases:
            N, C, H, W = shape
            OH, OW = H + sum(pads[0]) - 2, W + sum(pads[1]) - 2
            TW = wg.tiles((OH, OW))[1]
            monkeypatch.setattr(wg, "CHUNK_BYTES", chunk_bytes)
            monkeypatch.setattr(wg, "MIN_CHUNK_TILES", 1)
            monkeypatch.setattr(wg, "RANGE_BYTES", 16 * (C + O) * 8 * rows * TW)
            x, w = rng.standard_normal(shape), rng.standard_normal((O, C, 3, 3))
            b = rng.standard_normal(O)
            for dtype, tol in ((np.float64, 1e-11), (np.float32, 2e-4)):
                xs, ws, bs = (a.astype(dtype) for a in (x, w, b))
                runs = []
                for threads in (1, 2):
                    refdl.set_num_threads(threads)
                    y, xk, U = wg.conv2d(xs, ws, bs, pads, buffers={})
                    g = np.random.default_rng(22).standard_normal(y.shape).astype(dtype)
                    dx, dW = wg.conv2d_backward(g, xk, U, x.shape, pads)
                    dx_only = wg.conv2d_backward(g, xk, U, x.shape, pads, need_dw=False)
                    dW_only = wg.conv2d_backward(g, xk, U, x.shape, pads, need_dx=False)
                    assert dx_only[1] is None and dW_only[0] is None
                    assert np.array_equal(dx_only[0], dx)
                    assert np.array_equal(dW_only[1], dW)
                    runs.append((y, dx, dW))
                for u, v in zip(*runs):
                    assert np.array_equal(u, v), "1 vs 2 threads"
                yr, dxr, dWr = _im2col_conv_and_grads(x, w, g.astype(np.float64), pads)
                y, dx, dW = runs[0]
                scale = dict(rtol=tol, atol=tol * 10)
                assert np.allclose(y, yr + b.reshape(1, -1, 1, 1), **scale), (shape, dtype)
                assert np.allclose(dx, dxr, **scale), (shape, dtype)
                assert np.allclose(dW, dWr, **scale), (shape, dtype)
    finally:
        refdl.set_num_threads(before)


def test_team_kernels_refuse_bad_tables():
    # the tables are checked before any loop runs: a segment outside the batch, ranges
    # whose tiles are not consecutive, a range wider than kmax, chunks that do not cover
    # the batch, too small a scratch: ValueError, nothing written
    _skip_if_absent(False)
    K = wg._kernels()
    N, C, O, H, W = 2, 3, 4, 6, 6
    TH, TW = wg.tiles((H, W))
    x = np.ones((N, C, H, W))
    U = wg.weight_transform(np.ones((O, C, 3, 3)))
    y = np.zeros((N, O, H, W))
    chunk_ranges, range_segs, segs, kmax = wg._plan(N, C, O, TH, TW, 8)
    scratch = wg._team_scratch({}, 1, C, O, kmax, TW, np.float64)
    b = np.zeros(1)

    def run(cr=chunk_ranges, rs=range_segs, sg=segs, k=kmax, sc=scratch):
        K.winograd_forward(x, U, b, False, y, sc, np.ascontiguousarray(cr),
                           np.ascontiguousarray(rs), np.ascontiguousarray(sg), k, 1, 1, 1)
    run()                                             # the plan itself is accepted
    ok = y.copy()
    y[...] = 0
    bad = segs.copy()
    bad[-1, 0] = N                                    # image N does not exist
    with pytest.raises(ValueError, match="outside the batch"):
        run(sg=bad)
    whole = np.array([[0, 0, TH], [1, 0, TH]], np.int64)
    with pytest.raises(ValueError, match="not consecutive"):     # 0 then 1 at row 1
        run(cr=np.array([0, 1]), rs=np.array([0, 2]),
            sg=np.array([[0, 0, TH], [1, 1, TH]], np.int64))
    with pytest.raises(ValueError, match="wider than kmax"):
        run(cr=np.array([0, 1]), rs=np.array([0, 2]), sg=whole, k=TH * TW)
    with pytest.raises(ValueError, match="cover the batch"):
        run(cr=np.array([0, 1]), rs=np.array([0, 1]), sg=whole[:1], k=TH * TW)
    with pytest.raises(ValueError, match="scratch too small"):
        run(sc=scratch[:, :10])
    assert not y.any()                                # nothing ran
    run()
    assert np.array_equal(y, ok)


def test_whole_array_maps_refuse_planes_that_do_not_fit(kernel_build):
    # the compiled whole-array maps and input_tiles check their planes and tiles against
    # the arrays before any loop: too few columns, a wrong channel count, tiles that do
    # not match the output, tiles past the batch: ValueError, nothing written
    from refdl import ext
    K = ext.compiled_module()
    N, C, O, H, W = 2, 3, 4, 5, 6
    TH, TW = wg.tiles((H, W))
    P = N * TH * TW
    x = np.ones((N, C, H, W))
    y = np.zeros((N, O, H, W))
    b = np.zeros(O)
    with pytest.raises(ValueError, match="do not fit"):
        K.input_transform(x, np.zeros((16, C, P - 1)), 1, 1, TH, TW)
    with pytest.raises(ValueError, match="do not fit"):
        K.input_transform_adjoint(np.zeros((16, C + 1, P)), x.copy(), 1, 1, TH, TW)
    with pytest.raises(ValueError, match="do not fit"):
        K.output_transform(np.zeros((16, O, P)), y, b, True, TH + 1, TW)   # rows past y
    with pytest.raises(ValueError, match="do not fit"):
        K.output_transform_adjoint(y, np.zeros((16, O, P)), TH, TW - 1)
    with pytest.raises(ValueError, match="inside the batch"):
        K.input_tiles(x, np.zeros((16, 4, C)), 1, 1, TH, TW, P - 2, P + 2)
    assert not y.any()
    V = np.zeros((16, C, P))
    K.input_transform(x, V, 1, 1, TH, TW)                          # the right sizes run
    assert V.any()
