"""Differential fuzzing of the compiled kernels and the layers built on them (issue 14).

For random geometries (1-D, 2-D, 3-D; stride, dilation, groups, padding wider than the
input, asymmetric padding, ceil_mode, count_include_pad, divisor_override,
output_padding, tiny inputs and the empty batch N = 0) every case is computed three ways:

    compiled  refdl.ext with the Cython kernels (refdl/_ext/_kernels.pyx), once per
              build: baseline and, where built, AVX2 (refdl.ext.VARIANTS)
    numpy     refdl.ext on the NumPy path (refdl.functional)
    loops     a direct loop over output positions and kernel taps written here, from
              the definitions (PyTorch's), sharing no code with refdl

and forward and backward must agree to float64 rounding. A geometry refdl refuses must be
refused by both paths with a ValueError, and the loop reference must agree that it is
invalid (an empty output, a window that lies entirely in the padding, ...).

Budget: the "ci" profile (default) is derandomized with 300 examples per test (a test per kernel, a test per layer family);
``REFDL_FUZZ_PROFILE=long`` runs 5,000 random examples per kernel. The same cases also run
through a bounds-checked build of the kernels (REFDL_BOUNDSCHECK=1, compiled into a
temporary directory once per session; skipped when no C compiler is available).
``REFDL_FUZZ_REPORT=path.json`` writes the number of geometries tried per kernel
(docs/reliability.md quotes them).
"""
import collections
import glob
import importlib.util
import itertools
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import refdl

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from refdl import ext, nn  # noqa: E402

from conftest import KERNEL_VARIANTS, kernel_variant_module  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROFILE = os.environ.get("REFDL_FUZZ_PROFILE", "ci")
if PROFILE == "long":
    EXAMPLES, DERANDOMIZE = 5000, False
else:
    EXAMPLES, DERANDOMIZE = 300, True
CHECKED_EXAMPLES = max(EXAMPLES // 5, 40)      # the bounds-checked build: fewer, same cases

TRIED = collections.Counter()      # (kernel, build, "valid" / "refused") -> count


def _settings(n):
    return settings(max_examples=n, derandomize=DERANDOMIZE, deadline=None,
                    database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("REFDL_FUZZ_REPORT")
    if path:
        table = collections.defaultdict(dict)
        for (kernel, build, kind), n in sorted(TRIED.items()):
            table[kernel][f"{build} {kind}"] = n
        with open(path, "w") as f:
            json.dump({"profile": PROFILE, "examples_per_test": EXAMPLES,
                       "tried": table}, f, indent=1, sort_keys=True)


# -- the kernels under test: the default build, and the bounds-checked debug build ---------

_CHECKED = {}


def _checked_kernels(tmp_root):
    """Build refdl/_ext/_kernels.pyx with REFDL_BOUNDSCHECK=1 in a temp dir, import it."""
    if "mod" in _CHECKED:
        return _CHECKED["mod"]
    if "skip" in _CHECKED:
        pytest.skip(_CHECKED["skip"])
    if "fail" in _CHECKED:
        pytest.fail(_CHECKED["fail"])
    build = os.path.join(tmp_root, "checked")
    os.makedirs(os.path.join(build, "refdl", "_ext"))
    shutil.copy(os.path.join(ROOT, "setup.py"), build)
    for pyx in glob.glob(os.path.join(ROOT, "refdl", "_ext", "*.pyx")):
        shutil.copy(pyx, os.path.join(build, "refdl", "_ext"))
    env = dict(os.environ, REFDL_BOUNDSCHECK="1", REFDL_NO_OPENMP="1")
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"],
                          cwd=build, env=env, capture_output=True, text=True, timeout=600)
    built = [f for f in os.listdir(os.path.join(build, "refdl", "_ext"))
             if f.startswith("_kernels") and f.endswith((".so", ".pyd"))]
    if not built:
        reason = ("bounds-checked kernels could not be built: "
                  + (proc.stderr.strip().splitlines() or ["?"])[-1])
        if refdl.ext.compiled_module() is not None:
            # this machine compiled the kernels: failing to build the checked copy is a bug
            _CHECKED["fail"] = reason
            pytest.fail(reason)
        _CHECKED["skip"] = reason + " (no compiler here: the NumPy path is tested)"
        pytest.skip(_CHECKED["skip"])
    spec = importlib.util.spec_from_file_location(
        "_kernels", os.path.join(build, "refdl", "_ext", built[0]))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.bounds_checked(), "REFDL_BOUNDSCHECK did not reach the compiled module"
    _CHECKED["mod"] = mod
    return mod


@pytest.fixture(params=KERNEL_VARIANTS + ["checked"])
def kernels(request, tmp_path_factory, monkeypatch):
    """(build name, number of examples): refdl.ext uses that build during the test (each
    instruction-set build of refdl.ext.VARIANTS, then the bounds-checked debug build)."""
    if ext.compiled_module() is None:
        pytest.skip("the compiled kernels are not built (NumPy path only)")
    if request.param == "checked":
        mod = _checked_kernels(str(tmp_path_factory.getbasetemp()))
        n = CHECKED_EXAMPLES
    else:
        mod = kernel_variant_module(request.param)
        n = EXAMPLES
    monkeypatch.setattr(ext, "_K", mod)
    with ext.numpy_path(False):
        yield request.param, n


def _both(fn):
    """fn() on the compiled path and on the NumPy path: (compiled, numpy), or the two
    exceptions. A ValueError on one path must be a ValueError on the other."""
    out = []
    for numpy_path in (False, True):
        with ext.numpy_path(numpy_path):
            try:
                out.append(fn())
            except ValueError as exc:
                out.append(exc)
    a, b = out
    assert isinstance(a, ValueError) == isinstance(b, ValueError), (a, b)
    return a, b


def _close(a, b, what):
    assert not isinstance(a, Exception), f"{what}: refdl raised {a!r}"
    if isinstance(a, tuple):
        for i, (u, v) in enumerate(zip(a, b)):
            _close(u, v, f"{what}[{i}]")
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    assert a.dtype == b.dtype or a.dtype.kind == b.dtype.kind == "i", \
        f"{what}: dtype {a.dtype} != {b.dtype}"
    np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12, err_msg=what)


# -- direct-loop references (definitions, not refdl's code) --------------------------------

def _taps(out_size, kernel_size):
    return itertools.product(itertools.product(*(range(o) for o in out_size)),
                             itertools.product(*(range(k) for k in kernel_size)))


