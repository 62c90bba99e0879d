"""Build script: the Python package plus the optional Cython kernels of refdl/_ext/.

The kernels are optional by design: when Cython, NumPy headers or a C compiler are missing
the build prints one warning and refdl runs on its pure-NumPy reference path.
"""
from setuptools import setup


def ext_modules():
    """The compiled extensions (filled in by the convolution work); [] means NumPy only."""
    return []


setup(ext_modules=ext_modules())
