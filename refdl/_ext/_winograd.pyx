# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Winograd F(2x2, 3x3) transforms for 3x3 stride-1 convolutions (and their adjoints).

Called only through refdl.functional.winograd, which validates every shape and dtype
first: bounds checks are off here. The math, the matrices and the layouts are in
docs/derivations/winograd.md; the NumPy reference in refdl/functional/winograd.py computes
the same four maps with einsum and is what the tests compare against.

The 16 planes of V and M are 16 write (or read) streams at once: refdl allocates them
with a plane stride a little longer than a plane (``planes`` in winograd.py), because a
power-of-two stride maps all 16 streams to the same cache sets and runs 5x slower.

Layouts (P = N*TH*TW tiles, tile p = (n*TH + th)*TW + tw covers input rows 2*th - ph ..
2*th - ph + 3 and columns 2*tw - pw .. 2*tw - pw + 3, output rows 2*th, 2*th + 1 and
columns 2*tw, 2*tw + 1; xi = 4*i + j is the (i, j) entry of a 4x4 transformed tile):
    x  (N, C, H, W)    V  (16, C, P) = B^T d B of every input tile d
    M  (16, O, P)      y  (N, O, OH, OW) = A^T m A of every tile m (plus the bias)
with B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]] and A^T = [[1,1,1,0],[0,1,-1,-1]].
The parallel loop runs over (n, channel) planes; each iteration writes its own plane.

These whole-array maps are the compiled counterparts of the NumPy reference (tested
against it). nn.Conv2d's path, refdl.functional.winograd.conv2d, runs the serial range
kernels at the end of this file instead (input_rows, output_rows, output_rows_adjoint,
input_rows_adjoint on channel-major V and M; input_tiles for the tile-major V of dW),
on ranges of tile rows small enough that V and M stay in L2, several ranges at once on
worker threads (refdl.threads.parallel_for); they release the GIL.
"""
from cython.parallel cimport prange

ctypedef fused real:
    float
    double

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int refdl_wino_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int refdl_wino_max_threads(void) { return 1; }
    #endif
    """
    int refdl_wino_max_threads() noexcept nogil

cdef Py_ssize_t GRAIN = 1 << 18
cdef int MAX_THREADS = 0


def set_threading(int max_threads, Py_ssize_t grain):
    """Team size (0: OpenMP's default) and the serial grain, as in _kernels."""
    global MAX_THREADS, GRAIN
    MAX_THREADS = max_threads if max_threads > 0 else 0
    GRAIN = grain if grain > 0 else 1


cdef inline int n_threads(Py_ssize_t work, Py_ssize_t outer) noexcept nogil:
    cdef int t
    if work < GRAIN or outer < 2:
        return 1
    t = MAX_THREADS if MAX_THREADS > 0 else refdl_wino_max_threads()
    return t if t < outer else <int>outer


cdef inline void in_tile(const real* xs, Py_ssize_t H, Py_ssize_t W, Py_ssize_t r0,
                         Py_ssize_t c0, real* v, Py_ssize_t vs) noexcept nogil:
    # v[xi * vs] = (B^T d B)[xi] for the 4x4 tile d of the plane xs at (r0, c0)
    cdef real d[4][4]
    cdef real t[4][4]
    cdef Py_ssize_t i, j, r, s
    cdef const real* row
    if r0 >= 0 and r0 + 4 <= H and c0 >= 0 and c0 + 4 <= W:
        for i in range(4):
            row = xs + (r0 + i) * W + c0
            d[i][0] = row[0]
            d[i][1] = row[1]
            d[i][2] = row[2]
            d[i][3] = row[3]
    else:
        for i in range(4):
            r = r0 + i
            for j in range(4):
                s = c0 + j
                if r >= 0 and r < H and s >= 0 and s < W:
                    d[i][j] = xs[r * W + s]
                else:
                    d[i][j] = 0
    for j in range(4):                     # rows: t = B^T d
        t[0][j] = d[0][j] - d[2][j]
        t[1][j] = d[1][j] + d[2][j]
        t[2][j] = d[2][j] - d[1][j]
        t[3][j] = d[1][j] - d[3][j]
    for i in range(4):                     # columns: V = t B
        v[(4 * i + 0) * vs] = t[i][0] - t[i][2]
        v[(4 * i + 1) * vs] = t[i][1] + t[i][2]
        v[(4 * i + 2) * vs] = t[i][2] - t[i][1]
        v[(4 * i + 3) * vs] = t[i][1] - t[i][3]


