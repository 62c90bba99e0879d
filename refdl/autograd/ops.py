r"""The operations of the engine: ``compute`` on NumPy arrays, ``gradient`` with Tensor ops.

Notation: ``g`` is out_grad = d loss / d out (same shape as the output), ``node`` is the
output Tensor, ``a, b = node.inputs``. Every gradient below returns d loss / d input,
one Tensor per input, built from Tensor operations only (so it can be differentiated).

==============  ===========================  =========================================
op              out                          gradient (d loss / d inputs)
==============  ===========================  =========================================
EWiseAdd        a + b                        g, g
EWiseSub        a - b                        g, -g
AddScalar       a + c                        g
EWiseMul        a * b                        g * b, g * a
MulScalar       a * c                        g * c
EWiseDiv        a / b                        g / b, -g * a / b^2
Negate          -a                           -g
PowerScalar     a ** n                       g * n * a^(n-1)
EWisePow        a ** b                       g * b * a^(b-1), g * a^b * log a
Exp / Log       exp a / log a                g * out / g / a
Tanh            tanh a                       g * (1 - out^2)
Sigmoid         sigma(a)                     g * out * (1 - out)
ReLU            max(a, 0)                    g * [a > 0]   (constant mask: 2nd derivative 0)
Maximum         max(a, b)                    g * [a >= b], g * [a < b]
Erf             erf a                        g * 2/sqrt(pi) exp(-a^2)
MatMul          a @ b                        g @ b^T, a^T @ g (summed over broadcast batch)
Summation       sum over axes                broadcast g back to a's shape
Max             max over one axis            g at the (first) argmax, 0 elsewhere
Reshape         reshape                      reshape g back
Transpose       permute axes                 permute g by the inverse permutation
BroadcastTo     broadcast a to a shape       sum g over the broadcast axes
LogSumExp       log sum exp over axes        g * exp(a - out)   (softmax)
MSE             mean((a - b)^2)              g * 2/d (a - b), -g * 2/d (a - b)
GetItem         a[index]                     scatter g into zeros of a's shape
Scatter         zeros(shape); [index] += a   g[index]
MaskedFill      value where mask else a      g * [not mask]  (constant mask)
Concatenate     cat(a_1, ..., a_k, axis)     the slices of g, one per input
Cast            a.astype(dtype)              g cast back to a's dtype
Pad             constant padding of a        the slice of g where a sits
==============  ===========================  =========================================

Binary operators broadcast like NumPy: the smaller operand is first passed through an
explicit BroadcastTo node, whose gradient sums over the broadcast axes.
"""
import math

import numpy as np
from scipy import special

from .tensor import Op, Tensor, as_tensor
from ..nn.module import Parameter

_TENSORLIKE = (Tensor, np.ndarray, Parameter)

__all__ = ["EWiseAdd", "EWiseSub", "AddScalar", "EWiseMul", "MulScalar", "EWiseDiv", "DivScalar",
           "Negate", "PowerScalar", "EWisePow", "Exp", "Log", "Tanh", "Sigmoid", "ReLU",
           "Maximum", "Erf", "MatMul", "Summation", "Max", "Reshape", "Transpose", "BroadcastTo",
           "LogSumExp", "MSE", "GetItem", "Scatter",
           "add", "sub", "mul", "div", "neg", "power", "matmul", "mean", "maximum", "exp", "log",
           "tanh", "sigmoid", "relu", "erf", "summation", "max", "reshape", "transpose",
           "broadcast_to", "logsumexp", "mse", "MaskedFill", "Concatenate", "Cast",
           "Pad", "masked_fill", "cat", "stack"]


def _pair(a, b):
    """Two Tensors of one shape: wrap arrays, insert BroadcastTo nodes where shapes differ."""
    a = as_tensor(a)
    b = as_tensor(b)
    if a.shape != b.shape:
        shape = np.broadcast_shapes(a.shape, b.shape)
        if a.shape != shape:
            a = broadcast_to(a, shape)
        if b.shape != shape:
            b = broadcast_to(b, shape)
    return a, b


