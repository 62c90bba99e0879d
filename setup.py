"""Build script: the Python package plus the optional Cython kernels of refdl/_ext/.

The kernels are optional by design: when Cython, NumPy headers or a C compiler are missing
(or the compilation fails) the build prints one warning and refdl runs on its pure-NumPy
reference path (``refdl.ext.available()`` is then False). OpenMP is used when a test
program compiles and links with ``-fopenmp``; otherwise the kernels run serially.

Debug build: ``REFDL_BOUNDSCHECK=1 python setup.py build_ext --inplace`` compiles the same
kernels with Cython's boundscheck and wraparound checks on and the macro REFDL_BOUNDSCHECK
defined (explicit checks of every raw-pointer row segment): an index outside an array
raises IndexError instead of touching memory. ``refdl.ext.compiled_module()
.bounds_checked()`` tells which build is loaded; tests/test_fuzz_kernels.py builds this
variant in a temporary directory and runs the fuzz cases through it.
"""
import os
import sys
import tempfile

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

WARNING = ("refdl: the compiled kernels were not built ({}); "
           "refdl will use its pure-NumPy path")


def _warn(reason):
    print("WARNING: " + WARNING.format(reason), file=sys.stderr)


def _compiles(compiler, code, extra_compile=(), extra_link=()):
    """True when ``code`` compiles and links with the given flags."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=list(extra_compile))
            compiler.link_executable(objs, os.path.join(tmp, "probe"),
                                     extra_postargs=list(extra_link))
        except Exception:
            return False
    return True


def _new_compiler():
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler
    compiler = new_compiler()
    customize_compiler(compiler)
    return compiler


OPENMP_PROBE = """
#include <omp.h>
int main(void) { int n = 0;
#pragma omp parallel reduction(+:n)
  n += 1;
  return omp_get_max_threads() > 0 && n > 0 ? 0 : 1; }
"""


def openmp_flags(compiler):
    """(compile flags, link flags) for OpenMP, or ((), ()) when the compiler lacks it."""
    if os.environ.get("REFDL_NO_OPENMP"):
        return [], []
    if compiler.compiler_type == "msvc":
        return ["/openmp"], []
    if _compiles(compiler, OPENMP_PROBE, ["-fopenmp"], ["-fopenmp"]):
        return ["-fopenmp"], ["-fopenmp"]
    return [], []


# the x86-64 variant's flags; -ffp-contract=off: no fused multiply-adds, so the variant
# rounds exactly like the baseline build
AVX2_FLAGS = ["-mavx2", "-mfma", "-ffp-contract=off"]
# extension name -> the instruction-set flags the compiler must accept to build it
ISA_VARIANTS = {"refdl._ext._kernels_avx2": AVX2_FLAGS}

AVX2_PROBE = """
#include <immintrin.h>
int main(void) {
  __m256 a = _mm256_set1_ps(1.0f);
  a = _mm256_fmadd_ps(a, a, a);
  return (int)_mm256_cvtss_f32(a) == 2 ? 0 : 1; }
