"""The compiled kernels of refdl/_ext against the pure-NumPy reference, which path runs,
and the guards in front of the unchecked loops."""
import glob
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import refdl
from refdl import ext, nn
from refdl.functional import conv as F
from refdl.functional import pool_output_size
from refdl.functional import pooling as P

HERE = os.path.dirname(os.path.dirname(os.path.abspath(refdl.__file__)))
built = glob.glob(os.path.join(os.path.dirname(refdl.__file__), "_ext", "_kernels*.so")) + \
    glob.glob(os.path.join(os.path.dirname(refdl.__file__), "_ext", "_kernels*.pyd"))
needs_ext = pytest.mark.skipif(ext.compiled_module() is None,
                               reason="the compiled kernels are not built")

# (input shape, kernel, stride, padding as (before, after) pairs, dilation)
GEOMETRIES = [
    ((2, 3, 9), (4,), (3,), ((1, 1),), (2,)),
    ((1, 2, 5), (5,), (1,), ((0, 0),), (1,)),
    ((2, 3, 7, 6), (3, 2), (2, 1), ((1, 2), (0, 1)), (1, 2)),       # non-square kernel
    ((3, 2, 5, 8), (2, 5), (1, 3), ((1, 1), (2, 2)), (2, 1)),       # CS231n's bug: kH != kW
    ((1, 1, 4, 4), (4, 4), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    ((2, 2, 3, 11), (1, 3), (1, 1), ((0, 0), (1, 1)), (1, 1)),
    ((1, 2, 4, 5, 6), (2, 3, 1), (1, 2, 3), ((1, 0), (2, 1), (0, 0)), (2, 1, 1)),
    ((2, 1, 3, 3, 3), (3, 3, 3), (1, 1, 1), ((1, 1), (1, 1), (1, 1)), (1, 1, 1)),
]
TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-6)}


def compiled_and_reference(fn, *args):
    with ext.numpy_path(False):
        a = fn(*args)
    with ext.numpy_path(True):
        b = fn(*args)
    return a, b


@needs_ext
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,k,s,p,d", GEOMETRIES)
def test_im2col_col2im_compiled_equal_reference(shape, k, s, p, d, dtype, kernel_build):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    a, b = compiled_and_reference(ext.im2col, x, k, s, p, d)
    assert a.dtype == b.dtype == dtype
    np.testing.assert_array_equal(a, b)            # a copy: bit for bit
    np.testing.assert_array_equal(b, F.im2col(x, k, s, p, d))
    M = rng.standard_normal(a.shape).astype(dtype)
    a, b = compiled_and_reference(ext.col2im, M, shape, k, s, p, d)
    assert a.dtype == dtype
    np.testing.assert_allclose(a, b, **TOL[dtype])
    # col2im is the adjoint of im2col: <im2col(x), M> = <x, col2im(M)>
    x64, M64 = x.astype(np.float64), M.astype(np.float64)
    for use_numpy in (False, True):
        with ext.numpy_path(use_numpy):
            lhs = np.sum(ext.im2col(x64, k, s, p, d) * M64)
            rhs = np.sum(x64 * ext.col2im(M64, shape, k, s, p, d))
        assert abs(lhs - rhs) < 1e-12 * max(1, abs(lhs))