# -- elementwise arithmetic ---------------------------------------------------------------
class EWiseAdd(Op):
    def compute(self, a, b):
        return a + b

    def gradient(self, g, node):
        return g, g


class EWiseSub(Op):
    def compute(self, a, b):
        return a - b

    def gradient(self, g, node):
        return g, -g


class _ScalarOp(Op):
    """An op with one constant operand ``scalar`` (a number, not a node of the graph)."""

    def __init__(self, scalar):
        self.scalar = scalar


class AddScalar(_ScalarOp):
    def compute(self, a):
        return a + self.scalar

    def gradient(self, g, node):
        return g


class EWiseMul(Op):
    def compute(self, a, b):
        return a * b

    def gradient(self, g, node):
        a, b = node.inputs
        return g * b, g * a


class MulScalar(_ScalarOp):
    def compute(self, a):
        return a * self.scalar

    def gradient(self, g, node):
        return g * self.scalar


class EWiseDiv(Op):
    def compute(self, a, b):
        return a / b

    def gradient(self, g, node):
        a, b = node.inputs
        return g / b, -g * a / (b * b)


class DivScalar(_ScalarOp):
    def compute(self, a):
        return a / self.scalar

    def gradient(self, g, node):
        return g / self.scalar


class Negate(Op):
    def compute(self, a):
        return -a

    def gradient(self, g, node):
        return -g


class PowerScalar(Op):
    """a ** n for a constant n: d/da = n a^(n-1), itself a PowerScalar node."""

    def __init__(self, n):
        self.n = n

    def compute(self, a):
        return a ** self.n

    def gradient(self, g, node):
        a = node.inputs[0]
        if self.n == 0:
            return g * 0.0
        return g * self.n * (a ** (self.n - 1) if self.n != 1 else 1.0)

    def __repr__(self):
        return f"PowerScalar({self.n})"


class EWisePow(Op):
    """a ** b elementwise: d/da = b a^(b-1), d/db = a^b log a (only computed when needed)."""

    def compute(self, a, b):
        return a ** b

    def gradient(self, g, node):
        a, b = node.inputs
        ga = g * b * a ** (b - 1.0)
        gb = g * node * log(a) if b.requires_grad else g * 0.0
        return ga, gb


class Exp(Op):
    def compute(self, a):
        return np.exp(a)

    def gradient(self, g, node):
        return g * node


class Log(Op):
    def compute(self, a):
        return np.log(a)

    def gradient(self, g, node):
        return g / node.inputs[0]


class Tanh(Op):
    def compute(self, a):
        return np.tanh(a)

    def gradient(self, g, node):
        return g * (1.0 - node * node)


class Sigmoid(Op):
    def compute(self, a):
        e = np.exp(-np.abs(a))                   # stable for any |a|
        return np.where(a >= 0, 1.0, e) / (1.0 + e)

    def gradient(self, g, node):
        return g * node * (1.0 - node)


class ReLU(Op):
    def compute(self, a):
        return np.maximum(a, 0)

    def gradient(self, g, node):
        mask = Tensor((node.inputs[0].data > 0).astype(g.dtype))   # a constant
        return g * mask


class Maximum(Op):
    """max(a, b) elementwise; a tie sends the gradient to a."""

    def compute(self, a, b):
        return np.maximum(a, b)

    def gradient(self, g, node):
        a, b = node.inputs
        m = (a.data >= b.data).astype(g.dtype)
        return g * Tensor(m), g * Tensor(1.0 - m)


class Erf(Op):
    def compute(self, a):
        return special.erf(a)

    def gradient(self, g, node):
        a = node.inputs[0]
        return g * (2.0 / math.sqrt(math.pi)) * exp(-(a * a))


