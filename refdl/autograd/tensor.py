r"""A small reverse-mode automatic differentiation engine (the computation-graph lecture).

A :class:`Tensor` holds a NumPy array ``data``. A tensor made by an operation remembers the
operation (``op``) and its operands (``inputs``): that is the computation graph. Every
operation is a class with two methods:

* ``compute(*arrays) -> array``: the forward value, on plain NumPy arrays;
* ``gradient(out_grad, node) -> one Tensor per input``: the vector-Jacobian product
  ``out_grad @ d node / d input_i``, where ``out_grad`` is the adjoint d loss / d node.
  It is written with **Tensor operations**, not NumPy, so a gradient is itself a graph
  and can be differentiated again (second and third derivatives, Hessian-vector
  products: a gradient of a gradient is one more backward pass through a graph).

Reverse mode (``backward`` / :func:`grad`): sort the graph topologically (iteratively, so a
chain of 100,000 nodes works), set the output's adjoint to ``out_grad`` (1 for a scalar),
and visit the nodes from the output back to the leaves; each node's adjoint is the SUM of
the partial adjoints sent by all its consumers, ``v_bar_i = sum_{j consumes i}
v_bar_j @ dv_j/dv_i``, and it sends ``op.gradient(v_bar_i, node)`` on to its inputs.

The arithmetic operators and the differentiable methods (``x + y``, ``x.sum()``,
``x.reshape(...)``) build their nodes with the ops of ops.py; they live in methods.py,
which installs them on Tensor, so that this module imports neither (ops.py imports it).

Derivation: docs/derivations/autograd.md
"""
from contextlib import contextmanager

import numpy as np

from .. import grad_mode as _gm
from ..grad_mode import is_grad_enabled, no_grad  # one switch for layers and the tape
from ..nn.module import Parameter

__all__ = ["Tensor", "Op", "grad", "no_grad", "is_grad_enabled", "tensor", "as_tensor"]


@contextmanager
def _grad_mode(enabled):
    """Record ops (``enabled``) or not, for the duration of a backward pass."""
    old = _gm.state.mode
    _gm.state.mode = (old if old != _gm.OFF else _gm.AUTO) if enabled else _gm.OFF
    try:
        yield
    finally:
        _gm.state.mode = old


def _recording():
    return _gm.state.mode != _gm.OFF


class _Backprop:
    """The options of the backward pass under way (module nodes read them)."""
    retain_graph = False
    create_graph = False


def _as_array(data, dtype=None):
    if isinstance(data, Tensor):
        data = data.data
    elif isinstance(data, Parameter):
        data = data.data
    a = np.array(data, dtype=dtype, copy=None)
    if dtype is None and not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    return a


def param_tensor(p):
    """A leaf Tensor viewing Parameter ``p``'s array; its gradient goes to ``p.grad``.

    A new leaf per use: every use's adjoint is added into ``p.grad`` by ``backward``
    (and summed over uses by :func:`grad` when ``p`` is one of its inputs).
    """
    t = Tensor.__new__(Tensor)
    t.data = p.data
    t.requires_grad = bool(p.requires_grad)
    t.grad = None
    t.op = None
    t.inputs = ()
    t._freed = False
    t.param = p
    return t


def as_tensor(a):
    """A Tensor for ``a``: itself, a Parameter's leaf (:func:`param_tensor`), or a constant."""
    if isinstance(a, Tensor):
        return a
    if isinstance(a, Parameter):
        return param_tensor(a)
    if isinstance(a, np.ndarray) and not np.issubdtype(a.dtype, np.floating):
        return Tensor(a, dtype=a.dtype)      # integer/bool arrays keep their dtype
    return Tensor(a)


class Op:
    """An operation: ``compute`` on arrays, ``gradient`` with Tensor operations."""

    def __call__(self, *args):
        return Tensor._make(self, args)

    def compute(self, *arrays):
        raise NotImplementedError

    def gradient(self, out_grad, node):
        raise NotImplementedError

    def __repr__(self):
        return type(self).__name__