cdef inline void in_tile_adj(const real* v, Py_ssize_t vs, real* xs, Py_ssize_t H,
                             Py_ssize_t W, Py_ssize_t r0, Py_ssize_t c0) noexcept nogil:
    # xs[tile at (r0, c0)] += B u B^T with u[xi] = v[xi * vs] (parts outside dropped)
    cdef real u[4][4]
    cdef real t[4][4]
    cdef Py_ssize_t i, j, r, s
    cdef real* row
    for i in range(4):
        for j in range(4):
            u[i][j] = v[(4 * i + j) * vs]
    for i in range(4):                     # columns: t = u B^T
        t[i][0] = u[i][0]
        t[i][1] = u[i][1] - u[i][2] + u[i][3]
        t[i][2] = u[i][2] + u[i][1] - u[i][0]
        t[i][3] = -u[i][3]
    for j in range(4):                     # rows: u = B t
        u[0][j] = t[0][j]
        u[1][j] = t[1][j] - t[2][j] + t[3][j]
        u[2][j] = t[2][j] + t[1][j] - t[0][j]
        u[3][j] = -t[3][j]
    if r0 >= 0 and r0 + 4 <= H and c0 >= 0 and c0 + 4 <= W:
        for i in range(4):
            row = xs + (r0 + i) * W + c0
            row[0] += u[i][0]
            row[1] += u[i][1]
            row[2] += u[i][2]
            row[3] += u[i][3]
    else:
        for i in range(4):
            r = r0 + i
            for j in range(4):
                s = c0 + j
                if r >= 0 and r < H and s >= 0 and s < W:
                    xs[r * W + s] += u[i][j]


cdef inline void out_tile(const real* m, Py_ssize_t ms, real b, real* ys, Py_ssize_t OH,
                          Py_ssize_t OW, Py_ssize_t r0, Py_ssize_t c0) noexcept nogil:
    # ys[2x2 tile at (r0, c0)] = A^T u A + b with u[xi] = m[xi * ms], cropped
    cdef real u[4][4]
    cdef real t[2][4]
    cdef real y00, y01, y10, y11
    cdef Py_ssize_t i, j
    for i in range(4):
        for j in range(4):
            u[i][j] = m[(4 * i + j) * ms]
    for j in range(4):                     # rows: t = A^T u
        t[0][j] = u[0][j] + u[1][j] + u[2][j]
        t[1][j] = u[1][j] - u[2][j] - u[3][j]
    y00 = t[0][0] + t[0][1] + t[0][2] + b  # columns: t A
    y01 = t[0][1] - t[0][2] - t[0][3] + b
    y10 = t[1][0] + t[1][1] + t[1][2] + b
    y11 = t[1][1] - t[1][2] - t[1][3] + b
    ys[r0 * OW + c0] = y00
    if c0 + 1 < OW:
        ys[r0 * OW + c0 + 1] = y01
    if r0 + 1 < OH:
        ys[(r0 + 1) * OW + c0] = y10
        if c0 + 1 < OW:
            ys[(r0 + 1) * OW + c0 + 1] = y11


cdef inline void out_tile_adj(const real* gs, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t r0,
                              Py_ssize_t c0, real* m, Py_ssize_t ms) noexcept nogil:
    # m[xi * ms] = (A g A^T)[xi] for the 2x2 tile g of gs at (r0, c0), zeros past the edge
    cdef real g00, g01 = 0, g10 = 0, g11 = 0
    cdef real t[4][2]
    cdef Py_ssize_t i
    g00 = gs[r0 * OW + c0]
    if c0 + 1 < OW:
        g01 = gs[r0 * OW + c0 + 1]
    if r0 + 1 < OH:
        g10 = gs[(r0 + 1) * OW + c0]
        if c0 + 1 < OW:
            g11 = gs[(r0 + 1) * OW + c0 + 1]
    t[0][0] = g00                          # rows: t = A g, A's rows [1,0],[1,1],[1,-1],[0,-1]
    t[0][1] = g01
    t[1][0] = g00 + g10
    t[1][1] = g01 + g11
    t[2][0] = g00 - g10
    t[2][1] = g01 - g11
    t[3][0] = -g10
    t[3][1] = -g11
    for i in range(4):                     # columns: t A^T
        m[(4 * i + 0) * ms] = t[i][0]
        m[(4 * i + 1) * ms] = t[i][0] + t[i][1]
        m[(4 * i + 2) * ms] = t[i][0] - t[i][1]
        m[(4 * i + 3) * ms] = -t[i][1]


