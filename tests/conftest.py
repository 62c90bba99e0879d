"""Fixtures shared by the test files.

``single_blas_thread``: many tests multiply many small matrices, where BLAS threads only
contend on a shared machine (measured 3-4x slower under load); a file opts in for every
test with ``pytestmark = pytest.mark.usefixtures("single_blas_thread")`` or one test asks
for the fixture by name.
"""
import contextlib

import pytest


def one_blas_thread():
    """A context manager limiting BLAS to one thread (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                      # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1)


@pytest.fixture
def single_blas_thread():
    with one_blas_thread():
        yield


# -- the builds of the compiled kernels (refdl.ext.VARIANTS) --------------------------------

KERNEL_VARIANTS = ["baseline", "avx2"]


def _setup_constant(name):
    """A literal assigned at the top level of setup.py (its flags and probe program), read
    without running setup.py."""
    import ast
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "setup.py")
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"setup.py defines no {name}")


def compiler_builds(variant):
    """True when this machine's C compiler builds ``variant`` (setup.py's own probe: the
    AVX2 build on x86-64 with a compiler that accepts its flags)."""
    import os
    import platform
    import tempfile
    if variant == "baseline":
        return True
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        from setuptools._distutils.ccompiler import new_compiler
        from setuptools._distutils.sysconfig import customize_compiler
        cc = new_compiler()
        customize_compiler(cc)
        if cc.compiler_type == "msvc":
            return False
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(_setup_constant("AVX2_PROBE"))
            objs = cc.compile([src], output_dir=tmp,
                              extra_postargs=_setup_constant("AVX2_FLAGS"))
            cc.link_executable(objs, os.path.join(tmp, "probe"))
    except Exception:
        return False
    return True


def kernel_variant_module(variant):
    """The compiled module of the build ``variant`` for a test. Skips when no kernels are
    built (the NumPy path is tested), when this CPU cannot run ``variant``, or when the
    compiler here cannot build it; FAILS when ``variant`` is missing although this
    machine's compiler builds it (like the bounds-checked build)."""
    from refdl import ext
    if ext.compiled_module() is None:
        pytest.skip("the compiled kernels are not built (NumPy path only)")
    if not ext.cpu_supports(variant):
        pytest.skip(f"this CPU cannot run the {variant} build of the kernels")
    try:
        return ext.load_variant(variant)
    except ImportError as exc:
        if compiler_builds(variant):
            pytest.fail(f"the {variant} build of the kernels is missing although the "
                        f"compiler here builds it ({exc}); run "
                        f"`python setup.py build_ext --inplace`")
        pytest.skip(f"the compiler here cannot build the {variant} kernels")


@pytest.fixture(params=KERNEL_VARIANTS)
def kernel_build(request, monkeypatch):
    """Runs the test on the compiled path with each build of the kernels in turn
    (refdl.ext calls that build during the test); yields the build's name."""
    from refdl import ext
    mod = kernel_variant_module(request.param)
    monkeypatch.setattr(ext, "_K", mod)
    with ext.numpy_path(False):
        yield request.param