class Tensor:
    """An array in a computation graph.

    ``data`` (np.ndarray), ``grad`` (a Tensor, filled by :meth:`backward` on leaves that
    require grad, accumulated over calls like PyTorch), ``requires_grad``, ``op`` (None for
    a leaf) and ``inputs`` (the operands of ``op``).
    """

    __array_priority__ = 1000   # ndarray + Tensor -> Tensor.__radd__
    param = None                # the Parameter a leaf stands for (see param_tensor)

    def __init__(self, data, requires_grad=False, dtype=None):
        self.data = _as_array(data, dtype)
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self.op = None
        self.inputs = ()
        self._freed = False

    @classmethod
    def _make(cls, op, args):
        inputs = tuple(as_tensor(a) for a in args)
        out = cls.__new__(cls)
        out.data = np.asarray(op.compute(*[t.data for t in inputs]))
        out.grad = None
        out._freed = False
        out.requires_grad = _recording() and any(t.requires_grad for t in inputs)
        out.op, out.inputs = (op, inputs) if out.requires_grad else (None, ())
        return out

    # -- basic attributes -----------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def is_leaf(self):
        return self.op is None

    def numpy(self):
        return self.data

    def item(self):
        return self.data.item()

    def detach(self):
        """The same value, cut from the graph."""
        return Tensor(self.data)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        extra = f", op={self.op!r}" if self.op is not None else (
            ", requires_grad=True" if self.requires_grad else "")
        return f"Tensor({np.array2string(self.data, precision=4)}{extra})"

    # -- reverse mode ---------------------------------------------------------------------
    def backward(self, out_grad=None, retain_graph=None, create_graph=False):
        """Accumulate d self / d leaf (contracted with ``out_grad``) into every leaf's ``.grad``.

        ``out_grad`` (d loss / d self) may be omitted only for a one-element tensor; a
        non-scalar output needs it (like ``torch.Tensor.backward``). Without
        ``retain_graph`` (default: ``create_graph``) the graph is freed and a second
        backward through it is an error. ``create_graph=True`` records the gradient
        computation as a graph, so ``x.grad`` can be differentiated again.
        """
        if retain_graph is None:
            retain_graph = create_graph
        leaves = {}
        adj = _backprop([self], [out_grad], retain_graph, create_graph, leaves_out=leaves)
        for key, leaf in leaves.items():
            g = adj.get(key)
            if g is None:
                continue
            if leaf.param is not None:           # a Parameter's leaf: into p.grad
                p = leaf.param
                if p.requires_grad:
                    p.grad += g.data
                continue
            if not create_graph:
                g = g.detach()
            leaf.grad = g if leaf.grad is None else (
                leaf.grad + g if create_graph else Tensor(leaf.grad.data + g.data))

    # -- constant results: comparisons, indices, conversions (no graph) ------------------
    def __gt__(self, other):   # comparisons give constant (non-differentiable) tensors
        return Tensor((self.data > _as_array(other)).astype(self.dtype))

    def __lt__(self, other):
        return Tensor((self.data < _as_array(other)).astype(self.dtype))

    def argmax(self, dim=None, keepdim=False):
        idx = np.argmax(self.data, axis=dim)
        if keepdim and dim is not None:
            idx = np.expand_dims(idx, dim)
        return Tensor(idx, dtype=np.int64)

    def contiguous(self):
        return self

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self):
        return self.ndim

    def numel(self):
        return int(self.data.size)

    def tolist(self):
        return self.data.tolist()

    def requires_grad_(self, requires_grad=True):
        self.requires_grad = bool(requires_grad)
        return self

    def __setitem__(self, index, value):
        if self.requires_grad:
            raise RuntimeError("a Tensor that requires grad cannot be modified in place "
                               "(it may be needed by a backward); build a new one")
        self.data[index] = _as_array(value, self.dtype)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __index__(self):
        return int(self.data)

    def __int__(self):
        return int(self.data)

    def __float__(self):
        return float(self.data)

    def __bool__(self):
        return bool(self.data)

    def __format__(self, spec):
        return format(self.data.item(), spec) if self.data.size == 1 else format(str(self), spec)

    def __array__(self, dtype=None, copy=None):
        return self.data if dtype is None else self.data.astype(dtype)

    def __eq__(self, other):   # elementwise, as PyTorch (a constant boolean tensor)
        return Tensor(self.data == np.asarray(getattr(other, "data", other)), dtype=bool)

    def __ne__(self, other):
        return Tensor(self.data != np.asarray(getattr(other, "data", other)), dtype=bool)

    def __ge__(self, other):
        return Tensor((self.data >= _as_array(other)).astype(self.dtype))

    def __le__(self, other):
        return Tensor((self.data <= _as_array(other)).astype(self.dtype))

    __hash__ = object.__hash__


def tensor(data, requires_grad=False, dtype=None):
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


# -- the engine ---------------------------------------------------------------------------
def _topological_order(roots):
    """Every node that requires grad and that the roots depend on, inputs before consumers.

    Depth-first search with an explicit stack (no recursion, so no recursion limit): a node
    is appended after all of its inputs, when its 'expanded' marker is popped.
    """
    order, visited = [], set()
    for root in roots:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            for inp in node.inputs:
                if inp.requires_grad and id(inp) not in visited:
                    stack.append((inp, False))
    return order


