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
