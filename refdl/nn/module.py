"""Parameter and Module: the base of every layer (the containers are in container.py).

The contract every layer follows (see docs/caches.md and ../../shared/DESIGN.md):

* ``forward(*inputs) -> output`` computes the output and, when ``self.recording``, records
  what ``backward`` needs as one named cache: ``self.save_for_backward(LinearCache(x=x))``.
* ``backward(grad_out, *more_grads) -> grad_input`` consumes the newest pending cache
  (``self.pop_saved()``), takes dL/d(output) (one array per output, in order; the first
  positional, the rest optional and zero when omitted), *adds* dL/dW into every
  ``Parameter.grad`` (gradients accumulate, as in PyTorch) and returns dL/d(input): one
  array, or a tuple with one entry per floating-point positional input when there are several.
* ``backward`` never updates weights; optimisers do that from ``Parameter.grad``.
"""
import warnings
import weakref
from collections import OrderedDict

import numpy as np

from .. import grad_mode as _grad_mode


class Parameter:
    """A trainable array and its accumulated gradient.

    ``data`` is the value, ``grad`` the running sum dL/d(data) (same shape and dtype, zero
    until a backward pass adds to it). ``requires_grad=False`` freezes it: optimisers skip
    it and it is not counted as trainable.
    """

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data, requires_grad=True):
        data = np.array(data, copy=True)
        if not np.issubdtype(data.dtype, np.floating):
            data = data.astype(np.float32)
        self.data = data
        self.grad = np.zeros_like(data)
        self.requires_grad = bool(requires_grad)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def numel(self):
        return int(self.data.size)

    def zero_grad(self):
        _zero_grad(self)

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze (True) in place; returns self (PyTorch's name)."""
        self.requires_grad = bool(requires_grad)
        return self

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


# A Parameter in free-form code (``x @ self.weight``, ``self.weight.T``) acts as a leaf
# Tensor of refdl.autograd whose gradient goes to ``Parameter.grad``, as in PyTorch where a
# Parameter is a Tensor. nn sits below autograd: refdl.autograd registers ``_as_tensor``.
def _tensor_method(name):
    def method(self, *args, **kwargs):
        if _as_tensor is None:
            raise TypeError(f"Parameter.{name}: import refdl.autograd to compute with "
                            "Parameters as Tensors (or use p.data)")
        return getattr(_as_tensor(self), name)(*args, **kwargs)
    method.__name__ = name
    return method


for _n in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
           "__truediv__", "__rtruediv__", "__neg__", "__pow__", "__rpow__", "__matmul__",
           "__rmatmul__", "__getitem__", "view", "reshape", "transpose", "permute", "t",
           "sum", "mean", "unsqueeze", "expand"):
    setattr(Parameter, _n, _tensor_method(_n))
Parameter.T = property(lambda self: _tensor_method("transpose")(self, -2, -1)
                       if self.data.ndim == 2 else _tensor_method("permute")(
                           self, *reversed(range(self.data.ndim))))
Parameter.__array_ufunc__ = None       # ndarray @ Parameter -> Parameter.__rmatmul__
del _n


def _zero_grad(p):
    """Zero ``p.grad`` in place; a grad that a backward replaced (``p.grad = value`` where
    ``+=`` was meant) by a non-array or an array of another shape is replaced by zeros."""
    g = p.grad
    if isinstance(g, np.ndarray) and g.shape == p.data.shape and g.flags.writeable:
        g[...] = 0
    else:
        p.grad = np.zeros_like(p.data)


def _plain_arg(v):
    """A constructor argument worth keeping: values, arrays, dtypes, classes, functions,
    modules and generators of random numbers, and tuples/lists/dicts of those."""
    if v is None or isinstance(v, (bool, int, float, complex, str, bytes, np.generic,
                                   np.ndarray, np.dtype, type, Module, Parameter,
                                   np.random.Generator)) or callable(v) and not hasattr(
                                       v, "__next__"):
        return True
    if isinstance(v, (tuple, list)):
        return all(map(_plain_arg, v))
    if isinstance(v, dict):
        return all(map(_plain_arg, v.values()))
    return False