POOLS = [
    ((2, 3, 9), (3,), (2,), (1,), (2,), True),
    ((2, 3, 7, 6), (3, 2), (2, 1), (1, 1), (1, 2), False),
    ((1, 2, 5, 8), (2, 5), (2, 3), (1, 2), (1, 1), True),
    ((2, 2, 6, 6), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((1, 2, 4, 5, 6), (2, 3, 1), (1, 2, 3), (1, 1, 0), (2, 1, 1), True),
]


@needs_ext
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,k,s,p,d,ceil", POOLS)
def test_pooling_compiled_equal_reference(shape, k, s, p, d, ceil, dtype, kernel_build):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    out = pool_output_size(shape[2:], k, s, p, d, ceil)
    (ya, ia), (yb, ib) = compiled_and_reference(ext.max_pool_forward, x, k, s, p, d, out)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(ia, ib)
    g = rng.standard_normal(ya.shape).astype(dtype)
    a, b = compiled_and_reference(ext.max_pool_backward, g, ia, shape)
    np.testing.assert_allclose(a, b, **TOL[dtype])
    aout = pool_output_size(shape[2:], k, s, p, 1, ceil)
    for include in (True, False):
        for override in (None, 5):
            a, b = compiled_and_reference(ext.avg_pool_forward, x, k, s, p, aout, include,
                                          override)
            np.testing.assert_allclose(a, b, **TOL[dtype])
            g = rng.standard_normal(a.shape).astype(dtype)
            a, b = compiled_and_reference(ext.avg_pool_backward, g, shape, k, s, p, aout,
                                          include, override)
            np.testing.assert_allclose(a, b, **TOL[dtype])
    np.testing.assert_array_equal(yb, P.max_pool_forward(x, k, s, p, d, out)[0])


@needs_ext
def test_layers_call_the_compiled_kernels_when_available(monkeypatch, kernel_build):
    calls = []
    K = ext.compiled_module()
    for name in ("conv_forward", "conv_backward", "maxpool3d_forward",
                 "maxpool3d_backward"):
        fn = getattr(K, name)
        monkeypatch.setattr(K, name, lambda *a, _f=fn, _n=name: (calls.append(_n), _f(*a))[1])
    with ext.numpy_path(False):
        assert ext.available() and ext.backend() == "cython"
        net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2))
        y = net(np.ones((1, 1, 6, 6), np.float32))
        net.backward(np.ones_like(y))
    assert calls == ["conv_forward", "maxpool3d_forward", "maxpool3d_backward",
                     "conv_backward"]
    calls.clear()
    with ext.numpy_path(True):
        assert not ext.available() and ext.backend() == "numpy"
        y = net(np.ones((1, 1, 6, 6), np.float32))
        net.backward(np.ones_like(y))
    assert calls == []


def test_the_built_extension_is_the_one_in_use():
    """If a compiled kernel file sits in refdl/_ext it must import and be used (a broken
    build must not fall back silently), unless REFDL_DISABLE_EXT asks for NumPy."""
    disabled = os.environ.get("REFDL_DISABLE_EXT", "") in ("1", "true", "True", "yes")
    if built:
        assert ext.compiled_module() is not None, ext.import_error
        assert ext.available() is (not disabled)
    else:
        assert ext.compiled_module() is None and not ext.available()


def test_an_installed_refdl_has_the_compiled_kernels():
    """`pip install -e .` (CI, README) on a machine with a C compiler must build and load
    the kernels. (Skipped when refdl is imported from a source tree that was never
    installed, and when no C compiler is available, where the NumPy path is expected.)"""
    try:
        dist = importlib.metadata.distribution("refdl")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("refdl is not pip-installed here (imported from the source tree)")
    files = [str(f) for f in (dist.files or [])]
    editable_here = any("refdl" in f for f in files)
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not (shutil.which(cc) or shutil.which("cc")) or not editable_here:
        pytest.skip("no C compiler: the NumPy path is the expected one")
    assert ext.compiled_module() is not None, f"kernels not built: {ext.import_error}"


