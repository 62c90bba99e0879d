"""refdl.autograd: a small reverse-mode engine whose gradients are graphs.

    from refdl.autograd import Tensor, grad
    x = Tensor([1.0, 2.0], requires_grad=True)
    y = (x ** 3).sum()
    (g,) = grad(y, x, create_graph=True)     # 3 x^2, itself a graph
    (h,) = grad(g.sum(), x)                  # 6 x

See tensor.py (Tensor, the engine), ops.py (the operations), methods.py (Tensor's operators
and methods, written with the ops), functional.py (layers and losses written with the ops)
and bridge.py (module calls are nodes too: a refdl.nn module called on Tensors records one
node whose gradient is the module's hand-derived backward, docs/autograd-modules.md).
Derivation: docs/derivations/autograd.md
"""
from .tensor import Op, Tensor, as_tensor, grad, is_grad_enabled, no_grad, param_tensor, tensor
from . import ops
from . import methods  # installs Tensor's operators and methods (x + y, x.sum(), ...)
from . import functional
from . import bridge
from .bridge import call_module
from .ops import (broadcast_to, cat, erf, exp, log, logsumexp, matmul, maximum, mean, mse,
                  relu, reshape, sigmoid, stack, summation, tanh, transpose)
from ..nn import module as _nn_module

# the bridge: nn modules called on Tensors record one node each (imports point down: nn
# only holds these hooks, set here)
_nn_module._TENSOR_TYPES = (Tensor,)
_nn_module._bridge_hook = bridge._hook
_nn_module._as_tensor = param_tensor

__all__ = ["Tensor", "Op", "grad", "no_grad", "is_grad_enabled", "tensor", "ops",
           "functional", "exp", "log", "tanh", "sigmoid", "relu", "erf", "maximum",
           "matmul", "summation", "mean", "reshape", "transpose", "broadcast_to",
           "logsumexp", "mse", "cat", "stack", "as_tensor", "param_tensor", "bridge",
           "call_module"]
