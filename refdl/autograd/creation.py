"""PyTorch's tensor-creation names on refdl.autograd Tensors (exported as ``refdl.*``).

``refdl.tensor``, ``zeros``, ``ones``, ``arange``, ``tril``, ``triu``, ``cat``, ``stack``,
``randint``, ``randn``, ``rand``, ``multinomial`` and the dtype names ``long``,
``int64``, ``float32``, ``float64``: what a PyTorch script calls as ``torch.*``, so a port
changes only ``torch.`` -> ``refdl.`` (examples/port_gpt.py). Random draws come from the
library-wide generator (``refdl.manual_seed``). Floating defaults are float32, integer
data stays int64 (PyTorch's ``torch.long``).
"""
import numpy as np

from .. import random as _random
from .ops import cat, masked_fill, stack
from .tensor import Tensor

__all__ = ["tensor", "zeros", "ones", "zeros_like", "ones_like", "arange", "tril", "triu",
           "cat", "stack", "randint", "randn", "rand", "multinomial", "long", "int64",
           "float32", "float64"]

long = int64 = np.int64
float32 = np.float32
float64 = np.float64


def _infer(data, dtype):
    if dtype is not None:
        return np.dtype(dtype)
    a = np.asarray(getattr(data, "data", data))
    if isinstance(data, np.ndarray) or isinstance(data, Tensor):
        return a.dtype
    if a.dtype == bool:
        return a.dtype
    if np.issubdtype(a.dtype, np.integer):
        return np.dtype(np.int64)
    return np.dtype(np.float32)          # Python floats: PyTorch's default dtype


def tensor(data, dtype=None, requires_grad=False, device=None):
    """A new Tensor (a copy) with PyTorch's dtype rules: Python ints -> int64, Python
    floats -> float32, NumPy arrays keep their dtype."""
    dt = _infer(data, dtype)
    a = np.array(getattr(data, "data", data), dtype=dt, copy=True)
    if requires_grad and not np.issubdtype(dt, np.floating):
        raise TypeError(f"tensor: only floating-point tensors can require grad, got {dt}")
    return Tensor(a, requires_grad=requires_grad, dtype=dt)


def _size(size):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        return tuple(size[0])
    return tuple(int(s) for s in size)


def zeros(*size, dtype=np.float32, requires_grad=False, device=None):
    return Tensor(np.zeros(_size(size), dtype=dtype), requires_grad=requires_grad,
                  dtype=dtype)


def ones(*size, dtype=np.float32, requires_grad=False, device=None):
    return Tensor(np.ones(_size(size), dtype=dtype), requires_grad=requires_grad, dtype=dtype)


def zeros_like(t, dtype=None):
    a = np.asarray(getattr(t, "data", t))
    return Tensor(np.zeros_like(a, dtype=dtype), dtype=dtype or a.dtype)


def ones_like(t, dtype=None):
    a = np.asarray(getattr(t, "data", t))
    return Tensor(np.ones_like(a, dtype=dtype), dtype=dtype or a.dtype)


def arange(start, end=None, step=1, dtype=None, device=None):
    """PyTorch's ``arange``: int64 when every bound is an int, else float32."""
    if end is None:
        start, end = 0, start
    if dtype is None:
        ints = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
        dtype = np.int64 if ints else np.float32
    return Tensor(np.arange(start, end, step, dtype=dtype), dtype=dtype)


def _tri(input, diagonal, lower):
    a = np.asarray(getattr(input, "data", input))
    n, m = a.shape[-2:]
    keep = np.tri(n, m, diagonal, dtype=bool) if lower else \
        ~np.tri(n, m, diagonal - 1, dtype=bool)
    if isinstance(input, Tensor) and input.requires_grad:
        return masked_fill(input, ~keep, 0)
    return Tensor(np.where(keep, a, np.zeros((), a.dtype)), dtype=a.dtype)


def tril(input, diagonal=0):
    """Entries on and below the ``diagonal``-th diagonal, zeros above (differentiable)."""
    return _tri(input, diagonal, True)


def triu(input, diagonal=0):
    return _tri(input, diagonal, False)


def randint(low, high=None, size=None, dtype=np.int64, generator=None, device=None):
    """``randint(high, size)`` or ``randint(low, high, size)``: uniform integers."""
    if size is None:
        low, high, size = 0, low, high
    size = (size,) if isinstance(size, int) else tuple(size)
    rng = _random.get_rng(generator)
    return Tensor(rng.integers(low, high, size=size).astype(dtype), dtype=dtype)


def randn(*size, dtype=np.float32, requires_grad=False, generator=None, device=None):
    rng = _random.get_rng(generator)
    return Tensor(rng.standard_normal(_size(size)).astype(dtype),
                  requires_grad=requires_grad, dtype=dtype)


def rand(*size, dtype=np.float32, requires_grad=False, generator=None, device=None):
    rng = _random.get_rng(generator)
    return Tensor(rng.random(_size(size)).astype(dtype), requires_grad=requires_grad,
                  dtype=dtype)


def multinomial(input, num_samples, replacement=False, generator=None):
    """Draw category indices from each row of non-negative weights ``input`` (.., C):
    int64 (.., num_samples). Without replacement only ``num_samples=1`` is offered."""
    p = np.asarray(getattr(input, "data", input), dtype=np.float64)
    if p.ndim not in (1, 2):
        raise ValueError(f"multinomial: expected 1-D or 2-D weights, got shape {p.shape}")
    if num_samples > 1 and not replacement:
        raise NotImplementedError("multinomial: num_samples > 1 needs replacement=True")
    if (p < 0).any() or not np.isfinite(p).all():
        raise ValueError("multinomial: weights must be finite and non-negative")
    rows = p.reshape(-1, p.shape[-1])
    total = rows.sum(axis=1, keepdims=True)
    if (total <= 0).any():
        raise ValueError("multinomial: every row needs a positive sum")
    cdf = np.cumsum(rows / total, axis=1)
    u = _random.get_rng(generator).random((rows.shape[0], num_samples))
    idx = np.minimum((u[:, :, None] >= cdf[:, None, :]).sum(axis=2), rows.shape[1] - 1)
    idx = idx.reshape(p.shape[:-1] + (num_samples,)).astype(np.int64)
    return Tensor(idx, dtype=np.int64)