def test_disable_env_var_forces_numpy():
    code = "import refdl.ext as e; print(e.available(), e.backend())"
    env = dict(os.environ, REFDL_DISABLE_EXT="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=HERE,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "numpy"]


def test_runtime_switches():
    saved = ext.available()
    ext.use_numpy()
    assert not ext.available()
    assert ext.use_compiled() is (ext.compiled_module() is not None)
    with ext.numpy_path():
        assert ext.backend() == "numpy"
    if not saved:
        ext.use_numpy()


@pytest.mark.parametrize("use_numpy", [False, True])
def test_kernel_guards_refuse_bad_calls(use_numpy):
    """Bad shapes, dtypes and indices never reach the unchecked loops."""
    x = np.zeros((1, 2, 4, 4))
    with ext.numpy_path(use_numpy):
        with pytest.raises(TypeError, match="float32 or float64"):
            ext.im2col(x.astype(np.int32), 2)
        with pytest.raises(TypeError, match="float32 or float64"):
            ext.im2col(x.astype(np.float16), 2)
        with pytest.raises(ValueError, match="expected x of shape"):
            ext.im2col(np.zeros((4, 4)), 2)
        with pytest.raises(ValueError, match="do not fit an input"):
            ext.im2col(x, 2, out_size=(9, 9))
        with pytest.raises(ValueError, match="kernel_size must be 2 positive"):
            ext.im2col(x, (0, 2))
        with pytest.raises(ValueError, match="padding must be 2 non-negative"):
            ext.im2col(x, 2, padding=-1)
        with pytest.raises(ValueError, match=r"expected cols of shape \(8, 9\)"):
            ext.col2im(np.zeros((8, 10)), x.shape, 2)
        with pytest.raises(ValueError, match="indices"):
            ext.max_pool_backward(np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2, 2), np.int32),
                                  x.shape)
        if not use_numpy and ext.compiled_module() is not None:
            with pytest.raises(ValueError, match="outside the input"):
                ext.max_pool_backward(np.zeros((1, 2, 2, 2)),
                                      np.full((1, 2, 2, 2), 16, np.int64), x.shape)
        # a non-contiguous input is made contiguous, not misread
        xt = np.random.default_rng(0).standard_normal((1, 4, 2, 4)).transpose(0, 2, 1, 3)
        np.testing.assert_array_equal(ext.im2col(xt, 2), F.im2col(xt, 2))


def test_shape_memo_validates_every_new_key_and_never_stores_an_error():
    """The layers' geometry checks are memoised (ext.shape_memo): a key that == would
    confuse with a valid one (True for 1, 2.0 for 2) is checked on its own, an error is
    raised on every call, and changing CHUNK_BYTES changes the tiling."""
    calls = []

    @ext.shape_memo
    def f(k):
        calls.append(k)
        if isinstance(k, bool) or (isinstance(k, tuple) and any(isinstance(e, bool)
                                                                for e in k)):
            raise TypeError("no bools")
        return (k,)
    assert f((1, 1)) == ((1, 1),) and f((1, 1)) == ((1, 1),) and len(calls) == 1
    for _ in range(2):
        with pytest.raises(TypeError):
            f((True, True))
    assert len(calls) == 3                      # the error was not stored
    assert f([1, 1]) == ([1, 1],) and len(calls) == 4   # a list is its own key
    assert f(np.zeros(2))[0] is not None and len(calls) == 5   # unhashable: no memo
    # the real geometry checks, through the memo
    x = np.ones((1, 1, 4, 4))
    w2 = np.ones((1, 4))
    ext.conv_forward(x, w2, None, (2, 2), (1, 1), ((0, 0), (0, 0)), (1, 1), None)
    with pytest.raises(TypeError, match="kernel_size must be"):
        ext.conv_forward(x, w2, None, (True, 2), (1, 1), ((0, 0), (0, 0)), (1, 1), None)
    with pytest.raises(TypeError, match="kernel_size must be"):
        ext.max_pool_forward(x, (2.0, 2), (2, 2), (0, 0), (1, 1), (2, 2))
    assert ext.max_pool_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), (2, 2))[0].shape == \
        (1, 1, 2, 2)
    with pytest.raises(TypeError, match="kernel_size must be"):
        ext.max_pool_forward(x, (2.0, 2), (2, 2), (0, 0), (1, 1), (2, 2))