def _in_pos(o, k, s, lo, d, spatial):
    """Input coordinate read by output o at tap k, or None when it is padding."""
    pos = tuple(oi * si + ki * di - li for oi, ki, si, li, di in zip(o, k, s, lo, d))
    return pos if all(0 <= p < L for p, L in zip(pos, spatial)) else None


def loop_im2col(x, ks, ss, lo, ds, out):
    N, C = x.shape[:2]
    cols = np.zeros((C,) + ks + (N,) + out, dtype=x.dtype)
    for o, k in _taps(out, ks):
        pos = _in_pos(o, k, ss, lo, ds, x.shape[2:])
        if pos is not None:
            cols[(slice(None),) + k + (slice(None),) + o] = \
                x[(slice(None), slice(None)) + pos].T
    return cols.reshape(C * math.prod(ks), N * math.prod(out))


def loop_col2im(cols, x_shape, ks, ss, lo, ds, out):
    N, C = x_shape[:2]
    c = cols.reshape((C,) + ks + (N,) + out)
    x = np.zeros(x_shape, dtype=cols.dtype)
    for o, k in _taps(out, ks):
        pos = _in_pos(o, k, ss, lo, ds, x_shape[2:])
        if pos is not None:
            x[(slice(None), slice(None)) + pos] += c[(slice(None),) + k + (slice(None),) + o].T
    return x


def loop_conv(x, W, b, ss, ps, ds, groups):
    """y[n, co, o] = b[co] + sum_{ci in group(co), k} W[co, ci, k] x[n, ci, o s + k d - p],
    and the gradients of sum(y * G) for a given G: returns (y, backward(G))."""
    N, C = x.shape[:2]
    Co, Cg = W.shape[:2]
    ks = W.shape[2:]
    spatial = x.shape[2:]
    out = tuple((L + 2 * p - d * (k - 1) - 1) // s + 1
                for L, p, d, k, s in zip(spatial, ps, ds, ks, ss))
    if any(o < 1 for o in out):
        return None, None
    cog = Co // groups
    y = np.zeros((N, Co) + out)
    taps = []
    for o, k in _taps(out, ks):
        pos = _in_pos(o, k, ss, ps, ds, spatial)
        if pos is not None:
            taps.append((o, k, pos))
    for g in range(groups):
        ci, co = slice(g * Cg, (g + 1) * Cg), slice(g * cog, (g + 1) * cog)
        for o, k, pos in taps:
            y[(slice(None), co) + o] += x[(slice(None), ci) + pos] @ W[(co, slice(None)) + k].T
    y += b.reshape((-1,) + (1,) * len(ks))

    def backward(G):
        dx, dW = np.zeros_like(x), np.zeros_like(W)
        for g in range(groups):
            ci, co = slice(g * Cg, (g + 1) * Cg), slice(g * cog, (g + 1) * cog)
            for o, k, pos in taps:
                gy = G[(slice(None), co) + o]                     # (N, cog)
                dx[(slice(None), ci) + pos] += gy @ W[(co, slice(None)) + k]
                dW[(co, slice(None)) + k] += gy.T @ x[(slice(None), ci) + pos]
        return dx, dW, G.sum(axis=(0,) + tuple(range(2, G.ndim)))
    return y, backward


def loop_conv_transpose(x, W, b, ss, ps, ops, ds, groups):
    """y[n, g*cog + co, i s + k d - p] += x[n, ci, i] W[ci, co, k] (the adjoint of conv)."""
    N, C = x.shape[:2]
    Cg_out = W.shape[1]
    ks = W.shape[2:]
    cin_g = C // groups
    spatial = x.shape[2:]
    out = tuple((L - 1) * s - 2 * p + d * (k - 1) + op + 1
                for L, s, p, d, k, op in zip(spatial, ss, ps, ds, ks, ops))
    if any(o < 1 for o in out):
        return None, None
    y = np.zeros((N, Cg_out * groups) + out)
    taps = []
    for i, k in _taps(spatial, ks):
        pos = _in_pos(i, k, ss, ps, ds, out)
        if pos is not None:
            taps.append((i, k, pos))
    for g in range(groups):
        ci, co = slice(g * cin_g, (g + 1) * cin_g), slice(g * Cg_out, (g + 1) * Cg_out)
        for i, k, pos in taps:
            y[(slice(None), co) + pos] += x[(slice(None), ci) + i] @ W[(ci, slice(None)) + k]
    y += b.reshape((-1,) + (1,) * len(ks))

    def backward(G):
        dx, dW = np.zeros_like(x), np.zeros_like(W)
        for g in range(groups):
            ci, co = slice(g * cin_g, (g + 1) * cin_g), slice(g * Cg_out, (g + 1) * Cg_out)
            for i, k, pos in taps:
                gy = G[(slice(None), co) + pos]                   # (N, Cg_out)
                dx[(slice(None), ci) + i] += gy @ W[(ci, slice(None)) + k].T
                dW[(ci, slice(None)) + k] += x[(slice(None), ci) + i].T @ gy
        return dx, dW, G.sum(axis=(0,) + tuple(range(2, G.ndim)))
    return y, backward


def torch_pool_out(L, k, s, p, d, ceil_mode):
    """PyTorch's pooling output length (pooling_output_shape)."""
    num = L + 2 * p - d * (k - 1) - 1
    o = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (o - 1) * s >= L + p:
        o -= 1
    return o


def loop_max_pool(x, ks, ss, ps, ds, out):
    """(y, flat indices) or None when some window holds no input element."""
    N, C = x.shape[:2]
    spatial = x.shape[2:]
    y = np.zeros((N, C) + out)
    idx = np.zeros((N, C) + out, dtype=np.int64)
    for o in itertools.product(*(range(v) for v in out)):
        best = None
        for k in itertools.product(*(range(v) for v in ks)):
            pos = _in_pos(o, k, ss, ps, ds, spatial)
            if pos is None:
                continue
            v = x[(slice(None), slice(None)) + pos]
            flat = np.ravel_multi_index(pos, spatial)
            if best is None:
                best = v.copy()
                where = np.full(v.shape, flat)
            else:
                win = v > best
                best[win] = v[win]
                where[win] = flat
        if best is None:
            return None
        y[(slice(None), slice(None)) + o] = best
        idx[(slice(None), slice(None)) + o] = where
    return y, idx