def input_transform(const real[:, :, :, ::1] x, real[:, :, :] V,
                    Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t TH, Py_ssize_t TW):
    """V[:, c, p] = B^T d B for the 4x4 input tile d of tile p (zeros outside x)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t P = N * TH * TW
    cdef Py_ssize_t q, n, c, th, tw, p
    cdef Py_ssize_t vs = V.strides[0] // sizeof(real)     # plane stride (may be padded)
    cdef int nt = n_threads(16 * C * P, N * C)
    for q in prange(N * C, nogil=True, schedule="static", num_threads=nt):
        n = q // C
        c = q % C
        for th in range(TH):
            for tw in range(TW):
                p = (n * TH + th) * TW + tw
                in_tile(&x[n, c, 0, 0], H, W, 2 * th - ph, 2 * tw - pw, &V[0, c, p], vs)


def input_transform_adjoint(const real[:, :, :] dV, real[:, :, :, ::1] dx,
                            Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t TH, Py_ssize_t TW):
    """dx += sum over tiles of B dV_p B^T placed at the tile (parts outside dx dropped);
    dx zeroed by the caller."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t P = N * TH * TW
    cdef Py_ssize_t q, n, c, th, tw, p
    cdef Py_ssize_t vs = dV.strides[0] // sizeof(real)
    cdef int nt = n_threads(16 * C * P, N * C)
    for q in prange(N * C, nogil=True, schedule="static", num_threads=nt):
        n = q // C
        c = q % C
        for th in range(TH):
            for tw in range(TW):
                p = (n * TH + th) * TW + tw
                in_tile_adj(&dV[0, c, p], vs, &dx[n, c, 0, 0], H, W, 2 * th - ph,
                            2 * tw - pw)


def output_transform(const real[:, :, :] M, real[:, :, :, ::1] y,
                     const real[::1] bias, bint has_bias, Py_ssize_t TH, Py_ssize_t TW):
    """y[n, o] tile p = A^T M_p A (+ bias[o]), cropped to (OH, OW)."""
    cdef Py_ssize_t N = y.shape[0], O = y.shape[1], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t P = N * TH * TW
    cdef Py_ssize_t q, n, o, th, tw, p
    cdef real b
    cdef Py_ssize_t ms = M.strides[0] // sizeof(real)
    cdef int nt = n_threads(16 * O * P, N * O)
    for q in prange(N * O, nogil=True, schedule="static", num_threads=nt):
        n = q // O
        o = q % O
        b = bias[o] if has_bias else 0
        for th in range(TH):
            for tw in range(TW):
                p = (n * TH + th) * TW + tw
                out_tile(&M[0, o, p], ms, b, &y[n, o, 0, 0], OH, OW, 2 * th, 2 * tw)


def output_transform_adjoint(const real[:, :, :, ::1] g, real[:, :, :] dM,
                             Py_ssize_t TH, Py_ssize_t TW):
    """dM[:, o, p] = A g_p A^T for the 2x2 tile g_p of g (zeros past OH, OW)."""
    cdef Py_ssize_t N = g.shape[0], O = g.shape[1], OH = g.shape[2], OW = g.shape[3]
    cdef Py_ssize_t P = N * TH * TW
    cdef Py_ssize_t q, n, o, th, tw, p
    cdef Py_ssize_t ms = dM.strides[0] // sizeof(real)
    cdef int nt = n_threads(16 * O * P, N * O)
    for q in prange(N * O, nogil=True, schedule="static", num_threads=nt):
        n = q // O
        o = q % O
        for th in range(TH):
            for tw in range(TW):
                p = (n * TH + th) * TW + tw
                out_tile_adj(&g[n, o, 0, 0], OH, OW, 2 * th, 2 * tw, &dM[0, o, p], ms)


# -- tile ranges in tile-major layout: the fused pipeline of winograd.conv2d ---------------
#
# The backward's dU = dM V runs fastest with tiles as rows (benchmarks/_winograd_profile.py):
# input_tiles writes V tile-major, (16, k, C) for a range of k = p1 - p0 tiles
# p0 <= p < p1 (the global tile index p = (n*TH + th)*TW + tw above), row p - p0, plane
# stride vs (padded, as above). Serial, and it releases the GIL: refdl.threads.parallel_for
# runs ranges of whole images on worker threads.