def _is_device(a):
    if isinstance(a, str):
        return a.split(":")[0] in ("cpu", "cuda", "mps", "xpu", "meta")
    return type(a).__name__ == "device"          # a torch.device


def _name(module):
    extra = module.extra_repr()
    return f"{type(module).__name__}({extra})"


def check_caches_consumed(params, who):
    """Raise :class:`CacheError` if a module owning one of ``params`` holds pending caches.

    Called by every optimiser's ``step()``: a cache still pending after the backward pass
    means a forward whose backward never ran, and when an extra forward ran between a
    forward and its backward, the gradient about to be applied came from the wrong call.
    """
    if not _PENDING:
        return
    ids = {id(p) for p in params}
    bad = [m for m in list(_PENDING)
           if any(id(c) not in _TAPE_OWNED for c in m._saved) and
           any(p is not None and id(p) in ids for p in m._parameters.values())]
    if bad:
        names = ", ".join(f"{_name(m)} ({m.num_saved})" for m in bad[:4])
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        raise CacheError(
            f"{who}.step: forwards whose backward never ran are still pending in {names}"
            f"{more}. A backward consumes the newest forward's cache, so if an extra "
            "training-mode forward (a validation batch) ran between a forward and its "
            "backward, these gradients belong to the wrong call. Run such forwards under "
            "refdl.no_grad() or model.eval(), or call model.discard_saved() before the "
            "next forward.")


class CacheError(RuntimeError):
    """A backward with no pending forward, or an optimiser step over unconsumed caches."""


class StaleCacheWarning(UserWarning):
    """A training-mode forward while caches older than the last backward are pending."""


# modules holding at least one pending cache (the optimisers' check looks here)
_PENDING = weakref.WeakSet()
# ids of caches owned by a node of refdl.autograd's tape: the tape knows which call each
# belongs to, so they are never ambiguous (the optimisers' check skips them)
_TAPE_OWNED = set()
# set by refdl.autograd (imports point down: nn never imports autograd)
_TENSOR_TYPES = ()      # (Tensor,)
_bridge_hook = None     # hook(module, args, kwargs) -> output, or NotImplemented
_as_tensor = None       # Parameter -> a leaf Tensor whose gradient goes to Parameter.grad


def _holds_tensor(values):
    for v in values:
        if isinstance(v, _TENSOR_TYPES):
            return True
        if isinstance(v, (tuple, list)) and any(isinstance(u, _TENSOR_TYPES) for u in v):
            return True
    return False
# a module holding this many caches is told once that they pile up
MANY_SAVED = 4096


