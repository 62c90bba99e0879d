"""Which path runs the hot loops: the compiled kernels of ``refdl/_ext`` or pure NumPy.

``available()`` is True when the Cython extension was built and imported and has not been
switched off; then ``im2col``, ``col2im`` and the pooling functions below call it, else
they call the NumPy reference of ``refdl.functional`` (same numbers: float64 to 1e-12,
float32 to 1e-5 relative).

* ``REFDL_DISABLE_EXT=1`` in the environment (read at import) forces the NumPy path.
* ``refdl.ext.use_numpy()`` / ``refdl.ext.use_compiled()`` switch at run time, and
  ``with refdl.ext.numpy_path(): ...`` switches inside a block (tests run both paths).

Every function here validates shapes, dtypes and contiguity before handing arrays to the
compiled code, whose bounds checks are off: a bad call raises a Python error, it never
reaches the kernels.

Builds ("variants") of the kernels, all from refdl/_ext/_kernels.pyx (setup.py): the
baseline build (``refdl._ext._kernels``; on x86-64 plain SSE2) runs on every CPU; on x86-64
a second build, ``refdl._ext._kernels_avx2``, is compiled with ``-mavx2 -mfma`` (and
``-ffp-contract=off``: the same roundings, bit-identical results). At import refdl loads
the AVX2 build when it is built and the CPU has AVX2 and FMA, else the baseline build;
``REFDL_KERNELS=baseline`` in the environment keeps the baseline build.
``kernel_variant()`` says which one runs ("avx2", "baseline", or None when none is
loaded), ``variant_description()`` why.
"""
import contextlib
import functools
import importlib
import importlib.util
import math
import os
import warnings

import numpy as np

from .functional import conv as _ref_conv
from .functional.geometry import check_geometry, is_int, shape_memo  # noqa: F401
from .functional import pooling as _ref_pool
from . import _ext as _switch     # the on/off switch of the compiled path
from . import threads
from .memory import scratch

__all__ = ["available", "compiled_module", "openmp", "use_numpy", "use_compiled",
           "numpy_path", "im2col", "col2im", "max_pool_forward", "max_pool_backward",
           "avg_pool_forward", "avg_pool_backward", "backend", "import_error",
           "check_geometry", "conv_chunked", "conv_tiling", "conv_forward", "conv_backward",
           "kernel_variant", "variant_description", "built_variants", "load_variant",
           "cpu_features", "cpu_supports", "VARIANTS"]

# -- which build of the kernels runs ----------------------------------------------------

# variant -> (module in refdl._ext, the CPU features it needs, as /proc/cpuinfo names them)
VARIANTS = {"baseline": ("_kernels", ()), "avx2": ("_kernels_avx2", ("avx2", "fma"))}