cdef inline void tile_pos(Py_ssize_t p, Py_ssize_t TH, Py_ssize_t TW, Py_ssize_t* n,
                          Py_ssize_t* th, Py_ssize_t* tw) noexcept nogil:
    cdef Py_ssize_t T = TH * TW
    cdef Py_ssize_t r
    n[0] = p // T
    r = p - n[0] * T
    th[0] = r // TW
    tw[0] = r - th[0] * TW


def input_tiles(const real[:, :, :, ::1] x, real[:, :, :] Vt, Py_ssize_t ph,
                Py_ssize_t pw, Py_ssize_t TH, Py_ssize_t TW, Py_ssize_t p0, Py_ssize_t p1):
    """Vt[:, p - p0, c] = B^T d B for the 4x4 input tile d of tile p, p0 <= p < p1."""
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t vs = Vt.strides[0] // sizeof(real)
    cdef Py_ssize_t p, n, th, tw, c
    with nogil:
        for p in range(p0, p1):
            tile_pos(p, TH, TW, &n, &th, &tw)
            for c in range(C):
                in_tile(&x[n, c, 0, 0], H, W, 2 * th - ph, 2 * tw - pw, &Vt[0, p - p0, c],
                        vs)


# -- tile rows in channel-major layout: vectorisable transforms -----------------------------
#
# The same four maps on a range of whole tile rows th0 <= th < th1 of one image n, with V
# and M stored channel-major, (16, C, k) and (16, C_out, k), column (th - th0)*TW + tw.
# Each transform is written as loops over a whole row of tiles (tw) with one output stream
# per loop, which the C compiler vectorises: the row sums shared by horizontally
# neighbouring tiles are formed once on whole padded rows, and the per-tile step reads
# them at stride 2 and writes a contiguous run of a plane. ``buf``: scratch of at least
# 16 * (2*TW + 4) elements.

cdef inline void pad_row(const real* src, Py_ssize_t W, Py_ssize_t pw, real* dst,
                         Py_ssize_t Wp) noexcept nogil:
    # dst[j] = src[j - pw] where 0 <= j - pw < W, else 0, for 0 <= j < Wp
    cdef Py_ssize_t j
    for j in range(Wp):
        dst[j] = 0
    cdef Py_ssize_t lo = pw if pw > 0 else 0
    cdef Py_ssize_t hi = W + pw if W + pw < Wp else Wp
    for j in range(lo, hi):
        dst[j] = src[j - pw]


def input_rows(const real[:, :, :, ::1] x, real[:, :, :] V, real[::1] buf, Py_ssize_t ph,
               Py_ssize_t pw, Py_ssize_t TW, Py_ssize_t n, Py_ssize_t th0, Py_ssize_t th1):
    """V[:, c, (th - th0)*TW + tw] = B^T d B for the input tiles of rows th0..th1-1 of
    image n."""
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Wp = 2 * TW + 2
    cdef Py_ssize_t vs = V.strides[0] // sizeof(real)
    cdef Py_ssize_t c, th, i, r, tw, q
    cdef real* s = &buf[0]                  # the rows B^T d of the padded input rows
    cdef real* z = &buf[4 * Wp]             # a row of zeros (rows outside x)
    cdef const real* xr[4]
    cdef real* s0
    cdef real* s1
    cdef real* s2
    cdef real* s3
    cdef real* v
    cdef Py_ssize_t lo = pw if pw > 0 else 0          # padded columns that fall on x
    cdef Py_ssize_t hi = W + pw if W + pw < Wp else Wp
    with nogil:
        for tw in range(Wp):
            z[tw] = 0
        for c in range(C):
            for th in range(th0, th1):
                for i in range(4):
                    r = 2 * th - ph + i
                    xr[i] = &x[n, c, r, 0] if (r >= 0 and r < H) else z
                s0 = s
                s1 = s + Wp
                s2 = s + 2 * Wp
                s3 = s + 3 * Wp
                for tw in range(lo):                # zeros left of x
                    s0[tw] = 0
                    s1[tw] = 0
                    s2[tw] = 0
                    s3[tw] = 0
                for tw in range(hi, Wp):            # and right of it
                    s0[tw] = 0
                    s1[tw] = 0
                    s2[tw] = 0
                    s3[tw] = 0
                for tw in range(lo, hi):            # column j of the padded rows is
                    s0[tw] = xr[0][tw - pw] - xr[2][tw - pw]     # x's column j - pw
                for tw in range(lo, hi):
                    s1[tw] = xr[1][tw - pw] + xr[2][tw - pw]
                for tw in range(lo, hi):
                    s2[tw] = xr[2][tw - pw] - xr[1][tw - pw]
                for tw in range(lo, hi):
                    s3[tw] = xr[1][tw - pw] - xr[3][tw - pw]
                q = (th - th0) * TW
                for i in range(4):
                    s0 = s + i * Wp
                    v = &V[4 * i, c, q]
                    for tw in range(TW):
                        v[tw] = s0[2 * tw] - s0[2 * tw + 2]
                    v = &V[4 * i + 1, c, q]
                    for tw in range(TW):
                        v[tw] = s0[2 * tw + 1] + s0[2 * tw + 2]
                    v = &V[4 * i + 2, c, q]
                    for tw in range(TW):
                        v[tw] = s0[2 * tw + 2] - s0[2 * tw + 1]
                    v = &V[4 * i + 3, c, q]
                    for tw in range(TW):
                        v[tw] = s0[2 * tw + 1] - s0[2 * tw + 3]


