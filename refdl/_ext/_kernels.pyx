# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""im2col / col2im and max / average pooling on 3-D volumes (1-D and 2-D are views with
unit axes), the chunked convolution and, at the end, Winograd F(2x2, 3x3). Called only
through refdl.ext (and refdl.functional.winograd), which validates every shape, dtype,
contiguity and geometry first (refdl.ext.check_geometry); every entry point checks its
own tables and buffers again: bounds checks are off here.

Every index range is clamped to the row it addresses (range_lo/range_hi return
0 <= lo <= hi <= n_out), so no geometry can make a loop write outside its row. A debug
build (``REFDL_BOUNDSCHECK=1 python setup.py build_ext --inplace``) compiles Cython's
boundscheck/wraparound checks in and defines REFDL_BOUNDSCHECK, which turns on the
explicit checks of every raw-pointer row segment below (check_seg): a violation raises
IndexError instead of writing out of bounds. tests/test_fuzz_kernels.py builds that
variant in a temporary directory and runs the fuzz cases through it.

Layout (same as refdl.functional.conv.im2col):
    x     (N, C, D, H, W)            C-contiguous
    cols  (C*KD*KH*KW, N*OD*OH*OW)   row (c, kd, kh, kw), column (n, od, oh, ow)
Pooling works on planes: x (P, D, H, W) with P = N*C.
The outer loop (batch or plane) runs in parallel with OpenMP when the extension was
compiled with it; every iteration writes a disjoint part of the output.
"""
from cython.parallel cimport prange, threadid
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer

ctypedef fused real:
    float
    double

ctypedef long long i64


cdef inline Py_ssize_t ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    # ceil(a / b) for b > 0 with C's truncating division; b = 1 (stride and dilation 1)
    # without a division, which costs 40-90 cycles and ran once per row of im2col
    if b == 1:
        return a
    if a >= 0:
        return (a + b - 1) // b
    return -((-a) // b)


# outputs o in [lo, hi) read the index o*stride + offset inside [0, length);
# 0 <= lo <= n_out always (a left padding wider than the whole row gives lo = n_out)
cdef inline Py_ssize_t range_lo(Py_ssize_t n_out, Py_ssize_t stride,
                                Py_ssize_t offset) noexcept nogil:
    cdef Py_ssize_t a = ceil_div(-offset, stride)
    if a > n_out:
        return n_out
    return a if a > 0 else 0


cdef inline Py_ssize_t range_hi(Py_ssize_t n_out, Py_ssize_t length, Py_ssize_t stride,
                                Py_ssize_t offset, Py_ssize_t lo) noexcept nogil:
    cdef Py_ssize_t b = ceil_div(length - offset, stride)
    if b > n_out:
        b = n_out
    return b if b > lo else lo


cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static const int REFDL_HAVE_OPENMP = 1;
    static int refdl_max_threads(void) { return omp_get_max_threads(); }
    #else
    static const int REFDL_HAVE_OPENMP = 0;
    static int refdl_max_threads(void) { return 1; }
    #endif
    """
    const int REFDL_HAVE_OPENMP
    int refdl_max_threads() noexcept nogil


# Below this many elements touched, a kernel runs on one thread: waking a team of OpenMP
# threads costs more than it saves (and far more on a loaded machine).
cdef Py_ssize_t PARALLEL_GRAIN = 1 << 18
# A pooling kernel's work is counted in window taps, each weighted as this many touched
# elements: a tap (load, compare, select of the value and of its index, or a scatter-add)
# took 0.75 ns here against 0.09 ns per element of a copy, so pooling LeNet's first
# activation (55,296 windows of 4 taps, 0.17 ms on one thread) runs on the team
# (0.08 ms at 2 threads) instead of counting as 221,184 elements, below the grain.
cdef Py_ssize_t TAP_WORK = 8
# The kernels' team size, set by refdl.set_num_threads (refdl/threads.py); 0: OpenMP's own
cdef int MAX_THREADS = 0


def set_threading(int max_threads, Py_ssize_t grain):
    """Team size (0: OpenMP's default) and the grain (elements) below which kernels run
    serially. Called by refdl.threads only."""
    global MAX_THREADS, PARALLEL_GRAIN
    MAX_THREADS = max_threads if max_threads > 0 else 0
    PARALLEL_GRAIN = grain if grain > 0 else 1


def team_size():
    """The most threads a kernel's parallel region may use (its scratch needs a row each)."""
    return MAX_THREADS if MAX_THREADS > 0 else refdl_max_threads()


def get_threading():
    """(team size setting, grain): what set_threading set."""
    return MAX_THREADS, PARALLEL_GRAIN


cdef inline int n_threads(Py_ssize_t work, Py_ssize_t outer) noexcept nogil:
    cdef int t
    if work < PARALLEL_GRAIN or outer < 2:
        return 1
    t = MAX_THREADS if MAX_THREADS > 0 else refdl_max_threads()
    return t if t < outer else <int>outer


def openmp_enabled():
    """True when this module was compiled with OpenMP."""
    return bool(REFDL_HAVE_OPENMP)


cdef extern from *:
    """
    #ifdef REFDL_BOUNDSCHECK
    static const int REFDL_CHECKED = 1;
    #else
    static const int REFDL_CHECKED = 0;
    #endif
    """
    const int REFDL_CHECKED


def bounds_checked():
    """True for the debug build (REFDL_BOUNDSCHECK=1): every row segment is checked."""
    return bool(REFDL_CHECKED)


cdef int seg_error(Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t n) except -1 nogil:
    with gil:
        raise IndexError(f"refdl kernel: segment [{lo}, {hi}) outside [0, {n})")


cdef inline int check_seg(Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t n) except -1 nogil:
    # debug build only: the half-open segment [lo, hi) must lie inside [0, n)
    # (an empty segment, lo == hi, must still lie in [0, n])
    if REFDL_CHECKED and (lo < 0 or hi < lo or hi > n):
        return seg_error(lo, hi, n)
    return 0


def check_segment(Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t n):
    """check_seg from Python, for the tests: IndexError in the bounds-checked build when
    [lo, hi) is not inside [0, n); a no-op in the other builds."""
    with nogil:
        check_seg(lo, hi, n)


cdef extern from *:
    """
    #include <string.h>
    /* the innermost rows of im2col / col2im: restrict lets the compiler vectorise */
    static inline void refdl_copy_f(float* restrict d, const float* restrict s,
                                    Py_ssize_t n, Py_ssize_t st) {
        if (st == 1) {
            if (n >= 64) { memcpy(d, s, (size_t)n * sizeof(float)); return; }
            for (Py_ssize_t i = 0; i < n; i++) d[i] = s[i];
            return;
        }
        if (st == 2) {       /* a constant stride: vector loads and shuffles */
            for (Py_ssize_t i = 0; i < n; i++) d[i] = s[2 * i];
            return;
        }
        for (Py_ssize_t i = 0; i < n; i++) d[i] = s[i * st];
    }
    static inline void refdl_copy_d(double* restrict d, const double* restrict s,
                                    Py_ssize_t n, Py_ssize_t st) {
        if (st == 1) {
            if (n >= 64) { memcpy(d, s, (size_t)n * sizeof(double)); return; }
            for (Py_ssize_t i = 0; i < n; i++) d[i] = s[i];
            return;
        }
        if (st == 2) {       /* a constant stride: vector loads and shuffles */
            for (Py_ssize_t i = 0; i < n; i++) d[i] = s[2 * i];
            return;
        }
        for (Py_ssize_t i = 0; i < n; i++) d[i] = s[i * st];
    }
    /* 64 (32) bytes from s to d: copy_rows' fixed-size moves (block_span). With AVX,
       256-bit moves (GCC's generic tuning expands a fixed memcpy into 128-bit ones:
       LeNet conv2's im2col in cache 0.099 -> 0.088 ms). */
    #ifdef __AVX__
    #include <immintrin.h>
    static inline void refdl_copy64(void* restrict d, const void* restrict s) {
        __m256 a = _mm256_loadu_ps((const float*)s);
        __m256 b = _mm256_loadu_ps((const float*)s + 8);
        _mm256_storeu_ps((float*)d, a);
        _mm256_storeu_ps((float*)d + 8, b);
    }
    static inline void refdl_copy32(void* restrict d, const void* restrict s) {
        _mm256_storeu_ps((float*)d, _mm256_loadu_ps((const float*)s));
    }
    /* the adjoint's short rows: d[i] += s[i] for the lanes i where the mask m (from
       refdl_lane_mask) is all ones, d[i] += +0.0 for the others, over 64 (32) bytes.
       Adding +0.0 leaves every value but -0.0 as it is, and col2im's sums never hold
       -0.0 (they start at +0.0, and a sum is -0.0 only when both terms are), so the
       result is the same bits as adding the wanted lanes alone, which the builds
       without AVX do. */
    static inline void refdl_add_masked_f(float* d, const float* restrict s,
                                          const float* restrict m, int two) {
        __m256 a = _mm256_and_ps(_mm256_loadu_ps(s), _mm256_loadu_ps(m));
        _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), a));
        if (two) {
            a = _mm256_and_ps(_mm256_loadu_ps(s + 8), _mm256_loadu_ps(m + 8));
            _mm256_storeu_ps(d + 8, _mm256_add_ps(_mm256_loadu_ps(d + 8), a));
        }
    }
    static inline void refdl_add_masked_d(double* d, const double* restrict s,
                                          const double* restrict m, int two) {
        __m256d a = _mm256_and_pd(_mm256_loadu_pd(s), _mm256_loadu_pd(m));
        _mm256_storeu_pd(d, _mm256_add_pd(_mm256_loadu_pd(d), a));
        if (two) {
            a = _mm256_and_pd(_mm256_loadu_pd(s + 4), _mm256_loadu_pd(m + 4));
            _mm256_storeu_pd(d + 4, _mm256_add_pd(_mm256_loadu_pd(d + 4), a));
        }
    }
    static const int REFDL_HAVE_AVX = 1;
    #else
    static inline void refdl_add_masked_f(float* d, const float* s, const float* m,
                                          int two) {}
    static inline void refdl_add_masked_d(double* d, const double* s, const double* m,
                                          int two) {}
    static const int REFDL_HAVE_AVX = 0;
    static inline void refdl_copy64(void* restrict d, const void* restrict s) {
        memcpy(d, s, 64);
    }
    static inline void refdl_copy32(void* restrict d, const void* restrict s) {
        memcpy(d, s, 32);
    }
    #endif
    /* m (64 bytes) = the mask of lanes i < n for lanes of `size` bytes: all ones, or 0 */
    static inline void refdl_lane_mask(void* m, Py_ssize_t n, Py_ssize_t size) {
        unsigned char* b = (unsigned char*)m;
        for (Py_ssize_t i = 0; i < 64; i++) b[i] = (i / size < n) ? 0xFF : 0;
    }
    static inline void refdl_add_f(float* restrict d, const float* restrict s,
                                   Py_ssize_t n, Py_ssize_t st) {
        if (st == 1) { for (Py_ssize_t i = 0; i < n; i++) d[i] += s[i]; return; }
        for (Py_ssize_t i = 0; i < n; i++) d[i * st] += s[i];
    }
    static inline void refdl_add_d(double* restrict d, const double* restrict s,
                                   Py_ssize_t n, Py_ssize_t st) {
        if (st == 1) { for (Py_ssize_t i = 0; i < n; i++) d[i] += s[i]; return; }
        for (Py_ssize_t i = 0; i < n; i++) d[i * st] += s[i];
    }
    """
    void refdl_copy_f(float* d, const float* s, Py_ssize_t n, Py_ssize_t st) noexcept nogil
    void refdl_copy_d(double* d, const double* s, Py_ssize_t n, Py_ssize_t st) noexcept nogil
    void refdl_copy64(void* d, const void* s) noexcept nogil
    void refdl_copy32(void* d, const void* s) noexcept nogil
    void refdl_add_masked_f(float* d, const float* s, const float* m, int two) noexcept nogil
    void refdl_add_masked_d(double* d, const double* s, const double* m,
                            int two) noexcept nogil
    void refdl_lane_mask(void* m, Py_ssize_t n, Py_ssize_t size) noexcept nogil
    const int REFDL_HAVE_AVX
    void refdl_add_f(float* d, const float* s, Py_ssize_t n, Py_ssize_t st) noexcept nogil
    void refdl_add_d(double* d, const double* s, Py_ssize_t n, Py_ssize_t st) noexcept nogil
    void* memset(void* p, int c, size_t n) noexcept nogil


cdef inline void copy_row(real* d, const real* s, Py_ssize_t n, Py_ssize_t st) noexcept nogil:
    if n <= 0:
        return
    if real is float:
        refdl_copy_f(d, s, n, st)
    else:
        refdl_copy_d(d, s, n, st)


cdef inline void add_row(real* d, const real* s, Py_ssize_t n, Py_ssize_t st) noexcept nogil:
    if n <= 0:
        return
    if real is float:
        refdl_add_f(d, s, n, st)
    else:
        refdl_add_d(d, s, n, st)


cdef inline void add_bias(real* d, const real* s, Py_ssize_t n, real b) noexcept nogil:
    # d = s + b (a row of a convolution's output and its channel's bias)
    cdef Py_ssize_t i
    for i in range(n):
        d[i] = s[i] + b


cdef inline void zero_row(real* d, Py_ssize_t n) noexcept nogil:
    if n > 0:
        memset(d, 0, <size_t>n * sizeof(real))


cdef int check_cols(Py_ssize_t rows, Py_ssize_t ncols, Py_ssize_t N, Py_ssize_t C,
                    Py_ssize_t KD, Py_ssize_t KH, Py_ssize_t KW,
                    Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
                    Py_ssize_t dd, Py_ssize_t dh, Py_ssize_t dw,
                    Py_ssize_t OD, Py_ssize_t OH, Py_ssize_t OW) except -1:
    # once per call, in every build: the loops below trust these
    if min(KD, KH, KW, sd, sh, sw, dd, dh, dw) < 1 or min(OD, OH, OW) < 0:
        raise ValueError("refdl kernel: kernel, stride and dilation must be positive")
    if rows != C * KD * KH * KW or ncols != N * OD * OH * OW:
        raise ValueError(f"refdl kernel: cols has shape ({rows}, {ncols}), expected "
                         f"({C * KD * KH * KW}, {N * OD * OH * OW})")
    return 0


cdef struct Geom:
    # one convolution's geometry: an image (C, D, H, W), the kernel K, stride s, the
    # padding before each axis p (the after-padding is implied by the output size O),
    # dilation d and the output size O
    Py_ssize_t C, D, H, W, KD, KH, KW, sd, sh, sw, pd, ph, pw, dd, dh, dw, OD, OH, OW


