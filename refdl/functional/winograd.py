r"""Winograd F(2x2, 3x3): a 3x3 stride-1 convolution with 2.25x fewer multiplications.

Derivation: docs/derivations/winograd.md. For one input channel, one output channel and
one 4x4 input tile d (the receptive field of a 2x2 output tile), with the 3x3 kernel w,

    Y = A^T [ (G w G^T) (.) (B^T d B) ] A                 (.) = elementwise product

        B^T = [[1, 0,-1, 0],     G = [[  1,   0,   0],     A^T = [[1, 1, 1, 0],
               [0, 1, 1, 0],          [1/2, 1/2, 1/2],            [0, 1,-1,-1]]
               [0,-1, 1, 0],          [1/2,-1/2, 1/2],
               [0, 1, 0,-1]]          [  0,   0,   1]]

gives the 2x2 outputs exactly (16 multiplications instead of 36). Summing over input
channels happens *inside* the brackets, so with many channels the elementwise products
become 16 matrix products, one per position xi of the 4x4 transformed tile:

    U[xi] = (G w G^T)[xi]           (C_out, C_in)      weight transform
    V[xi] = (B^T d B)[xi]           (C_in, P)          input transform, P = N*TH*TW tiles
    M[xi] = U[xi] @ V[xi]           (C_out, P)         16 GEMMs
    y     = A^T M A per tile        (N, C_out, OH, OW) output transform (cropped)

Every stage is linear, so the backward is the chain of the adjoints, in reverse, with
g = dL/dy:

    dM[xi] = (A g_tile A^T)[xi]                         adjoint of the output transform
    dU[xi] = dM[xi] @ V[xi]^T      dW = G^T dU G        (summed over xi)
    dV[xi] = U[xi]^T @ dM[xi]      dx = sum over tiles of B dV B^T (overlapping tiles add)
    db     = sum of g over n, rows, columns

The four tile maps run in the compiled kernels of refdl/_ext/_kernels.pyx (the build
refdl.ext selects) when they are built, else in the NumPy reference below (einsum over
tile views); both give the same numbers. ``conv2d`` / ``conv2d_backward`` are what
nn.Conv2d calls when it selects this algorithm (3x3, stride 1, dilation 1, groups 1, zero
padding).

How the compiled path runs (the order of the sums is the same at any thread count):

    for each group of whole images (a thread of the kernels' OpenMP team each):
        for each range of tile rows of one image (V and M of a range fit in L2):
            forward:  V = input transform (16, C, k) -> M = U V (16 GEMMs) -> y
            backward: dM = output adjoint (16, O, k); V again, tile-major (16, k, C);
                      dU += dM V; dV = U^T dM (16, C, k) -> dx += input adjoint

V is never stored whole: the forward returns x, and the backward recomputes each range's
V from it (an input transform costs less than writing V, 4x the size of x, to memory and
reading it back). Written whole, V and M (33 MB and 67 MB for (64,32,32,32)->64) went
through memory between the stages and the GEMMs ran at half the square-SGEMM rate; on
ranges that stay in cache they run near it (benchmarks/_winograd_profile.py).
"""
import functools
import math

import numpy as np

from .. import _ext as _switch     # refdl.ext hands it the kernels in use
from .. import threads
from ..memory import scratch

__all__ = ["BT", "G", "AT", "conv2d", "conv2d_backward", "weight_transform",
           "input_transform", "output_transform", "output_transform_adjoint",
           "input_transform_adjoint", "tiles", "supported"]

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)

def _kernels():
    """The compiled kernels refdl.ext runs (its baseline or AVX2 build), or None on the
    NumPy path (not built, or switched off, or refdl.ext not loaded)."""
    active = _switch.active_kernels
    return active() if active is not None else None


def _compiled():
    return _kernels() is not None


def supported(kernel_size, stride, dilation, groups, padding_mode="zeros"):
    """True when F(2x2, 3x3) computes this convolution: 3x3, stride 1, dilation 1, no groups,
    zero padding."""
    return (tuple(kernel_size) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1) and groups == 1 and padding_mode == "zeros")