def loop_max_pool_backward(G, idx, x_shape):
    """dx[n, c, idx[n, c, o]] += G[n, c, o], one entry at a time."""
    dx = np.zeros(x_shape)
    spatial = x_shape[2:]
    for n, c in itertools.product(range(x_shape[0]), range(x_shape[1])):
        for o in itertools.product(*(range(v) for v in G.shape[2:])):
            pos = np.unravel_index(idx[(n, c) + o], spatial)
            dx[(n, c) + tuple(int(p) for p in pos)] += G[(n, c) + o]
    return dx


def loop_avg_pool(x, ks, ss, ps, out, include_pad, override):
    """(y, backward(G))."""
    N, C = x.shape[:2]
    spatial = x.shape[2:]
    windows = []
    for o in itertools.product(*(range(v) for v in out)):
        lo = [oi * s - p for oi, s, p in zip(o, ss, ps)]
        hi = [min(a + k, L + p) for a, k, L, p in zip(lo, ks, spatial, ps)]
        padded = math.prod(h - a for a, h in zip(lo, hi))
        clo = [max(a, 0) for a in lo]
        chi = [min(h, L) for h, L in zip(hi, spatial)]
        inside = math.prod(max(h - a, 0) for a, h in zip(clo, chi))
        div = override if override else (padded if include_pad else inside)
        windows.append((o, tuple(slice(a, h) for a, h in zip(clo, chi)), div))
    y = np.zeros((N, C) + out)
    for o, sl, div in windows:
        y[(slice(None), slice(None)) + o] = \
            x[(slice(None), slice(None)) + sl].sum(axis=tuple(range(2, x.ndim))) / div

    def backward(G):
        dx = np.zeros_like(x)
        for o, sl, div in windows:
            share = G[(slice(None), slice(None)) + o] / div
            dx[(slice(None), slice(None)) + sl] += share.reshape(share.shape + (1,) * len(ks))
        return dx
    return y, backward


# -- strategies ---------------------------------------------------------------------------

# per rank: (max spatial length, max kernel, max padding): 3-D stays small (loops are slow)
LIMITS = {1: (7, 4, 9), 2: (5, 3, 6), 3: (3, 2, 3)}


@st.composite
def window_geometry(draw, max_rank=3):
    r = draw(st.integers(1, max_rank))
    Lmax, Kmax, Pmax = LIMITS[r]
    spatial = tuple(draw(st.integers(1, Lmax)) for _ in range(r))
    ks = tuple(draw(st.integers(1, Kmax)) for _ in range(r))
    ss = tuple(draw(st.integers(1, 3)) for _ in range(r))
    ds = tuple(draw(st.integers(1, 4)) for _ in range(r))
    return r, spatial, ks, ss, ds


def _rand(rng, shape):
    return rng.standard_normal(shape)


# -- kernel-level: im2col / col2im with asymmetric padding and any valid out_size ---------