cdef Geom make_geom(Py_ssize_t C, Py_ssize_t D, Py_ssize_t H, Py_ssize_t W,
                    Py_ssize_t KD, Py_ssize_t KH, Py_ssize_t KW,
                    Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
                    Py_ssize_t pd, Py_ssize_t ph, Py_ssize_t pw,
                    Py_ssize_t dd, Py_ssize_t dh, Py_ssize_t dw,
                    Py_ssize_t OD, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    cdef Geom g
    g.C, g.D, g.H, g.W = C, D, H, W
    g.KD, g.KH, g.KW, g.sd, g.sh, g.sw = KD, KH, KW, sd, sh, sw
    g.pd, g.ph, g.pw, g.dd, g.dh, g.dw = pd, ph, pw, dd, dh, dw
    g.OD, g.OH, g.OW = OD, OH, OW
    return g


cdef inline Py_ssize_t block_span(Py_ssize_t n, Py_ssize_t size) noexcept nogil:
    # the entries (of `size` bytes) copy_blocks moves for a segment of n: whole 64-byte
    # blocks, or one of 32 bytes when that covers n; 0 when n is empty or longer than 4
    # blocks (a memcpy or the vectorised loop does those as well)
    cdef Py_ssize_t B = 64 // size
    if n <= 0 or n > 4 * B:
        return 0
    if 2 * n <= B:
        return B // 2
    return (n + B - 1) // B * B


cdef inline void copy_blocks(real* d, const real* s, Py_ssize_t span) noexcept nogil:
    # span entries (from block_span) from s to d, as fixed-size moves
    cdef Py_ssize_t k, B = 64 // <Py_ssize_t>sizeof(real)
    if span < B:
        refdl_copy32(d, s)
    elif span == B:
        refdl_copy64(d, s)
    elif span == 2 * B:
        refdl_copy64(d, s)
        refdl_copy64(d + B, s + B)
    else:
        for k in range(span // B):
            refdl_copy64(d + k * B, s + k * B)


cdef inline void zero_few(real* d, Py_ssize_t n) noexcept nogil:
    # zero_row for the one or two padding columns of a row: stores, not a memset call
    # (which GCC makes of a loop)
    if n > 4:
        zero_row(d, n)
        return
    if n > 0:
        d[0] = 0
    if n > 1:
        d[1] = 0
    if n > 2:
        d[2] = 0
    if n > 3:
        d[3] = 0


cdef inline void copy_rows(real* d, const real* s, Py_ssize_t nrows, Py_ssize_t OW,
                           Py_ssize_t ow0, Py_ssize_t ow1, Py_ssize_t sw, Py_ssize_t off,
                           Py_ssize_t s_step) noexcept nogil:
    # nrows output rows of OW columns from input rows s_step apart (s: the first one's
    # start): columns [ow0, ow1) read the input (column ow at s[ow*sw + off]), the others
    # are padding (0)
    cdef Py_ssize_t i, ow, span, B
    if sw == 1 and nrows > 1:
        # Short rows (up to 4 x 64 bytes) but the last: the input part [ow0, ow1) as
        # fixed-size moves of span >= ow1 - ow0 entries (no loop, no call), then the
        # padding columns. The span - (ow1 - ow0) extra entries land in this row's
        # padding columns, zeroed after the copy, or where the next row goes, which it
        # rewrites whole. They stay inside the run: ow0 + span <= 2 OW (the next row's
        # end), and the read ends before the next row's own read does
        # (ow0 + span <= s_step + ow1), which the last row's exact read bounds.
        # LeNet's conv2 (OW = 10): its forward 0.53 -> 0.35 ms at 1 thread.
        span = block_span(ow1 - ow0, sizeof(real))
        B = 64 // <Py_ssize_t>sizeof(real)
        if span and ow0 + span <= 2 * OW and ow0 + span <= s_step + ow1:
            if ow0 == 0 and ow1 == OW and span == B:        # separate tight loops for
                for i in range(nrows - 1):                  # the commonest cases
                    refdl_copy64(d, s + off)
                    d = d + OW
                    s = s + s_step
            elif ow0 == 0 and ow1 == OW and span == B // 2:
                for i in range(nrows - 1):
                    refdl_copy32(d, s + off)
                    d = d + OW
                    s = s + s_step
            else:
                for i in range(nrows - 1):
                    copy_blocks(d + ow0, s + ow0 + off, span)
                    zero_few(d, ow0)
                    zero_few(d + ow1, OW - ow1)
                    d = d + OW
                    s = s + s_step
            nrows = 1
    if sw == 1 and ow0 == 0 and ow1 == OW:
        # every column reads the input: a plain loop (no calls, no branches) that the
        # compiler vectorises; 2.4x faster than a copy call per row for rows of 10
        for i in range(nrows):
            for ow in range(OW):
                d[ow] = s[ow + off]
            d = d + OW
            s = s + s_step
        return
    copy_rows_padded(d, s, nrows, OW, ow0, ow1, sw, off, s_step)


cdef void copy_rows_padded(real* d, const real* s, Py_ssize_t nrows, Py_ssize_t OW,
                           Py_ssize_t ow0, Py_ssize_t ow1, Py_ssize_t sw, Py_ssize_t off,
                           Py_ssize_t s_step) noexcept nogil:
    # copy_rows with padding columns or a stride: a call of its own, so that the short
    # paths above stay small enough to be inlined into im2col's loop
    cdef Py_ssize_t i
    for i in range(nrows):
        zero_row(d, ow0)
        copy_row(d + ow0, s + ow0 * sw + off, ow1 - ow0, sw)
        zero_row(d + ow1, OW - ow1)
        d = d + OW
        s = s + s_step


cdef inline void add_rows(real* x, const real* s, Py_ssize_t nrows, Py_ssize_t OW,
                          Py_ssize_t ow0, Py_ssize_t ow1, Py_ssize_t sw, Py_ssize_t off,
                          Py_ssize_t x_step) noexcept nogil:
    # the adjoint of copy_rows: x[ow*sw + off] += s[ow] for the columns [ow0, ow1) of
    # nrows rows (input rows x_step apart); padding columns are dropped
    cdef Py_ssize_t i, ow, span, par
    cdef int two
    cdef real mask[16]                                  # 64 bytes of lane masks
    if sw == 1 and ow0 == 0 and ow1 == OW:
        # with AVX, short rows (one block of copy_rows' spans) but the last: a masked add
        # over the span (the lanes past OW add +0.0, which changes no sum: see
        # refdl_add_masked_f); it stays inside the run for the reasons copy_rows gives
        span = block_span(OW, sizeof(real))
        if REFDL_HAVE_AVX and nrows > 1 and 0 < span <= 64 // <Py_ssize_t>sizeof(real) \
                and span <= 2 * OW and span <= x_step + OW:
            refdl_lane_mask(mask, OW, sizeof(real))
            two = span * <Py_ssize_t>sizeof(real) == 64
            for par in range(2):
                # even rows, then odd ones: a row's block overlaps the next row's, and
                # reading it right after the store would stall (store forwarding)
                for i in range(par, nrows - 1, 2):
                    if real is float:
                        refdl_add_masked_f(x + i * x_step + off, s + i * OW, mask, two)
                    else:
                        refdl_add_masked_d(x + i * x_step + off, s + i * OW, mask, two)
            s = s + (nrows - 1) * OW
            x = x + (nrows - 1) * x_step
            nrows = 1
        for i in range(nrows):
            for ow in range(OW):
                x[ow + off] += s[ow]
            s = s + OW
            x = x + x_step
        return
    for i in range(nrows):
        add_row(x + ow0 * sw + off, s + ow0, ow1 - ow0, sw)
        s = s + OW
        x = x + x_step


cdef int image_columns(real* x, real* cols, Py_ssize_t ldc, const Geom* g,
                       Py_ssize_t r0, Py_ssize_t r1, bint adjoint) except -1 nogil:
    # im2col of ONE image x (C, D, H, W) for its output rows r0 <= r < r1 (a row r is an
    # (od, oh) pair, r = od*OH + oh, of OW outputs): row (c, kd, kh, kw) of cols (row
    # stride ldc) gets, at column (r - r0)*OW + ow, x[c, od*sd + kd*dd - pd,
    # oh*sh + kh*dh - ph, ow*sw + kw*dw - pw], or 0 where that lies in the padding.
    # adjoint: col2im instead, the same traversal the other way: x += every column entry
    # at the input position it was copied from (padding entries are dropped).
    # The rows of one od form a run: the rows [a, b) inside the input are copied (added)
    # in one tight loop, the padding rows before and after are zero-filled at once. The
    # KW rows of one (c, kd, kh) share the run's bounds, so the kw loop is innermost.
    cdef Py_ssize_t c, kd, kh, kw, r, od, oh, e, a, b, idd, ih, row0, off, done
    cdef Py_ssize_t od0, od1, oh0, oh1, ow0, ow1
    cdef Py_ssize_t OW = g.OW
    cdef real* col
    cdef real* src
    check_seg(r0, r1, g.OD * g.OH)
    check_seg(0, (r1 - r0) * OW, ldc)
    for c in range(g.C):
        for kd in range(g.KD):
            od0 = range_lo(g.OD, g.sd, kd * g.dd - g.pd)
            od1 = range_hi(g.OD, g.D, g.sd, kd * g.dd - g.pd, od0)
            for kh in range(g.KH):
                oh0 = range_lo(g.OH, g.sh, kh * g.dh - g.ph)
                oh1 = range_hi(g.OH, g.H, g.sh, kh * g.dh - g.ph, oh0)
                row0 = ((c * g.KD + kd) * g.KH + kh) * g.KW     # the row of kw = 0
                r = r0
                od = r0 // g.OH if r0 else 0
                oh = r0 - od * g.OH
                done = 0                                # columns of the piece done
                while r < r1:                           # the rows [oh, e) of this od
                    e = oh + (r1 - r) if oh + (r1 - r) < g.OH else g.OH
                    a = e                               # the rows [a, b) read the input
                    b = e
                    if od >= od0 and od < od1:
                        a = clip(oh0, oh, e)
                        b = clip(oh1, a, e)
                    src = x
                    if b > a:
                        idd = od * g.sd + kd * g.dd - g.pd
                        ih = a * g.sh + kh * g.dh - g.ph
                        check_seg(idd, idd + 1, g.D)
                        check_seg(ih, ih + (b - a - 1) * g.sh + 1, g.H)
                        src = x + ((c * g.D + idd) * g.H + ih) * g.W
                    for kw in range(g.KW):
                        col = cols + (row0 + kw) * ldc + done
                        if b > a:
                            off = kw * g.dw - g.pw
                            ow0 = range_lo(OW, g.sw, off)
                            ow1 = range_hi(OW, g.W, g.sw, off, ow0)
                            check_seg(ow0, ow1, OW)
                            if ow1 > ow0:
                                check_seg(ow0 * g.sw + off, (ow1 - 1) * g.sw + off + 1, g.W)
                            if adjoint:
                                add_rows(src, col + (a - oh) * OW, b - a, OW, ow0, ow1, g.sw,
                                         off, g.sh * g.W)
                            else:
                                copy_rows(col + (a - oh) * OW, src, b - a, OW, ow0, ow1,
                                          g.sw, off, g.sh * g.W)
                        if not adjoint:                 # the padding rows around them
                            zero_row(col, (a - oh) * OW)
                            zero_row(col + (b - oh) * OW, (e - b) * OW)
                    done = done + (e - oh) * OW
                    r = r + (e - oh)
                    od = od + 1
                    oh = 0
    return 0


cdef inline int im2col_image(const real* x, real* cols, Py_ssize_t ldc, const Geom* g,
                             Py_ssize_t r0, Py_ssize_t r1) except -1 nogil:
    return image_columns(<real*>x, cols, ldc, g, r0, r1, False)


cdef inline int col2im_image(const real* cols, Py_ssize_t ldc, real* x, const Geom* g,
                             Py_ssize_t r0, Py_ssize_t r1) except -1 nogil:
    return image_columns(x, <real*>cols, ldc, g, r0, r1, True)


def im2col3d(const real[:, :, :, :, ::1] x, real[:, ::1] cols,
             Py_ssize_t KD, Py_ssize_t KH, Py_ssize_t KW,
             Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
             Py_ssize_t pd, Py_ssize_t ph, Py_ssize_t pw,
             Py_ssize_t dd, Py_ssize_t dh, Py_ssize_t dw,
             Py_ssize_t OD, Py_ssize_t OH, Py_ssize_t OW):
    """cols (C*KD*KH*KW, N*L) = the columns of every image, image n in columns n*L..."""
    check_cols(cols.shape[0], cols.shape[1], x.shape[0], x.shape[1], KD, KH, KW,
               sd, sh, sw, dd, dh, dw, OD, OH, OW)
    cdef Geom g = make_geom(x.shape[1], x.shape[2], x.shape[3], x.shape[4], KD, KH, KW,
                            sd, sh, sw, pd, ph, pw, dd, dh, dw, OD, OH, OW)
    cdef Py_ssize_t n, N = x.shape[0], L = OD * OH * OW
    cdef int nt = n_threads(cols.shape[0] * cols.shape[1], N)
    if L == 0 or cols.shape[0] == 0:
        return
    for n in prange(N, nogil=True, schedule="static", num_threads=nt):
        im2col_image(&x[n, 0, 0, 0, 0], &cols[0, n * L], cols.shape[1], &g, 0, OD * OH)


def col2im3d(const real[:, ::1] cols, real[:, :, :, :, ::1] x,
             Py_ssize_t KD, Py_ssize_t KH, Py_ssize_t KW,
             Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
             Py_ssize_t pd, Py_ssize_t ph, Py_ssize_t pw,
             Py_ssize_t dd, Py_ssize_t dh, Py_ssize_t dw,
             Py_ssize_t OD, Py_ssize_t OH, Py_ssize_t OW):
    """x += col2im(cols); x must be zeroed by the caller."""
    check_cols(cols.shape[0], cols.shape[1], x.shape[0], x.shape[1], KD, KH, KW,
               sd, sh, sw, dd, dh, dw, OD, OH, OW)
    cdef Geom g = make_geom(x.shape[1], x.shape[2], x.shape[3], x.shape[4], KD, KH, KW,
                            sd, sh, sw, pd, ph, pw, dd, dh, dw, OD, OH, OW)
    cdef Py_ssize_t n, N = x.shape[0], L = OD * OH * OW
    cdef int nt = n_threads(cols.shape[0] * cols.shape[1], N)
    if L == 0 or cols.shape[0] == 0:
        return
    for n in prange(N, nogil=True, schedule="static", num_threads=nt):
        col2im_image(&cols[0, n * L], cols.shape[1], &x[n, 0, 0, 0, 0], &g, 0, OD * OH)


# -- convolution by chunks of images: im2col + GEMM while the columns are in cache ---------

# BLAS's sgemm/dgemm, from SciPy (a dependency of refdl): taken at import from the table
# of C functions scipy.linalg.cython_blas exports, so building the kernels needs no SciPy
ctypedef void (*sgemm_t)(char*, char*, int*, int*, int*, float*, float*, int*, float*, int*,
                         float*, float*, int*) noexcept nogil
ctypedef void (*dgemm_t)(char*, char*, int*, int*, int*, double*, double*, int*, double*,
                         int*, double*, double*, int*) noexcept nogil
cdef sgemm_t sgemm = NULL
cdef dgemm_t dgemm = NULL


def _load_blas():
    global sgemm, dgemm
    from scipy.linalg import cython_blas
    table = cython_blas.__pyx_capi__
    sgemm = <sgemm_t>PyCapsule_GetPointer(table["sgemm"], PyCapsule_GetName(table["sgemm"]))
    dgemm = <dgemm_t>PyCapsule_GetPointer(table["dgemm"], PyCapsule_GetName(table["dgemm"]))


_load_blas()


cdef inline void gemm(char ta, char tb, int M, int N, int K, const real* A, int lda,
                      const real* B, int ldb, real beta, real* C, int ldc) noexcept nogil:
    # row-major C (M x N) = op(A) op(B) + beta C through the column-major BLAS of SciPy:
    # a row-major matrix is its transpose in column-major order, so this is the column-major
    # product C^T = op(B)^T op(A)^T (the operands swap, the flags stay)
    cdef real one = 1
    if real is float:
        sgemm(&tb, &ta, &N, &M, &K, &one, <float*>B, &ldb, <float*>A, &lda, &beta, C, &ldc)
    else:
        dgemm(&tb, &ta, &N, &M, &K, &one, <double*>B, &ldb, <double*>A, &lda, &beta, C, &ldc)


cdef inline void transpose_block(const real* s, Py_ssize_t lds, Py_ssize_t rows,
                                 Py_ssize_t cols, real* d, Py_ssize_t ldd) noexcept nogil:
    # d[j*ldd + i] = s[i*lds + j] for i < rows, j < cols: 8 columns at a time, so that the
    # reads of each row and the writes of each column stay within a few cache lines
    cdef Py_ssize_t i, j, j0, j1
    for j0 in range(0, cols, 8):
        j1 = j0 + 8 if j0 + 8 < cols else cols
        for i in range(rows):
            for j in range(j0, j1):
                d[j * ldd + i] = s[i * lds + j]


cdef struct Tiling:
    # how conv_forward/conv_backward cut the work: chunks of `chunk` consecutive images
    # (the last may be shorter) and, when a chunk is a single image, ranges of `rows`
    # output rows (the last may be shorter); R = OD*OH rows of OW outputs per image
    Py_ssize_t N, chunk, nchunks, R, rows, nranges


cdef Tiling make_tiling(Py_ssize_t N, Py_ssize_t chunk, Py_ssize_t rows, Py_ssize_t CK,
                        Py_ssize_t Cout, Py_ssize_t G, Py_ssize_t wrows, Py_ssize_t wcols,
                        Py_ssize_t scratch_len, Py_ssize_t OD, Py_ssize_t OH,
                        Py_ssize_t OW) except *:
    # once per call, in every build: the chunked loops below trust these
    cdef Tiling t
    t.N, t.chunk, t.R, t.rows = N, chunk, OD * OH, rows
    if chunk < 1 or G < 1 or Cout % G or CK % G or t.R < 1 or OW < 1 or CK < 1 or \
            rows < 1 or rows > t.R or (chunk > 1 and rows != t.R):
        raise ValueError("refdl kernel: inconsistent chunk, rows or groups")
    if wrows != Cout or wcols != CK // G:
        raise ValueError(f"refdl kernel: weight has shape ({wrows}, {wcols}), expected "
                         f"({Cout}, {CK // G})")
    if scratch_len < (CK + Cout) * chunk * rows * OW:
        raise ValueError("refdl kernel: scratch too small")
    if (CK + Cout) * chunk * rows * OW >= 2 ** 31 or Cout * t.R * OW >= 2 ** 31:
        raise ValueError("refdl kernel: a chunk is too large for 32-bit BLAS indices")
    t.nchunks = (N + chunk - 1) // chunk
    t.nranges = (t.R + rows - 1) // rows
    return t


cdef inline Py_ssize_t chunk_size(const Tiling* t, Py_ssize_t c) noexcept nogil:
    # images in chunk c
    return t.chunk if t.N - c * t.chunk > t.chunk else t.N - c * t.chunk


cdef inline Py_ssize_t range_end(const Tiling* t, Py_ssize_t r0) noexcept nogil:
    # one past the last output row of the range starting at row r0
    return r0 + t.rows if t.R - r0 > t.rows else t.R


def conv_forward(const real[:, :, :, :, ::1] x, const real[:, ::1] w, const real[::1] bias,
                 real[:, :, ::1] y, real[:, ::1] scratch, Py_ssize_t groups,
                 Py_ssize_t chunk, Py_ssize_t rows,
                 Py_ssize_t KD, Py_ssize_t KH, Py_ssize_t KW,
                 Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
                 Py_ssize_t pd, Py_ssize_t ph, Py_ssize_t pw,
                 Py_ssize_t dd, Py_ssize_t dh, Py_ssize_t dw,
                 Py_ssize_t OD, Py_ssize_t OH, Py_ssize_t OW):
    """y (N, C_out, L) = W_g cols_g + b for every group g, one piece at a time: a chunk of
    `chunk` images, or `rows` output rows of one image. The piece's columns (C*K, width)
    are written to this thread's scratch row, then one GEMM per group reads them while
    they are still in cache; bias: (C_out,) or empty. Pieces are independent and run on
    the kernels' threads; BLAS must be single-threaded during the call."""
    cdef Py_ssize_t N = x.shape[0], Cout = y.shape[1], L = OD * OH * OW
    cdef Py_ssize_t CK = x.shape[1] * KD * KH * KW
    if y.shape[0] != N or y.shape[2] != L or (bias.shape[0] != 0 and bias.shape[0] != Cout):
        raise ValueError("conv_forward: inconsistent shapes")
    check_cols(CK, N * L, N, x.shape[1], KD, KH, KW, sd, sh, sw, dd, dh, dw, OD, OH, OW)
    cdef Tiling t = make_tiling(N, chunk, rows, CK, Cout, groups, w.shape[0], w.shape[1],
                                scratch.shape[1], OD, OH, OW)
    cdef int nt = n_threads(N * CK * L, t.nchunks * t.nranges)
    if scratch.shape[0] < nt:
        raise ValueError("conv_forward: scratch has too few rows for the threads")
    cdef Geom g = make_geom(x.shape[1], x.shape[2], x.shape[3], x.shape[4], KD, KH, KW,
                            sd, sh, sw, pd, ph, pw, dd, dh, dw, OD, OH, OW)
    cdef Py_ssize_t cog = Cout // groups, CKg = CK // groups
    cdef Py_ssize_t p, n0, nb, r0, r1, cl, width, i, gr, co
    cdef real* cols
    cdef real* yc
    for p in prange(t.nchunks * t.nranges, nogil=True, schedule="dynamic", num_threads=nt):
        n0 = (p // t.nranges) * t.chunk
        nb = chunk_size(&t, p // t.nranges)
        r0 = (p % t.nranges) * t.rows
        r1 = range_end(&t, r0)
        cl = (r1 - r0) * OW                            # columns per image of this piece
        width = nb * cl
        cols = &scratch[threadid(), 0]                 # (CK, width), then yc (Cout, width)
        yc = cols + CK * width
        for i in range(nb):
            im2col_image(&x[n0 + i, 0, 0, 0, 0], cols + i * cl, width, &g, r0, r1)
        if nb == 1:                                    # straight into y[n0, :, r0*OW:r1*OW]
            for gr in range(groups):
                gemm(c'N', c'N', <int>cog, <int>cl, <int>CKg, &w[gr * cog, 0], <int>CKg,
                     cols + gr * CKg * cl, <int>cl, 0, &y[n0, gr * cog, r0 * OW], <int>L)
            if bias.shape[0]:
                for co in range(Cout):
                    add_bias(&y[n0, co, r0 * OW], &y[n0, co, r0 * OW], cl, bias[co])
            continue
        for gr in range(groups):
            gemm(c'N', c'N', <int>cog, <int>width, <int>CKg, &w[gr * cog, 0], <int>CKg,
                 cols + gr * CKg * width, <int>width, 0, yc + gr * cog * width, <int>width)
        for i in range(nb):                            # yc -> y[n0+i, :, r0*OW:r1*OW] + b
            for co in range(Cout):
                add_bias(&y[n0 + i, co, r0 * OW], yc + co * width + i * cl, cl,
                         bias[co] if bias.shape[0] else 0)


def conv_forward_planes(const real[:, :, :, :, ::1] x, const real[:, :, ::1] wk,
                        const real[::1] bias, real[:, :, ::1] y, real[:, ::1] scratch,
                        Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t pd, Py_ssize_t ph, Py_ssize_t pw,
                        Py_ssize_t dd, Py_ssize_t dh, Py_ssize_t dw,
                        Py_ssize_t OD, Py_ssize_t OH, Py_ssize_t OW):
    """A 3-D convolution with depth stride 1 (groups 1), one image per thread:
    y[n, :, od] = sum over kd of wk[kd] (C_out, C*KH*KW) P[od + kd*dd - pd] + b, where
    P[d] (C*KH*KW, OH*OW) is the 2-D im2col of the input plane x[n, :, d] (taps in the
    depth padding add nothing). Consecutive output planes share KD - 1 input planes, so
    each P[d] is built once per image, into a ring of S = (KD-1)*dd + 1 slots (slot
    d mod S) of this thread's scratch row, instead of KD times as the im2col of the
    whole 3-D window does. The KD products of a plane accumulate (beta = 1), a different
    order of the same sum than conv_forward's single product."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], D = x.shape[2]
    cdef Py_ssize_t KD = wk.shape[0], Cout = wk.shape[1], CKp = wk.shape[2]
    cdef Py_ssize_t L2 = OH * OW, S = (KD - 1) * dd + 1
    # the row stride of a plane's columns and sums: L2, or one cache line more when L2
    # entries are a multiple of 512 bytes. Rows 4 KiB apart share their L1 cache sets, and
    # the product reads C*KH*KW of them at once (the Conv3d case of docs/performance.md,
    # L2 = 1024 floats: its forward 2.09 -> 1.66 ms at 1 thread with the padding)
    cdef Py_ssize_t lp = L2
    if (L2 * <Py_ssize_t>sizeof(real)) % 512 == 0:
        lp = L2 + 64 // <Py_ssize_t>sizeof(real)
    if min(KD, KH, KW, sh, sw, dd, dh, dw) < 1 or min(OD, OH, OW) < 1 or Cout < 1:
        raise ValueError("conv_forward_planes: kernel, stride and dilation must be positive")
    if CKp != C * KH * KW or y.shape[0] != N or y.shape[1] != Cout or \
            y.shape[2] != OD * L2 or (bias.shape[0] != 0 and bias.shape[0] != Cout):
        raise ValueError("conv_forward_planes: inconsistent shapes")
    if scratch.shape[1] < S * (CKp * lp + 1) + Cout * lp:
        raise ValueError("conv_forward_planes: scratch too small")
    if CKp * lp >= 2 ** 31 or Cout * OD * L2 >= 2 ** 31 or D >= 2 ** 24:
        raise ValueError("conv_forward_planes: a plane is too large for 32-bit BLAS indices")
    # each plane's 2-D im2col checks its own rows (the geometry of one depth slice)
    check_cols(CKp, L2, 1, C, 1, KH, KW, 1, sh, sw, 1, dh, dw, 1, OH, OW)
    cdef int nt = n_threads(N * KD * CKp * OD * L2, N)
    if scratch.shape[0] < nt:
        raise ValueError("conv_forward_planes: scratch has too few rows for the threads")
    cdef Py_ssize_t n, od, kd, d, slot, co, k
    cdef real* ring
    cdef real* tag                     # tag[slot] = the plane in the slot, or -1 (exact in
                                       # floating point: D < 2**24)
    cdef real* yp
    cdef real beta
    cdef Geom g
    for n in prange(N, nogil=True, schedule="dynamic", num_threads=nt):
        ring = &scratch[threadid(), 0]
        tag = ring + S * CKp * lp
        # the plane's sums, (C_out, OH*OW) rows lp apart: y's rows are OD*OH*OW apart, often
        # a multiple of 4 KiB, and a product accumulating there would keep all of its
        # rows in the same cache set (the Conv3d case of docs/performance.md: 0.94x of
        # the whole-window path's time that way, 0.77x with this buffer, each timed
        # against that path in the same run)
        yp = tag + S
        for k in range(S):
            tag[k] = -1
        for od in range(OD):
            beta = 0
            for kd in range(KD):
                d = od + kd * dd - pd
                if d < 0 or d >= D:
                    continue
                slot = d % S
                if tag[slot] != d:             # the plane's columns: once per image
                    # the 2-D window of depth slice d: a 3-D geometry with one output
                    # plane whose single tap reads slice d (padding before = -d)
                    g = make_geom(C, D, x.shape[3], x.shape[4], 1, KH, KW, 1, sh, sw,
                                  -d, ph, pw, 1, dh, dw, 1, OH, OW)
                    im2col_image(&x[n, 0, 0, 0, 0], ring + slot * CKp * lp, lp, &g, 0, OH)
                    tag[slot] = d
                gemm(c'N', c'N', <int>Cout, <int>L2, <int>CKp, &wk[kd, 0, 0], <int>CKp,
                     ring + slot * CKp * lp, <int>lp, beta, yp, <int>lp)
                beta = 1
            if beta == 0:                      # every tap in the depth padding
                zero_row(yp, Cout * lp)
            for co in range(Cout):             # y[n, co, od] = the sums + b
                add_bias(&y[n, co, od * L2], yp + co * lp, L2,
                         bias[co] if bias.shape[0] else 0)


# ---- the direct convolution (float32): no columns at all ----
#
# y[n, co, o] = b[co] + sum over k = (c, kd, kh, kw) of W[co, k] * x_p[n, c, o*s + kd*dd, ...]
# computed output row by output row: the C kernel below keeps one accumulator vector per
# output of a block of the row, its lanes L output channels, and adds one fused
# multiply-add per tap k: acc[r] = fma(W[co0:co0+L, k], x_p[off[k] + r*sw], acc[r]).
# Every output's sum starts at +0.0 and takes its terms in the order of k, each with a
# single rounding (fma), whichever instruction set runs it: the portable loop (C's fmaf,
# correctly rounded by definition), AVX2 (8 lanes) or AVX-512 (16 lanes). So every build
# gives the same bits. docs/derivations/conv.md, "The direct convolution".
cdef extern from *:
    """
    #include <math.h>
    /* out[r*L + l] = sum over k < K of wp[k*L + l] * x[off[k] + r*sw] for the outputs
       r < OW of one output row and the L lanes l, each sum from +0.0 in the order of k,
       one fused multiply-add per term. The portable kernel: L = 8. */
    #define REFDL_DIRECT_R8 12    /* outputs per block with 8 lanes (16 vector registers) */
    #define REFDL_DIRECT_R16 14   /* with 16 lanes (32 vector registers) */
    static void refdl_direct_row_portable(const float* x, const Py_ssize_t* off,
                                          const float* wp, Py_ssize_t K, Py_ssize_t OW,
                                          Py_ssize_t sw, float* out) {
        float acc[REFDL_DIRECT_R8][8];
        for (Py_ssize_t ow0 = 0; ow0 < OW; ow0 += REFDL_DIRECT_R8) {
            Py_ssize_t R = OW - ow0 < REFDL_DIRECT_R8 ? OW - ow0 : REFDL_DIRECT_R8;
            for (Py_ssize_t r = 0; r < R; r++)
                for (int l = 0; l < 8; l++) acc[r][l] = 0.0f;
            for (Py_ssize_t k = 0; k < K; k++) {
                const float* xk = x + off[k] + ow0 * sw;
                const float* wk = wp + 8 * k;
                for (Py_ssize_t r = 0; r < R; r++) {
                    const float v = xk[r * sw];
                    for (int l = 0; l < 8; l++) acc[r][l] = fmaf(wk[l], v, acc[r][l]);
                }
            }
            for (Py_ssize_t r = 0; r < R; r++)
                for (int l = 0; l < 8; l++) out[(ow0 + r) * 8 + l] = acc[r][l];
        }
    }
    /* a row cut into blocks of near-equal size, at most RMAX outputs each (a short last
       block would leave the FMA units waiting on too few independent sums) */
    static inline Py_ssize_t refdl_direct_blocks(Py_ssize_t OW, Py_ssize_t RMAX) {
        return (OW + RMAX - 1) / RMAX;
    }
    #define REFDL_R_SWITCH(R, CALL) switch (R) { \
        case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break; \
        case 4: CALL(4); break; case 5: CALL(5); break; case 6: CALL(6); break; \
        case 7: CALL(7); break; case 8: CALL(8); break; case 9: CALL(9); break; \
        case 10: CALL(10); break; case 11: CALL(11); break; case 12: CALL(12); break; \
        case 13: CALL(13); break; case 14: CALL(14); break; default: break; }
    #if defined(__x86_64__) && defined(__GNUC__)
    /* the vector kernels are compiled for their instruction set function by function
       (target attributes), in every build, and run only where the CPU has it: the
       baseline build runs them too, so REFDL_KERNELS=baseline costs no speed here */
    #include <immintrin.h>
    /* one block of R outputs (R a constant after inlining: the accumulators stay in
       registers), 8 lanes; sw a constant too in the unit-stride call */
    static inline __attribute__((always_inline, target("avx2,fma"))) void
    refdl_direct_block8(const float* x, const Py_ssize_t* off, const float* wp,
                        Py_ssize_t K, const Py_ssize_t sw, float* out, const int R) {
        __m256 acc[REFDL_DIRECT_R8];
        #pragma GCC unroll 16
        for (int r = 0; r < REFDL_DIRECT_R8; r++) if (r < R) acc[r] = _mm256_setzero_ps();
        for (Py_ssize_t k = 0; k < K; k++) {
            const __m256 w = _mm256_loadu_ps(wp + 8 * k);
            const float* xk = x + off[k];
            #pragma GCC unroll 16
            for (int r = 0; r < REFDL_DIRECT_R8; r++)
                if (r < R)
                    acc[r] = _mm256_fmadd_ps(w, _mm256_broadcast_ss(xk + r * sw), acc[r]);
        }
        #pragma GCC unroll 16
        for (int r = 0; r < REFDL_DIRECT_R8; r++) if (r < R) _mm256_storeu_ps(out + 8 * r, acc[r]);
    }
    static __attribute__((target("avx2,fma"))) void
    refdl_direct_row_avx2(const float* x, const Py_ssize_t* off, const float* wp,
                          Py_ssize_t K, Py_ssize_t OW, Py_ssize_t sw, float* out) {
        Py_ssize_t nb = refdl_direct_blocks(OW, REFDL_DIRECT_R8), ow0 = 0;
        for (Py_ssize_t b = 0; b < nb; b++) {
            int R = (int)((OW - ow0) / (nb - b));       /* near-equal blocks */
            const float* xb = x + ow0 * sw;
            float* ob = out + ow0 * 8;
            #define REFDL_CALL_U(RR) refdl_direct_block8(xb, off, wp, K, 1, ob, RR)
            #define REFDL_CALL_S(RR) refdl_direct_block8(xb, off, wp, K, sw, ob, RR)
            if (sw == 1) { REFDL_R_SWITCH(R, REFDL_CALL_U) } else { REFDL_R_SWITCH(R, REFDL_CALL_S) }
            #undef REFDL_CALL_U
            #undef REFDL_CALL_S
            ow0 += R;
        }
    }
    /* the same with 16 lanes, compiled for AVX-512 in this function only and called only
       when the CPU has it (refdl_direct_lanes) */
    static inline __attribute__((always_inline, target("avx512f"))) void
    refdl_direct_block16(const float* x, const Py_ssize_t* off, const float* wp,
                         Py_ssize_t K, const Py_ssize_t sw, float* out, const int R) {
        __m512 acc[REFDL_DIRECT_R16];
        #pragma GCC unroll 16
        for (int r = 0; r < REFDL_DIRECT_R16; r++) if (r < R) acc[r] = _mm512_setzero_ps();
        for (Py_ssize_t k = 0; k < K; k++) {
            const __m512 w = _mm512_loadu_ps(wp + 16 * k);
            const float* xk = x + off[k];
            #pragma GCC unroll 16
            for (int r = 0; r < REFDL_DIRECT_R16; r++)
                if (r < R)
                    acc[r] = _mm512_fmadd_ps(w, _mm512_set1_ps(xk[r * sw]), acc[r]);
        }
        #pragma GCC unroll 16
        for (int r = 0; r < REFDL_DIRECT_R16; r++) if (r < R) _mm512_storeu_ps(out + 16 * r, acc[r]);
    }
    static __attribute__((target("avx512f"))) void
    refdl_direct_row_avx512(const float* x, const Py_ssize_t* off, const float* wp,
                            Py_ssize_t K, Py_ssize_t OW, Py_ssize_t sw, float* out) {
        Py_ssize_t nb = refdl_direct_blocks(OW, REFDL_DIRECT_R16), ow0 = 0;
        for (Py_ssize_t b = 0; b < nb; b++) {
            int R = (int)((OW - ow0) / (nb - b));
            const float* xb = x + ow0 * sw;
            float* ob = out + ow0 * 16;
            #define REFDL_CALL_U(RR) refdl_direct_block16(xb, off, wp, K, 1, ob, RR)
            #define REFDL_CALL_S(RR) refdl_direct_block16(xb, off, wp, K, sw, ob, RR)
            if (sw == 1) { REFDL_R_SWITCH(R, REFDL_CALL_U) } else { REFDL_R_SWITCH(R, REFDL_CALL_S) }
            #undef REFDL_CALL_U
            #undef REFDL_CALL_S
            ow0 += R;
        }
    }
    /* refdl_direct_store's work, 8 outputs x 8 channels at a time: the 8 rows of sums
       (one output each, 8 channels) transposed in registers into 8 rows of y (one
       channel each, 8 outputs), + the bias: the same one addition per value as the
       scalar loop (the same bits), at a quarter of its time or less */
    static __attribute__((target("avx2,fma"))) Py_ssize_t
    refdl_direct_store_avx2(const float* restrict sums, Py_ssize_t L, Py_ssize_t OW,
                            Py_ssize_t lanes, const float* b, float* restrict y,
                            Py_ssize_t ldy) {
        Py_ssize_t i0 = 0;
        for (; i0 + 8 <= OW; i0 += 8) {
            for (Py_ssize_t h = 0; h < lanes; h += 8) {
                const float* s = sums + i0 * L + h;
                __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + L);
                __m256 r2 = _mm256_loadu_ps(s + 2 * L), r3 = _mm256_loadu_ps(s + 3 * L);
                __m256 r4 = _mm256_loadu_ps(s + 4 * L), r5 = _mm256_loadu_ps(s + 5 * L);
                __m256 r6 = _mm256_loadu_ps(s + 6 * L), r7 = _mm256_loadu_ps(s + 7 * L);
                __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
                __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
                __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
                __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
                __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
                __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
                __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
                __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
                __m256 c[8];                  /* c[j][i] = sums[(i0 + i) L + h + j] */
                c[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
                c[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
                c[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
                c[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
                c[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
                c[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
                c[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
                c[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
                Py_ssize_t nj = lanes - h < 8 ? lanes - h : 8;
                for (Py_ssize_t j = 0; j < nj; j++)
                    _mm256_storeu_ps(y + (h + j) * ldy + i0,
                                     _mm256_add_ps(c[j], _mm256_set1_ps(b ? b[h + j] : 0.0f)));
            }
        }
        return i0;                            /* the outputs stored; the caller does the rest */
    }
    static int refdl_direct_simd(void) {   /* 2: AVX-512, 1: AVX2 and FMA, 0: neither */
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f")) return 2;
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    #else
    static void refdl_direct_row_avx2(const float* x, const Py_ssize_t* off,
                                      const float* wp, Py_ssize_t K, Py_ssize_t OW,
                                      Py_ssize_t sw, float* out) {}
    static void refdl_direct_row_avx512(const float* x, const Py_ssize_t* off,
                                        const float* wp, Py_ssize_t K, Py_ssize_t OW,
                                        Py_ssize_t sw, float* out) {}
    static Py_ssize_t refdl_direct_store_avx2(const float* sums, Py_ssize_t L, Py_ssize_t OW,
                                              Py_ssize_t lanes, const float* b, float* y,
                                              Py_ssize_t ldy) { return 0; }
    static int refdl_direct_simd(void) { return 0; }
    #endif
    /* the kernel in use: 0 portable, 1 AVX2, 2 AVX-512; -1 until chosen */
    static int refdl_direct_isa = -1;
    static int refdl_direct_set(int isa) {          /* isa -1: the best; 0 on success */
        int best = refdl_direct_simd();
        if (isa < 0) isa = best;
        if (isa > best) return -1;
        refdl_direct_isa = isa;
        return 0;
    }
    static int refdl_direct_lanes(void) { return refdl_direct_isa == 2 ? 16 : 8; }
    /* y[l*ldy + i] = sums[i*L + l] + b[l] for the lanes l < lanes and outputs i < OW (b
       NULL: + 0, as the GEMM path adds a zero bias) */
    static void refdl_direct_store(const float* restrict sums, Py_ssize_t L, Py_ssize_t OW,
                                   Py_ssize_t lanes, const float* b, float* restrict y,
                                   Py_ssize_t ldy) {
        Py_ssize_t i0 = refdl_direct_isa >= 1 ?
            refdl_direct_store_avx2(sums, L, OW, lanes, b, y, ldy) : 0;
        for (Py_ssize_t l = 0; l < lanes; l++) {
            const float bv = b ? b[l] : 0.0f;
            float* restrict yl = y + l * ldy;
            for (Py_ssize_t i = i0; i < OW; i++) yl[i] = sums[i * L + l] + bv;
        }
    }
    /* L lanes: 16 runs the AVX-512 kernel (refdl_direct_lanes() must be 16), 8 the AVX2
       kernel where the CPU has it (an AVX-512 CPU has), else the portable loop */
    static void refdl_direct_row(const float* x, const Py_ssize_t* off, const float* wp,
                                 Py_ssize_t K, Py_ssize_t OW, Py_ssize_t sw, float* out,
                                 Py_ssize_t L) {
        if (L == 16) refdl_direct_row_avx512(x, off, wp, K, OW, sw, out);
        else if (refdl_direct_isa >= 1) refdl_direct_row_avx2(x, off, wp, K, OW, sw, out);
        else refdl_direct_row_portable(x, off, wp, K, OW, sw, out);
    }
    """
    int refdl_direct_isa
    int refdl_direct_simd() noexcept nogil
    int refdl_direct_set(int isa) noexcept nogil
    int refdl_direct_lanes() noexcept nogil
    void refdl_direct_row(const float* x, const Py_ssize_t* off, const float* wp,
                          Py_ssize_t K, Py_ssize_t OW, Py_ssize_t sw,
                          float* out, Py_ssize_t L) noexcept nogil
    void refdl_direct_store(const float* sums, Py_ssize_t L, Py_ssize_t OW, Py_ssize_t lanes,
                            const float* b, float* y, Py_ssize_t ldy) noexcept nogil


DIRECT_ISAS = ("portable", "avx2", "avx512")
refdl_direct_set(-1)            # the fastest kernel this CPU runs, chosen at import
# conv_forward_direct's scratch row starts with the tag (the image copied), then the copy
# at a cache line: 16 floats
cdef enum:
    TAG = 16
DIRECT_TAG = TAG


def direct_isa():
    """The direct convolution's kernel in use: "portable" (C's fmaf, 8 lanes), "avx2"
    (8 lanes) or "avx512" (16 lanes); each gives the same bits. (None: not chosen, which
    the import prevents.)"""
    return DIRECT_ISAS[refdl_direct_isa] if refdl_direct_isa >= 0 else None


def direct_isas():
    """The direct convolution's kernels this build can run on this CPU."""
    return DIRECT_ISAS[:refdl_direct_simd() + 1]


def set_direct_isa(name=None):
    """Run the direct convolution with the kernel ``name`` (one of :func:`direct_isas`;
    None: the fastest). For tests and benchmarks: the results are the same bits."""
    if name is not None and name not in DIRECT_ISAS:
        raise ValueError(f"set_direct_isa: expected one of {DIRECT_ISAS} or None, "
                         f"got {name!r}")
    if refdl_direct_set(-1 if name is None else DIRECT_ISAS.index(name)):
        raise ValueError(f"set_direct_isa: {name!r} is not available in this build on "
                         f"this CPU (available: {direct_isas()})")


def direct_lanes():
    """The most output channels the direct kernel in use computes at once: 16 (AVX-512) or
    8. The packed weight's last axis (refdl.ext.conv_forward packs it) is this or 8: an
    AVX-512 CPU also runs the 8-lane AVX2 kernel, which refdl picks for a few channels."""
    return refdl_direct_lanes()


def conv_forward_direct(const float[:, :, :, :, ::1] x, const float[:, :, :, ::1] wp,
                        const float[::1] bias, float[:, :, ::1] y, float[:, ::1] scratch,
                        const Py_ssize_t[::1] off, Py_ssize_t Dp, Py_ssize_t Hp,
                        Py_ssize_t Wp, Py_ssize_t pd, Py_ssize_t ph, Py_ssize_t pw,
                        Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t OD, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t rows):
    """y (N, C_out, OD*OH*OW) = the direct convolution of x (N, C, D, H, W) with the packed
    weight wp (G, NB, K, L) plus bias ((C_out,) or empty), a piece of `rows` output rows
    (od, oh) of one image per thread at a time.

    The weight of group g's output channels g*cog + b*L + l, tap k (c, kd, kh, kw) is
    wp[g, b, k, l] (zero for l past cog). The taps' offsets off[k] address a plane set
    (C/G, Dp, Hp, Wp): x itself when (Dp, Hp, Wp) = (D, H, W) and the padding before
    (pd, ph, pw) is 0, otherwise this thread's copy of the image with the padding zeroed.
    The scratch row: the number of the image copied (a tag, TAG entries), the
    copy, then one output row of sums (OW, L). Every output is computed the same way
    whatever the pieces and threads."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], D = x.shape[2], H = x.shape[3]
    cdef Py_ssize_t W = x.shape[4], G = wp.shape[0], NB = wp.shape[1], K = wp.shape[2]
    cdef Py_ssize_t L = wp.shape[3], Cout = y.shape[1], LO = OD * OH * OW
    cdef Py_ssize_t HWp = Hp * Wp, plane = Dp * HWp
    cdef bint padded = pd != 0 or ph != 0 or pw != 0 or Dp != D or Hp != H or Wp != W
    cdef Py_ssize_t img = C * plane if padded else 0
    cdef Py_ssize_t k, top, Cg, cog, R = OD * OH
    cdef int most = refdl_direct_lanes()
    # once per call: every offset the loops below compute stays inside the plane set
    if L != 8 and L != most:
        raise ValueError(f"conv_forward_direct: the packed weight has {L} lanes, the "
                         f"kernel in use takes 8 or {most}")
    if min(sd, sh, sw) < 1 or min(pd, ph, pw) < 0 or min(OD, OH, OW) < 1 or \
            min(Dp, Hp, Wp) < 1 or K < 1 or G < 1 or C % G or Cout % G or rows < 1 or \
            N >= 2 ** 24:
        raise ValueError("conv_forward_direct: bad geometry")
    Cg, cog = C // G, Cout // G
    if y.shape[0] != N or y.shape[2] != LO or NB * L < cog or (NB - 1) * L >= cog or \
            off.shape[0] != K or (bias.shape[0] != 0 and bias.shape[0] != Cout):
        raise ValueError("conv_forward_direct: inconsistent shapes")
    if scratch.shape[1] < TAG + img + OW * L:
        raise ValueError("conv_forward_direct: scratch too small")
    top = (OD - 1) * sd * HWp + (OH - 1) * sh * Wp + (OW - 1) * sw
    for k in range(K):
        if off[k] < 0 or off[k] + top >= Cg * plane:
            raise ValueError(f"conv_forward_direct: tap {k} reads outside the image")
    cdef Py_ssize_t RB = (R + rows - 1) // rows          # pieces per image
    cdef int nt = n_threads(N * G * K * LO, N * RB)
    if scratch.shape[0] < nt:
        raise ValueError("conv_forward_direct: scratch has too few rows for the threads")
    cdef Py_ssize_t p, n, r, gr, b, od, oh, co, c, d, h, lanes, w0, w1, h0, h1, d0, d1
    cdef const float* xi
    cdef float* buf
    cdef float* sums
    for k in range(nt):
        # no image copied yet (-1: exact, as every image number, N < 2**24); the padding
        # is the same for every image: zeroed once, never written after
        scratch[k, 0] = -1
        if padded:
            memset(&scratch[k, TAG], 0, <size_t>img * sizeof(float))
    # x's entries that land inside the plane set: d + pd in [0, Dp), and so on
    d0, d1 = 0, min(D, Dp - pd)
    h0, h1 = 0, min(H, Hp - ph)
    w0, w1 = 0, min(W, Wp - pw)
    for p in prange(N * RB, nogil=True, schedule="static", num_threads=nt):
        n = p // RB
        buf = &scratch[threadid(), 0]
        sums = buf + TAG + img
        if padded and buf[0] != n:       # a thread's pieces are consecutive: mostly one
            buf[0] = n                   # copy per image
            for c in range(C):
                for d in range(d0, d1):
                    for h in range(h0, h1):
                        if w1 > w0:
                            copy_row(buf + TAG + c * plane + (d + pd) * HWp + (h + ph) * Wp + pw,
                                     &x[n, c, d, h, 0], w1 - w0, 1)
        if padded:
            xi = buf + TAG
        else:
            xi = &x[n, 0, 0, 0, 0]
        for gr in range(G):
            for b in range(NB):
                lanes = min(L, cog - b * L)
                for r in range((p % RB) * rows, min(R, (p % RB + 1) * rows)):
                    od = r // OH
                    oh = r % OH
                    refdl_direct_row(xi + gr * Cg * plane + od * sd * HWp + oh * sh * Wp,
                                     &off[0], &wp[gr, b, 0, 0], K, OW, sw, sums, L)
                    co = gr * cog + b * L
                    refdl_direct_store(sums, L, OW, lanes,
                                       &bias[co] if bias.shape[0] else NULL,
                                       &y[n, co, r * OW], LO)


def conv_backward(const real[:, :, :, :, ::1] x, const real[:, ::1] w,
                  const real[:, :, ::1] gy, real[:, :, :, :, ::1] dx, real[:, :, ::1] dw,
                  real[:, ::1] scratch, bint g_pixel_major,
                  Py_ssize_t groups, Py_ssize_t chunk, Py_ssize_t rows,
                  Py_ssize_t KD, Py_ssize_t KH, Py_ssize_t KW,
                  Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
                  Py_ssize_t pd, Py_ssize_t ph, Py_ssize_t pw,
                  Py_ssize_t dd, Py_ssize_t dh, Py_ssize_t dw_,
                  Py_ssize_t OD, Py_ssize_t OH, Py_ssize_t OW):
    """For each chunk c of images, piece by piece as in conv_forward (g_c = the piece's
    upstream gradient as (C_out, width)): dw[c] = the sum over its pieces of
    (g_c cols_c^T)^T = cols_c g_c^T, the groups stacked as (C_in*K, C_out/G) (when dw has
    a row per chunk; the caller sums the rows in order, so the result does not depend on
    the thread count; this orientation of the product ran 1.7x faster in OpenBLAS for
    LeNet's conv2) and dx = col2im(W^T g_c) (when dx has N rows;
    written whole, no zeroing needed). The columns are recomputed from x. A chunk's
    pieces run in order on one thread (col2im of neighbouring row ranges overlap).
    g_pixel_major: the dW product reads the piece's g transposed, (width, C_out) (a
    copy per piece), as the plain product cols (g^T) instead of cols g^T with both
    operands pixel-contiguous, which OpenBLAS runs 1.5-1.7x faster once C_out/G >= 16
    (and slower for LeNet's 6 channels); the scratch row then holds that copy too:
    (C*K + 2 C_out) * width."""
    cdef Py_ssize_t N = x.shape[0], Cout = gy.shape[1], L = OD * OH * OW
    cdef Py_ssize_t CK = x.shape[1] * KD * KH * KW
    cdef bint need_dw = dw.shape[0] > 0, need_dx = dx.shape[0] > 0
    if gy.shape[0] != N or gy.shape[2] != L:
        raise ValueError("conv_backward: inconsistent shapes")
    check_cols(CK, N * L, N, x.shape[1], KD, KH, KW, sd, sh, sw, dd, dh, dw_, OD, OH, OW)
    cdef Tiling t = make_tiling(N, chunk, rows, CK, Cout, groups, w.shape[0], w.shape[1],
                                scratch.shape[1], OD, OH, OW)
    if need_dw and (dw.shape[0] != t.nchunks or dw.shape[1] != CK or
                    dw.shape[2] != Cout // groups):
        raise ValueError("conv_backward: dw must be (chunks, C_in*K, C_out/G)")
    if need_dx and (dx.shape[0] != N or dx.shape[1] != x.shape[1] or dx.shape[2] != x.shape[2]
                    or dx.shape[3] != x.shape[3] or dx.shape[4] != x.shape[4]):
        raise ValueError("conv_backward: dx must have x's shape")
    cdef int nt = n_threads(N * CK * L, t.nchunks)
    if scratch.shape[0] < nt:
        raise ValueError("conv_backward: scratch has too few rows for the threads")
    if g_pixel_major and (scratch.shape[1] < (CK + 2 * Cout) * chunk * rows * OW or
                          (CK + 2 * Cout) * chunk * rows * OW >= 2 ** 31):
        raise ValueError("conv_backward: scratch too small for the transposed g")
    cdef Geom g = make_geom(x.shape[1], x.shape[2], x.shape[3], x.shape[4], KD, KH, KW,
                            sd, sh, sw, pd, ph, pw, dd, dh, dw_, OD, OH, OW)
    cdef Py_ssize_t cog = Cout // groups, CKg = CK // groups
    cdef Py_ssize_t S = x.shape[1] * x.shape[2] * x.shape[3] * x.shape[4]
    cdef Py_ssize_t c, n0, nb, r0, r1, cl, width, i, gr, co, ldg
    cdef real* cols
    cdef real* gc
    cdef real* gt
    for c in prange(t.nchunks, nogil=True, schedule="dynamic", num_threads=nt):
        n0 = c * t.chunk
        nb = chunk_size(&t, c)
        cols = &scratch[threadid(), 0]                 # (CK, width), then gc (Cout, width)
        r0 = 0
        while r0 < t.R:                                # the chunk's row ranges, in order
            r1 = range_end(&t, r0)
            cl = (r1 - r0) * OW
            width = nb * cl
            gc = cols + CK * width
            gt = gc + Cout * width
            ldg = width
            if nb == 1:                                # the piece's g is a block of gy
                gc = <real*>&gy[n0, 0, r0 * OW]
                ldg = L
            elif need_dx or not g_pixel_major:
                for i in range(nb):                    # gy[n0+i, :, r0*OW:r1*OW] -> gc
                    for co in range(Cout):
                        copy_row(gc + co * width + i * cl, &gy[n0 + i, co, r0 * OW], cl, 1)
            if need_dw:
                for i in range(nb):
                    im2col_image(&x[n0 + i, 0, 0, 0, 0], cols + i * cl, width, &g, r0, r1)
                if g_pixel_major:                      # gt (width, C_out) = the piece's g^T
                    for i in range(nb):
                        transpose_block(&gy[n0 + i, 0, r0 * OW], L, Cout, cl,
                                        gt + i * cl * Cout, Cout)
                for gr in range(groups):               # dW_g^T (+)= cols_g g_g^T
                    if g_pixel_major:
                        gemm(c'N', c'N', <int>CKg, <int>cog, <int>width,
                             cols + gr * CKg * width, <int>width, gt + gr * cog, <int>Cout,
                             0 if r0 == 0 else 1, &dw[c, gr * CKg, 0], <int>cog)
                    else:
                        gemm(c'N', c'T', <int>CKg, <int>cog, <int>width,
                             cols + gr * CKg * width, <int>width, gc + gr * cog * ldg,
                             <int>ldg, 0 if r0 == 0 else 1, &dw[c, gr * CKg, 0], <int>cog)
            if need_dx:
                for gr in range(groups):               # dcols_g = W_g^T g_g
                    gemm(c'T', c'N', <int>CKg, <int>width, <int>cog, &w[gr * cog, 0],
                         <int>CKg, gc + gr * cog * ldg, <int>ldg, 0,
                         cols + gr * CKg * width, <int>width)
                for i in range(nb):
                    if r0 == 0:
                        zero_row(&dx[n0 + i, 0, 0, 0, 0], S)
                    col2im_image(cols + i * cl, width, &dx[n0 + i, 0, 0, 0, 0], &g, r0, r1)
            r0 = r1


cdef inline Py_ssize_t tap_lo(Py_ssize_t start, Py_ssize_t dil) noexcept nogil:
    # first tap k >= 0 with start + k*dil >= 0 (no division when it can be avoided)
    if start >= 0:
        return 0
    if dil == 1:
        return -start
    return ceil_div(-start, dil)


cdef inline Py_ssize_t tap_hi(Py_ssize_t start, Py_ssize_t dil, Py_ssize_t K,
                              Py_ssize_t length) noexcept nogil:
    # one past the last tap k < K with start + k*dil < length
    cdef Py_ssize_t b
    if start + (K - 1) * dil < length:
        return K
    b = ceil_div(length - start, dil) if dil != 1 else length - start
    return b if b < K else K


cdef void maxpool2d_interior(const real* plane, real* yp, i64* ip,
                             Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                             Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh,
                             Py_ssize_t sw) noexcept nogil:
    # max pooling of one plane whose windows all lie inside it (no padding, dilation 1;
    # the caller checked (OH-1)*sh + KH <= H and (OW-1)*sw + KW <= W, so every pos < H*W).
    #
    # Loop order: output row, then tap (kh, kw), then output column. The innermost loop
    # compares one tap of OW neighbouring windows with their running maxima yr[ow] and
    # indices ir[ow]: its iterations are independent, so the compiler turns it into
    # vector compares and blends (8 floats at a time with AVX2). The obvious order, one
    # window at a time with its taps innermost, carries m and best from tap to tap: a
    # dependency chain no compiler can vectorise (3x slower in the AVX2 build here).
    # Each window still sees its taps in the general loop's order (kh, then kw), with the
    # same comparison, so the results are the same: first maximum wins, NaN propagates.
    cdef Py_ssize_t oh, ow, kh, kw, row, tap, pos
    cdef real* yr
    cdef i64* ir
    cdef real m, v
    cdef bint take
    for oh in range(OH):
        yr = yp + oh * OW
        ir = ip + oh * OW
        row = oh * sh * W                    # flat position of the row's first tap
        for ow in range(OW):                 # tap (0, 0) starts every window
            yr[ow] = plane[row + ow * sw]
            ir[ow] = row + ow * sw
        for kh in range(KH):
            for kw in range(KW):
                if kh == 0 and kw == 0:
                    continue
                tap = row + kh * W + kw      # this tap's position in window ow = 0
                for ow in range(OW):
                    pos = tap + ow * sw
                    v = plane[pos]
                    m = yr[ow]
                    # branch-free selects: on real data the comparison is a coin toss
                    take = (v > m) | ((v != v) & (m == m))
                    yr[ow] = v if take else m
                    ir[ow] = pos if take else ir[ow]


def maxpool3d_forward(const real[:, :, :, ::1] x, real[:, :, :, ::1] y,
                      i64[:, :, :, ::1] idx,
                      Py_ssize_t KD, Py_ssize_t KH, Py_ssize_t KW,
                      Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t pd, Py_ssize_t ph, Py_ssize_t pw,
                      Py_ssize_t dd, Py_ssize_t dh, Py_ssize_t dw):
    """y = max over each window (padding never wins), idx = flat input position of the
    first maximum (a NaN wins and propagates, as in PyTorch)."""
    if y.shape[0] != x.shape[0] or idx.shape[0] != y.shape[0] or \
            idx.shape[1] != y.shape[1] or idx.shape[2] != y.shape[2] or \
            idx.shape[3] != y.shape[3] or min(KD, KH, KW, sd, sh, sw, dd, dh, dw) < 1:
        raise ValueError("maxpool3d_forward: inconsistent shapes or geometry")
    cdef int nt
    cdef Py_ssize_t P = x.shape[0], D = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OD = y.shape[1], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t p, od, oh, ow, kd, kh, kw, best, pos
    cdef Py_ssize_t d0, h0, w0, kd0, kd1, kh0, kh1, kw0, kw1
    cdef const real* plane
    cdef real* yp
    cdef i64* ip
    cdef real m, v
    nt = n_threads(P * OD * OH * OW * KD * KH * KW * TAP_WORK, P)
    if (D == 1 and KD == 1 and OD == 1 and ph == 0 and pw == 0 and dh == 1 and dw == 1
            and (OH - 1) * sh + KH <= H and (OW - 1) * sw + KW <= W):
        # the common 2-D case: every window lies inside the plane, so no tap range needs
        # clamping (the conditions above are what makes every index below < H*W)
        for p in prange(P, nogil=True, schedule="static", num_threads=nt):
            maxpool2d_interior(&x[p, 0, 0, 0], &y[p, 0, 0, 0], &idx[p, 0, 0, 0],
                               H, W, OH, OW, KH, KW, sh, sw)
        return
    for p in prange(P, nogil=True, schedule="static", num_threads=nt):
        plane = &x[p, 0, 0, 0]
        yp = &y[p, 0, 0, 0]
        ip = &idx[p, 0, 0, 0]
        for od in range(OD):
            d0 = od * sd - pd
            kd0 = tap_lo(d0, dd)
            kd1 = tap_hi(d0, dd, KD, D)
            for oh in range(OH):
                h0 = oh * sh - ph
                kh0 = tap_lo(h0, dh)
                kh1 = tap_hi(h0, dh, KH, H)
                for ow in range(OW):
                    w0 = ow * sw - pw
                    kw0 = tap_lo(w0, dw)
                    kw1 = tap_hi(w0, dw, KW, W)
                    best = -1
                    m = 0
                    for kd in range(kd0, kd1):
                        for kh in range(kh0, kh1):
                            for kw in range(kw0, kw1):
                                pos = ((d0 + kd * dd) * H + h0 + kh * dh) * W + w0 + kw * dw
                                check_seg(pos, pos + 1, D * H * W)
                                v = plane[pos]
                                if best < 0 or v > m or (v != v and m == m):
                                    m = v
                                    best = pos
                    yp[(od * OH + oh) * OW + ow] = m
                    ip[(od * OH + oh) * OW + ow] = best


def maxpool3d_backward(const real[:, ::1] grad, const i64[:, ::1] idx, real[:, ::1] dx):
    """dx[p, idx[p, o]] += grad[p, o]; dx zeroed by the caller. Shapes (P, O) and (P, S).
    Every index is checked as it is used: one outside [0, S) is skipped and counted, and
    the count is returned (0: all in range), so no index scan is needed beforehand."""
    if grad.shape[0] != idx.shape[0] or grad.shape[1] != idx.shape[1] or \
            dx.shape[0] != grad.shape[0]:
        raise ValueError("maxpool3d_backward: inconsistent shapes")
    cdef int nt
    cdef Py_ssize_t P = grad.shape[0], O = grad.shape[1], S = dx.shape[1]
    cdef Py_ssize_t p, o, bad = 0
    cdef i64 k
    cdef real* d
    cdef const real* g
    cdef const i64* ip
    nt = n_threads(grad.shape[0] * grad.shape[1] * TAP_WORK, P)
    for p in prange(P, nogil=True, schedule="static", num_threads=nt):
        d = &dx[p, 0]
        g = &grad[p, 0]
        ip = &idx[p, 0]
        for o in range(O):
            k = ip[o]
            if k < 0 or k >= S:                # one predictable branch per output
                bad += 1
                continue
            d[k] += g[o]
    return bad


cdef inline Py_ssize_t win_end(Py_ssize_t start, Py_ssize_t k, Py_ssize_t length,
                               Py_ssize_t pad) noexcept nogil:
    # end of the padded window: min(start + k, L + p)
    return start + k if start + k < length + pad else length + pad


cdef inline Py_ssize_t clip(Py_ssize_t v, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    return lo if v < lo else (hi if v > hi else v)


cdef struct AvgWindow:
    # one output's pooling window clipped to the input, [ds, de) x [hs, he) x [ws, we),
    # and the number its sum is divided by
    Py_ssize_t ds, de, hs, he, ws, we, divisor


cdef inline AvgWindow avg_window(Py_ssize_t ds, Py_ssize_t hs, Py_ssize_t ws,
                                 Py_ssize_t KD, Py_ssize_t KH, Py_ssize_t KW,
                                 Py_ssize_t D, Py_ssize_t H, Py_ssize_t W,
                                 Py_ssize_t pd, Py_ssize_t ph, Py_ssize_t pw,
                                 bint include_pad, Py_ssize_t override) noexcept nogil:
    # the window starting at (ds, hs, ws) in unpadded coordinates (may be negative) and
    # PyTorch's divisor: divisor_override when given, else the padded window
    # [start, min(start + k, L + p)) when count_include_pad, else its part inside [0, L).
    # One function for the forward and the backward, so they divide by the same number.
    cdef AvgWindow w
    cdef Py_ssize_t npad
    w.de = win_end(ds, KD, D, pd)
    w.he = win_end(hs, KH, H, ph)
    w.we = win_end(ws, KW, W, pw)
    npad = (w.de - ds) * (w.he - hs) * (w.we - ws)
    w.ds = clip(ds, 0, D)
    w.de = clip(w.de, 0, D)
    w.hs = clip(hs, 0, H)
    w.he = clip(w.he, 0, H)
    w.ws = clip(ws, 0, W)
    w.we = clip(w.we, 0, W)
    if override > 0:
        w.divisor = override
    elif include_pad:
        w.divisor = npad
    else:
        w.divisor = (w.de - w.ds) * (w.he - w.hs) * (w.we - w.ws)
    return w


cdef void avgpool2d_interior(const real* plane, real* yp,
                             Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                             Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                             real div) noexcept nogil:
    # average pooling of one plane whose windows all lie inside it (no padding; the caller
    # checked (OH-1)*sh + KH <= H and (OW-1)*sw + KW <= W), each divided by ``div``.
    # Row-wise for the same reason as maxpool2d_interior: the innermost loop adds one tap
    # to the OW sums of a row, independent iterations that vectorise. Each sum still starts
    # at 0 and adds its taps in the general loop's order (kh, then kw) before the one
    # division: the same roundings, so the same numbers as avgpool3d_forward's loop.
    cdef Py_ssize_t oh, ow, kh, kw, row, tap
    cdef real* yr
    for oh in range(OH):
        yr = yp + oh * OW
        row = oh * sh * W
        for ow in range(OW):
            yr[ow] = 0
        for kh in range(KH):
            for kw in range(KW):
                tap = row + kh * W + kw
                for ow in range(OW):
                    yr[ow] = yr[ow] + plane[tap + ow * sw]
        for ow in range(OW):
            yr[ow] = yr[ow] / div


def avgpool3d_forward(const real[:, :, :, ::1] x, real[:, :, :, ::1] y,
                      Py_ssize_t KD, Py_ssize_t KH, Py_ssize_t KW,
                      Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t pd, Py_ssize_t ph, Py_ssize_t pw,
                      bint include_pad, Py_ssize_t override):
    if y.shape[0] != x.shape[0] or min(KD, KH, KW, sd, sh, sw) < 1 or \
            min(pd, ph, pw) < 0:
        raise ValueError("avgpool3d_forward: inconsistent shapes or geometry")
    cdef int nt
    cdef Py_ssize_t P = x.shape[0], D = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OD = y.shape[1], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t p, od, oh, ow, i, j, l
    cdef AvgWindow w
    cdef real div, acc
    nt = n_threads(P * OD * OH * OW * KD * KH * KW * TAP_WORK, P)
    if (D == 1 and KD == 1 and OD == 1 and ph == 0 and pw == 0
            and (OH - 1) * sh + KH <= H and (OW - 1) * sw + KW <= W):
        # the common 2-D case: every window is whole, so every divisor is KH*KW (or the
        # override) and no tap range needs clamping
        div = <real>(override if override > 0 else KH * KW)
        for p in prange(P, nogil=True, schedule="static", num_threads=nt):
            avgpool2d_interior(&x[p, 0, 0, 0], &y[p, 0, 0, 0], H, W, OH, OW, KH, KW,
                               sh, sw, div)
        return
    for p in prange(P, nogil=True, schedule="static", num_threads=nt):
        for od in range(OD):
            for oh in range(OH):
                for ow in range(OW):
                    w = avg_window(od * sd - pd, oh * sh - ph, ow * sw - pw, KD, KH, KW,
                                   D, H, W, pd, ph, pw, include_pad, override)
                    div = <real>w.divisor
                    acc = 0
                    for i in range(w.ds, w.de):
                        for j in range(w.hs, w.he):
                            for l in range(w.ws, w.we):
                                acc = acc + x[p, i, j, l]
                    y[p, od, oh, ow] = acc / div


cdef void avgpool2d_interior_adjoint(const real* gp, real* dp,
                                     Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH,
                                     Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW,
                                     Py_ssize_t sh, Py_ssize_t sw, real div) noexcept nogil:
    # the backward of avgpool2d_interior: dp[window (oh, ow)] += gp[oh, ow] / div, row-wise
    # (the innermost loop runs over ow for one tap). Every element of dp receives its
    # shares in the general loop's order, windows in raster order: within one output row
    # the windows reaching an element come in ascending ow exactly when the taps come in
    # descending kw, hence the reversed kw loop (same sums, same roundings).
    cdef Py_ssize_t oh, ow, kh, kw, tap
    cdef const real* gr
    for oh in range(OH):
        gr = gp + oh * OW
        for kh in range(KH):
            for kw in range(KW - 1, -1, -1):
                tap = (oh * sh + kh) * W + kw
                for ow in range(OW):
                    dp[tap + ow * sw] += gr[ow] / div


def avgpool3d_backward(const real[:, :, :, ::1] grad, real[:, :, :, ::1] dx,
                       Py_ssize_t KD, Py_ssize_t KH, Py_ssize_t KW,
                       Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pd, Py_ssize_t ph, Py_ssize_t pw,
                       bint include_pad, Py_ssize_t override):
    """dx += spread of grad / divisor over each window; dx zeroed by the caller."""
    if grad.shape[0] != dx.shape[0] or min(KD, KH, KW, sd, sh, sw) < 1 or \
            min(pd, ph, pw) < 0:
        raise ValueError("avgpool3d_backward: inconsistent shapes or geometry")
    cdef int nt
    cdef Py_ssize_t P = dx.shape[0], D = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OD = grad.shape[1], OH = grad.shape[2], OW = grad.shape[3]
    cdef Py_ssize_t p, od, oh, ow, i, j, l
    cdef AvgWindow w
    cdef real div, share
    nt = n_threads(P * OD * OH * OW * KD * KH * KW * TAP_WORK, P)
    if (D == 1 and KD == 1 and OD == 1 and ph == 0 and pw == 0
            and (OH - 1) * sh + KH <= H and (OW - 1) * sw + KW <= W):
        # every window whole, as in avgpool3d_forward
        div = <real>(override if override > 0 else KH * KW)
        for p in prange(P, nogil=True, schedule="static", num_threads=nt):
            avgpool2d_interior_adjoint(&grad[p, 0, 0, 0], &dx[p, 0, 0, 0], H, W, OH, OW,
                                       KH, KW, sh, sw, div)
        return
    for p in prange(P, nogil=True, schedule="static", num_threads=nt):
        for od in range(OD):
            for oh in range(OH):
                for ow in range(OW):
                    w = avg_window(od * sd - pd, oh * sh - ph, ow * sw - pw, KD, KH, KW,
                                   D, H, W, pd, ph, pw, include_pad, override)
                    div = <real>w.divisor
                    share = grad[p, od, oh, ow] / div
                    for i in range(w.ds, w.de):
                        for j in range(w.hs, w.he):
                            for l in range(w.ws, w.we):
                                dx[p, i, j, l] += share


# == Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (refdl/functional/winograd.py) =====
#
# Called only through refdl.functional.winograd, which builds every table and buffer; the
# functions below check the shapes and tables before their loops. The math, the matrices
# and the layouts are in docs/derivations/winograd.md; the NumPy reference in
# refdl/functional/winograd.py computes the same four maps with einsum and is what the
# tests compare against.
#
# The 16 planes of V and M are 16 write (or read) streams at once: refdl allocates them
# with a plane stride a little longer than a plane (``planes`` in winograd.py, and 48
# elements more than a plane in the team's scratch below), because a power-of-two stride
# maps all 16 streams to the same cache sets and runs 5x slower.
#
# Layouts (P = N*TH*TW tiles, tile p = (n*TH + th)*TW + tw covers input rows 2*th - ph ..
# 2*th - ph + 3 and columns 2*tw - pw .. 2*tw - pw + 3, output rows 2*th, 2*th + 1 and
# columns 2*tw, 2*tw + 1; xi = 4*i + j is the (i, j) entry of a 4x4 transformed tile):
#     x  (N, C, H, W)    V  (16, C, P) = B^T d B of every input tile d
#     M  (16, O, P)      y  (N, O, OH, OW) = A^T m A of every tile m (plus the bias)
# with B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]] and A^T = [[1,1,1,0],[0,1,-1,-1]].
# The whole-array maps (input_transform, ...) are the compiled counterparts of the NumPy
# reference, parallel over (n, channel) planes; nn.Conv2d runs the range kernels at the
# end (winograd_forward / winograd_backward).

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


cdef int check_planes(Py_ssize_t planes, Py_ssize_t rows, Py_ssize_t cols,
                      Py_ssize_t want_rows, Py_ssize_t N, Py_ssize_t TH, Py_ssize_t TW,
                      Py_ssize_t OH, Py_ssize_t OW) except -1:
    # the whole-array maps: planes (16, want_rows, >= N*TH*TW); with an output (OH, OW) >
    # 0, its tiles: TH = ceil(OH/2), TW = ceil(OW/2) (every tile's first row and column
    # lie inside it, which out_tile and out_tile_adj rely on)
    if planes != 16 or rows != want_rows or cols < N * TH * TW or TH < 0 or TW < 0 or \
            (OH > 0 and (TH != (OH + 1) // 2 or TW != (OW + 1) // 2)):
        raise ValueError("refdl Winograd kernel: planes or tiles do not fit the arrays")
    return 0


def input_transform(const real[:, :, :, ::1] x, real[:, :, :] V,
                    Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t TH, Py_ssize_t TW):
    """V[:, c, p] = B^T d B for the 4x4 input tile d of tile p (zeros outside x)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t P = N * TH * TW
    cdef Py_ssize_t q, n, c, th, tw, p
    cdef Py_ssize_t vs = V.strides[0] // sizeof(real)     # plane stride (may be padded)
    check_planes(V.shape[0], V.shape[1], V.shape[2], C, N, TH, TW, 0, 0)
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
    check_planes(dV.shape[0], dV.shape[1], dV.shape[2], C, N, TH, TW, 0, 0)
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
    check_planes(M.shape[0], M.shape[1], M.shape[2], O, N, TH, TW, OH, OW)
    if has_bias and bias.shape[0] < O or bias.shape[0] < 1:
        raise ValueError("output_transform: bias too short")
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
    check_planes(dM.shape[0], dM.shape[1], dM.shape[2], O, N, TH, TW, OH, OW)
    cdef int nt = n_threads(16 * O * P, N * O)
    for q in prange(N * O, nogil=True, schedule="static", num_threads=nt):
        n = q // O
        o = q % O
        for th in range(TH):
            for tw in range(TW):
                p = (n * TH + th) * TW + tw
                out_tile_adj(&g[n, o, 0, 0], OH, OW, 2 * th, 2 * tw, &dM[0, o, p], ms)


# -- Winograd: tile ranges, the pipeline of winograd.conv2d ---------------------------------
#
# nn.Conv2d's Winograd path runs the kernels below on ranges of tiles small enough that a
# range's V and M stay in the core's L2 cache: for each range, the input transform, the 16
# products and the output transform (the backward: output adjoint, dU += dM V, dV = U^T dM,
# input adjoint). winograd_forward / winograd_backward run whole chunks of images on the
# kernels' OpenMP team, one chunk per thread at a time, with SciPy's BLAS on one thread per
# call (the caller holds the BLAS pools at one thread). The chunks, their ranges and the
# ranges' segments of tile rows come from refdl/functional/winograd.py (they depend on the
# shapes only) and are checked here before any loop runs.
#
# Within a range, V and M are channel-major, (16, C, k) and (16, C_out, k) with column
# (th - th0)*TW + tw for the segment's tile rows; the backward's V for dU is tile-major,
# (16, k, C) (the product dM V then runs at the full GEMM rate). Each transform is written
# as loops over a whole row of tiles (tw) with one output stream per loop, which the C
# compiler vectorises: the row sums shared by horizontally neighbouring tiles are formed
# once on whole padded rows, and the per-tile step reads them at stride 2 and writes a
# contiguous run of a plane. ``buf``: scratch of at least 16 * (2*TW + 4) elements.

cdef inline void tile_pos(Py_ssize_t p, Py_ssize_t TH, Py_ssize_t TW, Py_ssize_t* n,
                          Py_ssize_t* th, Py_ssize_t* tw) noexcept nogil:
    cdef Py_ssize_t T = TH * TW
    cdef Py_ssize_t r
    n[0] = p // T
    r = p - n[0] * T
    th[0] = r // TW
    tw[0] = r - th[0] * TW


cdef void tiles_core(const real* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, real* Vt,
                     Py_ssize_t vs, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t TH,
                     Py_ssize_t TW, Py_ssize_t p0, Py_ssize_t p1) noexcept nogil:
    # Vt[t*vs + (p - p0)*C + c] = (B^T d B)[t] for the input tile d of tile p, p0 <= p < p1
    # (x: the whole batch (N, C, H, W))
    cdef Py_ssize_t p, n, th, tw, c
    for p in range(p0, p1):
        tile_pos(p, TH, TW, &n, &th, &tw)
        for c in range(C):
            in_tile(x + (n * C + c) * H * W, H, W, 2 * th - ph, 2 * tw - pw,
                    Vt + (p - p0) * C + c, vs)


def input_tiles(const real[:, :, :, ::1] x, real[:, :, :] Vt, Py_ssize_t ph,
                Py_ssize_t pw, Py_ssize_t TH, Py_ssize_t TW, Py_ssize_t p0, Py_ssize_t p1):
    """Vt[:, p - p0, c] = B^T d B for the 4x4 input tile d of tile p, p0 <= p < p1."""
    if Vt.strides[2] != sizeof(real) or Vt.strides[1] != x.shape[1] * sizeof(real) or \
            Vt.shape[0] != 16 or Vt.shape[2] != x.shape[1] or p0 < 0 or p1 < p0 or \
            p1 > x.shape[0] * TH * TW or Vt.shape[1] < p1 - p0:
        raise ValueError("input_tiles: Vt must be (16, >= p1 - p0, C) with contiguous rows, "
                         "and the tiles inside the batch")
    with nogil:
        tiles_core(&x[0, 0, 0, 0], x.shape[1], x.shape[2], x.shape[3], &Vt[0, 0, 0],
                   Vt.strides[0] // sizeof(real), ph, pw, TH, TW, p0, p1)


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


cdef void in_rows_core(const real* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, real* V,
                       Py_ssize_t vs, Py_ssize_t vc, real* buf, Py_ssize_t ph,
                       Py_ssize_t pw, Py_ssize_t TW, Py_ssize_t th0,
                       Py_ssize_t th1) noexcept nogil:
    # V[t*vs + c*vc + (th - th0)*TW + tw] = (B^T d B)[t] for the input tiles of rows
    # th0..th1-1 of one image x (C, H, W)
    cdef Py_ssize_t Wp = 2 * TW + 2
    cdef Py_ssize_t c, th, i, r, tw, q
    cdef real* s = buf                      # the rows B^T d of the padded input rows
    cdef real* z = buf + 4 * Wp             # a row of zeros (rows outside x)
    cdef const real* xr[4]
    cdef real* s0
    cdef real* s1
    cdef real* s2
    cdef real* s3
    cdef real* v
    cdef Py_ssize_t lo = pw if pw > 0 else 0          # padded columns that fall on x
    cdef Py_ssize_t hi = W + pw if W + pw < Wp else Wp
    for tw in range(Wp):
        z[tw] = 0
    for c in range(C):
        for th in range(th0, th1):
            for i in range(4):
                r = 2 * th - ph + i
                xr[i] = x + (c * H + r) * W if (r >= 0 and r < H) else z
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
            q = c * vc + (th - th0) * TW
            for i in range(4):
                s0 = s + i * Wp
                v = V + 4 * i * vs + q
                for tw in range(TW):
                    v[tw] = s0[2 * tw] - s0[2 * tw + 2]
                v = V + (4 * i + 1) * vs + q
                for tw in range(TW):
                    v[tw] = s0[2 * tw + 1] + s0[2 * tw + 2]
                v = V + (4 * i + 2) * vs + q
                for tw in range(TW):
                    v[tw] = s0[2 * tw + 2] - s0[2 * tw + 1]
                v = V + (4 * i + 3) * vs + q
                for tw in range(TW):
                    v[tw] = s0[2 * tw + 1] - s0[2 * tw + 3]


cdef void out_rows_core(const real* M, Py_ssize_t ms, Py_ssize_t mo, real* y, Py_ssize_t O,
                        Py_ssize_t OH, Py_ssize_t OW, const real* bias, bint has_bias,
                        real* buf, Py_ssize_t TW, Py_ssize_t th0,
                        Py_ssize_t th1) noexcept nogil:
    # one image y (O, OH, OW) at the tiles of rows th0..th1-1 = A^T m A (+ bias[o]),
    # cropped, with m[t] = M[t*ms + o*mo + (th - th0)*TW + tw]
    cdef Py_ssize_t o, th, tw, j, q, r
    cdef real b
    cdef real* t = buf                      # 8 rows of TW: t[a*4 + j] = (A^T m)[a][j]
    cdef real* e = buf + 8 * TW             # one output row of 2*TW
    cdef real* dst
    cdef const real* m0
    cdef const real* m1
    cdef const real* m2
    cdef const real* m3
    cdef real* ta
    for o in range(O):
        b = bias[o] if has_bias else 0
        for th in range(th0, th1):
            q = o * mo + (th - th0) * TW
            for j in range(4):
                m0 = M + j * ms + q
                m1 = M + (4 + j) * ms + q
                m2 = M + (8 + j) * ms + q
                m3 = M + (12 + j) * ms + q
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
                dst = y + (o * OH + 2 * th + r) * OW if 2 * TW == OW else e
                for tw in range(TW):
                    dst[2 * tw] = ta[tw] + ta[TW + tw] + ta[2 * TW + tw] + b
                    dst[2 * tw + 1] = ta[TW + tw] - ta[2 * TW + tw] - ta[3 * TW + tw] + b
                if 2 * TW != OW:
                    dst = y + (o * OH + 2 * th + r) * OW
                    for tw in range(OW):
                        dst[tw] = e[tw]


cdef void out_rows_adj_core(const real* g, Py_ssize_t O, Py_ssize_t OH, Py_ssize_t OW,
                            real* dM, Py_ssize_t ms, Py_ssize_t mo, real* buf,
                            Py_ssize_t TW, Py_ssize_t th0, Py_ssize_t th1) noexcept nogil:
    # dM[t*ms + o*mo + (th - th0)*TW + tw] = (A g_tile A^T)[t] for the 2x2 tiles of one
    # image g (O, OH, OW) in rows th0..th1-1 (zeros past the edges)
    cdef Py_ssize_t Wg = 2 * TW
    cdef Py_ssize_t o, th, tw, i, q, r
    cdef real* a = buf                      # rows of g padded to 2*TW (where needed)
    cdef real* t = buf + 2 * Wg             # rows 1 and 2 of A g: a + b, a - b
    cdef const real* rows[2]
    cdef const real* ti
    cdef const real* b
    cdef real* m
    for o in range(O):
        for th in range(th0, th1):
            for r in range(2):                  # the tile row's two rows of g
                if 2 * th + r < OH and OW == Wg:
                    rows[r] = g + (o * OH + 2 * th + r) * OW
                elif 2 * th + r < OH:
                    pad_row(g + (o * OH + 2 * th + r) * OW, OW, 0, a + r * Wg, Wg)
                    rows[r] = a + r * Wg
                else:
                    pad_row(g, 0, 0, a + r * Wg, Wg)
                    rows[r] = a + r * Wg
            b = rows[1]
            for tw in range(Wg):                # A g: rows a, a + b, a - b, -b
                t[tw] = rows[0][tw] + b[tw]
            for tw in range(Wg):
                t[Wg + tw] = rows[0][tw] - b[tw]
            q = o * mo + (th - th0) * TW
            for i in range(3):                  # then g_i A^T for the rows a, a+b, a-b
                ti = rows[0] if i == 0 else t + (i - 1) * Wg
                m = dM + 4 * i * ms + q
                for tw in range(TW):
                    m[tw] = ti[2 * tw]
                m = dM + (4 * i + 1) * ms + q
                for tw in range(TW):
                    m[tw] = ti[2 * tw] + ti[2 * tw + 1]
                m = dM + (4 * i + 2) * ms + q
                for tw in range(TW):
                    m[tw] = ti[2 * tw] - ti[2 * tw + 1]
                m = dM + (4 * i + 3) * ms + q
                for tw in range(TW):
                    m[tw] = -ti[2 * tw + 1]
            m = dM + 12 * ms + q                # and for the row -b
            for tw in range(TW):
                m[tw] = -b[2 * tw]
            m = dM + 13 * ms + q
            for tw in range(TW):
                m[tw] = -b[2 * tw] - b[2 * tw + 1]
            m = dM + 14 * ms + q
            for tw in range(TW):
                m[tw] = b[2 * tw + 1] - b[2 * tw]
            m = dM + 15 * ms + q
            for tw in range(TW):
                m[tw] = b[2 * tw + 1]


cdef void in_rows_adj_core(const real* dV, Py_ssize_t vs, Py_ssize_t vc, real* dx,
                           Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, real* buf,
                           Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t TW, Py_ssize_t th0,
                           Py_ssize_t th1) noexcept nogil:
    # one image dx (C, H, W) += B dV_tile B^T placed at every tile of rows th0..th1-1,
    # dV_tile[t] = dV[t*vs + c*vc + (th - th0)*TW + tw] (parts outside dx dropped);
    # overlapping tiles add, in order of th and tw
    cdef Py_ssize_t Wp = 2 * TW + 2
    cdef Py_ssize_t c, th, tw, i, q, r, j, lo, hi
    cdef real* tt = buf                     # 4 rows of TW: the column step of one tile row
    cdef real* R = buf + 4 * TW             # 4 overlap-added rows of Wp
    cdef real* Ri
    cdef real* row
    cdef const real* u0
    cdef const real* u1
    cdef const real* u2
    cdef const real* u3
    lo = pw if pw > 0 else 0                # padded columns that fall on dx
    hi = W + pw if W + pw < Wp else Wp
    for c in range(C):
        for th in range(th0, th1):
            q = c * vc + (th - th0) * TW
            for i in range(4):
                u0 = dV + 4 * i * vs + q
                u1 = dV + (4 * i + 1) * vs + q
                u2 = dV + (4 * i + 2) * vs + q
                u3 = dV + (4 * i + 3) * vs + q
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
                row = dx + (c * H + r) * W - pw
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


# the range kernels one at a time, from Python (the tests compare them with the NumPy
# reference); V, M: (16, C, k) / (16, C_out, k) views with contiguous rows

cdef int check_rows(Py_ssize_t planes, Py_ssize_t prows, Py_ssize_t pcols,
                    Py_ssize_t step, Py_ssize_t itemsize, Py_ssize_t rows,
                    Py_ssize_t cols, Py_ssize_t n, Py_ssize_t N, Py_ssize_t th0,
                    Py_ssize_t th1, Py_ssize_t TW, Py_ssize_t buf) except -1:
    # planes (16, rows, >= (th1 - th0)*TW) with contiguous rows (step: the last axis's
    # stride in bytes); image n of N; an output row of cols <= 2*TW; the row buffer
    if planes != 16 or prows != rows or step != itemsize or \
            pcols < (th1 - th0) * TW or th0 < 0 or th0 > th1 or n < 0 or n >= N or \
            TW < 1 or buf < 16 * (2 * TW + 4) or cols > 2 * TW:
        raise ValueError("refdl Winograd kernel: inconsistent range, planes or buffer")
    return 0


def input_rows(const real[:, :, :, ::1] x, real[:, :, :] V, real[::1] buf, Py_ssize_t ph,
               Py_ssize_t pw, Py_ssize_t TW, Py_ssize_t n, Py_ssize_t th0, Py_ssize_t th1):
    """V[:, c, (th - th0)*TW + tw] = B^T d B for the input tiles of rows th0..th1-1 of
    image n."""
    check_rows(V.shape[0], V.shape[1], V.shape[2], V.strides[2],
               sizeof(real), x.shape[1], 0, n,
               x.shape[0], th0, th1, TW, buf.shape[0])
    with nogil:
        in_rows_core(&x[n, 0, 0, 0], x.shape[1], x.shape[2], x.shape[3], &V[0, 0, 0],
                     V.strides[0] // sizeof(real), V.strides[1] // sizeof(real), &buf[0],
                     ph, pw, TW, th0, th1)


def output_rows(const real[:, :, :] M, real[:, :, :, ::1] y, const real[::1] bias,
                bint has_bias, real[::1] buf, Py_ssize_t TW, Py_ssize_t n, Py_ssize_t th0,
                Py_ssize_t th1):
    """y[n, o] at the tiles of rows th0..th1-1 = A^T M A (+ bias[o]), cropped."""
    check_rows(M.shape[0], M.shape[1], M.shape[2], M.strides[2],
               sizeof(real), y.shape[1],
               y.shape[3], n, y.shape[0], th0, th1, TW, buf.shape[0])
    with nogil:
        out_rows_core(&M[0, 0, 0], M.strides[0] // sizeof(real), M.strides[1] // sizeof(real),
                      &y[n, 0, 0, 0], y.shape[1], y.shape[2], y.shape[3], &bias[0], has_bias,
                      &buf[0], TW, th0, th1)


def output_rows_adjoint(const real[:, :, :, ::1] g, real[:, :, :] dM, real[::1] buf,
                        Py_ssize_t TW, Py_ssize_t n, Py_ssize_t th0, Py_ssize_t th1):
    """dM[:, o, (th - th0)*TW + tw] = A g_tile A^T for the 2x2 tiles of g in rows
    th0..th1-1 of image n (zeros past the edges)."""
    check_rows(dM.shape[0], dM.shape[1], dM.shape[2], dM.strides[2],
               sizeof(real), g.shape[1],
               g.shape[3], n, g.shape[0], th0, th1, TW, buf.shape[0])
    with nogil:
        out_rows_adj_core(&g[n, 0, 0, 0], g.shape[1], g.shape[2], g.shape[3], &dM[0, 0, 0],
                          dM.strides[0] // sizeof(real), dM.strides[1] // sizeof(real),
                          &buf[0], TW, th0, th1)


def input_rows_adjoint(const real[:, :, :] dV, real[:, :, :, ::1] dx, real[::1] buf,
                       Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t TW, Py_ssize_t n,
                       Py_ssize_t th0, Py_ssize_t th1):
    """dx[n] += B dV_tile B^T placed at every tile of rows th0..th1-1 (parts outside dx
    dropped); overlapping tiles add, in order of th and tw."""
    check_rows(dV.shape[0], dV.shape[1], dV.shape[2], dV.strides[2],
               sizeof(real), dx.shape[1], 0,
               n, dx.shape[0], th0, th1, TW, buf.shape[0])
    with nogil:
        in_rows_adj_core(&dV[0, 0, 0], dV.strides[0] // sizeof(real),
                         dV.strides[1] // sizeof(real), &dx[n, 0, 0, 0], dx.shape[1],
                         dx.shape[2], dx.shape[3], &buf[0], ph, pw, TW, th0, th1)


# -- Winograd on the team: whole chunks of images per thread ------------------------------

cdef struct WinoPlan:
    # the chunks' ranges and the ranges' segments, checked; the scratch row of a thread:
    # V (16 planes of vs), M (16 planes of ms), the row buffer (16*(2*TW + 4))
    Py_ssize_t nchunks, kmax, vs, ms, TH, TW, N, C, O, H, W, OH, OW, ph, pw


cdef WinoPlan make_wino_plan(Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t O, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ph,
                             Py_ssize_t pw, const i64[::1] chunk_ranges,
                             const i64[::1] range_segs, const i64[:, ::1] segs,
                             Py_ssize_t kmax, Py_ssize_t scratch_len) except *:
    # once per call, in every build: the loops below trust these. Every segment is
    # (n, th0, th1) with 0 <= n < N, 0 <= th0 < th1 <= TH; a range's segments are
    # consecutive tiles (its tile-major V is one block of tiles) of at most kmax tiles;
    # a chunk's ranges cover whole images n0..n1-1 in order, and the chunks the batch
    cdef WinoPlan p
    cdef Py_ssize_t c, r, s, n, t0, t1, q, tile, prev, n_next
    p.TH, p.TW = (OH + 1) // 2, (OW + 1) // 2
    p.N, p.C, p.O, p.H, p.W, p.OH, p.OW, p.ph, p.pw = N, C, O, H, W, OH, OW, ph, pw
    p.nchunks = chunk_ranges.shape[0] - 1
    p.kmax = kmax
    p.vs = C * kmax + 48                     # plane strides: not a power of two (planes())
    p.ms = O * kmax + 48
    # (any padding is safe: the transforms read only rows and columns inside x and write
    # only those inside y and dx)
    if (OH < 1 or OW < 1 or p.nchunks < 0 or segs.shape[1] != 3 or kmax < 1 or
            range_segs.shape[0] < 1 or range_segs[0] != 0 or
            range_segs[range_segs.shape[0] - 1] != segs.shape[0]):
        raise ValueError("refdl Winograd kernel: inconsistent geometry or tables")
    if scratch_len < 16 * (p.vs + p.ms) + 16 * (2 * p.TW + 4):
        raise ValueError("refdl Winograd kernel: scratch too small")
    if (16 * p.vs >= 2 ** 31 or 16 * p.ms >= 2 ** 31 or O * C >= 2 ** 31):
        raise ValueError("refdl Winograd kernel: a range too large for 32-bit BLAS indices")
    n_next = 0
    if p.nchunks > 0 and (chunk_ranges[0] != 0 or
                          chunk_ranges[p.nchunks] != range_segs.shape[0] - 1):
        raise ValueError("refdl Winograd kernel: the chunks do not cover the ranges")
    for c in range(p.nchunks):
        if chunk_ranges[c + 1] <= chunk_ranges[c]:
            raise ValueError("refdl Winograd kernel: an empty chunk")
        for r in range(chunk_ranges[c], chunk_ranges[c + 1]):
            if range_segs[r + 1] <= range_segs[r]:
                raise ValueError("refdl Winograd kernel: an empty range")
            q = 0
            prev = -1
            for s in range(range_segs[r], range_segs[r + 1]):
                n, t0, t1 = segs[s, 0], segs[s, 1], segs[s, 2]
                if n < 0 or n >= N or t0 < 0 or t1 > p.TH or t0 >= t1:
                    raise ValueError("refdl Winograd kernel: a segment outside the batch")
                tile = (n * p.TH + t0) * p.TW
                if prev >= 0 and tile != prev:
                    raise ValueError("refdl Winograd kernel: a range's tiles are not "
                                     "consecutive")
                prev = (n * p.TH + t1) * p.TW
                q += (t1 - t0) * p.TW
            if q > kmax:
                raise ValueError("refdl Winograd kernel: a range wider than kmax")
        # a chunk is whole images, in order: it starts at image n_next, tile row 0
        s = range_segs[chunk_ranges[c]]
        if segs[s, 0] != n_next or segs[s, 1] != 0:
            raise ValueError("refdl Winograd kernel: a chunk does not start an image")
        s = range_segs[chunk_ranges[c + 1]] - 1
        if segs[s, 2] != p.TH:
            raise ValueError("refdl Winograd kernel: a chunk does not end an image")
        n_next = segs[s, 0] + 1
    if n_next != N:
        raise ValueError("refdl Winograd kernel: the chunks do not cover the batch")
    return p


def winograd_forward(const real[:, :, :, ::1] x, const real[:, :, ::1] U,
                     const real[::1] bias, bint has_bias, real[:, :, :, ::1] y,
                     real[:, ::1] scratch, const i64[::1] chunk_ranges,
                     const i64[::1] range_segs, const i64[:, ::1] segs, Py_ssize_t kmax,
                     Py_ssize_t ph, Py_ssize_t pw, int nthreads):
    """y = Winograd F(2x2, 3x3) of x with U (16, C_out, C) plus bias, chunk by chunk on the
    team (``nthreads``, a scratch row each): per range, V = input transform of its
    segments, M_t = U_t V_t for the 16 planes t, y = output transform of M. BLAS must be
    single-threaded during the call."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], O = y.shape[1]
    if (y.shape[0] != N or U.shape[0] != 16 or U.shape[1] != O or U.shape[2] != C or
            bias.shape[0] < (O if has_bias else 1) or nthreads < 1 or
            scratch.shape[0] < nthreads):
        raise ValueError("winograd_forward: inconsistent shapes")
    cdef WinoPlan p = make_wino_plan(N, C, x.shape[2], x.shape[3], O, y.shape[2],
                                     y.shape[3], ph, pw, chunk_ranges, range_segs, segs,
                                     kmax, scratch.shape[1])
    cdef Py_ssize_t c, r, s, t, n, t0, t1, q
    cdef real* V
    cdef real* M
    cdef real* rb
    for c in prange(p.nchunks, nogil=True, schedule="dynamic", num_threads=nthreads):
        V = &scratch[threadid(), 0]
        M = V + 16 * p.vs
        rb = M + 16 * p.ms
        for r in range(chunk_ranges[c], chunk_ranges[c + 1]):
            q = 0
            for s in range(range_segs[r], range_segs[r + 1]):
                n, t0, t1 = segs[s, 0], segs[s, 1], segs[s, 2]
                in_rows_core(&x[n, 0, 0, 0], C, p.H, p.W, V + q, p.vs, kmax, rb, ph, pw,
                             p.TW, t0, t1)
                q = q + (t1 - t0) * p.TW
            for t in range(16):                # M_t (O, q) = U_t (O, C) V_t (C, q)
                gemm(c'N', c'N', <int>O, <int>q, <int>C, &U[t, 0, 0], <int>C,
                     V + t * p.vs, <int>kmax, 0, M + t * p.ms, <int>kmax)
            q = 0
            for s in range(range_segs[r], range_segs[r + 1]):
                n, t0, t1 = segs[s, 0], segs[s, 1], segs[s, 2]
                out_rows_core(M + q, p.ms, kmax, &y[n, 0, 0, 0], O, p.OH, p.OW, &bias[0],
                              has_bias, rb, p.TW, t0, t1)
                q = q + (t1 - t0) * p.TW


def winograd_backward(const real[:, :, :, ::1] g, const real[:, :, :, ::1] x,
                      const real[:, :, ::1] U, real[:, :, :, ::1] dx,
                      real[:, :, :, ::1] dU, real[:, ::1] scratch,
                      const i64[::1] chunk_ranges, const i64[::1] range_segs,
                      const i64[:, ::1] segs, Py_ssize_t kmax, Py_ssize_t ph,
                      Py_ssize_t pw, int nthreads):
    """The adjoint of winograd_forward, chunk by chunk on the team: per range, dM = output
    adjoint of g; (when dU has a row per chunk) V tile-major from x and dU[c]_t (+)= dM_t V_t
    over the chunk's ranges in order; (when dx has N images) dV_t = U_t^T dM_t and dx += the
    input adjoint of dV, each chunk's images zeroed first. U: (16, C_out, C), as forward's.
    The chunks are fixed by the shapes, and the caller sums dU over them in order: the
    result does not depend on the thread count. BLAS must be single-threaded."""
    cdef Py_ssize_t N = g.shape[0], O = g.shape[1], C = x.shape[1]
    cdef bint need_dx = dx.shape[0] > 0, need_dw = dU.shape[0] > 0
    cdef Py_ssize_t S = C * x.shape[2] * x.shape[3]
    if (x.shape[0] != N or U.shape[0] != 16 or U.shape[1] != O or U.shape[2] != C or
            nthreads < 1 or scratch.shape[0] < nthreads):
        raise ValueError("winograd_backward: inconsistent shapes")
    if need_dx and (dx.shape[0] != N or dx.shape[1] != C or dx.shape[2] != x.shape[2] or
                    dx.shape[3] != x.shape[3]):
        raise ValueError("winograd_backward: dx must have x's shape")
    cdef WinoPlan p = make_wino_plan(N, C, x.shape[2], x.shape[3], O, g.shape[2],
                                     g.shape[3], ph, pw, chunk_ranges, range_segs, segs,
                                     kmax, scratch.shape[1])
    if need_dw and (dU.shape[0] != p.nchunks or dU.shape[1] != 16 or dU.shape[2] != O or
                    dU.shape[3] != C):
        raise ValueError("winograd_backward: dU must be (chunks, 16, C_out, C)")
    cdef Py_ssize_t c, r, s, t, n, t0, t1, q, n0, n1, p0
    cdef real* V
    cdef real* M
    cdef real* rb
    for c in prange(p.nchunks, nogil=True, schedule="dynamic", num_threads=nthreads):
        V = &scratch[threadid(), 0]
        M = V + 16 * p.vs
        rb = M + 16 * p.ms
        if need_dx:                            # this chunk's images, then added into
            n0 = segs[range_segs[chunk_ranges[c]], 0]
            n1 = segs[range_segs[chunk_ranges[c + 1]] - 1, 0] + 1
            zero_row(&dx[n0, 0, 0, 0], (n1 - n0) * S)
        for r in range(chunk_ranges[c], chunk_ranges[c + 1]):
            q = 0
            for s in range(range_segs[r], range_segs[r + 1]):
                n, t0, t1 = segs[s, 0], segs[s, 1], segs[s, 2]
                out_rows_adj_core(&g[n, 0, 0, 0], O, p.OH, p.OW, M + q, p.ms, kmax, rb,
                                  p.TW, t0, t1)
                q = q + (t1 - t0) * p.TW
            if need_dw:                        # V tile-major (16, q, C), then dU_t += dM_t V_t
                s = range_segs[r]
                p0 = (segs[s, 0] * p.TH + segs[s, 1]) * p.TW
                tiles_core(&x[0, 0, 0, 0], C, p.H, p.W, V, p.vs, ph, pw, p.TH, p.TW, p0,
                           p0 + q)
                for t in range(16):
                    gemm(c'N', c'N', <int>O, <int>C, <int>q, M + t * p.ms, <int>kmax,
                         V + t * p.vs, <int>C, 0 if r == chunk_ranges[c] else 1,
                         &dU[c, t, 0, 0], <int>C)
            if need_dx:                        # dV_t (C, q) = U_t^T (C, O) dM_t (O, q),
                for t in range(16):            # U read transposed (10-15% faster here
                    gemm(c'T', c'N', <int>C, <int>q, <int>O, &U[t, 0, 0], <int>C,
                         M + t * p.ms, <int>kmax, 0, V + t * p.vs, <int>kmax)  # than a copy)
                q = 0
                for s in range(range_segs[r], range_segs[r + 1]):
                    n, t0, t1 = segs[s, 0], segs[s, 1], segs[s, 2]
                    in_rows_adj_core(V + q, p.vs, kmax, &dx[n, 0, 0, 0], C, p.H, p.W, rb,
                                     ph, pw, p.TW, t0, t1)
                    q = q + (t1 - t0) * p.TW