"""


def isa_flags_work(compiler, flags):
    """True when ``compiler`` compiles and links an AVX2/FMA program with ``flags``."""
    if compiler.compiler_type == "msvc":       # other flag syntax: baseline build only
        return False
    return _compiles(compiler, AVX2_PROBE, flags)


class OptionalBuildExt(build_ext):
    """build_ext that adds OpenMP flags when they work, drops an instruction-set variant
    the compiler cannot build, and never fails the install."""

    def _drop_unbuildable_variants(self):
        keep = []
        for ext in self.extensions:
            flags = ISA_VARIANTS.get(ext.name)
            if flags and not isa_flags_work(self.compiler, flags):
                print(f"refdl: {ext.name} not built (the compiler does not accept "
                      f"{' '.join(flags)}); the baseline kernels run everywhere",
                      file=sys.stderr)
                continue
            keep.append(ext)
        self.extensions = keep

    def build_extensions(self):
        try:
            if not _compiles(self.compiler, "int main(void) { return 0; }\n"):
                _warn("no working C compiler")
                self.extensions = []
                return
            self._drop_unbuildable_variants()
            cflags, lflags = openmp_flags(self.compiler)
            for ext in self.extensions:
                ext.extra_compile_args = list(ext.extra_compile_args or []) + cflags
                ext.extra_link_args = list(ext.extra_link_args or []) + lflags
            print(f"refdl: building the compiled kernels "
                  f"({'with' if cflags else 'without'} OpenMP)", file=sys.stderr)
            super().build_extensions()
        except Exception as exc:    # a failed kernel build must not fail the install
            _warn(f"{type(exc).__name__}: {exc}".splitlines()[0])

    def run(self):
        try:
            super().run()
        except Exception as exc:
            _warn(f"{type(exc).__name__}: {exc}".splitlines()[0])


def _env_flag(name):
    return os.environ.get(name, "").strip() not in ("", "0", "false", "False", "no")


def _write_copy(text, out_dir, name):
    os.makedirs(out_dir, exist_ok=True)
    dst = os.path.join(out_dir, name)
    # rewrite only when it changed: cythonize then skips an up-to-date copy
    try:
        with open(dst) as f:
            if f.read() == text:
                return dst
    except OSError:
        pass
    with open(dst, "w") as f:
        f.write(text)
    return dst


def _checked_source(src):
    """A copy of ``src`` under build/ whose header turns Cython's bounds checks on.

    The .pyx header says boundscheck=False, wraparound=False, and a file's header wins over
    cythonize's compiler_directives, so the debug build compiles a rewritten copy.
    """
    with open(src) as f:
        text = f.read()
    header = "boundscheck=False, wraparound=False"
    if header not in text.split("\n", 1)[0]:
        raise RuntimeError(f"{src}: first line must set {header}")
    text = text.replace(header, "boundscheck=True, wraparound=True", 1)
    return _write_copy(text, os.path.join("build", "refdl_boundscheck"),
                       os.path.basename(src))


def _variant_source(src, suffix):
    """An unchanged copy of ``src`` under build/ named ``<stem><suffix>.pyx``: Cython names
    the module's init function after the file, so the variant needs its own file name."""
    with open(src) as f:
        text = f.read()
    stem = os.path.splitext(os.path.basename(src))[0]
    return _write_copy(text, os.path.join("build", "refdl" + suffix), stem + suffix + ".pyx")


def _x86_64():
    import platform
    return platform.machine().lower() in ("x86_64", "amd64")


def ext_modules():
    """The Cython extensions, or [] (with a one-line warning) when they cannot be built."""
    if os.environ.get("REFDL_NO_EXT"):
        _warn("REFDL_NO_EXT is set")
        return []
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError as exc:
        _warn(f"{exc.name or 'Cython/numpy'} is not installed")
        return []
    from setuptools import Extension
    src = "refdl/_ext/_kernels.pyx"
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    opt = ["-O3"] if sys.platform != "win32" else ["/O2"]
    if _env_flag("REFDL_BOUNDSCHECK"):
        print("refdl: debug build of the kernels with bounds checks (REFDL_BOUNDSCHECK)",
              file=sys.stderr)
        src = _checked_source(src)
        macros.append(("REFDL_BOUNDSCHECK", "1"))
        opt = ["-O1"] if sys.platform != "win32" else ["/O1"]
    ext = Extension(
        "refdl._ext._kernels",
        [src],
        include_dirs=[numpy.get_include()],
        define_macros=macros,
        extra_compile_args=opt,
        optional=True,
    )
    exts = [ext]
    # the same kernels for x86-64 CPUs with AVX2 and FMA (not for the debug build);
    # OptionalBuildExt drops it when the compiler does not accept the flags
    if _x86_64() and not _env_flag("REFDL_BOUNDSCHECK"):
        avx2 = Extension(
            "refdl._ext._kernels_avx2",
            [_variant_source(src, "_avx2")],
            include_dirs=[numpy.get_include()],
            define_macros=macros,
            extra_compile_args=opt + ISA_VARIANTS["refdl._ext._kernels_avx2"],
            optional=True,
        )
        exts.append(avx2)
    try:
        return cythonize(exts, language_level=3, quiet=True)
    except Exception as exc:
        _warn(f"cythonize failed: {exc}".splitlines()[0])
        return []


# Files outside the package that the installed `refdl` command reads: `refdl exam` the
# verdicts of docs/exam.md, `refdl explain` the derivation pages, `refdl bench` the
# benchmark scripts. The wheel carries copies under refdl/_shipped/ (a source checkout or
# an editable install reads the originals).
SHIPPED = [("docs", "exam.md"), ("docs/derivations", "*.md"), ("benchmarks", "*.py")]


class BuildPyWithShipped(build_py):
    """build_py that also copies SHIPPED into <build>/refdl/_shipped/."""

    def run(self):
        super().run()
        import glob
        import shutil
        here = os.path.dirname(os.path.abspath(__file__))
        for folder, pattern in SHIPPED:
            dest = os.path.join(self.build_lib, "refdl", "_shipped", folder)
            for src in sorted(glob.glob(os.path.join(here, folder, pattern))):
                os.makedirs(dest, exist_ok=True)
                shutil.copy2(src, dest)


setup(ext_modules=ext_modules(),
      cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPyWithShipped})