# -- linear algebra and shapes --------------------------------------------------------------
def _unbroadcast(t, shape):
    """Sum ``t`` over the leading axes it has beyond ``shape`` (batch broadcasting)."""
    if t.shape == tuple(shape):
        return t
    lead = t.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape)
                                      if s == 1 and t.shape[lead + i] != 1)
    return reshape(summation(t, axes), shape)


class MatMul(Op):
    """a @ b for a (..., m, k), b (..., k, n); 1-D operands are handled by ``matmul``.

    d loss/da = g @ b^T,  d loss/db = a^T @ g (the two facts behind every linear layer's
    backward), summed over batch axes that were broadcast.
    """

    def compute(self, a, b):
        return a @ b

    def gradient(self, g, node):
        a, b = node.inputs
        da = matmul(g, transpose(b))
        db = matmul(transpose(a), g)
        return _unbroadcast(da, a.shape), _unbroadcast(db, b.shape)


def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(ax % ndim for ax in axis))


class Summation(Op):
    def __init__(self, axis=None, keepdims=False):
        self.axis = axis
        self.keepdims = keepdims

    def compute(self, a):
        return np.sum(a, axis=None if self.axis is None else _axes(self.axis, a.ndim),
                      keepdims=self.keepdims)

    def gradient(self, g, node):
        a = node.inputs[0]
        kept = tuple(1 if i in _axes(self.axis, a.ndim) else s for i, s in enumerate(a.shape))
        return broadcast_to(reshape(g, kept), a.shape)

    def __repr__(self):
        return f"Summation(axis={self.axis})"


class Max(Op):
    """max over one axis; the gradient goes to the first maximal entry (like argmax),
    through a constant one-hot mask, so the second derivative is 0 (piecewise linear)."""

    def __init__(self, axis=-1, keepdims=False):
        self.axis = axis
        self.keepdims = keepdims

    def compute(self, a):
        return np.max(a, axis=self.axis, keepdims=self.keepdims)

    def gradient(self, g, node):
        a = node.inputs[0]
        ax = self.axis % a.ndim
        mask = np.zeros(a.shape, dtype=g.dtype)
        np.put_along_axis(mask, np.expand_dims(np.argmax(a.data, axis=ax), ax), 1.0, axis=ax)
        kept = a.shape[:ax] + (1,) + a.shape[ax + 1:]
        return broadcast_to(reshape(g, kept), a.shape) * Tensor(mask)

    def __repr__(self):
        return f"Max(axis={self.axis})"


class Reshape(Op):
    def __init__(self, shape):
        self.shape = tuple(shape)

    def compute(self, a):
        return np.reshape(a, self.shape)

    def gradient(self, g, node):
        return reshape(g, node.inputs[0].shape)


class Transpose(Op):
    """Permute the axes: out = a.transpose(axes); the gradient applies the inverse."""

    def __init__(self, axes):
        self.axes = tuple(axes)

    def compute(self, a):
        return np.transpose(a, self.axes)

    def gradient(self, g, node):
        return Transpose(tuple(np.argsort(self.axes)))(g)