@functools.lru_cache(maxsize=None)
def cpu_features():
    """The CPU features this process may use, lower-case /proc/cpuinfo names ("avx2",
    "fma", ...): NumPy's run-time detection when it has one (it also checks that the OS
    saves the AVX registers), else the flags of /proc/cpuinfo, else an empty set (then
    only the baseline build runs)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                from numpy._core._multiarray_umath import __cpu_features__ as found
            except ImportError:                       # NumPy 1.x
                from numpy.core._multiarray_umath import __cpu_features__ as found
        names = {str(k).lower() for k, v in dict(found).items() if v}
        if "fma3" in names:                           # NumPy's name for FMA
            names.add("fma")
        return frozenset(names)
    except Exception:                                 # no NumPy detection: ask the kernel
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except (OSError, UnicodeDecodeError):
        pass
    return frozenset()


def cpu_supports(variant):
    """True when this CPU can run the build ``variant`` ("baseline" always can)."""
    return all(f in cpu_features() for f in VARIANTS[variant][1])


def load_variant(variant):
    """The compiled module of the build ``variant``, imported now if it was not yet.

    Raises ImportError when that build is not installed, RuntimeError when this CPU cannot
    run it (its code would stop the process with an illegal instruction). The module gets
    the thread settings of refdl.set_num_threads. Used at import and by the tests, which
    run every build; the layers call whichever ``compiled_module()`` returns."""
    name, _ = VARIANTS[variant]
    if not cpu_supports(variant):
        raise RuntimeError(f"the {variant} build of the kernels needs the CPU features "
                           f"{', '.join(VARIANTS[variant][1])}, which this CPU lacks")
    with _switch.passive_openmp():
        mod = importlib.import_module(f"{_switch.__name__}.{name}")
    threads.configure_kernels(mod)
    return mod


def _requested():
    """'baseline' when REFDL_KERNELS=baseline, else 'auto' (a warning for other values)."""
    value = os.environ.get("REFDL_KERNELS", "").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value != "baseline":
        warnings.warn(f"REFDL_KERNELS={value!r} is not 'baseline' or 'auto'; refdl picks "
                      f"the build of its kernels itself", stacklevel=2)
        return "auto"
    return value


def _select():
    """(module, variant, import error of the baseline build, why this variant)."""
    why = "this CPU lacks AVX2/FMA"
    if _requested() == "baseline":
        why = "REFDL_KERNELS=baseline"
    elif cpu_supports("avx2"):
        try:
            return load_variant("avx2"), "avx2", None, "AVX2+FMA build"
        except ImportError:
            why = "the AVX2 build is not installed"
    try:
        return load_variant("baseline"), "baseline", None, f"baseline build; {why}"
    except ImportError as exc:       # not built: the NumPy path is a first-class citizen
        return None, None, str(exc), None


_K, _variant, import_error, _variant_why = _select()


def compiled_module():
    """The compiled module in use (``refdl._ext._kernels`` or one of its instruction-set
    builds, see :func:`kernel_variant`) or None when it is not built."""
    return _K


def kernel_variant():
    """Which build of the compiled kernels is loaded: "avx2", "baseline", or None."""
    return _variant


def variant_description():
    """The loaded build and why it was chosen ("AVX2+FMA build", "baseline build;
    REFDL_KERNELS=baseline", ...), or None when no build is loaded."""
    return _variant_why


def built_variants():
    """The builds of the kernels installed next to refdl (whether or not this CPU runs
    them), in the order of VARIANTS."""
    return [v for v, (name, _) in VARIANTS.items()
            if importlib.util.find_spec(f"{_switch.__name__}.{name}") is not None]


def available():
    """True when the compiled kernels are built, imported and enabled."""
    return _K is not None and _switch.enabled


def _active_kernels():
    """The build in use, or None on the NumPy path (handed to refdl._ext for the modules
    below refdl.ext)."""
    return _K if available() else None


_switch.active_kernels = _active_kernels


def backend():
    """'cython' or 'numpy': the path the layers use right now."""
    return "cython" if available() else "numpy"


def openmp():
    """True when the compiled kernels use OpenMP threads over the batch."""
    return _K is not None and _K.openmp_enabled()


def use_numpy():
    """Force the NumPy reference path (until :func:`use_compiled`)."""
    _switch.enabled = False


def use_compiled():
    """Use the compiled kernels again (if they are built); returns :func:`available`."""
    _switch.enabled = True
    return available()


@contextlib.contextmanager
def numpy_path(flag=True):
    """``with numpy_path(): ...`` runs the block on the NumPy path (flag=False: compiled)."""
    saved = _switch.enabled
    _switch.enabled = not flag
    try:
        yield
    finally:
        _switch.enabled = saved


# -- validation (refdl/functional/geometry.py) ---------------------------------------------

_check_geometry = check_geometry


def _as3(t, fill):
    """Left-pad a 1-D/2-D geometry tuple with unit axes so the 3-D kernel can run it."""
    return (fill,) * (3 - len(t)) + tuple(t)


def _floating(name, *arrays):
    dt = arrays[0].dtype
    for a in arrays:
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name}: expected float32 or float64 arrays, got {a.dtype}")
        if a.dtype != dt:
            raise TypeError(f"{name}: mixed dtypes {dt} and {a.dtype}")


def _parse(x_shape, kernel_size, stride, padding, dilation, out_size):
    spatial = tuple(int(s) for s in x_shape[2:])
    r = len(spatial)
    ks = _ref_conv.normalize_tuple(kernel_size, r, "kernel_size")
    ss = _ref_conv.normalize_tuple(stride, r, "stride")
    ds = _ref_conv.normalize_tuple(dilation, r, "dilation")
    ps = _ref_conv._pairs(padding, r)
    if out_size is None:
        if any(s < 1 for s in ss) or any(L < 1 for L in spatial):
            # let check_geometry name the problem (no division by a zero stride here)
            out_size = (1,) * r
        else:
            out_size = _ref_conv.conv_output_size(spatial, ks, ss, ps, ds)
    out = tuple(out_size)
    if len(out) != r or not all(is_int(o) for o in out):
        raise TypeError(f"out_size must be {r} ints, got {out_size!r}")
    return spatial, ks, ss, ps, ds, tuple(int(o) for o in out)