def output_rows(const real[:, :, :] M, real[:, :, :, ::1] y, const real[::1] bias,
                bint has_bias, real[::1] buf, Py_ssize_t TW, Py_ssize_t n, Py_ssize_t th0,
                Py_ssize_t th1):
    """y[n, o] at the tiles of rows th0..th1-1 = A^T M A (+ bias[o]), cropped."""
    cdef Py_ssize_t O = y.shape[1], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t o, th, tw, j, q, r
    cdef real b
    cdef real* t = &buf[0]                  # 8 rows of TW: t[a*4 + j] = (A^T m)[a][j]
    cdef real* e = &buf[8 * TW]             # one output row of 2*TW
    cdef real* dst
    cdef const real* m0
    cdef const real* m1
    cdef const real* m2
    cdef const real* m3
    cdef real* ta
    with nogil:
        for o in range(O):
            b = bias[o] if has_bias else 0
            for th in range(th0, th1):
                q = (th - th0) * TW
                for j in range(4):
                    m0 = &M[j, o, q]
                    m1 = &M[4 + j, o, q]
                    m2 = &M[8 + j, o, q]
                    m3 = &M[12 + j, o, q]
                    ta = t + j * TW
                    for tw in range(TW):
                        ta[tw] = m0[tw] + m1[tw] + m2[tw]
                    ta = t + (4 + j) * TW
                    for tw in range(TW):
                        ta[tw] = m1[tw] - m2[tw] - m3[tw]
                for r in range(2):
                    if 2 * th + r >= OH:
                        break
                    ta = t + 4 * r * TW
                    dst = &y[n, o, 2 * th + r, 0] if 2 * TW == OW else e
                    for tw in range(TW):
                        dst[2 * tw] = ta[tw] + ta[TW + tw] + ta[2 * TW + tw] + b
                        dst[2 * tw + 1] = ta[TW + tw] - ta[2 * TW + tw] - ta[3 * TW + tw] + b
                    if 2 * TW != OW:
                        dst = &y[n, o, 2 * th + r, 0]
                        for tw in range(OW):
                            dst[tw] = e[tw]