class BroadcastTo(Op):
    """Repeat ``a`` to ``shape`` (NumPy rules); the gradient sums g over repeated axes."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def compute(self, a):
        return np.broadcast_to(a, self.shape).copy()

    def gradient(self, g, node):
        return _unbroadcast(g, node.inputs[0].shape)


class LogSumExp(Op):
    """log sum_i exp(a_i) over ``axis``, stable (shifted by the max)."""

    def __init__(self, axis=None, keepdims=False):
        self.axis = axis
        self.keepdims = keepdims

    def compute(self, a):
        ax = _axes(self.axis, a.ndim)
        m = np.max(a, axis=ax, keepdims=True)
        out = m + np.log(np.sum(np.exp(a - m), axis=ax, keepdims=True))
        return out if self.keepdims else np.squeeze(out, axis=ax)

    def gradient(self, g, node):
        a = node.inputs[0]
        kept = tuple(1 if i in _axes(self.axis, a.ndim) else s for i, s in enumerate(a.shape))
        softmax = exp(a - broadcast_to(reshape(node, kept), a.shape))
        return broadcast_to(reshape(g, kept), a.shape) * softmax


class MSE(Op):
    """Mean squared error  z = (1/d) sum_i (a_i - b_i)^2  (mean over all d entries)."""

    def compute(self, a, b):
        return np.mean((a - b) ** 2)

    def gradient(self, g, node):
        a, b = node.inputs
        d = (2.0 / a.data.size) * (a - b) * broadcast_to(g, a.shape)
        return d, -d


class GetItem(Op):
    """a[index] (basic or integer-array indexing); the gradient scatters g back."""

    def __init__(self, index):
        self.index = index

    def compute(self, a):
        return np.array(a[self.index], copy=True)

    def gradient(self, g, node):
        return Scatter(self.index, node.inputs[0].shape)(g)


class Scatter(Op):
    """zeros(shape) with ``a`` added at ``index`` (repeated indices add up)."""

    def __init__(self, index, shape):
        self.index = index
        self.shape = tuple(shape)

    def compute(self, a):
        out = np.zeros(self.shape, dtype=a.dtype)
        np.add.at(out, self.index, a)
        return out

    def gradient(self, g, node):
        return GetItem(self.index)(g)


# -- functions: the user-facing names --------------------------------------------------------
def add(a, b):
    if not isinstance(b, _TENSORLIKE):
        return AddScalar(b)(a)
    if not isinstance(a, _TENSORLIKE):
        return AddScalar(a)(b)
    return EWiseAdd()(*_pair(a, b))


def sub(a, b):
    if not isinstance(b, _TENSORLIKE):
        return AddScalar(-b)(a)
    if not isinstance(a, _TENSORLIKE):
        return AddScalar(a)(Negate()(b))
    return EWiseSub()(*_pair(a, b))


def mul(a, b):
    if not isinstance(b, _TENSORLIKE):
        return MulScalar(b)(a)
    if not isinstance(a, _TENSORLIKE):
        return MulScalar(a)(b)
    return EWiseMul()(*_pair(a, b))


def div(a, b):
    if not isinstance(b, _TENSORLIKE):
        return DivScalar(b)(a)
    return EWiseDiv()(*_pair(a, b))


def neg(a):
    return Negate()(a)


def power(a, b):
    if not isinstance(b, _TENSORLIKE):
        return PowerScalar(b)(a)
    return EWisePow()(*_pair(a, b))


def matmul(a, b):
    """NumPy's matmul rules, 1-D operands included (promoted with Reshape nodes)."""
    a = as_tensor(a)
    b = as_tensor(b)
    if a.ndim == 1 and b.ndim == 1:
        return reshape(MatMul()(reshape(a, (1, -1)), reshape(b, (-1, 1))), ())
    if a.ndim == 1:
        out = MatMul()(reshape(a, (1, -1)), b)
        return reshape(out, out.shape[:-2] + out.shape[-1:])
    if b.ndim == 1:
        out = MatMul()(a, reshape(b, (-1, 1)))
        return reshape(out, out.shape[:-1])
    return MatMul()(a, b)


def exp(a):
    return Exp()(a)


def log(a):
    return Log()(a)


def tanh(a):
    return Tanh()(a)


def sigmoid(a):
    return Sigmoid()(a)


def relu(a):
    return ReLU()(a)


def erf(a):
    return Erf()(a)


def maximum(a, b):
    return Maximum()(*_pair(a, b))


def summation(a, axis=None, keepdims=False):
    return Summation(axis, keepdims)(a)


def max(a, axis=-1, keepdims=False):   # noqa: A001  (the op's natural name)
    return Max(axis, keepdims)(a)


def mean(a, axis=None, keepdims=False):
    """sum over ``axis`` divided by the number of entries summed."""
    a = as_tensor(a)
    n = int(np.prod([a.shape[i] for i in _axes(axis, a.ndim)]))
    return summation(a, axis, keepdims) / float(n)


