r"""Tensor's differentiable methods: ``x + y``, ``x @ w``, ``x[i]``, ``x.sum()``, ...

Each method builds its node with an op of :mod:`refdl.autograd.ops`. They are written in
the class body below, exactly as they would be in ``Tensor``'s, and :func:`_install` copies
them onto :class:`~refdl.autograd.tensor.Tensor` when ``refdl.autograd`` is imported.

Why here and not in tensor.py: the ops need ``Tensor`` (an op's output is a Tensor, its
gradient is written with Tensors) and Tensor's operators need the ops. With the methods in
tensor.py the two modules would import each other; with them here the imports run one way,
tensor <- ops <- methods, and ``refdl/autograd/__init__.py`` imports this module before
anything can build a Tensor. The engine itself (tensor.py) sums adjoints with ``+`` at run
time only, by which time the methods are installed.
"""
import numpy as np

from . import ops
from .tensor import Tensor

__all__ = []


def _install(methods):
    """Copy every method and attribute defined in the class body ``methods`` onto Tensor."""
    for name, value in vars(methods).items():
        if name not in ("__module__", "__qualname__", "__doc__", "__dict__", "__weakref__",
                        "__firstlineno__", "__static_attributes__"):
            setattr(Tensor, name, value)
    return methods


@_install
class _TensorMethods:
    """The graph-building methods of Tensor (installed on it by :func:`_install`)."""

    # -- operators: broadcast like NumPy, one node each --------------------------------
    def __add__(self, other):
        return ops.add(self, other)

    __radd__ = __add__

    def __sub__(self, other):
        return ops.sub(self, other)

    def __rsub__(self, other):
        return ops.sub(other, self)

    def __mul__(self, other):
        return ops.mul(self, other)

    __rmul__ = __mul__

    def __truediv__(self, other):
        return ops.div(self, other)

    def __rtruediv__(self, other):
        return ops.div(other, self)

    def __neg__(self):
        return ops.neg(self)

    def __pow__(self, other):
        return ops.power(self, other)

    def __rpow__(self, other):
        return ops.power(other, self)

    def __matmul__(self, other):
        return ops.matmul(self, other)

    def __rmatmul__(self, other):
        return ops.matmul(other, self)

    # -- indexing (Tensors in the index are constants) ---------------------------------
    def __getitem__(self, index):
        return ops.GetItem(_plain_index(index))(self)

    # -- elementwise functions ---------------------------------------------------------
    def exp(self):
        return ops.Exp()(self)

    def log(self):
        return ops.Log()(self)

    def tanh(self):
        return ops.Tanh()(self)

    def sigmoid(self):
        return ops.Sigmoid()(self)

    def relu(self):
        return ops.ReLU()(self)

    # -- reductions --------------------------------------------------------------------
    def sum(self, dim=None, keepdim=False, axis=None, keepdims=None):
        """Sum over ``dim`` (PyTorch's names) or ``axis`` (NumPy's)."""
        axis, keep = _dims(dim, axis, keepdim, keepdims)
        return ops.Summation(axis, keep)(self)

    def mean(self, dim=None, keepdim=False, axis=None, keepdims=None):
        axis, keep = _dims(dim, axis, keepdim, keepdims)
        return ops.mean(self, axis, keep)

    def var(self, dim=None, unbiased=True, keepdim=False, correction=None):
        """Variance over ``dim``; ``unbiased`` (default, as PyTorch) divides by n - 1."""
        axis, keep = _dims(dim, None, keepdim, None)
        n = int(np.prod([self.shape[i] for i in ops._axes(axis, self.ndim)]))
        ddof = (1 if unbiased else 0) if correction is None else correction
        d = self - ops.mean(self, axis, True)
        return ops.Summation(axis, keep)(d * d) / float(n - ddof)

    def max(self, dim=None, keepdim=False):
        """The maximum (dim=None), or PyTorch's (values, indices) along ``dim``."""
        if dim is None:
            return ops.max(ops.reshape(self, (-1,)), 0)
        values = ops.max(self, dim, keepdim)
        idx = np.argmax(self.data, axis=dim)
        return values, Tensor(np.expand_dims(idx, dim) if keepdim else idx, dtype=np.int64)

    # -- shapes ------------------------------------------------------------------------
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return ops.reshape(self, tuple(int(s) for s in shape))

    view = reshape            # arrays here are never views of each other: view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        s = self.shape
        e = end_dim % self.ndim if self.ndim else 0
        return self.reshape(s[:start_dim] + (-1,) + s[e + 1:]) if self.ndim else \
            self.reshape(1)

    def transpose(self, dim0=-2, dim1=-1):
        """Swap two axes (PyTorch's ``transpose(dim0, dim1)``)."""
        axes = list(range(self.ndim))
        axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return ops.Transpose(tuple(axes))(self)

    @property
    def T(self):
        return ops.Transpose(tuple(reversed(range(self.ndim))))(self)

    def t(self):
        return self.transpose(0, 1) if self.ndim == 2 else self

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return ops.Transpose(tuple(a % self.ndim for a in axes))(self)

    def unsqueeze(self, dim):
        d = dim % (self.ndim + 1)
        return self.reshape(self.shape[:d] + (1,) + self.shape[d:])

    def squeeze(self, dim=None):
        if dim is None:
            return self.reshape(tuple(s for s in self.shape if s != 1))
        d = dim % self.ndim
        if self.shape[d] != 1:
            return self
        return self.reshape(self.shape[:d] + self.shape[d + 1:])

    def expand(self, *sizes):
        sizes = sizes[0] if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else sizes
        lead = len(sizes) - self.ndim
        shape = tuple(self.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
        return ops.broadcast_to(self, shape)

    def broadcast_to(self, shape):
        return ops.BroadcastTo(tuple(shape))(self)

    # -- copies, masks, pieces, softmax ------------------------------------------------
    def clone(self):
        return self * 1.0

    def masked_fill(self, mask, value):
        """``value`` where ``mask`` (a boolean array or Tensor broadcast to self) is True."""
        return ops.masked_fill(self, mask, value)

    def split(self, split_size, dim=0):
        """Pieces of ``split_size`` along ``dim`` (or of the sizes in a list)."""
        n = self.shape[dim]
        sizes = [split_size] * (n // split_size) + ([n % split_size] if n % split_size else []) \
            if isinstance(split_size, int) else list(split_size)
        ax = dim % self.ndim
        out, start = [], 0
        for k in sizes:
            out.append(self[(slice(None),) * ax + (slice(start, start + k),)])
            start += k
        return tuple(out)

    def chunk(self, chunks, dim=0):
        n = self.shape[dim]
        return self.split(-(-n // chunks), dim)

    def softmax(self, dim=-1):
        """exp(x - logsumexp(x, dim)): engine ops, so it has derivatives of every order."""
        return self.log_softmax(dim).exp()

    def log_softmax(self, dim=-1):
        """x - logsumexp(x, dim), stable for any x."""
        return self - ops.logsumexp(self, axis=dim, keepdims=True)

    def sqrt(self):
        return self ** 0.5

    # -- casts -------------------------------------------------------------------------
    def to(self, *args, **kwargs):
        """``to(dtype)`` casts (differentiably); a device ('cpu') is accepted and ignored."""
        dtype = kwargs.get("dtype")
        for a in args:
            if not isinstance(a, str) and a is not None:
                dtype = a
        if dtype is None or np.dtype(dtype) == self.dtype:
            return self
        if not np.issubdtype(np.dtype(dtype), np.floating):
            return Tensor(self.data.astype(dtype), dtype=dtype)
        return ops.Cast(dtype)(self)

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    def long(self):
        return self.to(np.int64)


# -- helpers ----------------------------------------------------------------------------
def _plain_index(index):
    """An index with Tensors (integer or boolean) replaced by their arrays."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def _dims(dim, axis, keepdim, keepdims):
    axis = dim if axis is None else axis
    if isinstance(axis, list):
        axis = tuple(axis)
    return axis, bool(keepdim if keepdims is None else keepdims)

