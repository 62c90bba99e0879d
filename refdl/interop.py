"""The way out to PyTorch, and the way back: ``to_torch(module)`` and ``from_torch(module)``.

refdl follows PyTorch's names, arguments and ``state_dict`` keys, so a refdl layer has a
PyTorch twin built from the same constructor arguments, and the weights carry over by
key. Three kinds of module convert:

* **twins**: a refdl.nn layer whose class name exists in ``torch.nn`` (Linear, Conv2d,
  BatchNorm2d, LSTM, MultiheadAttention, ...), built from the arguments the refdl layer
  was constructed with (refdl-only ones such as ``generator`` are dropped);
* **containers**: Sequential, ModuleList, ModuleDict (and refdl models that are
  Sequentials, such as the MLP), converted child by child;
* **composite blocks and the registered models** (LeNet5, VGGSmall, ResNet and its
  blocks, the recurrent classifiers): a ``torch.nn.Module`` with the converted children
  under the same names and a forward written here in torch ops, line for line the refdl
  forward.

``from_torch`` converts twins and containers back, and anything ``to_torch`` made (it
remembers the refdl class and arguments). For any other PyTorch model whose architecture
a refdl model mirrors, build the refdl model and load the weights:
``model.load_state_dict(state_dict_from_torch(torch_model))``.

PyTorch is imported when these functions are called, never at ``import refdl``.
"""
import inspect

import numpy as np

from .nn.container import ModuleDict, ModuleList, Sequential
from .nn.module import Module

__all__ = ["to_torch", "from_torch", "state_dict_to_torch", "state_dict_from_torch",
           "InteropError"]

_REFDL_ONLY_ARGS = {"generator", "dtype"}


class InteropError(TypeError):
    """A module that has no PyTorch counterpart here (or the reverse)."""


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("refdl.interop needs PyTorch: pip install torch") from None
    return torch


def state_dict_to_torch(state_dict, dtype=None):
    """refdl's ``state_dict()`` (name -> ndarray) as torch tensors (copies), same keys."""
    torch = _torch()
    return {k: torch.tensor(np.ascontiguousarray(v), dtype=dtype)
            for k, v in state_dict.items()}


def state_dict_from_torch(module_or_state_dict):
    """A torch module's (or state dict's) tensors as NumPy arrays under the same keys."""
    sd = module_or_state_dict.state_dict() if hasattr(module_or_state_dict, "state_dict") \
        else module_or_state_dict
    return {k: v.detach().cpu().numpy().copy() for k, v in sd.items()}


def _torch_dtype(module):
    torch = _torch()
    for p in module.parameters():
        return torch.float64 if p.data.dtype == np.float64 else torch.float32
    return torch.float32


# -- refdl -> torch ----------------------------------------------------------------------------

def _twin_class(module):
    torch = _torch()
    cls = type(module)
    if not cls.__module__.startswith("refdl.nn."):
        return None
    return getattr(torch.nn, cls.__name__, None)


def _convert_arg(value):
    if isinstance(value, Module):
        return to_torch(value)
    if isinstance(value, (list, tuple)) and any(isinstance(v, Module) for v in value):
        return type(value)(_convert_arg(v) for v in value)
    return value


def _init_args(module):
    if module._init_args is None:
        raise InteropError(f"to_torch: {type(module).__name__} was constructed with an "
                           "argument that is not a plain value (an iterator?); construct it "
                           "with lists and values to convert it")
    return module._init_args


def _build_twin(module, twin):
    args, kwargs = _init_args(module)
    params = inspect.signature(twin.__init__).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    kwargs = {k: _convert_arg(v) for k, v in kwargs.items()
              if k not in _REFDL_ONLY_ARGS and (takes_any or k in params)}
    return twin(*[_convert_arg(a) for a in args], **kwargs)