class Module:
    """Base class of every layer, block, model and loss.

    Parameters and sub-modules assigned as attributes are registered in assignment order,
    so ``named_parameters()`` and ``state_dict()`` give PyTorch's keys (``0.weight``,
    ``encoder.1.bias``, ...). Buffers (running statistics) are registered with
    :meth:`register_buffer` and saved in ``state_dict`` but never trained.

    **Per-call caches.** A forward in training mode records what its backward needs as one
    named cache (a NamedTuple whose fields carry the derivation page's symbols) with
    :meth:`save_for_backward`; ``backward`` takes it back with :meth:`pop_saved`. A module
    called k times before its backward holds k caches, and its backward calls consume them
    in reverse order of the forwards (last in, first out): the order in which the chain rule
    visits them. So one ``nn.ReLU()`` used twice in a block, one ``Linear`` applied twice,
    or a tied weight all get the right gradient.

    * In ``eval()`` mode and inside ``refdl.no_grad()`` forward records nothing (memory
      stays flat over any number of calls; caches already pending are untouched);
      ``refdl.enable_grad()`` records even in eval mode (saliency, Grad-CAM).
    * A backward with no pending cache raises :class:`CacheError` naming the module.
    * refdl cannot tell which call a backward belongs to; it takes the newest. An extra
      training-mode forward between a forward and its backward (a validation batch) is the
      one case where that is wrong, and it is never silent: the backward leaves the older
      cache behind, so the optimiser's ``step()`` raises :class:`CacheError` before it
      applies the gradient, and the module's next training-mode forward warns with
      :class:`StaleCacheWarning`. Run such forwards under ``refdl.no_grad()`` or
      ``model.eval()``; :meth:`discard_saved` drops caches that will never be used.
    """

    def __new__(cls, *args, **kwargs):
        # the constructor's arguments, kept so that refdl.interop can build the PyTorch twin
        # (None when one of them is not a plain value: an iterator is consumed by the
        # constructor and could not be deep-copied with the module)
        obj = super().__new__(cls)
        plain = all(map(_plain_arg, args)) and all(map(_plain_arg, kwargs.values()))
        object.__setattr__(obj, "_init_args", (args, kwargs) if plain else None)
        return obj

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_saved", [])
        # True after a backward left caches behind (pending caches older than a backward)
        object.__setattr__(self, "_saved_stale", False)

    # -- per-call caches ------------------------------------------------------------------
    @property
    def recording(self):
        """Whether a forward called now records a cache (training mode and grad mode)."""
        return _grad_mode.records(self.training)

    def save_for_backward(self, cache):
        """Record ``cache`` for the backward of this call, if :attr:`recording`.

        Caches stack up, one per call; :meth:`pop_saved` returns the newest.
        """
        if not _grad_mode.records(self.training):
            return
        saved = self._saved
        if saved and self._saved_stale:
            object.__setattr__(self, "_saved_stale", False)
            self._warn_stale(len(saved))
        saved.append(cache)
        _PENDING.add(self)
        if len(saved) == MANY_SAVED:
            warnings.warn(StaleCacheWarning(
                f"{_name(self)}: {MANY_SAVED} forwards are waiting for their backward. "
                "Each training-mode forward keeps its cache until a backward consumes it: "
                "run inference under refdl.no_grad() or model.eval()."), stacklevel=3)
        collector = _grad_mode.state.collector
        if collector is not None:
            collector.append((self, cache))

    def _warn_stale(self, pending):
        state = _grad_mode.state
        if state.stale_warned:              # one warning per outermost call is enough
            return
        state.stale_warned = True
        warnings.warn(StaleCacheWarning(
            f"{_name(self)}: training-mode forward while {pending} earlier call(s) "
            "still wait for a backward, and a backward has run since they were "
            "recorded. Backward consumes the newest call's cache first, so if an extra "
            "forward (a validation batch) ran between a forward and its backward, that "
            "backward used the wrong call. Run such forwards under refdl.no_grad() or "
            "model.eval(); model.discard_saved() drops caches that will not be used."),
            stacklevel=4)

    def pop_saved(self):
        """Remove and return the newest pending cache (the last training-mode forward's)."""
        saved = self._saved
        if not saved:
            raise CacheError(
                f"{_name(self)}.backward called before forward: no forward of this module "
                "is waiting for its backward. Call forward in training mode first (eval() "
                "mode and refdl.no_grad() record nothing; refdl.enable_grad() records in "
                "eval mode too), and call backward once per forward.")
        cache = saved.pop()
        if saved:
            object.__setattr__(self, "_saved_stale", True)
        else:
            object.__setattr__(self, "_saved_stale", False)
            _PENDING.discard(self)
        return cache

    @property
    def num_saved(self):
        """How many forwards of this module (not its children) wait for their backward."""
        return len(self._saved)

    def discard_saved(self):
        """Drop every pending cache here and in every descendant; returns self."""
        for m in self.modules():
            m._saved.clear()
            object.__setattr__(m, "_saved_stale", False)
            _PENDING.discard(m)
        return self

    # -- registration -------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}: call super().__init__() before assigning attributes")
        for store in (self._parameters, self._modules, self._buffers):
            store.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self.__dict__.get("_buffer_names", ()):
            self._buffers[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for store in (self._parameters, self._modules, self._buffers):
            store.pop(name, None)
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        """Register ``param`` (a Parameter or None) under ``name``."""
        if param is None:
            self._parameters.pop(name, None)
            object.__setattr__(self, name, None)
        else:
            setattr(self, name, param)

    def register_buffer(self, name, value):
        """Register a non-trained array (e.g. ``running_mean``) saved in ``state_dict``."""
        names = self.__dict__.setdefault("_buffer_names", set())
        names.add(name)
        setattr(self, name, value)
        if value is None:
            self._buffers[name] = None

    def add_module(self, name, module):
        if not isinstance(module, Module) and module is not None:
            raise TypeError(f"add_module: {name!r} is a {type(module).__name__}, not a Module")
        name = str(name)
        self._modules[name] = module
        object.__setattr__(self, name, module)

    # -- the computation ----------------------------------------------------------------
    def forward(self, *inputs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    # True where backward takes the keyword input_grad: backward(g, input_grad=False)
    # accumulates the parameters' gradients, skips dL/dx and returns None, as PyTorch
    # does for an input that does not require grad (a model's data): Linear, Conv1d/2d/3d
    # and Sequential (which passes it to its first layer). The trainer asks for it.
    accepts_input_grad = False

    def backward(self, grad_out, *more):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, *inputs, **kwargs):
        if _TENSOR_TYPES and (_holds_tensor(inputs) or _holds_tensor(kwargs.values())):
            out = _bridge_hook(self, inputs, kwargs)     # refdl.autograd.bridge
            if out is not NotImplemented:
                return out
        state = _grad_mode.state
        if state.depth == 0:                # an outermost call: warnings may speak again
            state.stale_warned = False
        state.depth += 1
        try:
            return self.forward(*inputs, **kwargs)
        finally:
            state.depth -= 1

    # -- traversal ----------------------------------------------------------------------
    def named_children(self):
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix=""):
        """This module and every descendant, depth first, each once."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            kids = [((name + "." if name else "") + n, c) for n, c in m.named_children()]
            stack.extend(reversed(kids))

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix="", recurse=True):
        """(name, Parameter) pairs with dotted names; shared parameters appear once."""
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mname, m in mods:
            for pname, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (mname + "." if mname else "") + pname, p

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix=""):
        for mname, m in self.named_modules(prefix):
            for bname, b in m._buffers.items():
                if b is not None:
                    yield (mname + "." if mname else "") + bname, b

    def buffers(self):
        for _, b in self.named_buffers():
            yield b

    def num_parameters(self, trainable_only=True):
        """Number of scalar parameters (trainable ones only, by default)."""
        return int(sum(p.data.size for p in self.parameters()
                       if p.requires_grad or not trainable_only))

    # -- modes, gradients, dtype ----------------------------------------------------------
    def train(self, mode=True):
        """Set training mode here and in every descendant; returns self."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        """Evaluation mode (Dropout is the identity, BatchNorm uses running stats)."""
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        """Set every parameter's accumulated gradient to zero.

        (refdl's backward accumulates with ``+=`` into an array, so grads are zeroed in
        place rather than set to None; ``set_to_none`` is accepted for compatibility.)
        """
        for p in self.parameters():
            _zero_grad(p)

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze (True) every parameter; returns self."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def apply(self, fn):
        """Call ``fn(m)`` on every descendant and then on self (children first, as
        PyTorch does, e.g. ``model.apply(init_weights)``); returns self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def get_submodule(self, target):
        """The sub-module at the dotted path ``target`` ('' is self), as in PyTorch."""
        m = self
        for part in filter(None, target.split(".")):
            if part not in m._modules or m._modules[part] is None:
                raise AttributeError(f"{type(m).__name__} has no sub-module {part!r} "
                                     f"(looking for {target!r})")
            m = m._modules[part]
        return m

    def to(self, *args, **kwargs):
        """Cast every parameter (and its grad) and floating buffer; returns self.

        Accepts PyTorch's spellings: ``to(np.float64)``, ``to('float32')``, ``to('cpu')``
        (refdl runs on the CPU: a no-op), ``to('cpu', np.float64)``,
        ``to(device='cpu', dtype=...)``. Any other device is an error.
        """
        dtype = kwargs.pop("dtype", None)
        device = kwargs.pop("device", None)
        if kwargs:
            raise TypeError(f"{type(self).__name__}.to: unexpected arguments {sorted(kwargs)}")
        for a in args:
            if _is_device(a):
                device = a
            elif dtype is None:
                dtype = a
            else:
                raise TypeError(f"{type(self).__name__}.to: two dtypes given ({dtype}, {a})")
        if device is not None:
            dev = str(device)
            if dev.split(":")[0] != "cpu":
                raise ValueError(f"{type(self).__name__}.to: refdl runs on the CPU only, "
                                 f"got device {dev!r} (use refdl.interop.to_torch for a GPU)")
        if dtype is None:
            return self
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"{type(self).__name__}.to: expected a dtype or 'cpu', got "
                            f"{dtype!r}") from None
        if not np.issubdtype(dtype, np.floating):
            raise TypeError(f"{type(self).__name__}.to: expected a floating dtype, got {dtype}")
        for p in self.parameters():
            p.data = p.data.astype(dtype, copy=False)
            p.grad = p.grad.astype(dtype, copy=False)
        for m in self.modules():
            for name, b in list(m._buffers.items()):
                if isinstance(b, np.ndarray) and np.issubdtype(b.dtype, np.floating):
                    setattr(m, name, b.astype(dtype, copy=False))
        return self

    def cpu(self):
        """refdl runs on the CPU: returns self (for ported PyTorch code)."""
        return self

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    # -- saving and loading ---------------------------------------------------------------
    def state_dict(self):
        """An ordered dict name -> copy of the array: parameters, then buffers per module."""
        out = OrderedDict()
        for mname, m in self.named_modules():
            pre = mname + "." if mname else ""
            for n, p in m._parameters.items():
                if p is not None:
                    out[pre + n] = p.data.copy()
            for n, b in m._buffers.items():
                if b is not None:
                    out[pre + n] = np.array(b, copy=True)
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays from ``state_dict`` into this module's parameters and buffers.

        Every entry must match the target's shape (a ValueError names the key and both
        shapes). With ``strict=True`` a missing or unexpected key is a KeyError naming them
        all. Values are cast to the target's dtype. Returns ``(missing, unexpected)``.
        """
        targets = OrderedDict()
        for mname, m in self.named_modules():
            pre = mname + "." if mname else ""
            for n, p in m._parameters.items():
                if p is not None:
                    targets[pre + n] = (m, n, True)
            for n, b in m._buffers.items():
                if b is not None:
                    targets[pre + n] = (m, n, False)
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        if strict and (missing or unexpected):
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                f"unexpected keys {unexpected}")
        for key, (m, n, is_param) in targets.items():
            if key not in state_dict:
                continue
            value = np.asarray(state_dict[key])
            current = m._parameters[n].data if is_param else np.asarray(m._buffers[n])
            if value.shape != current.shape:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: size mismatch for {key!r} "
                    f"({type(m).__name__}): expected shape {current.shape}, got {value.shape}")
            if is_param:
                m._parameters[n].data = value.astype(current.dtype, copy=True)
            else:
                setattr(m, n, value.astype(current.dtype, copy=True))
        return missing, unexpected

    # -- printing -------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        kids = list(self.named_children())
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not kids:
            return head + ")"
        lines = [head]
        for name, m in kids:
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + "\n)"