def _backprop(outputs, out_grads, retain_graph, create_graph, leaves_out=None):
    """Reverse accumulation; returns {id(node): adjoint Tensor} for every node reached."""
    roots = []
    adjoints = {}     # id(node) -> list of partial adjoints from each consumer
    for out, g in zip(outputs, out_grads):
        if not isinstance(out, Tensor):
            raise TypeError(f"autograd: expected a Tensor output, got {type(out).__name__}")
        if not out.requires_grad:
            raise RuntimeError("autograd: the output does not require grad and has no "
                               "graph (no input had requires_grad=True, or it was made "
                               "under no_grad())")
        if g is None:
            if out.data.size != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs: the output "
                    f"has shape {out.shape}; pass out_grad (d loss / d output, same shape) "
                    "to backward, e.g. y.backward(np.ones(y.shape))")
            g = Tensor(np.ones(out.shape, dtype=out.dtype))
        else:
            g = g if isinstance(g, Tensor) else Tensor(g)
            if g.shape != out.shape:
                raise ValueError(f"autograd: out_grad has shape {g.shape}, expected the "
                                 f"output's shape {out.shape}")
        adjoints.setdefault(id(out), []).append(g)
        roots.append(out)
    order = _topological_order(roots)
    for node in order:
        if node._freed:
            raise RuntimeError(
                "Trying to backward through the graph a second time: its intermediate "
                f"results were freed after the first backward (node made by {node.op!r}). "
                "Specify retain_graph=True (or create_graph=True) on the first "
                "backward/grad call if you need to backward twice.")
    summed = {}
    prev = _Backprop.retain_graph, _Backprop.create_graph
    _Backprop.retain_graph, _Backprop.create_graph = retain_graph, create_graph
    try:
        _reverse(order, adjoints, summed, create_graph, leaves_out)
    finally:
        _Backprop.retain_graph, _Backprop.create_graph = prev
    if not retain_graph:
        for node in order:
            if node.op is not None:
                node._freed = True
                release = getattr(node.op, "release", None)
                if release is not None:
                    release()
    return summed


def _reverse(order, adjoints, summed, create_graph, leaves_out):
    """Visit ``order`` backwards, summing each node's partial adjoints and sending them on."""
    with _grad_mode(create_graph):
        for node in reversed(order):
            parts = adjoints.pop(id(node), None)
            if parts is None:
                continue
            v_bar = parts[0]
            for p in parts[1:]:            # sum over every consumer of the node
                v_bar = v_bar + p
            summed[id(node)] = v_bar
            if node.op is None:
                if leaves_out is not None:
                    leaves_out[id(node)] = node
                continue
            partials = node.op.gradient(v_bar, node)
            if isinstance(partials, Tensor):
                partials = (partials,)
            for inp, p in zip(node.inputs, partials):
                if p is None or not inp.requires_grad:
                    continue
                if p.shape != inp.shape:
                    raise RuntimeError(f"autograd: {node.op!r}.gradient returned a partial "
                                       f"adjoint of shape {p.shape} for an input of shape "
                                       f"{inp.shape}")
                adjoints.setdefault(id(inp), []).append(p)


def grad(outputs, inputs, grad_outputs=None, create_graph=False, retain_graph=None,
         allow_unused=False):
    """d outputs / d inputs contracted with ``grad_outputs`` (PyTorch's autograd.grad).

    Returns a tuple with one Tensor per input (``.grad`` is not touched). With
    ``create_graph=True`` the results are graphs themselves: differentiate them again for
    second and third derivatives.
    """
    single = isinstance(inputs, (Tensor, Parameter))
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    inputs = [inputs] if single else list(inputs)
    if grad_outputs is None or isinstance(grad_outputs, (Tensor, np.ndarray)):
        grad_outputs = [grad_outputs] * len(outputs) if grad_outputs is None else [grad_outputs]
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"grad: {len(grad_outputs)} grad_outputs for {len(outputs)} outputs")
    if retain_graph is None:
        retain_graph = create_graph
    leaves = {}
    adj = _backprop(outputs, grad_outputs, retain_graph, create_graph, leaves_out=leaves)
    by_param = {}                       # a Parameter's gradient: the sum over its leaves
    for key, leaf in leaves.items():
        if leaf.param is not None and key in adj:
            by_param.setdefault(id(leaf.param), []).append(adj[key])
    result = []
    for i, x in enumerate(inputs):
        if isinstance(x, Parameter):
            parts = by_param.get(id(x))
            g = None
            for part in parts or ():
                g = part if g is None else g + part
        else:
            g = adj.get(id(x))
        if g is None:
            if not allow_unused:
                raise RuntimeError(f"grad: input {i} (shape {x.shape}) was not used to "
                                   "compute the outputs (or does not require grad); pass "
                                   "allow_unused=True to get None for it")
        elif not create_graph:
            g = g.detach()
        result.append(g)
    return tuple(result)

