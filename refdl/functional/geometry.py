"""Validation of sliding-window geometries, and the memo that keeps it cheap.

``check_geometry`` is the one place the compiled kernels' preconditions are checked
(refdl.ext calls it before every kernel, the pooling layers before theirs); ``shape_memo``
memoises the pure functions of shapes that validate a layer's call and plan its kernels
(a layer sees the same shapes every step). Re-exported by refdl.ext.
"""
import functools

import numpy as np

__all__ = ["shape_memo", "check_geometry", "is_int", "INDEX_LIMIT"]


# -- memoised shape arithmetic ------------------------------------------------------------

def _key(v):
    """A hashable key that tells apart what == does not (1, 1.0 and True; a list and a
    tuple): (type, value), element-wise for lists and tuples. Raises TypeError for an
    unhashable value (an array, say)."""
    if isinstance(v, (tuple, list)):
        return (type(v),) + tuple(_key(e) for e in v)
    hash(v)
    return (type(v), v)


def shape_memo(fn):
    """Memoise ``fn``, a pure function of shapes, sizes and settings that validates them and
    derives what the kernels need (the same layer calls it with the same shapes every
    step). A call raising an error stores nothing, so bad input is rejected every time;
    an argument that cannot be hashed (an array) skips the memo. At most 512 entries."""
    cache = {}

    @functools.wraps(fn)
    def memoised(*args):
        try:
            key = _key(args)
        except TypeError:
            return fn(*args)
        hit = cache.get(key)
        if hit is None:
            hit = fn(*args)
            if len(cache) >= 512:
                cache.clear()
            cache[key] = hit
        return hit
    memoised.cache = cache
    return memoised


# -- validation -----------------------------------------------------------------------------

# Every coordinate a kernel computes is a sum of at most four terms each bounded by the
# padded extent of its axis, and products of extents; keeping every extent and their
# product below this bound keeps all of them far from the int64 (Py_ssize_t) limit.
INDEX_LIMIT = 2 ** 60


def is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_geometry(name, spatial, kernel_size, stride, padding, dilation, out_size,
                   pool_pad_limit=False, every_window_reads_input=False):
    """Validate a sliding-window geometry before any compiled loop sees it.

    ``spatial``, ``kernel_size``, ``stride``, ``dilation``, ``out_size``: r ints each;
    ``padding``: r (before, after) pairs. Raises ValueError (TypeError for non-ints) that
    names ``name`` and the offending value when

    * an entry is not an int, kernel/stride/dilation/out_size are < 1, padding < 0,
      or the input has an empty spatial axis;
    * a window starts after the end of the padded input ((o-1)s > L + p_lo + p_hi - 1);
    * any extent the kernels compute (padded length plus the reach of the last window)
      or their product reaches 2**60: the index arithmetic could overflow int64;
    * ``pool_pad_limit``: the padding exceeds half the kernel (PyTorch's pooling rule);
    * ``every_window_reads_input``: some window lies entirely in the padding (its max
      would be -inf with no input position to send the gradient to).

    This is the one place the compiled kernels' preconditions are checked; the kernels
    additionally clamp every index range to its row.
    """
    spatial = tuple(spatial)
    ks, ss, ds, out, ps = _check_types(name, spatial, kernel_size, stride, dilation,
                                       out_size, padding)
    _check_extents(name, spatial, ks, ss, ps, ds, out)
    if pool_pad_limit and any(2 * lo > k or 2 * hi > k for (lo, hi), k in zip(ps, ks)):
        raise ValueError(f"{name}: padding {tuple(lo for lo, _ in ps)} must be at most "
                         f"half the kernel {ks}")
    if every_window_reads_input:
        _check_every_window_reads_input(name, spatial, ks, ss, ps, ds, out)


def _check_types(name, spatial, kernel_size, stride, dilation, out_size, padding):
    """Ints of the right count and sign; returns (kernel, stride, dilation, out, padding)
    as tuples of ints (padding as (before, after) pairs)."""
    r = len(spatial)
    if not all(is_int(L) for L in spatial):
        raise TypeError(f"{name}: spatial size must be ints, got {spatial}")
    if any(L < 1 for L in spatial):
        raise ValueError(f"{name}: empty spatial size {spatial}")
    vals = {"kernel_size": tuple(kernel_size), "stride": tuple(stride),
            "dilation": tuple(dilation), "out_size": tuple(out_size)}
    for what, v in vals.items():
        if len(v) != r or not all(is_int(a) for a in v):
            raise TypeError(f"{name}: {what} must be {r} ints, got {v}")
        if any(int(a) < 1 for a in v):
            raise ValueError(f"{name}: {what} must be {r} positive ints, got {v}")
    ps = tuple(tuple(p) for p in padding)
    if len(ps) != r or not all(len(p) == 2 and is_int(p[0]) and is_int(p[1])
                               for p in ps):
        raise TypeError(f"{name}: padding must be {r} (before, after) pairs of ints, "
                        f"got {ps}")
    if any(lo < 0 or hi < 0 for lo, hi in ps):
        raise ValueError(f"{name}: padding must be {r} non-negative (before, after) pairs, "
                         f"got {ps}")
    ks, ss, ds, out = (tuple(int(a) for a in vals[k]) for k in
                       ("kernel_size", "stride", "dilation", "out_size"))
    return ks, ss, ds, out, ps


def _check_extents(name, spatial, ks, ss, ps, ds, out):
    """Every extent (and their product) below 2**60; every window starts in the input."""
    total = 1
    for L, k, s, (lo, hi), d, o in zip(spatial, ks, ss, ps, ds, out):
        extent = int(L) + int(lo) + int(hi) + (o - 1) * s + (k - 1) * d + s + 1
        total *= extent
        if extent >= INDEX_LIMIT or total >= INDEX_LIMIT:
            raise ValueError(f"{name}: geometry too large for int64 index arithmetic "
                             f"(input {spatial}, kernel {ks}, stride {ss}, padding {ps}, "
                             f"dilation {ds}, output {out}); every extent must stay "
                             f"below 2**60")
        # every window must start at or before the end of the padded input
        if (o - 1) * s > L + lo + hi - 1:
            raise ValueError(f"{name}: {o} outputs with stride {s} do not fit an input of "
                             f"length {L} padded by ({lo}, {hi})")


def _check_every_window_reads_input(name, spatial, ks, ss, ps, ds, out):
    """No window lies entirely in the padding (a max pool's -inf with nowhere to go)."""
    for axis, (L, k, s, (lo, _), d, o) in enumerate(zip(spatial, ks, ss, ps, ds, out)):
        start = np.arange(o, dtype=np.int64) * s - lo
        # taps j with 0 <= start + j d < L: j from ceil(-start/d)^+ to ceil((L-start)/d)
        first = np.maximum(-(start // d), 0)
        last = np.minimum(-((start - L) // d), k)
        empty = np.flatnonzero(last <= first)
        if empty.size:
            o0 = int(empty[0])
            raise ValueError(
                f"{name}: window {o0} along spatial axis {axis} lies entirely in the "
                f"padding (input length {L}, kernel {k}, stride {s}, padding {lo}, "
                f"dilation {d}): its taps {int(start[o0])}, "
                f"{int(start[o0]) + d}, ... miss the input; reduce the padding or the "
                f"dilation")