def output_rows_adjoint(const real[:, :, :, ::1] g, real[:, :, :] dM, real[::1] buf,
                        Py_ssize_t TW, Py_ssize_t n, Py_ssize_t th0, Py_ssize_t th1):
    """dM[:, o, (th - th0)*TW + tw] = A g_tile A^T for the 2x2 tiles of g in rows
    th0..th1-1 of image n (zeros past the edges)."""
    cdef Py_ssize_t O = g.shape[1], OH = g.shape[2], OW = g.shape[3]
    cdef Py_ssize_t Wg = 2 * TW
    cdef Py_ssize_t o, th, tw, i, q, r
    cdef real* a = &buf[0]                  # rows of g padded to 2*TW (where needed)
    cdef real* t = &buf[2 * Wg]             # rows 1 and 2 of A g: a + b, a - b
    cdef const real* rows[2]
    cdef const real* ti
    cdef const real* b
    cdef real* m
    with nogil:
        for o in range(O):
            for th in range(th0, th1):
                for r in range(2):                  # the tile row's two rows of g
                    if 2 * th + r < OH and OW == Wg:
                        rows[r] = &g[n, o, 2 * th + r, 0]
                    elif 2 * th + r < OH:
                        pad_row(&g[n, o, 2 * th + r, 0], OW, 0, a + r * Wg, Wg)
                        rows[r] = a + r * Wg
                    else:
                        pad_row(&g[n, o, 0, 0], 0, 0, a + r * Wg, Wg)
                        rows[r] = a + r * Wg
                b = rows[1]
                for tw in range(Wg):                # A g: rows a, a + b, a - b, -b
                    t[tw] = rows[0][tw] + b[tw]
                for tw in range(Wg):
                    t[Wg + tw] = rows[0][tw] - b[tw]
                q = (th - th0) * TW
                for i in range(3):                  # then g_i A^T for the rows a, a+b, a-b
                    ti = rows[0] if i == 0 else t + (i - 1) * Wg
                    m = &dM[4 * i, o, q]
                    for tw in range(TW):
                        m[tw] = ti[2 * tw]
                    m = &dM[4 * i + 1, o, q]
                    for tw in range(TW):
                        m[tw] = ti[2 * tw] + ti[2 * tw + 1]
                    m = &dM[4 * i + 2, o, q]
                    for tw in range(TW):
                        m[tw] = ti[2 * tw] - ti[2 * tw + 1]
                    m = &dM[4 * i + 3, o, q]
                    for tw in range(TW):
                        m[tw] = -ti[2 * tw + 1]
                m = &dM[12, o, q]                   # and for the row -b
                for tw in range(TW):
                    m[tw] = -b[2 * tw]
                m = &dM[13, o, q]
                for tw in range(TW):
                    m[tw] = -b[2 * tw] - b[2 * tw + 1]
                m = &dM[14, o, q]
                for tw in range(TW):
                    m[tw] = b[2 * tw + 1] - b[2 * tw]
                m = &dM[15, o, q]
                for tw in range(TW):
                    m[tw] = b[2 * tw + 1]


def input_rows_adjoint(const real[:, :, :] dV, real[:, :, :, ::1] dx, real[::1] buf,
                       Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t TW, Py_ssize_t n,
                       Py_ssize_t th0, Py_ssize_t th1):
    """dx[n] += B dV_tile B^T placed at every tile of rows th0..th1-1 (parts outside dx
    dropped); overlapping tiles add, in order of th and tw."""
    cdef Py_ssize_t C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t Wp = 2 * TW + 2
    cdef Py_ssize_t c, th, tw, i, q, r, j, lo, hi
    cdef real* tt = &buf[0]                 # 4 rows of TW: the column step of one tile row
    cdef real* R = &buf[4 * TW]             # 4 overlap-added rows of Wp
    cdef real* Ri
    cdef real* row
    cdef const real* u0
    cdef const real* u1
    cdef const real* u2
    cdef const real* u3
    lo = pw if pw > 0 else 0                # padded columns that fall on dx
    hi = W + pw if W + pw < Wp else Wp
    with nogil:
        for c in range(C):
            for th in range(th0, th1):
                q = (th - th0) * TW
                for i in range(4):
                    u0 = &dV[4 * i, c, q]
                    u1 = &dV[4 * i + 1, c, q]
                    u2 = &dV[4 * i + 2, c, q]
                    u3 = &dV[4 * i + 3, c, q]
                    for tw in range(TW):            # t0 = u0, t1 = u1 - u2 + u3
                        tt[tw] = u1[tw] - u2[tw] + u3[tw]
                    for tw in range(TW):            # t2 = u2 + u1 - u0
                        tt[TW + tw] = u2[tw] + u1[tw] - u0[tw]
                    Ri = R + i * Wp
                    Ri[0] = u0[0]
                    Ri[1] = tt[0]
                    for tw in range(1, TW):         # overlap-add: tile tw at 2tw..2tw+3
                        Ri[2 * tw] = u0[tw] + tt[TW + tw - 1]
                        Ri[2 * tw + 1] = tt[tw] - u3[tw - 1]
                    Ri[2 * TW] = tt[2 * TW - 1]
                    Ri[2 * TW + 1] = -u3[TW - 1]
                for i in range(4):                  # rows: B applied to the 4 rows
                    r = 2 * th - ph + i
                    if r < 0 or r >= H:
                        continue
                    row = &dx[n, c, r, 0] - pw
                    if i == 0:
                        for j in range(lo, hi):
                            row[j] += R[j]
                    elif i == 1:
                        for j in range(lo, hi):
                            row[j] += R[Wp + j] - R[2 * Wp + j] + R[3 * Wp + j]
                    elif i == 2:
                        for j in range(lo, hi):
                            row[j] += R[2 * Wp + j] + R[Wp + j] - R[j]
                    else:
                        for j in range(lo, hi):
                            row[j] -= R[3 * Wp + j]