# -- im2col / col2im ------------------------------------------------------------------------

def im2col(x, kernel_size, stride=1, padding=0, dilation=1, out_size=None, out=None):
    """Column matrix (C*prod(K), N*prod(O)) of x (N, C, *S), S of rank 1, 2 or 3.

    See :func:`refdl.functional.conv.im2col`. The compiled path needs the padding to be
    zeros and writes into ``out`` when it has the right shape and dtype (buffer reuse).
    """
    x = np.asarray(x)
    if x.ndim not in (3, 4, 5):
        raise ValueError(f"im2col: expected x of shape (N, C, *S) with 1 to 3 spatial "
                         f"axes, got {x.shape}")
    _floating("im2col", x)
    spatial, ks, ss, ps, ds, osz = _parse(x.shape, kernel_size, stride, padding, dilation,
                                          out_size)
    _check_geometry("im2col", spatial, ks, ss, ps, ds, osz)
    N, C = x.shape[:2]
    shape = (C * math.prod(ks), N * math.prod(osz))
    if not available():
        cols = _ref_conv.im2col(x, ks, ss, ps, ds, osz)
        if out is not None and out.shape == shape and out.dtype == cols.dtype:
            out[...] = cols
            return out
        return cols
    if out is None or out.shape != shape or out.dtype != x.dtype or \
            not out.flags.c_contiguous:
        out = np.empty(shape, dtype=x.dtype)
    x5 = np.ascontiguousarray(x).reshape((N, C) + _as3(spatial, 1))
    _K.im2col3d(x5, out, *_as3(ks, 1), *_as3(ss, 1), *_as3([lo for lo, _ in ps], 0),
                *_as3(ds, 1), *_as3(osz, 1))
    return out


def col2im(cols, x_shape, kernel_size, stride=1, padding=0, dilation=1, out_size=None):
    """The adjoint of :func:`im2col`: (C*prod(K), N*prod(O)) -> (N, C, *S)."""
    cols = np.asarray(cols)
    x_shape = tuple(int(s) for s in x_shape)
    if len(x_shape) not in (3, 4, 5):
        raise ValueError(f"col2im: expected x_shape (N, C, *S) with 1 to 3 spatial axes, "
                         f"got {x_shape}")
    _floating("col2im", cols)
    spatial, ks, ss, ps, ds, osz = _parse(x_shape, kernel_size, stride, padding, dilation,
                                          out_size)
    _check_geometry("col2im", spatial, ks, ss, ps, ds, osz)
    N, C = x_shape[:2]
    shape = (C * math.prod(ks), N * math.prod(osz))
    if cols.shape != shape:
        raise ValueError(f"col2im: expected cols of shape {shape} for x_shape {x_shape}, "
                         f"got {cols.shape}")
    if not available():
        return _ref_conv.col2im(cols, x_shape, ks, ss, ps, ds, osz)
    cols = np.ascontiguousarray(cols)
    x = np.zeros((N, C) + _as3(spatial, 1), dtype=cols.dtype)
    _K.col2im3d(cols, x, *_as3(ks, 1), *_as3(ss, 1), *_as3([lo for lo, _ in ps], 0),
                *_as3(ds, 1), *_as3(osz, 1))
    return x.reshape(x_shape)


# -- convolution by chunks of images (compiled path only) ----------------------------------

# The columns of one chunk of images, plus its output or upstream gradient, should stay in
# cache while its GEMMs read them. Measured on the cases of docs/performance.md (2-core
# Xeon, 48 KB L1d, 2 MB L2 per core): chunks of 32-128 KB ran LeNet's conv2 forward+backward
# in 2.47 ms at 1 thread against 2.81 ms with 512 KB and 3.16 ms for the whole batch.
CHUNK_BYTES = 1 << 17
# At least this many chunks per batch (when the batch has that many images), so that the
# kernels' threads have work to share; the chunking depends on the shapes only, never on
# the thread count, so every result is the same at any thread count.
MIN_CHUNKS = 8