def tiles(out_hw):
    """(TH, TW): the number of 2x2 output tiles along each axis, ceil(OH/2), ceil(OW/2)."""
    return tuple((o + 1) // 2 for o in out_hw)


# -- the four tile maps: NumPy reference --------------------------------------------------

def planes(rows, cols, dtype, reuse=None):
    """An uninitialised (16, rows, cols) array whose 16 planes are C-contiguous but spaced
    by rows*cols + 48 elements instead of rows*cols: the tile kernels read or write all 16
    planes at once, and a power-of-two spacing (the usual case: 32 x 16384 floats = 2 MiB)
    puts the 16 streams in the same cache sets, which makes them 5x slower.

    ``reuse``: an earlier result of ``planes`` returned as it is when it has this shape and
    dtype (a layer keeps its buffers across calls: a fresh 67 MB array costs thousands of
    page faults, several milliseconds, on every call)."""
    if reuse is not None and reuse.shape == (16, rows, cols) and reuse.dtype == dtype:
        return reuse
    n = rows * cols
    buf = np.empty((16, n + 48), dtype=dtype)
    return buf[:, :n].reshape(16, rows, cols)


def _padded(x, pads, TH, TW):
    """x zero-padded to (N, C, 2TH+2, 2TW+2) with pads[i][0] zeros before each axis."""
    N, C, H, W = x.shape
    (pt, _), (pl, _) = pads
    xp = np.zeros((N, C, 2 * TH + 2, 2 * TW + 2), dtype=x.dtype)
    h = min(H, 2 * TH + 2 - pt)
    w = min(W, 2 * TW + 2 - pl)
    xp[:, :, pt:pt + h, pl:pl + w] = x[:, :, :h, :w]
    return xp


def _tile_view(a, TH, TW, size, step):
    """(N, C, TH, TW, size, size) view of a's overlapping size x size tiles at stride step."""
    N, C = a.shape[:2]
    s = a.strides
    return np.lib.stride_tricks.as_strided(
        a, (N, C, TH, TW, size, size), (s[0], s[1], step * s[2], step * s[3], s[2], s[3]),
        writeable=False)


def weight_transform(w):
    """U (16, C_out, C_in) = G w G^T for every (o, c) 3x3 kernel of w (C_out, C_in, 3, 3)."""
    Gt = G.astype(w.dtype)
    U = np.einsum("ik,ockl,jl->ijoc", Gt, w, Gt, optimize=True)
    return np.ascontiguousarray(U.reshape(16, w.shape[0], w.shape[1]), dtype=w.dtype)


def weight_transform_adjoint(dU, shape):
    """dW (C_out, C_in, 3, 3) = G^T dU G: the adjoint of :func:`weight_transform`."""
    dU = dU.reshape(4, 4, shape[0], shape[1])
    Gt = G.astype(dU.dtype)
    return np.einsum("ik,ijoc,jl->ockl", Gt, dU, Gt, optimize=True)


def input_transform(x, pads, TH, TW, out=None):
    """V (16, C, N*TH*TW) = B^T d B for every 4x4 input tile d of x (N, C, H, W).
    ``out``: a buffer from :func:`planes` to write into when it fits."""
    N, C = x.shape[:2]
    if _compiled():
        V = planes(C, N * TH * TW, x.dtype, reuse=out)
        _kernels().input_transform(np.ascontiguousarray(x), V, pads[0][0], pads[1][0], TH, TW)
        return V
    d = _tile_view(_padded(x, pads, TH, TW), TH, TW, 4, 2)      # (N, C, TH, TW, 4, 4)
    V = np.einsum("ik,nctukl,jl->ijcntu", BT.astype(x.dtype), d, BT.astype(x.dtype),
                  optimize=True)
    return np.ascontiguousarray(V).reshape(16, C, N * TH * TW)


def input_transform_adjoint(dV, x_shape, pads, TH, TW):
    """dx (N, C, H, W) = sum over tiles of B dV B^T, added at each tile's place."""
    N, C, H, W = x_shape
    if _compiled():
        dx = np.zeros(x_shape, dtype=dV.dtype)
        _kernels().input_transform_adjoint(dV, dx, pads[0][0], pads[1][0], TH, TW)
        return dx
    B = BT.T.astype(dV.dtype)
    dd = np.einsum("ik,klcntu,jl->ncijtu", B, dV.reshape(4, 4, C, N, TH, TW), B,
                   optimize=True)                              # (N, C, 4, 4, TH, TW)
    dxp = np.zeros((N, C, TH + 1, 2, TW + 1, 2), dtype=dV.dtype)
    for a in (0, 1):           # the 4x4 tile as 2x2 blocks of 2x2: no overlap within a block
        for b in (0, 1):
            blk = dd[:, :, 2 * a:2 * a + 2, 2 * b:2 * b + 2]       # (N, C, 2, 2, TH, TW)
            dxp[:, :, a:a + TH, :, b:b + TW, :] += blk.transpose(0, 1, 4, 2, 5, 3)
    dxp = dxp.reshape(N, C, 2 * TH + 2, 2 * TW + 2)
    (pt, _), (pl, _) = pads
    dx = np.zeros(x_shape, dtype=dV.dtype)
    h = min(H, 2 * TH + 2 - pt)
    w = min(W, 2 * TW + 2 - pl)
    dx[:, :, :h, :w] = dxp[:, :, pt:pt + h, pl:pl + w]
    return dx


def output_transform(M, out_shape, bias=None, out=None):
    """y (N, C_out, OH, OW) = A^T m A for every tile m of M (16, C_out, P), plus bias
    (written into ``out``, a C-contiguous array of that shape, when given)."""
    N, O, OH, OW = out_shape
    TH, TW = tiles((OH, OW))
    if _compiled():
        y = np.empty(out_shape, dtype=M.dtype) if out is None else out
        b = (np.ascontiguousarray(bias, dtype=M.dtype) if bias is not None
             else np.zeros(1, dtype=M.dtype))
        _kernels().output_transform(M, y, b, bias is not None, TH, TW)
        return y
    A = AT.astype(M.dtype)
    Y = np.einsum("ik,klontu,jl->noitju", A, M.reshape(4, 4, O, N, TH, TW), A,
                  optimize=True)                               # (N, O, 2, TH, 2, TW)
    y = np.ascontiguousarray(Y.transpose(0, 1, 3, 2, 5, 4)).reshape(N, O, 2 * TH, 2 * TW)
    y = np.ascontiguousarray(y[:, :, :OH, :OW])
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    if out is not None:
        out[...] = y
        return out
    return y


def output_transform_adjoint(g, out=None):
    """dM (16, C_out, P) = A g_tile A^T for every 2x2 tile of g (zeros past the edges)."""
    N, O, OH, OW = g.shape
    TH, TW = tiles((OH, OW))
    if _compiled():
        dM = planes(O, N * TH * TW, g.dtype, reuse=out)
        _kernels().output_transform_adjoint(np.ascontiguousarray(g), dM, TH, TW)
        return dM
    gp = np.zeros((N, O, 2 * TH, 2 * TW), dtype=g.dtype)
    gp[:, :, :OH, :OW] = g
    gt = _tile_view(gp, TH, TW, 2, 2)                           # (N, O, TH, TW, 2, 2)
    A = AT.T.astype(g.dtype)
    dM = np.einsum("ik,notukl,jl->ijontu", A, gt, A, optimize=True)
    dM = np.ascontiguousarray(dM).reshape(16, O, N * TH * TW)
    if out is not None and out.shape == dM.shape:
        out[...] = dM
        return out
    return dM


# -- the convolution ----------------------------------------------------------------------

# Work is split twice. Groups of whole images (about CHUNK_BYTES of M each) are the units
# the threads take, one at a time (the compiled path: the kernels' OpenMP team, in
# winograd_forward / winograd_backward of refdl/_ext/_kernels.pyx): whole images, so that
# two threads never add into the same part of dx, and a fixed split, so that dW (summed
# over the groups in order) does not depend on the thread count. Inside a group the
# compiled path runs ranges of about RANGE_BYTES of V and M at a time through input
# transform, the 16 products and output transform, so that V and M never leave the core's
# L2 cache (1-2 MiB on current x86 cores): measured on (64,32,32,32)->64 at 1 thread, CPU
# time, the products run at 150-175 GFLOP/s on such ranges against 60-80 GFLOP/s on the
# whole arrays, and the transforms no longer stream V (33 MB) and M (67 MB) through memory
# (benchmarks/_winograd_profile.py, docs/performance.md).
# A batch whose M fits one chunk is still cut into MIN_CHUNKS groups when each keeps at
# least MIN_CHUNK_TILES tiles, so that a second thread has work: (64,32,16,16)->32 at 2
# threads, fwd+bwd 9.40 -> 7.09 ms (second stop); (16,64,8,8)->64, 16 tiles per image,
# 2.29 -> 1.59 ms in 2 groups of 128 tiles (third stop, the loop compiled). Fewer tiles
# per group leave dU = dM V too short a product and add a (16, C_out, C) partial per
# group: (8,128,8,8)->128 in 2 groups of 64 tiles went 4.6 -> 5.7 ms
# (benchmarks/_winograd_select_threads.py, docs/performance.md).
CHUNK_BYTES = 8 << 20
MIN_CHUNKS = 4
MIN_CHUNK_TILES = 128
RANGE_BYTES = 3 << 19


def _chunks(N, T, O, itemsize):
    """Image ranges (n0, n1) of about CHUNK_BYTES of M each (T tiles per image), at least
    MIN_CHUNKS of them when each still holds MIN_CHUNK_TILES tiles. Depends on the shapes
    only, never on the thread count."""
    per_image = 16 * O * T * itemsize
    nb = max(1, CHUNK_BYTES // per_image)
    nb = max(1, min(nb, max(-(-N // MIN_CHUNKS), -(-MIN_CHUNK_TILES // T))))
    return [(n0, min(N, n0 + nb)) for n0 in range(0, N, nb)]


def _range_tiles(C, O, itemsize):
    """Tiles per range: V and M of a range fill about RANGE_BYTES (a range holds at least
    one row of tiles whatever this says)."""
    return max(1, RANGE_BYTES // (16 * (C + O) * itemsize))


def _row_ranges(chunk, TH, TW, k):
    """The ranges covering the images of chunk, each a list of segments (n, th0, th1) of
    tile rows with consecutive tiles: one segment of at most max(1, k // TW) rows when an
    image holds more than k tiles (its ranges made even), else as many whole images as
    fit in k tiles (at least one)."""
    R = _rows_per_range(TH, TW, k)
    if R < TH:
        return [[(n, t, min(TH, t + R))] for n in range(chunk[0], chunk[1])
                for t in range(0, TH, R)]
    m = max(1, k // (TH * TW))
    return [[(n, 0, TH) for n in range(n0, min(chunk[1], n0 + m))]
            for n0 in range(chunk[0], chunk[1], m)]


def _range_capacity(TH, TW, k):
    """Tiles of the largest range of :func:`_row_ranges` (the scratch buffers' width)."""
    R = _rows_per_range(TH, TW, k)
    return R * TW if R < TH else max(1, k // (TH * TW)) * TH * TW


def _rows_per_range(TH, TW, k):
    """Tile rows per range: at most max(1, k // TW), the ranges of an image made even."""
    R = max(1, min(TH, k // TW))
    return -(-TH // -(-TH // R))


def _plan(N, C, O, TH, TW, itemsize):
    """What the compiled kernels run, from the shapes alone: (chunk_ranges, range_segs,
    segs, kmax) with segs (S, 3) the segments (n, th0, th1) of every range in order,
    range_segs (R+1,) where each range's segments start, chunk_ranges (chunks+1,) where
    each chunk's ranges start, and kmax the widest range in tiles. Read-only arrays,
    memoised (with the sizes above in the key, which benchmarks and tests change)."""
    return _plan_for(N, C, O, TH, TW, itemsize, CHUNK_BYTES, MIN_CHUNKS, MIN_CHUNK_TILES,
                     RANGE_BYTES)


@functools.lru_cache(maxsize=64)
def _plan_for(N, C, O, TH, TW, itemsize, *sizes):
    k = _range_tiles(C, O, itemsize)
    chunk_ranges, range_segs, segs = [0], [0], []
    for chunk in _chunks(N, TH * TW, O, itemsize):
        for rng in _row_ranges(chunk, TH, TW, k):
            segs.extend(rng)
            range_segs.append(len(segs))
        chunk_ranges.append(len(range_segs) - 1)
    tables = (np.array(chunk_ranges, np.int64), np.array(range_segs, np.int64),
              np.array(segs, np.int64).reshape(-1, 3))
    for t in tables:
        t.flags.writeable = False
    return tables + (_range_capacity(TH, TW, k),)


def _team_scratch(bufs, n, C, O, kmax, TW, dtype):
    """(n, row) scratch for the compiled kernels, a row per thread: V (16 planes of
    C*kmax + 48), M (16 planes of O*kmax + 48) and the transforms' row buffer
    (16*(2*TW + 4)); kept in bufs["team"] across calls."""
    row = 16 * (C * kmax + 48) + 16 * (O * kmax + 48) + 16 * (2 * TW + 4)
    return scratch(bufs, "team", (n, row), dtype)


def _m_buffers(bufs, O, k, dtype):
    """A chunk buffer (16, O*k) for M of the NumPy reference, kept in bufs["M"]."""
    have = bufs.get("M")
    buf = planes(1, O * k, dtype, reuse=have)
    bufs["M"] = buf
    return buf[:, 0, :]


def _block(buf, O, k):
    """A (16, O, k) view of the chunk buffer with contiguous (O, k) planes."""
    return buf[:, :O * k].reshape(16, O, k)


def _geometry(x_shape, pads):
    N, C, H, W = x_shape
    OH = H + pads[0][0] + pads[0][1] - 2
    OW = W + pads[1][0] + pads[1][1] - 2
    if OH < 1 or OW < 1:
        raise ValueError(f"winograd.conv2d: input {tuple(x_shape)} padded by {pads} is "
                         f"smaller than the 3x3 kernel")
    return OH, OW


def conv2d(x, w, bias=None, pads=((0, 0), (0, 0)), buffers=None):
    """(y, x, U): y = the 3x3 stride-1 cross-correlation of x (N, C, H, W) with w
    (C_out, C, 3, 3) plus bias, zero-padded by ``pads`` ((top, bottom), (left, right));
    x (C-contiguous, in x's dtype) and U are what :func:`conv2d_backward` needs: the
    backward recomputes V from x range by range, which is cheaper than writing V (4x the
    size of x) to memory here and reading it back there.

    ``buffers``: a dict the caller keeps across calls; the scratch arrays are kept in it
    ("team" for the compiled path, "M" for the NumPy reference)."""
    N, C, H, W = x.shape
    O = w.shape[0]
    OH, OW = _geometry(x.shape, pads)
    bufs = {} if buffers is None else buffers
    TH, TW = tiles((OH, OW))
    T = TH * TW
    x = np.ascontiguousarray(x)
    U = weight_transform(w.astype(x.dtype, copy=False))
    y = np.empty((N, O, OH, OW), dtype=x.dtype)
    b = None if bias is None else bias.astype(x.dtype, copy=False)
    K = _kernels()
    if K is not None:
        chunk_ranges, range_segs, segs, kmax = _plan(N, C, O, TH, TW, x.dtype.itemsize)
        nt = max(1, min(K.team_size(), len(chunk_ranges) - 1))
        scratch = _team_scratch(bufs, nt, C, O, kmax, TW, x.dtype)
        bb = (np.ascontiguousarray(b) if b is not None else np.zeros(1, dtype=x.dtype))
        with threads.blas_serial():
            K.winograd_forward(x, U, bb, b is not None, y, scratch, chunk_ranges,
                               range_segs, segs, kmax, pads[0][0], pads[1][0], nt)
        return y, x, U
    chunks = _chunks(N, T, O, x.dtype.itemsize)
    V = input_transform(x, pads, TH, TW)
    k = (chunks[0][1] - chunks[0][0]) * T
    Mbuf = _m_buffers(bufs, O, k, x.dtype)
    for n0, n1 in chunks:                                     # one chunk at a time
        M = _block(Mbuf, O, (n1 - n0) * T)
        np.matmul(U, V[:, :, n0 * T:n1 * T], out=M)             # 16 x (O, C) @ (C, P)
        output_transform(M, (n1 - n0, O, OH, OW), b, out=y[n0:n1])
    return y, x, U


def conv2d_backward(g, x, U, x_shape, pads, need_dx=True, need_dw=True, buffers=None):
    """(dx, dW): the adjoints of :func:`conv2d`'s stages applied to g = dL/dy, with x and
    U as :func:`conv2d` returned them (V is recomputed from x). ``buffers``: as in
    :func:`conv2d`."""
    N, O, OH, OW = g.shape
    bufs = {} if buffers is None else buffers
    g = np.ascontiguousarray(g)
    T = tiles((OH, OW))[0] * tiles((OH, OW))[1]
    chunks = _chunks(N, T, O, g.dtype.itemsize)
    backward = _backward_team if _compiled() else _backward_reference
    parts, dx = backward(g, x, U, x_shape, pads, need_dx, need_dw, bufs, chunks)
    dW = None
    if need_dw:
        dU = parts[0]
        for part in parts[1:]:                                  # in chunk order: the same
            dU += part                                          # sum at any thread count
        dW = weight_transform_adjoint(dU, (O, x_shape[1]))
    return dx, dW


def _backward_team(g, x, U, x_shape, pads, need_dx, need_dw, bufs, chunks):
    """The compiled backward on the kernels' team (winograd_backward): per chunk of
    images, range by range (each range's dM and V stay in L2): dM = output adjoint of g,
    V recomputed from x, dU += dM V, dV = U^T dM, dx += input adjoint of dV. Returns (dU
    per chunk, dx)."""
    K = _kernels()
    N, O, OH, OW = g.shape
    C = x_shape[1]
    TH, TW = tiles((OH, OW))
    chunk_ranges, range_segs, segs, kmax = _plan(N, C, O, TH, TW, g.dtype.itemsize)
    nchunks = len(chunk_ranges) - 1
    nt = max(1, min(K.team_size(), nchunks))
    scratch = _team_scratch(bufs, nt, C, O, kmax, TW, g.dtype)
    dx = np.empty(x_shape if need_dx else (0,) + tuple(x_shape[1:]), dtype=g.dtype)
    dU = np.empty((nchunks if need_dw else 0, 16, O, C), dtype=g.dtype)
    with threads.blas_serial():
        K.winograd_backward(g, x, np.ascontiguousarray(U), dx, dU, scratch, chunk_ranges,
                            range_segs, segs, kmax, pads[0][0], pads[1][0], nt)
    return (list(dU) if need_dw else None), (dx if need_dx else None)


def _backward_reference(g, x, U, x_shape, pads, need_dx, need_dw, bufs, chunks):
    """The NumPy backward, stage by stage on whole chunks: dM, dU = dM V^T, dV = U^T dM,
    then dx = the input adjoint of dV. Returns (dU per chunk, dx)."""
    N, O, OH, OW = g.shape
    TH, TW = tiles((OH, OW))
    T = TH * TW
    V = input_transform(x, pads, TH, TW)
    k = (chunks[0][1] - chunks[0][0]) * T
    Mbuf = _m_buffers(bufs, O, k, g.dtype)
    parts = []
    for n0, n1 in chunks:                                     # one chunk at a time
        p = slice(n0 * T, n1 * T)
        dM = _block(Mbuf, O, (n1 - n0) * T)
        output_transform_adjoint(g[n0:n1], out=dM)                  # (16, O, P_chunk)
        parts.append(np.matmul(dM, V[:, :, p].transpose(0, 2, 1)) if need_dw else None)
        if need_dx:
            np.matmul(U.transpose(0, 2, 1), dM, out=V[:, :, p])      # dV, in V's buffer
    dx = input_transform_adjoint(V, x_shape, pads, TH, TW) if need_dx else None
    return parts, dx


def flops(x_shape, out_channels, out_hw):
    """Multiply-adds of the 16 GEMMs (for benchmarks: compare N*O*C*9*OH*OW direct)."""
    N, C = x_shape[:2]
    TH, TW = tiles(out_hw)
    return 16 * out_channels * C * N * TH * TW


def direct_macs(x_shape, out_channels, out_hw):
    return x_shape[0] * out_channels * x_shape[1] * 9 * math.prod(out_hw)
