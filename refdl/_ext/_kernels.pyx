# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""im2col / col2im and max / average pooling on 3-D volumes (1-D and 2-D are views with
unit axes). Called only through refdl.ext, which validates every shape, dtype and
contiguity first: bounds checks are off here.

Layout (same as refdl.functional.conv.im2col):
    x     (N, C, D, H, W)            C-contiguous
    cols  (C*KD*KH*KW, N*OD*OH*OW)   row (c, kd, kh, kw), column (n, od, oh, ow)
Pooling works on planes: x (P, D, H, W) with P = N*C.
The outer loop (batch or plane) runs in parallel with OpenMP when the extension was
compiled with it; every iteration writes a disjoint part of the output.
"""
from cython.parallel cimport prange

ctypedef fused real:
    float
    double

ctypedef long long i64


cdef inline Py_ssize_t ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    # ceil(a / b) for b > 0 with C's truncating division
    if a >= 0:
        return (a + b - 1) // b
    return -((-a) // b)


# outputs o in [lo, hi) read the index o*stride + offset inside [0, length)
cdef inline Py_ssize_t range_lo(Py_ssize_t stride, Py_ssize_t offset) noexcept nogil:
    cdef Py_ssize_t a = ceil_div(-offset, stride)
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
    static const int REFDL_HAVE_OPENMP = 1;
    #else
    static const int REFDL_HAVE_OPENMP = 0;
    #endif
    """
    const int REFDL_HAVE_OPENMP


def openmp_enabled():
    """True when this module was compiled with OpenMP."""
    return bool(REFDL_HAVE_OPENMP)


def im2col3d(const real[:, :, :, :, ::1] x, real[:, ::1] cols,
             Py_ssize_t KD, Py_ssize_t KH, Py_ssize_t KW,
             Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
             Py_ssize_t pd, Py_ssize_t ph, Py_ssize_t pw,
             Py_ssize_t dd, Py_ssize_t dh, Py_ssize_t dw,
             Py_ssize_t OD, Py_ssize_t OH, Py_ssize_t OW):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef Py_ssize_t D = x.shape[2], H = x.shape[3], W = x.shape[4]
    cdef Py_ssize_t L = OD * OH * OW
    cdef Py_ssize_t n, c, kd, kh, kw, od, oh, ow, idd, ih, row, base
    cdef Py_ssize_t od0, od1, oh0, oh1, ow0, ow1
    cdef real* dst
    cdef const real* src
    for n in prange(N, nogil=True, schedule="static"):
        for c in range(C):
            for kd in range(KD):
                od0 = range_lo(sd, kd * dd - pd)
                od1 = range_hi(OD, D, sd, kd * dd - pd, od0)
                for kh in range(KH):
                    oh0 = range_lo(sh, kh * dh - ph)
                    oh1 = range_hi(OH, H, sh, kh * dh - ph, oh0)
                    for kw in range(KW):
                        ow0 = range_lo(sw, kw * dw - pw)
                        ow1 = range_hi(OW, W, sw, kw * dw - pw, ow0)
                        row = ((c * KD + kd) * KH + kh) * KW + kw
                        base = n * L
                        for od in range(OD):
                            idd = od * sd + kd * dd - pd
                            for oh in range(OH):
                                dst = &cols[row, base + (od * OH + oh) * OW]
                                if od < od0 or od >= od1 or oh < oh0 or oh >= oh1:
                                    for ow in range(OW):
                                        dst[ow] = 0
                                    continue
                                ih = oh * sh + kh * dh - ph
                                src = &x[n, c, idd, ih, 0]
                                for ow in range(ow0):
                                    dst[ow] = 0
                                if sw == 1:
                                    for ow in range(ow0, ow1):
                                        dst[ow] = src[ow + kw * dw - pw]
                                else:
                                    for ow in range(ow0, ow1):
                                        dst[ow] = src[ow * sw + kw * dw - pw]
                                for ow in range(ow1, OW):
                                    dst[ow] = 0


