"""Parameter, Module and the containers Sequential and ModuleList.

The contract every layer follows (see ../../shared/DESIGN.md, "A layer"):

* ``forward(*inputs) -> output`` computes the output and caches exactly what ``backward``
  needs (in attributes whose names start with ``_``).
* ``backward(grad_out, *more_grads) -> grad_input`` takes dL/d(output) (one array per
  output, in order; the first positional, the rest optional and zero when omitted),
  *adds* dL/dW into every ``Parameter.grad`` (gradients accumulate, as in PyTorch) and
  returns dL/d(input): one array, or a tuple with one entry per floating-point positional
  input when there are several.
* ``backward`` never updates weights; optimisers do that from ``Parameter.grad``.
"""
from collections import OrderedDict

import numpy as np


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
        self.grad[...] = 0

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer, block, model and loss.

    Parameters and sub-modules assigned as attributes are registered in assignment order,
    so ``named_parameters()`` and ``state_dict()`` give PyTorch's keys (``0.weight``,
    ``encoder.1.bias``, ...). Buffers (running statistics) are registered with
    :meth:`register_buffer` and saved in ``state_dict`` but never trained.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

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

    def backward(self, grad_out, *more):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, *inputs, **kwargs):
        return self.forward(*inputs, **kwargs)

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

    def zero_grad(self):
        """Set every parameter's accumulated gradient to zero."""
        for p in self.parameters():
            p.grad[...] = 0

    def to(self, dtype):
        """Cast every parameter (and its grad) and floating buffer to ``dtype``; returns self."""
        dtype = np.dtype(dtype)
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


class Sequential(Module):
    """Modules applied in order: ``y = m_n(...m_2(m_1(x)))``.

    Backward is the chain rule in reverse: ``g <- m_k.backward(g)`` for k = n, ..., 1.
    Accepts modules as arguments or one OrderedDict of name -> module.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                if not isinstance(m, Module):
                    raise TypeError(f"Sequential: argument {i} is a {type(m).__name__}, "
                                    "not a Module")
                self.add_module(str(i), m)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return Sequential(*mods[idx])
        return mods[idx]

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, grad_out):
        g = grad_out
        for m in reversed(list(self._modules.values())):
            g = m.backward(g)
        return g


class ModuleList(Module):
    """A list of modules whose parameters are registered (keys ``0.weight``, ...).

    It has no forward of its own: the owner decides how its members are applied.
    """

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList.append: expected a Module, got {type(module).__name__}")
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return ModuleList(mods[idx])
        return mods[idx]