def _copy_weights(src, dst):
    """Copy refdl ``src``'s parameters and buffers into torch module ``dst`` by key."""
    torch = _torch()
    theirs = dst.state_dict()
    ours = src.state_dict()
    missing = [k for k in theirs if k not in ours]
    extra = [k for k in ours if k not in theirs]
    if missing or extra:
        raise InteropError(f"to_torch({type(src).__name__}): state_dict keys differ: "
                           f"PyTorch's twin has {missing} that refdl lacks, refdl has {extra}")
    new = {k: (torch.tensor(np.asarray(ours[k]), dtype=theirs[k].dtype)
               if k in ours else theirs[k]) for k in theirs}
    dst.load_state_dict(new)


def _seq_children(self, x):
    for child in self.children():
        x = child(x)
    return x


def _ordered_children(self, x):
    for name in self.refdl_attrs["_order"]:
        x = getattr(self, name)(x)
    return x


def _residual_block(self, x):
    names = [n for n, _ in self.named_children() if n not in ("downsample",)]
    relu_out = names[-1]                         # relu2 (BasicBlock) or relu3 (Bottleneck)
    h = x
    for n in names[:-1]:
        h = getattr(self, n)(h)
    if self.refdl_attrs["residual"]:
        downsample = self._modules.get("downsample")
        h = h + (x if downsample is None else downsample(x))
    return getattr(self, relu_out)(h)


def _rnn_classifier(self, x):
    torch = _torch()
    out, state = self.rnn(x)
    h_n = state[0] if self.refdl_attrs["cell"] == "lstm" else state
    D = 2 if self.rnn.bidirectional else 1
    return self.fc(torch.cat(list(h_n[-D:]), dim=-1))


# refdl class name -> (forward in torch ops, refdl attributes that forward reads)
_FORWARDS = {
    "LeNet5": (_seq_children, ()),
    "VGG": (_seq_children, ()),
    "ResNet": (_ordered_children, ("_order",)),
    "ResNetSmall": (_ordered_children, ("_order",)),
    "BasicBlock": (_residual_block, ("residual",)),
    "Bottleneck": (_residual_block, ("residual",)),
    "RNNClassifier": (_rnn_classifier, ("cell",)),
    "GRUClassifier": (_rnn_classifier, ("cell",)),
    "LSTMClassifier": (_rnn_classifier, ("cell",)),
    "ElmanClassifier": (_rnn_classifier, ("cell",)),
}


def _converted_class():
    torch = _torch()

    class Converted(torch.nn.Module):
        """A refdl composite as a torch module: same children, same keys, torch forward."""

        def __init__(self, refdl_module, forward, attrs):
            super().__init__()
            self.refdl_class = type(refdl_module)
            self.refdl_init_args = _init_args(refdl_module)
            self.refdl_attrs = {a: getattr(refdl_module, a) for a in attrs}
            self._forward = forward

        def forward(self, x):
            return self._forward(self, x)

        def extra_repr(self):
            return f"from refdl {self.refdl_class.__name__}"

    return Converted


