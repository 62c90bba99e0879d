"""The containers: Sequential, ModuleList, ModuleDict, ParameterList, ParameterDict.

Modules that hold other modules (or parameters) and register them, so that
``named_parameters()`` and ``state_dict()`` give PyTorch's keys (``0.weight``,
``heads.cls.bias``, ...). Only :class:`Sequential` has a forward and a backward (the chain
rule in reverse); the others leave it to their owner.
"""
from collections import OrderedDict

from .module import Module, Parameter

__all__ = ["backward_chain", "Sequential", "ModuleList", "ModuleDict", "ParameterList",
           "ParameterDict"]


def backward_chain(modules, grad_out, input_grad=True):
    """The chain rule through ``modules`` applied in order: each one's backward, last
    first; returns dL/dx of the first one's input. With ``input_grad=False`` it returns
    None, and a first module that accepts_input_grad skips computing it (as PyTorch skips
    the gradient of data that does not require grad); the others still compute theirs."""
    g = grad_out
    for m in reversed(modules[1:]):
        g = m.backward(g)
    if not modules:
        return g if input_grad else None
    if not input_grad and modules[0].accepts_input_grad:
        return modules[0].backward(g, input_grad=False)
    g = modules[0].backward(g)
    return g if input_grad else None


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

    accepts_input_grad = True

    def backward(self, grad_out, input_grad=True):
        """The layers' backward in reverse order: see :func:`backward_chain`."""
        return backward_chain(list(self._modules.values()), grad_out, input_grad)


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


class _RegistryDict(Module):
    """The dict protocol of ModuleDict and ParameterDict over one of Module's registries
    (``_registry``: "_modules" or "_parameters"); the subclass says how a member is set."""

    _registry = None

    def __init__(self, members=None):
        super().__init__()
        if members is not None:
            self.update(members)

    def _members(self):
        return self.__dict__[self._registry]

    def __getitem__(self, key):
        return self._members()[key]

    def __contains__(self, key):
        return key in self._members()

    def __len__(self):
        return len(self._members())

    def __iter__(self):
        return iter(self._members())

    def keys(self):
        return self._members().keys()

    def values(self):
        return self._members().values()

    def items(self):
        return self._members().items()

    def update(self, members):
        items = members.items() if hasattr(members, "items") else members
        for key, value in items:
            self[key] = value


class ModuleDict(_RegistryDict):
    """An ordered dict of modules whose parameters are registered (keys ``name.weight``).

    Like ModuleList it has no forward of its own: the owner decides how its members are
    applied (``self.heads[task](x)``). Supports ``[]``, ``in``, ``len``, iteration over the
    keys, ``keys()``, ``values()``, ``items()``, ``update()`` and ``pop()``.
    """

    _registry = "_modules"

    def __setitem__(self, key, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleDict: {key!r} must be a Module, got "
                            f"{type(module).__name__}")
        self.add_module(key, module)

    def __delitem__(self, key):
        del self._modules[key]
        object.__delattr__(self, key)

    def pop(self, key):
        module = self._modules[key]
        del self[key]
        return module


class ParameterList(Module):
    """A list of Parameters registered under the keys ``0``, ``1``, ... (PyTorch's name).

    Arrays are wrapped in a Parameter on the way in. Supports ``[]``, ``len``, iteration,
    ``append`` and ``extend``.
    """

    def __init__(self, values=None):
        super().__init__()
        for v in values or ():
            self.append(v)

    def append(self, value):
        self.register_parameter(str(len(self._parameters)), _as_parameter(value))
        return self

    def extend(self, values):
        for v in values:
            self.append(v)
        return self

    def __getitem__(self, idx):
        return list(self._parameters.values())[idx]

    def __setitem__(self, idx, value):
        key = str(range(len(self._parameters))[idx])
        self.register_parameter(key, _as_parameter(value))

    def __len__(self):
        return len(self._parameters)

    def __iter__(self):
        return iter(self._parameters.values())

    def extra_repr(self):
        return ", ".join(f"{k}: {tuple(p.shape)}" for k, p in self._parameters.items())


class ParameterDict(_RegistryDict):
    """An ordered dict of Parameters registered under their keys (PyTorch's name)."""

    _registry = "_parameters"

    def __setitem__(self, key, value):
        if not isinstance(key, str) or not key or "." in key:
            raise KeyError(f"ParameterDict: keys must be non-empty strings without '.', "
                           f"got {key!r}")
        self.register_parameter(key, _as_parameter(value))


def _as_parameter(value):
    return value if isinstance(value, Parameter) else Parameter(value)