def _im2col_case(data):
    r, spatial, ks, ss, ds = data.draw(window_geometry())
    Pmax = LIMITS[r][2]
    ps = tuple((data.draw(st.integers(0, Pmax)), data.draw(st.integers(0, Pmax)))
               for _ in range(r))
    # any out_size whose windows start inside the padded input (pooling's ceil_mode
    # overhang included), sometimes one more (must be refused)
    out = tuple(data.draw(st.integers(1, (L + lo + hi - 1) // s + 1 + (s == 1)))
                for L, (lo, hi), s in zip(spatial, ps, ss))
    N = data.draw(st.integers(0, 2))
    C = data.draw(st.integers(1, 2))
    seed = data.draw(st.integers(0, 2 ** 16))
    return r, spatial, ks, ss, ps, ds, out, N, C, seed


def test_fuzz_im2col_col2im(kernels):
    build, n = kernels

    @_settings(n)
    @given(st.data())
    def run(data):
        r, spatial, ks, ss, ps, ds, out, N, C, seed = _im2col_case(data)
        rng = np.random.default_rng(seed)
        x = _rand(rng, (N, C) + spatial)
        valid = all((o - 1) * s <= L + lo + hi - 1
                    for o, s, L, (lo, hi) in zip(out, ss, spatial, ps))
        a, b = _both(lambda: ext.im2col(x, ks, ss, ps, ds, out))
        if not valid:
            assert isinstance(a, ValueError)
            TRIED[("im2col3d / col2im3d", build, "refused")] += 1
            return
        lo = tuple(p[0] for p in ps)
        ref = loop_im2col(x, ks, ss, lo, ds, out)
        _close(a, ref, "im2col compiled vs loops")
        _close(b, ref, "im2col numpy vs loops")
        M = _rand(rng, ref.shape)
        c, d = _both(lambda: ext.col2im(M, x.shape, ks, ss, ps, ds, out))
        ref2 = loop_col2im(M, x.shape, ks, ss, lo, ds, out)
        _close(c, ref2, "col2im compiled vs loops")
        _close(d, ref2, "col2im numpy vs loops")
        TRIED[("im2col3d / col2im3d", build, "valid")] += 1
    run()


# -- kernel-level: pooling kernels with any out_size -----------------------------------------

def _pool_case(data, dilation=True):
    r, spatial, ks, ss, ds = data.draw(window_geometry())
    if not dilation:
        ds = (1,) * r
    ps = tuple(data.draw(st.integers(0, k // 2)) for k in ks)
    ceil_mode = data.draw(st.booleans())
    N = data.draw(st.integers(0, 2))
    C = data.draw(st.integers(1, 2))
    seed = data.draw(st.integers(0, 2 ** 16))
    out = tuple(torch_pool_out(L, k, s, p, d, ceil_mode)
                for L, k, s, p, d in zip(spatial, ks, ss, ps, ds))
    return r, spatial, ks, ss, ps, ds, ceil_mode, N, C, seed, out


def test_fuzz_max_pool_kernels(kernels):
    build, n = kernels

    @_settings(n)
    @given(st.data())
    def run(data):
        r, spatial, ks, ss, ps, ds, ceil_mode, N, C, seed, out = _pool_case(data)
        rng = np.random.default_rng(seed)
        x = _rand(rng, (N, C) + spatial)
        ref = loop_max_pool(x, ks, ss, ps, ds, out) if min(out) >= 1 else None
        a, b = _both(lambda: ext.max_pool_forward(x, ks, ss, ps, ds, out))
        if ref is None:
            assert isinstance(a, ValueError), (spatial, ks, ss, ps, ds, out)
            TRIED[("maxpool3d_forward / _backward", build, "refused")] += 1
            return
        _close(a, ref, "max_pool compiled vs loops")
        _close(b, ref, "max_pool numpy vs loops")
        G = _rand(rng, ref[0].shape)
        c, d = _both(lambda: ext.max_pool_backward(G, ref[1], x.shape))
        dx = loop_max_pool_backward(G, ref[1], x.shape)
        _close(c, dx, "max_pool_backward compiled vs loops")
        _close(d, dx, "max_pool_backward numpy vs loops")
        TRIED[("maxpool3d_forward / _backward", build, "valid")] += 1
    run()


def test_fuzz_avg_pool_kernels(kernels):
    build, n = kernels

    @_settings(n)
    @given(st.data())
    def run(data):
        r, spatial, ks, ss, ps, ds, ceil_mode, N, C, seed, out = _pool_case(data, False)
        include_pad = data.draw(st.booleans())
        override = data.draw(st.sampled_from([None, None, 1, 3]))
        rng = np.random.default_rng(seed)
        x = _rand(rng, (N, C) + spatial)
        a, b = _both(lambda: ext.avg_pool_forward(x, ks, ss, ps, out, include_pad, override))
        if min(out) < 1:
            assert isinstance(a, ValueError)
            TRIED[("avgpool3d_forward / _backward", build, "refused")] += 1
            return
        y, back = loop_avg_pool(x, ks, ss, ps, out, include_pad, override)
        _close(a, y, "avg_pool compiled vs loops")
        _close(b, y, "avg_pool numpy vs loops")
        G = _rand(rng, y.shape)
        c, d = _both(lambda: ext.avg_pool_backward(G, x.shape, ks, ss, ps, out,
                                                   include_pad, override))
        _close(c, back(G), "avg_pool_backward compiled vs loops")
        _close(d, back(G), "avg_pool_backward numpy vs loops")
        TRIED[("avgpool3d_forward / _backward", build, "valid")] += 1
    run()


# -- layer-level: Conv1d/2d/3d, ConvTranspose1d/2d/3d, MaxPool, AvgPool -------------------

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONVT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
MAXP = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
AVGP = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def _layer_both(make, x, G):
    """Forward and backward of a fresh layer (same weights) on both paths."""
    def fn():
        m = make()
        y = m(x)
        dx = m.backward(G(y.shape))
        grads = tuple(p.grad.copy() for p in m.parameters())
        return (y, dx) + grads
    return _both(fn)


def _conv_case(data, groups=2, cin=2, cout=2, batch=(0, 2)):
    """A convolution's geometry; groups, cin, cout: the most groups and channels per
    group; batch: the range of N."""
    r, spatial, ks, ss, ds = data.draw(window_geometry())
    Pmax = LIMITS[r][2]
    ps = tuple(data.draw(st.integers(0, Pmax)) for _ in range(r))
    groups = data.draw(st.integers(1, groups))
    cin = groups * data.draw(st.integers(1, cin))
    cout = groups * data.draw(st.integers(1, cout))
    N = data.draw(st.integers(*batch))
    seed = data.draw(st.integers(0, 2 ** 16))
    return r, spatial, ks, ss, ps, ds, groups, cin, cout, N, seed


def test_fuzz_conv_layers(kernels):
    build, n = kernels

    @_settings(n)
    @given(st.data())
    def run(data):
        r, spatial, ks, ss, ps, ds, groups, cin, cout, N, seed = _conv_case(data)
        rng = np.random.default_rng(seed)
        x = _rand(rng, (N, cin) + spatial)
        W = _rand(rng, (cout, cin // groups) + ks)
        bias = _rand(rng, (cout,))
        Gs = {}

        def G(shape):
            return Gs.setdefault(shape, _rand(rng, shape))

        def make():
            m = CONV[r](cin, cout, ks, stride=ss, padding=ps, dilation=ds,
                        groups=groups).to(np.float64)
            m.weight.data[...] = W
            m.bias.data[...] = bias
            return m
        a, b = _layer_both(make, x, G)
        y, back = loop_conv(x, W, bias, ss, ps, ds, groups)
        if y is None:
            assert isinstance(a, ValueError)
            TRIED[(f"Conv{r}d", build, "refused")] += 1
            return
        ref = (y,) + back(G(y.shape))
        _close(a, ref, f"Conv{r}d compiled vs loops (y, dx, dW, db)")
        _close(b, ref, f"Conv{r}d numpy vs loops (y, dx, dW, db)")
        TRIED[(f"Conv{r}d", build, "valid")] += 1
    run()


def test_fuzz_conv_chunk_kernels(kernels, monkeypatch):
    # refdl.ext.conv_forward / conv_backward (compiled only: im2col and the GEMMs a piece
    # at a time) against the loops, with batches of up to 13 images cut into pieces of
    # every size (CHUNK_BYTES from one output row per piece, through ranges of rows and
    # whole images, to the whole batch; the last chunk and the last range partial),
    # float64 and float32, with and without dx / dW, both orientations of the dW product
    # (ext.dw_pixel_major); and the same bits
    # at 1 and at 2 threads (the chunking does not depend on the thread count)
    build, n = kernels
    before = refdl.get_num_threads()

    @_settings(n)
    @given(st.data())
    def run(data):
        r, spatial, ks, ss, ps, ds, groups, cin, cout, _, seed = _conv_case(data)
        N = data.draw(st.integers(0, 13))
        monkeypatch.setattr(ext, "CHUNK_BYTES",
                            data.draw(st.sampled_from([1, 150, 700, 3000, 1 << 30])))
        monkeypatch.setattr(ext, "MIN_CHUNKS", data.draw(st.integers(1, 5)))
        # both orientations of the dW product: g channel-major, or a transposed copy
        pixel_major = data.draw(st.booleans())
        monkeypatch.setattr(ext, "dw_pixel_major", lambda cog, CKg: pixel_major)
        dtype = data.draw(st.sampled_from([np.float64, np.float32]))
        need_dx, need_dw = data.draw(st.sampled_from([(True, True), (True, False),
                                                      (False, True)]))
        rng = np.random.default_rng(seed)
        x = _rand(rng, (N, cin) + spatial)
        W = _rand(rng, (cout, cin // groups) + ks)
        bias = _rand(rng, (cout,))
        y, back = loop_conv(x, W, bias, ss, ps, ds, groups)
        if y is None:
            return
        G = _rand(rng, y.shape)
        pads = tuple((p, p) for p in ps)
        args = (ks, ss, pads, ds, y.shape[2:], groups)
        xs, Ws, Gs, bs = (a.astype(dtype) for a in (x, W, G, bias))
        W2 = Ws.reshape(cout, -1)
        runs = []
        for threads in (1, 2):
            refdl.set_num_threads(threads)
            yc = ext.conv_forward(xs, W2, bs, *args)
            dx, dW = ext.conv_backward(xs, W2, Gs, *args, need_dx=need_dx, need_dw=need_dw)
            runs.append((yc, dx, dW))
        refdl.set_num_threads(before)
        (yc, dx, dW), again = runs
        for u, v in zip(runs[0], again):
            assert (u is None and v is None) or np.array_equal(u, v), "1 vs 2 threads"
        rdx, rdW, _ = back(G)
        tol = dict(rtol=1e-11, atol=1e-12) if dtype == np.float64 else \
            dict(rtol=2e-4, atol=2e-4 * max(1.0, float(np.abs(rdW).max(initial=0))))
        np.testing.assert_allclose(yc, y, **tol)
        assert (dx is None) == (not need_dx) and (dW is None) == (not need_dw)
        if need_dx:
            np.testing.assert_allclose(dx, rdx, **tol)
        if need_dw:
            np.testing.assert_allclose(dW.reshape(W.shape), rdW, **tol)
        TRIED[("conv_forward / conv_backward", build, "valid")] += 1
    try:
        run()
    finally:
        refdl.set_num_threads(before)


def test_fuzz_conv_plane_kernel(kernels, monkeypatch):
    # refdl.ext.conv_forward's plane path for 3-D convolutions with depth stride 1
    # (conv_forward_planes: each input plane's 2-D columns built once per image, in a
    # ring, and the KD products of an output plane accumulated) against the loops:
    # depth padding wider than the input (output planes whose every tap is padding),
    # depth dilation (a ring of (KD-1)*dd + 1 slots), strides and dilation in H and W,
    # with and without bias, float64 and float32; the same bits at 1 and 2 threads
    build, n = kernels
    before = refdl.get_num_threads()
    planes = _Counting(ext._K)
    monkeypatch.setattr(ext, "_K", planes)

    @_settings(n)
    @given(st.data())
    def run(data):
        D = data.draw(st.integers(1, 5))
        H, W = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
        KD = data.draw(st.integers(2, 3))
        KH, KW = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
        ds = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2)),
              data.draw(st.integers(1, 2)))
        ss = (1, data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
        ps = (data.draw(st.integers(0, 4)), data.draw(st.integers(0, 2)),
              data.draw(st.integers(0, 2)))
        N, cin, cout = (data.draw(st.integers(4, 6)), data.draw(st.integers(1, 3)),
                        data.draw(st.integers(1, 3)))
        dtype = data.draw(st.sampled_from([np.float64, np.float32]))
        rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
        x = _rand(rng, (N, cin, D, H, W))
        Wt = _rand(rng, (cout, cin, KD, KH, KW))
        bias = _rand(rng, (cout,)) if data.draw(st.booleans()) else None
        y, _ = loop_conv(x, Wt, np.zeros(cout) if bias is None else bias, ss, ps, ds, 1)
        if y is None or min(y.shape[2:]) < 1 or y.shape[2] < 2:
            return
        args = ((KD, KH, KW), ss, tuple((p, p) for p in ps), ds, y.shape[2:], 1)
        xs, W2 = x.astype(dtype), Wt.reshape(cout, -1).astype(dtype)
        bs = None if bias is None else bias.astype(dtype)
        runs = []
        for threads in (1, 2):
            refdl.set_num_threads(threads)
            planes.calls = 0
            runs.append(ext.conv_forward(xs, W2, bs, *args))
            assert planes.calls == 1, "the plane path did not run"
        refdl.set_num_threads(before)
        assert np.array_equal(runs[0], runs[1]), "1 vs 2 threads"
        tol = dict(rtol=1e-11, atol=1e-12) if dtype == np.float64 else \
            dict(rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(runs[0], y, **tol)
        TRIED[("conv_forward_planes", build, "valid")] += 1
    try:
        run()
    finally:
        refdl.set_num_threads(before)


class _Counting:
    """A kernels module whose function ``name`` counts its calls (the rest passes
    through)."""

    def __init__(self, mod, name="conv_forward_planes"):
        self._mod, self._name, self.calls = mod, name, 0

    def __getattr__(self, name):
        fn = getattr(self._mod, name)
        if name != self._name:
            return fn

        def counted(*a):
            self.calls += 1
            return fn(*a)
        return counted


def test_fuzz_conv_direct_kernel(kernels, monkeypatch):
    # refdl.ext.conv_forward's direct convolution (conv_forward_direct, float32: each
    # output a chain of fused multiply-adds over its taps, no columns) against the loops:
    # 1-D to 3-D, padding wider than the input (a zero-padded copy per image) or none (x
    # read in place), strides, dilation, groups, output channels that fill no whole block
    # of lanes, with and without bias, batches cut into pieces of output rows (MIN_CHUNKS
    # above the batch). The error stays within the bound of a recursive sum of K terms
    # with one rounding each, (K + 1) u sum |w x| + |b| (u = 2**-24); the bits are the same
    # at 1 and 2 threads and with every kernel the build runs (portable, AVX2, AVX-512)
    build, n = kernels
    before = refdl.get_num_threads()
    direct = _Counting(ext._K, "conv_forward_direct")
    monkeypatch.setattr(ext, "_K", direct)
    isas = direct.direct_isas()

    @_settings(n)
    @given(st.data())
    def run(data):
        r, spatial, ks, ss, ps, ds, groups, cin, cout, N, seed = _conv_case(
            data, groups=3, cin=3, cout=20, batch=(1, 5))
        monkeypatch.setattr(ext, "MIN_CHUNKS", data.draw(st.integers(1, 12)))
        rng = np.random.default_rng(seed)
        x = _rand(rng, (N, cin) + spatial).astype(np.float32)
        Wt = _rand(rng, (cout, cin // groups) + ks).astype(np.float32)
        bias = _rand(rng, (cout,)).astype(np.float32) if data.draw(st.booleans()) else None
        b64 = np.zeros(cout) if bias is None else bias.astype(np.float64)
        y, _ = loop_conv(x.astype(np.float64), Wt.astype(np.float64), b64, ss, ps, ds,
                         groups)
        if y is None:
            return
        bound, _ = loop_conv(np.abs(x.astype(np.float64)), np.abs(Wt.astype(np.float64)),
                             np.zeros(cout), ss, ps, ds, groups)
        K = (cin // groups) * math.prod(ks)
        args = (ks, ss, tuple((p, p) for p in ps), ds, y.shape[2:], groups)
        W2 = Wt.reshape(cout, -1)
        runs = []
        for isa in isas:
            direct.set_direct_isa(isa)
            for threads in (1, 2):
                refdl.set_num_threads(threads)
                direct.calls = 0
                runs.append(ext.conv_forward(x, W2, bias, *args, direct=True))
                assert direct.calls == 1, "the direct path did not run"
        direct.set_direct_isa(None)
        refdl.set_num_threads(before)
        for other in runs[1:]:
            assert other.tobytes() == runs[0].tobytes(), "threads or kernels differ"
        err = np.abs(runs[0].astype(np.float64) - y)
        limit = (K + 1) * 2.0 ** -24 * bound + 2.0 ** -24 * np.abs(y) + 1e-30
        assert (err <= limit).all(), float((err / limit).max())
        # the NumPy path (its im2col, then one float32 product per group), itself within
        # the same bound of the exact sums: the two differ by at most twice the bound
        with ext.numpy_path(True):
            cols = ext.im2col(x, ks, ss, args[2], ds, y.shape[2:])
        L = math.prod(y.shape[2:])
        cg = cols.reshape(groups, K, N, L)
        yn = np.einsum("gok,gknl->ngol", W2.reshape(groups, cout // groups, K), cg)
        yn = yn.reshape(y.shape)
        if bias is not None:
            yn = yn + bias.reshape((-1,) + (1,) * r)
        assert (np.abs(runs[0].astype(np.float64) - yn) <= 2 * limit).all()
        TRIED[("conv_forward_direct", build, "valid")] += 1
    try:
        run()
    finally:
        direct.set_direct_isa(None)
        refdl.set_num_threads(before)


def test_fuzz_conv_transpose_layers(kernels):
    build, n = kernels

    @_settings(n)
    @given(st.data())
    def run(data):
        r, spatial, ks, ss, ps, ds, groups, cin, cout, N, seed = _conv_case(data)
        # padding mostly below the reach of the output (a wider one empties it: refused)
        ps = tuple(min(p, (d * (k - 1) + s * (L - 1)) // 2 + 1)
                   for p, d, k, s, L in zip(ps, ds, ks, ss, spatial))
        ops = tuple(data.draw(st.integers(0, max(s, d) - 1)) for s, d in zip(ss, ds))
        rng = np.random.default_rng(seed)
        x = _rand(rng, (N, cin) + spatial)
        W = _rand(rng, (cin, cout // groups) + ks)
        bias = _rand(rng, (cout,))
        Gs = {}

        def G(shape):
            return Gs.setdefault(shape, _rand(rng, shape))

        def make():
            m = CONVT[r](cin, cout, ks, stride=ss, padding=ps, output_padding=ops,
                         dilation=ds, groups=groups).to(np.float64)
            m.weight.data[...] = W
            m.bias.data[...] = bias
            return m
        a, b = _layer_both(make, x, G)
        y, back = loop_conv_transpose(x, W, bias, ss, ps, ops, ds, groups)
        if y is None:
            assert isinstance(a, ValueError)
            TRIED[(f"ConvTranspose{r}d", build, "refused")] += 1
            return
        ref = (y,) + back(G(y.shape))
        _close(a, ref, f"ConvTranspose{r}d compiled vs loops (y, dx, dW, db)")
        _close(b, ref, f"ConvTranspose{r}d numpy vs loops (y, dx, dW, db)")
        TRIED[(f"ConvTranspose{r}d", build, "valid")] += 1
    run()


def test_fuzz_pool_layers(kernels):
    build, n = kernels

    @_settings(n)
    @given(st.data())
    def run(data):
        kind = data.draw(st.sampled_from(["max", "avg"]))
        r, spatial, ks, ss, ps, ds, ceil_mode, N, C, seed, out = _pool_case(
            data, dilation=kind == "max")
        rng = np.random.default_rng(seed)
        x = _rand(rng, (N, C) + spatial)
        Gs = {}

        def G(shape):
            return Gs.setdefault(shape, _rand(rng, shape))
        if kind == "max":
            def make():
                return MAXP[r](ks, ss, ps, ds, ceil_mode=ceil_mode)
            ref = loop_max_pool(x, ks, ss, ps, ds, out) if min(out) >= 1 else None
            name = f"MaxPool{r}d"
            if ref is not None:
                y, idx = ref
                ref = (y, loop_max_pool_backward(G(y.shape), idx, x.shape))
        else:
            include_pad = data.draw(st.booleans())
            # AvgPool1d has no divisor_override (as in PyTorch)
            override = data.draw(st.sampled_from([None, None, 2])) if r > 1 else None

            def make():
                extra = {"divisor_override": override} if r > 1 else {}
                return AVGP[r](ks, ss, ps, ceil_mode=ceil_mode,
                               count_include_pad=include_pad, **extra)
            name = f"AvgPool{r}d"
            ref = None
            if min(out) >= 1:
                y, back = loop_avg_pool(x, ks, ss, ps, out, include_pad, override)
                ref = (y, back(G(y.shape)))
        a, b = _layer_both(make, x, G)
        if ref is None:
            assert isinstance(a, ValueError), (name, spatial, ks, ss, ps, ds, out)
            assert name[:-2] in str(a)                    # the message names the layer
            TRIED[(name, build, "refused")] += 1
            return
        _close(a, ref, f"{name} compiled vs loops (y, dx)")
        _close(b, ref, f"{name} numpy vs loops (y, dx)")
        TRIED[(name, build, "valid")] += 1
    run()


# -- the bounds-checked build really checks -------------------------------------------------

def test_checked_build_raises_instead_of_writing_out_of_bounds(tmp_path_factory):
    if ext.compiled_module() is None:
        pytest.skip("the compiled kernels are not built")
    K = _checked_kernels(str(tmp_path_factory.getbasetemp()))
    assert K.bounds_checked() and not ext.compiled_module().bounds_checked()
    # the segment checks of the raw-pointer loops are on in the checked build only
    with pytest.raises(IndexError, match=r"segment \[3, 4\) outside \[0, 3\)"):
        K.check_segment(3, 4, 3)
    ext.compiled_module().check_segment(3, 4, 3)
    # a max-pool index past the plane: every build skips it (no write outside dx) and
    # counts it; the caller raises
    for mod in (K, ext.compiled_module()):
        g = np.ones((1, 3))
        dx = np.zeros((1, 3))
        bad = np.array([[0, 3, -1]], dtype=np.int64)
        assert mod.maxpool3d_backward(g, bad, dx) == 2
        assert dx.tolist() == [[1.0, 0.0, 0.0]]
    # cols too small for the claimed output: refused once per call, in every build
    x = np.ones((1, 1, 1, 1, 4))
    for mod in (K, ext.compiled_module()):
        with pytest.raises(ValueError, match=r"cols has shape \(2, 2\), expected \(2, 3\)"):
            mod.im2col3d(x, np.zeros((2, 2)), 1, 1, 2, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 3)


# -- the instruction-set builds: ties and NaN, and bit-identical results -------------------

def window_max_reference(x, ks, ss, ds):
    """Max pooling without padding from NumPy alone: the taps of every window in raster
    order (kh, then kw, ...) along a last axis, np.argmax over it. argmax returns the
    first maximum and the first NaN (a NaN counts as the largest), which is PyTorch's
    rule. Returns (y, flat input positions)."""
    spatial = x.shape[2:]
    r = len(spatial)
    reach = tuple(d * (k - 1) + 1 for k, d in zip(ks, ds))
    win = np.lib.stride_tricks.sliding_window_view(x, reach, axis=tuple(range(2, 2 + r)))
    win = win[(Ellipsis,) + tuple(slice(None, None, d) for d in ds)]          # dilation
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in ss)]
    taps = win.reshape(win.shape[:2 + r] + (-1,))
    arg = np.argmax(taps, axis=-1)
    y = np.take_along_axis(taps, arg[..., None], axis=-1)[..., 0]
    # window o, tap k -> input position o*s + k*d, flattened
    out = taps.shape[2:2 + r]
    k_pos = np.unravel_index(arg, ks)
    o_pos = np.indices(out)
    pos = tuple(o[None, None] * s + k * d for o, k, s, d in zip(o_pos, k_pos, ss, ds))
    return y, np.ravel_multi_index(pos, spatial)


def _tie_and_nan_input(rng, shape, dtype, nan_share):
    """Small integers (windows full of ties), some NaN, some infinities."""
    x = rng.integers(-3, 4, size=shape).astype(dtype)
    x[rng.random(shape) < nan_share] = np.nan
    x[rng.random(shape) < 0.01] = np.inf
    x[rng.random(shape) < 0.01] = -np.inf
    return x


@st.composite
def wide_pool_geometry(draw):
    """2-D planes wide enough for the vector loops (rows of 8 and more outputs), and 1-D
    and 3-D ones; dilation > 1 takes the general loop, dilation 1 the interior one."""
    r = draw(st.sampled_from([1, 2, 2, 2, 3]))
    Lmax = {1: 90, 2: 40, 3: 10}[r]
    ks = tuple(draw(st.integers(1, 4)) for _ in range(r))
    ss = tuple(draw(st.integers(1, 3)) for _ in range(r))
    ds = tuple(draw(st.sampled_from([1, 1, 1, 2])) for _ in range(r))
    spatial = tuple(draw(st.integers(d * (k - 1) + 1, Lmax)) for k, d in zip(ks, ds))
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    nan_share = draw(st.sampled_from([0.0, 0.02, 0.3]))
    return (N, C) + spatial, ks, ss, ds, dtype, nan_share, draw(st.integers(0, 2 ** 16))


def window_sum_reference(x, ks, ss):
    """The sum of every window (no padding, no dilation), from NumPy alone."""
    r = len(ks)
    win = np.lib.stride_tricks.sliding_window_view(x, ks, axis=tuple(range(2, 2 + r)))
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in ss)]
    with np.errstate(invalid="ignore"):                 # inf + (-inf) is NaN: expected
        return win.sum(axis=tuple(range(2 + r, 2 + 2 * r)))


@pytest.mark.parametrize("variant", KERNEL_VARIANTS)
def test_pool_ties_and_nan_every_build(variant, monkeypatch):
    """Each build on wide inputs full of ties, NaN and infinities. Max pooling against
    NumPy's argmax: the first maximum of a window wins, a NaN wins and propagates, its
    index is the first NaN's. Average pooling (dilation 1) against NumPy's window sums:
    the values are small integers, so every summation order gives the same exact sum and
    the two must agree to the bit (NaN where a NaN or inf - inf is in the window)."""
    monkeypatch.setattr(ext, "_K", kernel_variant_module(variant))

    @_settings(EXAMPLES)
    @given(wide_pool_geometry())
    def run(case):
        shape, ks, ss, ds, dtype, nan_share, seed = case
        x = _tie_and_nan_input(np.random.default_rng(seed), shape, dtype, nan_share)
        y_ref, i_ref = window_max_reference(x, ks, ss, ds)
        with ext.numpy_path(False):
            y, idx = ext.max_pool_forward(x, ks, ss, (0,) * len(ks), ds, y_ref.shape[2:])
        np.testing.assert_array_equal(y, y_ref)                    # NaN where NaN
        np.testing.assert_array_equal(idx, i_ref)
        if any(d != 1 for d in ds):                  # average pooling has no dilation
            return
        sums = window_sum_reference(x, ks, ss)
        for override in (None, 3):
            div = override or math.prod(ks)
            with ext.numpy_path(False):
                a = ext.avg_pool_forward(x, ks, ss, (0,) * len(ks), sums.shape[2:], True,
                                         override)
            np.testing.assert_array_equal(a, (sums / dtype(div)).astype(dtype))
    run()


def _all_kernels(K, case):
    """Every kernel of the build K on one random case (inputs with ties, NaN, infinities;
    padding, dilation, ceil-mode overhang): the list of its outputs."""
    shape, ks, ss, ds, dtype, nan_share, seed = case
    rng = np.random.default_rng(seed)
    r = len(ks)
    x = _tie_and_nan_input(rng, shape, dtype, nan_share)
    ps = tuple(int(rng.integers(0, k // 2 + 1)) for k in ks)
    ceil = bool(rng.integers(0, 2))
    out = tuple(torch_pool_out(L, k, s, p, d, ceil)
                for L, k, s, p, d in zip(shape[2:], ks, ss, ps, ds))
    aout = tuple(torch_pool_out(L, k, s, p, 1, ceil)
                 for L, k, s, p in zip(shape[2:], ks, ss, ps))
    res = []
    with ext.numpy_path(False):
        saved, ext._K = ext._K, K
        try:
            cols = ext.im2col(x, ks, ss, tuple((p, p) for p in ps), ds)
            res += [cols, ext.col2im(_tie_and_nan_input(rng, cols.shape, dtype, nan_share),
                                     shape, ks, ss, tuple((p, p) for p in ps), ds)]
            try:
                y, idx = ext.max_pool_forward(x, ks, ss, ps, ds, out)
                g = rng.standard_normal(y.shape).astype(dtype)
                res += [y, idx, ext.max_pool_backward(g, idx, shape)]
            except ValueError:              # a window in the padding: refused alike
                res.append("refused")
            if dtype == np.float32:         # the direct convolution: float32 only
                c_out = int(rng.integers(1, 20))
                # weights that are not small integers, so that products round (the
                # builds must round them alike: one fused multiply-add per tap), with
                # NaN and infinities from the input and some of their own
                w2 = (rng.standard_normal((c_out, shape[1] * math.prod(ks))) / 3 +
                      _tie_and_nan_input(rng, (c_out, shape[1] * math.prod(ks)), np.float64,
                                         nan_share / 4)).astype(dtype)
                cout_size = tuple((L + 2 * p - d * (k - 1) - 1) // s + 1
                                  for L, k, s, p, d in zip(shape[2:], ks, ss, ps, ds))
                if min(cout_size) >= 1:      # with each kernel the build runs: alike
                    ys = []
                    for isa in K.direct_isas():
                        K.set_direct_isa(isa)
                        try:
                            ys.append(ext.conv_forward(x, w2, w2[:, 0].copy(), ks, ss,
                                                       tuple((p, p) for p in ps), ds,
                                                       cout_size, direct=True))
                        finally:
                            K.set_direct_isa(None)
                    for y in ys[1:]:
                        assert np.array_equal(np.isnan(y), np.isnan(ys[0]))
                        assert y[~np.isnan(y)].tobytes() == ys[0][~np.isnan(y)].tobytes()
                    res.append(ys[0])
            for include, override in ((True, None), (False, None), (True, 3)):
                a = ext.avg_pool_forward(x, ks, ss, ps, aout, include, override)
                g = _tie_and_nan_input(rng, a.shape, dtype, nan_share) / 7
                res += [a, ext.avg_pool_backward(g, shape, ks, ss, ps, aout, include,
                                                 override)]
        finally:
            ext._K = saved
    assert r == len(ks)
    return res


def test_builds_give_bit_identical_results():
    """The AVX2 build (-ffp-contract=off) and the baseline build: the same bits from every
    kernel, on inputs with NaN, ties and infinities (float64 and float32)."""
    builds = [kernel_variant_module(v) for v in KERNEL_VARIANTS]

    @_settings(EXAMPLES)
    @given(wide_pool_geometry())
    def run(case):
        outs = [_all_kernels(K, case) for K in builds]
        for i, (a, b) in enumerate(zip(*outs)):
            if isinstance(a, str) or isinstance(b, str):
                assert a == b, (i, a, b)
                continue
            assert a.dtype == b.dtype and a.shape == b.shape, i
            # NaN at the same places; every other value the same bits (signed zeros
            # included). A NaN's sign bit is not compared: when both operands of an
            # addition are NaN the CPU returns the first one's, and a compiler may swap
            # the operands of a commutative add (IEEE 754 leaves that sign unspecified)
            nan = np.isnan(a) if a.dtype.kind == "f" else np.zeros(a.shape, bool)
            assert np.array_equal(nan, np.isnan(b) if a.dtype.kind == "f" else nan), \
                f"output {i}: NaN at different places in the two builds"
            assert a[~nan].tobytes() == b[~nan].tobytes(), \
                f"output {i} differs between the builds"
    run()


@pytest.mark.parametrize("variant", KERNEL_VARIANTS)
def test_row_wise_pool_loops_equal_the_general_loop(variant, monkeypatch):
    """The interior (row-wise) loops of max and average pooling keep the general loop's
    order of operations: the same bits. One more output row and column, whose windows
    hang over the input's edge (ceil_mode), send the same call down the general loop;
    the outputs both calls share must agree to the bit, and for the backward an upstream
    gradient of 0 at the extra outputs adds exact zeros."""
    monkeypatch.setattr(ext, "_K", kernel_variant_module(variant))

    @_settings(EXAMPLES // 3)
    @given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3),
           st.integers(0, 30), st.integers(0, 30), st.integers(0, 2 ** 16),
           st.sampled_from([np.float32, np.float64]))
    def run(KH, KW, sh, sw, eh, ew, seed, dtype):
        H, W = KH + eh, KW + ew
        OH, OW = (H - KH) // sh + 1, (W - KW) // sw + 1
        if OH * sh > H - 1 or OW * sw > W - 1:
            return                      # no room for an overhanging window
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((2, 2, H, W)).astype(dtype)
        g = rng.standard_normal((2, 2, OH, OW)).astype(dtype)
        g_ext = np.zeros((2, 2, OH + 1, OW + 1), dtype)
        g_ext[:, :, :OH, :OW] = g
        k, s, p = (KH, KW), (sh, sw), (0, 0)
        with ext.numpy_path(False):
            y, idx = ext.max_pool_forward(x, k, s, p, (1, 1), (OH, OW))
            y2, idx2 = ext.max_pool_forward(x, k, s, p, (1, 1), (OH + 1, OW + 1))
            assert y.tobytes() == y2[:, :, :OH, :OW].tobytes()
            assert np.array_equal(idx, idx2[:, :, :OH, :OW])
            for override in (None, 3):
                a = ext.avg_pool_forward(x, k, s, p, (OH, OW), True, override)
                a2 = ext.avg_pool_forward(x, k, s, p, (OH + 1, OW + 1), True, override)
                assert a.tobytes() == a2[:, :, :OH, :OW].tobytes()
                d = ext.avg_pool_backward(g, x.shape, k, s, p, (OH, OW), True, override)
                d2 = ext.avg_pool_backward(g_ext, x.shape, k, s, p, (OH + 1, OW + 1),
                                           True, override)
                assert d.tobytes() == d2.tobytes()
    run()