def test_conv_plan_follows_chunk_bytes(monkeypatch):
    """The memoised plan's key holds CHUNK_BYTES and MIN_CHUNKS: change them, and the
    tiling the kernels get changes with them."""
    if ext.compiled_module() is None:
        pytest.skip("the compiled kernels are not built")
    x = np.ones((8, 2, 6, 6))
    w2 = np.ones((3, 18))
    args = ("t", x, w2, (3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), None, 1)
    monkeypatch.setattr(ext, "MIN_CHUNKS", 1)
    per_image = (18 + 3) * 16 * 8
    for chunk_bytes, want in [(1 << 20, (8, 4)), (2 * per_image, (2, 4)),
                              ((18 + 3) * 4 * 8, (1, 1))]:
        monkeypatch.setattr(ext, "CHUNK_BYTES", chunk_bytes)
        assert ext._conv_args(*args)[2] == want


def test_reference_im2col_is_the_textbook_definition():
    """cols[(c, kh, kw), (n, oh, ow)] = x_pad[n, c, oh*s + kh*d, ow*s + kw*d]."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 6))
    k, s, p, d = (2, 3), (2, 1), (1, 2), (1, 2)
    cols = F.im2col(x, k, s, p, d)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (2, 2)))
    OH, OW = F.conv_output_size((5, 6), k, s, p, d)
    c6 = cols.reshape(3, 2, 3, 2, OH, OW)
    for c, kh, kw, n, oh, ow in np.ndindex(*c6.shape):
        assert c6[c, kh, kw, n, oh, ow] == xp[n, c, oh * 2 + kh, ow + kw * 2]


# -- which build of the kernels runs (refdl.ext.kernel_variant) ----------------------------

def _proc_cpuinfo_flags():
    """The CPU's flags as Linux reports them (independent of refdl and NumPy), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def _variant_in_subprocess(**env):
    code = ("import refdl.ext as e; m = e.compiled_module(); "
            "print(e.kernel_variant(), m.__name__ if m else None)")
    env = {k: v for k, v in dict(os.environ, **env).items() if v is not None}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=HERE,
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], out[1]


@needs_ext
def test_the_avx2_build_runs_where_the_cpu_has_avx2_and_fma():
    flags = _proc_cpuinfo_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo to tell what this CPU has")
    want = "avx2" if {"avx2", "fma"} <= flags and "avx2" in ext.built_variants() \
        else "baseline"
    variant, module = _variant_in_subprocess(REFDL_KERNELS=None)
    assert variant == want
    assert module == {"avx2": "refdl._ext._kernels_avx2",
                      "baseline": "refdl._ext._kernels"}[want]


@needs_ext
def test_refdl_kernels_baseline_keeps_the_baseline_build():
    assert _variant_in_subprocess(REFDL_KERNELS="baseline") == \
        ("baseline", "refdl._ext._kernels")


@needs_ext
def test_every_build_this_compiler_makes_is_installed():
    """A missing AVX2 build where the compiler accepts its flags is a build bug."""
    from conftest import compiler_builds
    for variant in ("baseline", "avx2"):
        if compiler_builds(variant):
            assert variant in ext.built_variants(), f"the {variant} build is missing"


def test_cpu_features_fall_back_to_proc_cpuinfo_then_to_nothing(monkeypatch):
    import builtins
    import io
    # NumPy's detection unavailable: /proc/cpuinfo's flags line
    monkeypatch.setitem(sys.modules, "numpy._core._multiarray_umath", None)
    monkeypatch.setitem(sys.modules, "numpy.core._multiarray_umath", None)
    real_open = builtins.open
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse2 avx fma avx2\n\nprocessor\t: 1\n"
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO(cpuinfo)
                        if path == "/proc/cpuinfo" else real_open(path, *a, **k))
    assert ext.cpu_features.__wrapped__() == {"fpu", "sse2", "avx", "fma", "avx2"}
    # neither readable: no features, so only the baseline build may run
    monkeypatch.setattr(builtins, "open", lambda *a, **k: (_ for _ in ()).throw(OSError()))
    assert ext.cpu_features.__wrapped__() == frozenset()
    monkeypatch.setattr(ext, "cpu_features", ext.cpu_features.__wrapped__)
    assert ext.cpu_supports("baseline") and not ext.cpu_supports("avx2")
    with pytest.raises(RuntimeError, match="avx2, fma"):
        ext.load_variant("avx2")