def dw_pixel_major(cog, CKg):
    """True when conv_backward's dW product should read g transposed (pixel-major; a copy
    per piece): cols (C*K/G, w) @ g^T (w, C_out/G) then runs as a plain product. The copy
    costs C_out*w per piece, the product gains in proportion to C*K/G. OpenBLAS (SkylakeX,
    1 thread, timed by a C loop over SciPy's sgemm) ran LeNet's conv2 pieces (C*K = 150,
    C_out = 16, w = 100-400) at 149-159 GFLOP/s this way against 92-103, and the Conv3d
    case's (81, 16, 320-640) at 128-143 against 83-84. The layers' forward+backward
    (benchmarks/_dw_orientation.py, docs/performance.md): conv2 1.88 -> 1.77 ms at 1
    thread and 1.10 -> 1.02 at 2, Conv3d 8.92 -> 8.51 and 5.41 -> 5.02. With C*K = 27 (the
    stride-2 case) or 5 (Conv1d) the copy cost more than the product saved (1.74 -> 1.95
    and 0.52 -> 0.65 ms), and with LeNet's conv1 (25, 6) the product itself was slower
    (74-78 against 89-93 GFLOP/s)."""
    return cog >= 8 and CKg >= 64


def conv_chunked(CK, C_out, out_size):
    """True when a convolution with CK = C_in*prod(K) rows of columns, C_out channels and
    output size ``out_size`` runs piece by piece on the compiled path (:func:`conv_forward`):
    the kernels are built and enabled, the output is not empty, and one output row's
    columns (with g and g transposed: CK + 2 C_out rows) and one image's output stay below
    2**31 entries (the BLAS indices are 32-bit; a larger layer runs the whole-batch im2col
    and NumPy's matmul)."""
    L, OW = math.prod(out_size), out_size[-1] if out_size else 0
    return (available() and CK > 0 and C_out > 0 and L > 0
            and (CK + 2 * C_out) * OW < 2 ** 31 and C_out * L < 2 ** 31)