def reshape(a, shape):
    shape = tuple(shape)
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        shape = tuple(a.data.size // known if s == -1 else s for s in shape)
    return Reshape(shape)(a)


def transpose(a, axes=None):
    """Swap the last two axes (default), or permute by ``axes``."""
    a = as_tensor(a)
    if axes is None:
        axes = list(range(a.ndim))
        if a.ndim >= 2:
            axes[-1], axes[-2] = axes[-2], axes[-1]
    return Transpose(tuple(axes))(a)


def broadcast_to(a, shape):
    return BroadcastTo(tuple(shape))(a)


def logsumexp(a, axis=None, keepdims=False):
    return LogSumExp(axis, keepdims)(a)


def mse(a, b):
    a = as_tensor(a)
    b = as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"mse: input and target must have the same shape, got "
                         f"{a.shape} and {b.shape}")
    return MSE()(a, b)


# -- ops for PyTorch-style free-form code ------------------------------------------------------
class MaskedFill(Op):
    """out = value where mask else a (mask broadcast to a); the gradient is g where not mask.

    The mask is a constant (PyTorch's ``masked_fill``), so the second derivative is 0."""

    def __init__(self, mask, value):
        self.mask = np.asarray(mask, dtype=bool)
        self.value = value

    def compute(self, a):
        return np.where(self.mask, np.asarray(self.value, dtype=a.dtype), a)

    def gradient(self, g, node):
        keep = np.broadcast_to(~self.mask, node.inputs[0].shape).astype(g.dtype)
        return g * Tensor(keep)


class Concatenate(Op):
    """Join tensors along ``axis`` (``torch.cat``); the gradient slices g back into pieces."""

    def __init__(self, axis):
        self.axis = axis

    def compute(self, *arrays):
        return np.concatenate(arrays, axis=self.axis)

    def gradient(self, g, node):
        ax = self.axis % g.ndim
        parts, start = [], 0
        for t in node.inputs:
            n = t.shape[ax]
            index = (slice(None),) * ax + (slice(start, start + n),)
            parts.append(GetItem(index)(g))
            start += n
        return tuple(parts)


class Cast(Op):
    """Change the floating dtype; the gradient is cast back to the input's dtype."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def compute(self, a):
        return a.astype(self.dtype)

    def gradient(self, g, node):
        return Cast(node.inputs[0].dtype)(g)


def masked_fill(a, mask, value):
    mask = mask.data if isinstance(mask, Tensor) else mask
    return MaskedFill(mask, value)(a)


def cat(tensors, dim=0):
    """``torch.cat``: join along an existing axis ``dim``."""
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("cat: expected a non-empty sequence of tensors")
    nd = tensors[0].ndim
    for i, t in enumerate(tensors):
        if t.ndim != nd:
            raise ValueError(f"cat: tensor {i} has {t.ndim} dimensions, tensor 0 has {nd}")
    return Concatenate(dim % nd)(*tensors)


def stack(tensors, dim=0):
    """``torch.stack``: join along a new axis ``dim``."""
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("stack: expected a non-empty sequence of tensors")
    shape = tensors[0].shape
    for i, t in enumerate(tensors):
        if t.shape != shape:
            raise ValueError(f"stack: every tensor must have the same shape; tensor 0 has "
                             f"{shape}, tensor {i} has {t.shape}")
    d = dim % (len(shape) + 1)
    new = shape[:d] + (1,) + shape[d:]
    return Concatenate(d)(*[reshape(t, new) for t in tensors])


class Pad(Op):
    """Constant padding (``F.pad``): out = pad(a, widths, value); the gradient is the slice
    of g where a sits."""

    def __init__(self, widths, value=0.0):
        self.widths = tuple(tuple(w) for w in widths)
        self.value = value

    def compute(self, a):
        return np.pad(a, self.widths, constant_values=self.value)

    def gradient(self, g, node):
        index = tuple(slice(lo, g.shape[i] - hi) for i, (lo, hi) in enumerate(self.widths))
        return GetItem(index)(g)