def col2im3d(const real[:, ::1] cols, real[:, :, :, :, ::1] x,
             Py_ssize_t KD, Py_ssize_t KH, Py_ssize_t KW,
             Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
             Py_ssize_t pd, Py_ssize_t ph, Py_ssize_t pw,
             Py_ssize_t dd, Py_ssize_t dh, Py_ssize_t dw,
             Py_ssize_t OD, Py_ssize_t OH, Py_ssize_t OW):
    """x += col2im(cols); x must be zeroed by the caller."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef Py_ssize_t D = x.shape[2], H = x.shape[3], W = x.shape[4]
    cdef Py_ssize_t L = OD * OH * OW
    cdef Py_ssize_t n, c, kd, kh, kw, od, oh, ow, idd, ih, row, base
    cdef Py_ssize_t od0, od1, oh0, oh1, ow0, ow1
    cdef const real* src
    cdef real* dst
    for n in prange(N, nogil=True, schedule="static"):
        for c in range(C):
            for kd in range(KD):
                od0 = range_lo(sd, kd * dd - pd)
                od1 = range_hi(OD, D, sd, kd * dd - pd, od0)
                for kh in range(KH):
                    oh0 = range_lo(sh, kh * dh - ph)
                    oh1 = range_hi(OH, H, sh, kh * dh - ph, oh0)
                    for kw in range(KW):
                        ow0 = range_lo(sw, kw * dw - pw)
                        ow1 = range_hi(OW, W, sw, kw * dw - pw, ow0)
                        row = ((c * KD + kd) * KH + kh) * KW + kw
                        base = n * L
                        for od in range(od0, od1):
                            idd = od * sd + kd * dd - pd
                            for oh in range(oh0, oh1):
                                ih = oh * sh + kh * dh - ph
                                src = &cols[row, base + (od * OH + oh) * OW]
                                dst = &x[n, c, idd, ih, 0]
                                if sw == 1:
                                    for ow in range(ow0, ow1):
                                        dst[ow + kw * dw - pw] += src[ow]
                                else:
                                    for ow in range(ow0, ow1):
                                        dst[ow * sw + kw * dw - pw] += src[ow]


def maxpool3d_forward(const real[:, :, :, ::1] x, real[:, :, :, ::1] y,
                      i64[:, :, :, ::1] idx,
                      Py_ssize_t KD, Py_ssize_t KH, Py_ssize_t KW,
                      Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t pd, Py_ssize_t ph, Py_ssize_t pw,
                      Py_ssize_t dd, Py_ssize_t dh, Py_ssize_t dw):
    """y = max over each window (padding never wins), idx = flat input position of the
    first maximum (a NaN wins and propagates, as in PyTorch)."""
    cdef Py_ssize_t P = x.shape[0], D = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OD = y.shape[1], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t p, od, oh, ow, kd, kh, kw, i, j, l, best
    cdef Py_ssize_t d0, h0, w0
    cdef real m, v
    for p in prange(P, nogil=True, schedule="static"):
        for od in range(OD):
            d0 = od * sd - pd
            for oh in range(OH):
                h0 = oh * sh - ph
                for ow in range(OW):
                    w0 = ow * sw - pw
                    best = -1
                    m = 0
                    for kd in range(KD):
                        i = d0 + kd * dd
                        if i < 0 or i >= D:
                            continue
                        for kh in range(KH):
                            j = h0 + kh * dh
                            if j < 0 or j >= H:
                                continue
                            for kw in range(KW):
                                l = w0 + kw * dw
                                if l < 0 or l >= W:
                                    continue
                                v = x[p, i, j, l]
                                if best < 0 or v > m or (v != v and m == m):
                                    m = v
                                    best = (i * H + j) * W + l
                    y[p, od, oh, ow] = m
                    idx[p, od, oh, ow] = best


def maxpool3d_backward(const real[:, ::1] grad, const i64[:, ::1] idx, real[:, ::1] dx):
    """dx[p, idx[p, o]] += grad[p, o]; dx zeroed by the caller. Shapes (P, O) and (P, S)."""
    cdef Py_ssize_t P = grad.shape[0], O = grad.shape[1]
    cdef Py_ssize_t p, o
    for p in prange(P, nogil=True, schedule="static"):
        for o in range(O):
            dx[p, idx[p, o]] += grad[p, o]


cdef inline Py_ssize_t win_end(Py_ssize_t start, Py_ssize_t k, Py_ssize_t length,
                               Py_ssize_t pad) noexcept nogil:
    # end of the padded window: min(start + k, L + p)
    return start + k if start + k < length + pad else length + pad


cdef inline Py_ssize_t clip(Py_ssize_t v, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    return lo if v < lo else (hi if v > hi else v)


def avgpool3d_forward(const real[:, :, :, ::1] x, real[:, :, :, ::1] y,
                      Py_ssize_t KD, Py_ssize_t KH, Py_ssize_t KW,
                      Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t pd, Py_ssize_t ph, Py_ssize_t pw,
                      bint include_pad, Py_ssize_t override):
    cdef Py_ssize_t P = x.shape[0], D = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OD = y.shape[1], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t p, od, oh, ow, i, j, l
    cdef Py_ssize_t ds, de, hs, he, ws, we, npad
    cdef real div, acc
    for p in prange(P, nogil=True, schedule="static"):
        for od in range(OD):
            for oh in range(OH):
                for ow in range(OW):
                    # PyTorch's divisor: the padded window [start, min(start+k, L+p))
                    # when count_include_pad, else its part inside [0, L)
                    ds = od * sd - pd
                    hs = oh * sh - ph
                    ws = ow * sw - pw
                    de = win_end(ds, KD, D, pd)
                    he = win_end(hs, KH, H, ph)
                    we = win_end(ws, KW, W, pw)
                    npad = (de - ds) * (he - hs) * (we - ws)
                    ds = clip(ds, 0, D)
                    de = clip(de, 0, D)
                    hs = clip(hs, 0, H)
                    he = clip(he, 0, H)
                    ws = clip(ws, 0, W)
                    we = clip(we, 0, W)
                    if override > 0:
                        div = <real>override
                    elif include_pad:
                        div = <real>npad
                    else:
                        div = <real>((de - ds) * (he - hs) * (we - ws))
                    acc = 0
                    for i in range(ds, de):
                        for j in range(hs, he):
                            for l in range(ws, we):
                                acc = acc + x[p, i, j, l]
                    y[p, od, oh, ow] = acc / div


def avgpool3d_backward(const real[:, :, :, ::1] grad, real[:, :, :, ::1] dx,
                       Py_ssize_t KD, Py_ssize_t KH, Py_ssize_t KW,
                       Py_ssize_t sd, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pd, Py_ssize_t ph, Py_ssize_t pw,
                       bint include_pad, Py_ssize_t override):
    """dx += spread of grad / divisor over each window; dx zeroed by the caller."""
    cdef Py_ssize_t P = dx.shape[0], D = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OD = grad.shape[1], OH = grad.shape[2], OW = grad.shape[3]
    cdef Py_ssize_t p, od, oh, ow, i, j, l
    cdef Py_ssize_t ds, de, hs, he, ws, we, npad
    cdef real div, share
    for p in prange(P, nogil=True, schedule="static"):
        for od in range(OD):
            for oh in range(OH):
                for ow in range(OW):
                    # PyTorch's divisor: the padded window [start, min(start+k, L+p))
                    # when count_include_pad, else its part inside [0, L)
                    ds = od * sd - pd
                    hs = oh * sh - ph
                    ws = ow * sw - pw
                    de = win_end(ds, KD, D, pd)
                    he = win_end(hs, KH, H, ph)
                    we = win_end(ws, KW, W, pw)
                    npad = (de - ds) * (he - hs) * (we - ws)
                    ds = clip(ds, 0, D)
                    de = clip(de, 0, D)
                    hs = clip(hs, 0, H)
                    he = clip(he, 0, H)
                    ws = clip(ws, 0, W)
                    we = clip(we, 0, W)
                    if override > 0:
                        div = <real>override
                    elif include_pad:
                        div = <real>npad
                    else:
                        div = <real>((de - ds) * (he - hs) * (we - ws))
                    share = grad[p, od, oh, ow] / div
                    for i in range(ds, de):
                        for j in range(hs, he):
                            for l in range(ws, we):
                                dx[p, i, j, l] += share