def conv_tiling(N, CK, C_out, R, OW, itemsize):
    """(images per chunk, output rows per piece) for :func:`conv_forward` and
    :func:`conv_backward`: whole images, as many as fit CHUNK_BYTES and few enough to
    leave MIN_CHUNKS chunks; an image larger than CHUNK_BYTES alone is cut into ranges of
    its R output rows (of OW outputs each) that fit."""
    per_row = (CK + C_out) * OW * itemsize
    per_image = per_row * R
    if per_image > CHUNK_BYTES:
        return 1, max(1, min(R, CHUNK_BYTES // per_row))
    return max(1, min(CHUNK_BYTES // per_image, -(-N // MIN_CHUNKS))), R


def _conv_args(name, x, w2, kernel_size, stride, pads, dilation, out_size, groups):
    """Validated (x5, geometry arguments, (chunk, rows), scratch shape, output size) for
    the chunked kernels."""
    _floating(name, x, w2)
    if x.dtype != w2.dtype or w2.ndim != 2:
        raise ValueError(f"{name}: weight must be a 2-D array of x's dtype {x.dtype}, got "
                         f"{w2.dtype} {w2.shape}")
    x5_shape, geom, tiling, scratch_shape, osz = _conv_plan(
        name, x.shape, w2.shape, x.itemsize, kernel_size, stride, pads, dilation, out_size,
        groups, _K.team_size(), CHUNK_BYTES, MIN_CHUNKS)
    return np.ascontiguousarray(x).reshape(x5_shape), geom, tiling, scratch_shape, osz


@shape_memo
def _conv_plan(name, x_shape, w_shape, itemsize, kernel_size, stride, pads, dilation,
               out_size, groups, team, chunk_bytes, min_chunks):
    """The shape-only part of _conv_args: validates the geometry and returns (x5 shape,
    geometry arguments, (chunk, rows), scratch shape, output size); memoised."""
    spatial, ks, ss, ps, ds, osz = _parse(x_shape, kernel_size, stride, pads, dilation,
                                          out_size)
    _check_geometry(name, spatial, ks, ss, ps, ds, osz)
    N, C = x_shape[:2]
    CK = C * math.prod(ks)
    if groups < 1 or C % groups or w_shape[0] % groups or w_shape[1] != CK // groups:
        raise ValueError(f"{name}: weight {w_shape} does not fit {C} input channels, "
                         f"kernel {ks} and groups {groups}")
    R, OW = math.prod(osz[:-1]), osz[-1]
    # chunk_bytes, min_chunks: CHUNK_BYTES, MIN_CHUNKS, which conv_tiling reads; in the
    # memo's key so that changing them (benchmarks, tests) takes effect
    chunk, rows = conv_tiling(N, CK, w_shape[0], R, OW, itemsize)
    geom = (*_as3(ks, 1), *_as3(ss, 1), *_as3([lo for lo, _ in ps], 0), *_as3(ds, 1),
            *_as3(osz, 1))
    # (C*K + 2 C_out) per column: the columns, g and g transposed (conv_backward)
    scratch_shape = (team, (CK + 2 * w_shape[0]) * chunk * rows * OW)
    return (N, C) + _as3(spatial, 1), geom, (chunk, rows), scratch_shape, osz


# conv_forward_planes: its ring of input planes' columns must fit this (per thread), and
# the batch must have this many images (it runs one image per thread)
PLANE_RING_BYTES = 1 << 20
MIN_PLANE_IMAGES = 4


def conv_planes(x_shape, w_shape, itemsize, geom, groups):
    """The scratch shape (without the thread count) for the plane path of a 3-D forward
    (:func:`conv_forward`), or None where it does not apply: groups 1, depth stride 1, a
    kernel deeper than 1, at least MIN_PLANE_IMAGES images and a ring of input planes
    within PLANE_RING_BYTES. Shapes only, never the thread count, so that the same call
    gives the same numbers at any thread count."""
    KD, KH, KW, sd = geom[0], geom[1], geom[2], geom[3]
    dd, OD, OH, OW = geom[9], geom[12], geom[13], geom[14]
    if len(x_shape) != 5 or groups != 1 or sd != 1 or KD < 2 or OD < 2 or \
            x_shape[0] < MIN_PLANE_IMAGES:
        return None
    S, CKp = (KD - 1) * dd + 1, x_shape[1] * KH * KW
    lp = OH * OW + 64 // itemsize               # at most the kernel's padded row stride
    length = S * (CKp * lp + 1) + w_shape[0] * lp
    return length if length * itemsize <= PLANE_RING_BYTES else None


# the direct convolution's rule (conv_direct), from benchmarks/_direct_choice.py on this
# AVX-512 machine and as an AVX2 laptop (OpenBLAS's Haswell kernels, the AVX2 direct
# kernel; docs/performance.md), time against the GEMM path's at 1 thread: with few taps
# the outputs' transposed store weighs more (Conv1d, 5 taps: 1.04x, 0.79x on AVX2; 3x3
# from 2 channels, 18: 1.32x and 0.67x; LeNet's conv1, 25: 1.07x and 0.37x); with fewer
# output channels per group than DIRECT_MIN_CHANNELS most lanes stay empty; a padded copy
# above DIRECT_COPY_BYTES is left to the GEMM path; DIRECT_NARROW channels or fewer: 8 lanes
DIRECT_MIN_TAPS = 16
DIRECT_MIN_CHANNELS = 4
DIRECT_COPY_BYTES = 4 << 20
DIRECT_NARROW = 8


def conv_direct(x_shape, w_shape, dtype, kernel_size, stride, pads, dilation, out_size,
                groups=1):
    """True when :func:`conv_forward` runs the direct convolution (``conv_forward_direct``:
    no columns, one fused multiply-add per tap, docs/derivations/conv.md) rather than
    im2col + GEMM: the compiled kernels, float32, a kernel larger than 1 (a 1x1
    convolution is a plain GEMM), at least DIRECT_MIN_TAPS taps per output
    (C/groups * prod(kernel)) and DIRECT_MIN_CHANNELS output channels per group, and a
    padded image copy within DIRECT_COPY_BYTES. Shapes and dtype only, never the thread
    count or the CPU, so whether a call runs direct does not depend on the machine, and
    then neither do its bits (the direct kernels of every build give the same ones). The
    arguments are :func:`conv_forward`'s, with shapes for arrays."""
    dtype = np.dtype(dtype)
    if dtype != np.float32 or not available():
        return False
    geom = _conv_plan("conv_direct", tuple(x_shape), tuple(w_shape), dtype.itemsize,
                      kernel_size, stride, pads, dilation, out_size, groups, _K.team_size(),
                      CHUNK_BYTES, MIN_CHUNKS)[1]
    return _direct_wanted(tuple(x_shape), tuple(w_shape), dtype.char, geom, groups)


@shape_memo
def _direct_wanted(x_shape, w_shape, dtype_char, geom, groups):
    if dtype_char != "f" or math.prod(geom[:3]) == 1 or \
            w_shape[1] < DIRECT_MIN_TAPS or w_shape[0] // groups < DIRECT_MIN_CHANNELS or \
            x_shape[0] >= 1 << 24:          # the kernel tags images with floats
        return False
    dims, padded = _ref_conv.direct_extent(_as3(x_shape[2:], 1), geom)
    return not padded or x_shape[1] * math.prod(dims) * 4 <= DIRECT_COPY_BYTES


@shape_memo
def _direct_plan(x5_shape, geom, groups, lanes):
    """(tap offsets, (Dp, Hp, Wp), output rows per piece, scratch length per thread) for
    conv_forward_direct (the taps: refdl.functional.conv.direct_taps). Whole images per
    piece, or (fewer than MIN_CHUNKS images) images cut into pieces of rows, so that the
    threads have work to share (shapes only: any thread count, the same numbers)."""
    off, dims, padded = _ref_conv.direct_taps(x5_shape, geom, groups)
    R, N = geom[12] * geom[13], x5_shape[0]
    rows = R if N >= MIN_CHUNKS else -(-R // min(R, -(-MIN_CHUNKS // max(N, 1))))
    copy = x5_shape[1] * math.prod(dims) if padded else 0
    return off, dims, rows, _K.DIRECT_TAG + copy + geom[14] * lanes


def _pack_direct(w2, groups, lanes):
    """The weight (C_out, K) as conv_forward_direct reads it: (G, NB, K, lanes), output
    channel g*cog + b*lanes + l at [g, b, :, l], zeros past cog."""
    cog, K = w2.shape[0] // groups, w2.shape[1]
    wp = np.zeros((groups, -(-cog // lanes) * lanes, K), np.float32)
    wp[:, :cog] = w2.reshape(groups, cog, K)
    return np.ascontiguousarray(wp.reshape(groups, -1, lanes, K).transpose(0, 1, 3, 2))


def conv_forward(x, w2, bias, kernel_size, stride, pads, dilation, out_size, groups=1,
                 buffers=None, direct=None):
    """y (N, C_out, *O) = the convolution of x (N, C, *S) with w2 (C_out, C/groups*prod(K))
    plus bias, on the compiled path: im2col and the GEMMs run a piece at a time (a chunk of
    images, or a range of one image's output rows: ``conv_tiling``), on the kernels'
    threads. ``pads`` are (before, after) pairs of zeros;
    ``buffers`` (a dict) keeps the scratch between calls. Same numbers as im2col + one
    GEMM; a 3-D convolution that :func:`conv_planes` accepts runs plane by plane instead
    (``conv_forward_planes``: each input plane's columns built once per image), the same
    sum in another order. ``direct``: run the direct convolution (``conv_forward_direct``,
    float32 only: each output a chain of fused multiply-adds over its taps) or not; None:
    where :func:`conv_direct` accepts the call. See docs/derivations/conv.md."""
    x5, geom, tiling, shape, osz = _conv_args("conv_forward", x, w2, kernel_size, stride,
                                             pads, dilation, out_size, groups)
    N, Cout = x.shape[0], w2.shape[0]
    y = np.empty((N, Cout, math.prod(osz)), dtype=x.dtype)
    b = np.zeros(0, x.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    if direct is None:
        direct = _direct_wanted(x.shape, w2.shape, x.dtype.char, geom, groups)
    elif direct and x.dtype != np.float32:
        raise ValueError(f"conv_forward: the direct convolution runs float32, got {x.dtype}")
    if direct:
        lanes = 8 if Cout // groups <= DIRECT_NARROW else _K.direct_lanes()
        off, dims, rows, length = _direct_plan(x5.shape, geom, groups, lanes)
        _K.conv_forward_direct(x5, _pack_direct(w2, groups, lanes), b, y,
                               scratch(buffers, "direct", (shape[0], length), x.dtype),
                               off, *dims, *geom[6:9], *geom[3:6], *geom[12:], rows)
        return y.reshape((N, Cout) + osz)
    ring = conv_planes(x.shape, w2.shape, x.itemsize, geom, groups)
    with threads.blas_serial():
        if ring is not None:
            # the weight by depth tap: wk[kd] (C_out, C*KH*KW)
            KD = geom[0]
            wk = np.ascontiguousarray(w2.reshape(Cout, x.shape[1], KD, -1).transpose(
                2, 0, 1, 3)).reshape(KD, Cout, -1)
            _K.conv_forward_planes(x5, wk, b, y,
                                   scratch(buffers, "planes", (shape[0], ring), x.dtype),
                                   *geom[1:3], *geom[4:6], *geom[6:12], *geom[12:])
        else:
            _K.conv_forward(x5, np.ascontiguousarray(w2), b, y,
                            scratch(buffers, "chunks", shape, x.dtype), groups, *tiling,
                            *geom)
    return y.reshape((N, Cout) + osz)


def conv_backward(x, w2, grad, kernel_size, stride, pads, dilation, out_size, groups=1,
                  need_dx=True, need_dw=True, buffers=None):
    """(dx, dW): the gradients of :func:`conv_forward` for the upstream gradient ``grad``
    (N, C_out, *O); dW has w2's shape. Each piece's columns are recomputed from x; each
    chunk's dW_c = g_c cols_c^T is kept apart and the chunks are summed in order (so the
    result does not depend on the thread count); dx = col2im(W^T g_c) piece by piece."""
    x5, geom, tiling, shape, osz = _conv_args("conv_backward", x, w2, kernel_size, stride,
                                             pads, dilation, out_size, groups)
    N, Cout = x.shape[0], w2.shape[0]
    if grad.shape != (N, Cout) + osz:
        raise ValueError(f"conv_backward: grad has shape {grad.shape}, expected "
                         f"{(N, Cout) + osz}")
    g = np.ascontiguousarray(grad, dtype=x.dtype).reshape(N, Cout, math.prod(osz))
    nchunks = -(-N // tiling[0])
    dx = np.empty(x5.shape if need_dx else (0,) + x5.shape[1:], dtype=x.dtype)
    G, CKg = groups, w2.shape[1]
    dwT = np.empty((nchunks if need_dw else 0, G * CKg, Cout // G), dtype=x.dtype)
    with threads.blas_serial():
        _K.conv_backward(x5, np.ascontiguousarray(w2), g, dx, dwT,
                         scratch(buffers, "chunks", shape, x.dtype),
                         dw_pixel_major(Cout // groups, CKg), groups, *tiling, *geom)
    dW = None
    if need_dw:     # the chunks' dW_g^T (C_in/G*K, C_out/G), summed in order, per group
        dW = dwT.sum(axis=0).reshape(G, CKg, Cout // G).transpose(0, 2, 1).reshape(w2.shape)
    return (dx.reshape(x.shape) if need_dx else None), dW


# -- pooling --------------------------------------------------------------------------------

@shape_memo
def _pool_args(name, x_shape, kernel_size, stride, padding, dilation, out_size):
    spatial = tuple(x_shape[2:])
    r = len(spatial)
    if r not in (1, 2, 3):
        raise ValueError(f"{name}: expected 1 to 3 spatial axes, got shape {x_shape}")
    ks = _ref_conv.normalize_tuple(kernel_size, r, "kernel_size")
    ss = _ref_conv.normalize_tuple(stride, r, "stride")
    ps = _ref_conv.normalize_tuple(padding, r, "padding")
    ds = _ref_conv.normalize_tuple(dilation, r, "dilation")
    osz = tuple(out_size)
    check_geometry(name, spatial, ks, ss, tuple((p, p) for p in ps), ds, osz,
                   pool_pad_limit=True, every_window_reads_input=True)
    return spatial, ks, ss, ps, ds, tuple(int(o) for o in osz)


def max_pool_forward(x, kernel_size, stride, padding, dilation, out_size):
    """(y, indices): the maximum of every window and its flat position in the input."""
    _floating("max_pool", x)
    spatial, ks, ss, ps, ds, osz = _pool_args("max_pool", x.shape, kernel_size, stride,
                                              padding, dilation, out_size)
    if not available():
        return _ref_pool.max_pool_forward(x, ks, ss, ps, ds, osz)
    N, C = x.shape[:2]
    x4 = np.ascontiguousarray(x).reshape((N * C,) + _as3(spatial, 1))
    y = np.empty((N * C,) + _as3(osz, 1), dtype=x.dtype)
    idx = np.empty(y.shape, dtype=np.int64)
    _K.maxpool3d_forward(x4, y, idx, *_as3(ks, 1), *_as3(ss, 1), *_as3(ps, 0),
                         *_as3(ds, 1))
    shape = (N, C) + osz
    return y.reshape(shape), idx.reshape(shape)


def max_pool_backward(grad_out, indices, x_shape):
    """Scatter-add grad_out (N, C, *O) to the input positions ``indices``; an index
    outside the input raises ValueError (the compiled kernel checks each one as it
    scatters, skipping it, and reports after the loop)."""
    _floating("max_pool_backward", grad_out)
    x_shape = tuple(x_shape)
    if indices.shape != grad_out.shape or indices.dtype != np.int64:
        raise ValueError(f"max_pool_backward: indices {indices.shape} {indices.dtype} do "
                         f"not match grad_out {grad_out.shape}")
    if grad_out.shape[:2] != x_shape[:2]:
        raise ValueError(f"max_pool_backward: grad_out {grad_out.shape} does not match the "
                         f"input {x_shape}")
    S = math.prod(x_shape[2:])

    def outside():
        return ValueError(f"max_pool_backward: an index lies outside the input (indices in "
                          f"[{indices.min()}, {indices.max()}], input has {S} positions)")
    if not available():
        if indices.size and (indices.min() < 0 or indices.max() >= S):
            raise outside()
        return _ref_pool.max_pool_backward(grad_out, indices, x_shape)
    P = x_shape[0] * x_shape[1]
    idx = np.ascontiguousarray(indices).reshape(P, math.prod(indices.shape[2:]))
    g = np.ascontiguousarray(grad_out).reshape(P, math.prod(grad_out.shape[2:]))
    dx = np.zeros((P, S), dtype=grad_out.dtype)
    if _K.maxpool3d_backward(g, idx, dx):      # the number of indices outside [0, S)
        raise outside()
    return dx.reshape(x_shape)


def avg_pool_forward(x, kernel_size, stride, padding, out_size, count_include_pad=True,
                     divisor_override=None):
    _floating("avg_pool", x)
    spatial, ks, ss, ps, _, osz = _pool_args("avg_pool", x.shape, kernel_size, stride,
                                             padding, 1, out_size)
    if not available():
        return _ref_pool.avg_pool_forward(x, ks, ss, ps, osz, count_include_pad,
                                          divisor_override)
    N, C = x.shape[:2]
    x4 = np.ascontiguousarray(x).reshape((N * C,) + _as3(spatial, 1))
    y = np.empty((N * C,) + _as3(osz, 1), dtype=x.dtype)
    _K.avgpool3d_forward(x4, y, *_as3(ks, 1), *_as3(ss, 1), *_as3(ps, 0),
                         bool(count_include_pad), int(divisor_override or 0))
    return y.reshape((N, C) + osz)


def avg_pool_backward(grad_out, x_shape, kernel_size, stride, padding, out_size,
                      count_include_pad=True, divisor_override=None):
    _floating("avg_pool_backward", grad_out)
    x_shape = tuple(x_shape)
    spatial, ks, ss, ps, _, osz = _pool_args("avg_pool_backward", x_shape, kernel_size,
                                             stride, padding, 1, out_size)
    if grad_out.shape != x_shape[:2] + osz:
        raise ValueError(f"avg_pool_backward: expected grad_out of shape "
                         f"{x_shape[:2] + osz}, got {grad_out.shape}")
    if not available():
        return _ref_pool.avg_pool_backward(grad_out, x_shape, ks, ss, ps, osz,
                                           count_include_pad, divisor_override)
    N, C = x_shape[:2]
    g = np.ascontiguousarray(grad_out).reshape((N * C,) + _as3(osz, 1))
    dx = np.zeros((N * C,) + _as3(spatial, 1), dtype=grad_out.dtype)
    _K.avgpool3d_backward(g, dx, *_as3(ks, 1), *_as3(ss, 1), *_as3(ps, 0),
                          bool(count_include_pad), int(divisor_override or 0))
    return dx.reshape(x_shape)