@needs_ext
@pytest.mark.parametrize("cpu,avx2_built,env,want", [
    ({"avx2", "fma"}, True, None, ("avx2", "AVX2+FMA build")),
    ({"avx2", "fma"}, True, "baseline", ("baseline", "REFDL_KERNELS=baseline")),
    ({"avx2"}, True, None, ("baseline", "lacks AVX2/FMA")),
    (set(), True, None, ("baseline", "lacks AVX2/FMA")),
    ({"avx2", "fma"}, False, None, ("baseline", "not installed")),
])
def test_selection(monkeypatch, cpu, avx2_built, env, want):
    """The decision alone, for CPUs and installs other than this one (nothing is loaded
    that this CPU cannot run: load_variant is replaced)."""
    monkeypatch.setattr(ext, "cpu_features", lambda: frozenset(cpu))
    if env is None:
        monkeypatch.delenv("REFDL_KERNELS", raising=False)
    else:
        monkeypatch.setenv("REFDL_KERNELS", env)

    def load(variant):
        assert ext.cpu_supports(variant), f"tried to load {variant} on a CPU without it"
        if variant == "avx2" and not avx2_built:
            raise ImportError("No module named 'refdl._ext._kernels_avx2'")
        return variant
    monkeypatch.setattr(ext, "load_variant", load)
    mod, variant, err, why = ext._select()
    assert (mod, variant, err) == (want[0], want[0], None) and want[1] in why


def test_no_module_bypasses_the_selection():
    """Only refdl.ext (and refdl/threads.py, which sets every loaded build's threads)
    names the kernels' modules: everything else calls ext.compiled_module()."""
    import re
    pat = re.compile(r"_ext\s+import\s+_kernels|_ext\._kernels|import_module\([^)]*_kernels")
    root = os.path.dirname(refdl.__file__)
    offenders = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if name.endswith(".py") and os.path.relpath(path, root) not in ("ext.py",):
                with open(path) as f:
                    if pat.search(f.read()):
                        offenders.append(os.path.relpath(path, root))
    assert offenders == []


def test_version_names_the_build(capsys):
    from refdl.cli import main
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    if ext.available():
        assert f"compiled kernels ({ext.variant_description()})" in " ".join(out.split())
        assert ext.kernel_variant() in ("avx2", "baseline")
    else:
        assert "NumPy reference path" in out


def test_chunked_conv_needs_32_bit_blas_indices(monkeypatch):
    # the chunked kernels call BLAS with 32-bit sizes: a layer whose single output row of
    # columns, or single image's output, reaches 2**31 entries takes the whole-batch path
    monkeypatch.setattr(ext, "available", lambda: True)
    assert ext.conv_chunked(150, 16, (10, 10))
    assert not ext.conv_chunked(150, 16, (0, 10))
    assert ext.conv_chunked(2 ** 20, 2 ** 10, (2 ** 31 // (2 ** 20 + 2 ** 11) - 1,))
    assert not ext.conv_chunked(2 ** 20, 2 ** 10, (2 ** 31 // (2 ** 20 + 2 ** 11) + 1,))
    assert not ext.conv_chunked(9, 2 ** 16, (2 ** 8, 2 ** 7))        # C_out*L = 2**31
    assert ext.conv_chunked(9, 2 ** 16, (2 ** 8, 2 ** 7 - 1))
    monkeypatch.setattr(ext, "available", lambda: False)
    assert not ext.conv_chunked(150, 16, (10, 10))