def to_torch(module):
    """The PyTorch module equivalent to refdl ``module``, weights and buffers copied.

    The result has the same ``state_dict`` keys, the parameters' dtype, and the module's
    train/eval mode. Raises :class:`InteropError` for a module with no counterpart.
    """
    torch = _torch()
    if not isinstance(module, Module):
        raise InteropError(f"to_torch: expected a refdl Module, got {type(module).__name__}")
    twin = _twin_class(module)
    name = type(module).__name__
    if twin is not None and not isinstance(module, (Sequential, ModuleList, ModuleDict)):
        out = _build_twin(module, twin)
        # for the way back: torch does not keep every constructor argument as an attribute
        out.refdl_class, out.refdl_init_args = type(module), _init_args(module)
    elif isinstance(module, Sequential):
        out = torch.nn.Sequential()
        for n, child in module.named_children():
            out.add_module(n, to_torch(child))
        if type(module) is not Sequential:      # a model that is a Sequential (the MLP)
            out.refdl_class, out.refdl_init_args = type(module), _init_args(module)
    elif isinstance(module, ModuleList):
        out = torch.nn.ModuleList([to_torch(c) for c in module])
    elif isinstance(module, ModuleDict):
        out = torch.nn.ModuleDict({k: to_torch(c) for k, c in module.items()})
    elif name in _FORWARDS:
        forward, attrs = _FORWARDS[name]
        out = _converted_class()(module, forward, attrs)
        for n, child in module._modules.items():
            out.add_module(n, None if child is None else to_torch(child))
        for n, p in module._parameters.items():
            out.register_parameter(n, None if p is None else torch.nn.Parameter(
                torch.tensor(p.data), requires_grad=p.requires_grad))
    else:
        raise InteropError(
            f"to_torch: no PyTorch counterpart for {name}; the layers with a twin in "
            "torch.nn, the containers and the models "
            f"{', '.join(sorted(_FORWARDS))} convert")
    out = out.to(_torch_dtype(module))
    _copy_weights(module, out)
    for p_ours, (_, p_theirs) in zip(module.parameters(), out.named_parameters()):
        p_theirs.requires_grad_(p_ours.requires_grad)
    return out.train(module.training)


# -- torch -> refdl ----------------------------------------------------------------------------

def _init_kwargs_from_torch(tmod, cls):
    """Constructor arguments of refdl ``cls`` read off torch module ``tmod``'s attributes."""
    kwargs = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) \
                or name in _REFDL_ONLY_ARGS:
            continue
        if name == "bias" and hasattr(tmod, "bias") and not isinstance(
                getattr(tmod, "bias"), bool):
            kwargs[name] = getattr(tmod, "bias") is not None
        elif hasattr(tmod, name):
            value = getattr(tmod, name)
            kwargs[name] = from_torch(value) if _is_torch_module(value) else value
        elif p.default is p.empty:
            raise InteropError(f"from_torch: cannot read {cls.__name__}'s argument {name!r} "
                               f"from {type(tmod).__name__}")
    return kwargs


def _is_torch_module(x):
    torch = _torch()
    return isinstance(x, torch.nn.Module)


def from_torch(module):
    """The refdl module equivalent to torch ``module``, weights and buffers copied.

    Converts torch.nn layers that refdl has (same class name), Sequential, ModuleList,
    ModuleDict, and every module :func:`to_torch` produced. The dtype follows the torch
    parameters (float64 stays float64, anything else becomes float32).
    """
    from . import nn as rnn
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise InteropError(f"from_torch: expected a torch.nn.Module, got "
                           f"{type(module).__name__}")
    name = type(module).__name__
    if hasattr(module, "refdl_class"):                      # made by to_torch
        args, kwargs = module.refdl_init_args
        out = module.refdl_class(*args, **kwargs)
    elif isinstance(module, torch.nn.Sequential):
        out = rnn.Sequential(*[from_torch(c) for c in module])
    elif isinstance(module, torch.nn.ModuleList):
        out = rnn.ModuleList([from_torch(c) for c in module])
    elif isinstance(module, torch.nn.ModuleDict):
        out = rnn.ModuleDict({k: from_torch(c) for k, c in module.items()})
    elif hasattr(rnn, name) and isinstance(getattr(rnn, name), type) \
            and issubclass(getattr(rnn, name), Module):
        cls = getattr(rnn, name)
        out = cls(**_init_kwargs_from_torch(module, cls))
    else:
        raise InteropError(
            f"from_torch: refdl has no {name}; build the refdl model that mirrors it and "
            "call model.load_state_dict(refdl.interop.state_dict_from_torch(module))")
    dtype = np.float64 if any(p.dtype == torch.float64 for p in module.parameters()) \
        else np.float32
    out.to(dtype)
    out.load_state_dict(state_dict_from_torch(module))
    for (_, p_theirs), p_ours in zip(module.named_parameters(), out.parameters()):
        p_ours.requires_grad = p_theirs.requires_grad
    return out.train(module.training)
