r"""Layers and losses written with the engine's ops (no hand-derived backward here).

They are the 'independent second opinion' on refdl.nn: the gradients come from the chain
rule over the ops, so tests/test_autograd_crosscheck.py can compare them with the
hand-derived ``backward`` of each layer.
"""
import math

from . import ops
from .tensor import Tensor

__all__ = ["linear", "relu", "leaky_relu", "elu", "sigmoid", "tanh", "softplus", "silu",
           "gelu", "softmax", "log_softmax", "mse_loss", "cross_entropy"]


def linear(x, weight, bias=None):
    """y = x W^T + b  (x (*, in), W (out, in), b (out,))."""
    y = ops.matmul(x, ops.transpose(weight))
    return y if bias is None else y + bias


def relu(x):
    return ops.relu(x)


def leaky_relu(x, negative_slope=0.01):
    return ops.relu(x) - negative_slope * ops.relu(-x)


def elu(x, alpha=1.0):
    """x for x > 0, alpha (exp(x) - 1) otherwise; exp only sees min(x, 0) (no overflow)."""
    return ops.relu(x) + alpha * (ops.exp(-ops.relu(-x)) - 1.0)


def sigmoid(x):
    return ops.sigmoid(x)


def tanh(x):
    return ops.tanh(x)


def softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log(1 + exp(-|x|))."""
    absx = ops.relu(x) + ops.relu(-x)
    return ops.relu(x) + ops.log(1.0 + ops.exp(-absx))


def silu(x):
    return x * ops.sigmoid(x)


def gelu(x, approximate="none"):
    """x Phi(x) with Phi(x) = (1 + erf(x / sqrt 2)) / 2, or PyTorch's tanh approximation."""
    if approximate == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)
        return 0.5 * x * (1.0 + ops.tanh(inner))
    return 0.5 * x * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))


def log_softmax(x, axis=-1):
    lse = ops.logsumexp(x, axis=axis, keepdims=True)
    return x - lse


def softmax(x, axis=-1):
    return ops.exp(log_softmax(x, axis))


def mse_loss(input, target):
    """mean((input - target)^2) over every entry (the MSE op)."""
    return ops.mse(input, target)


def cross_entropy(logits, target):
    """PyTorch's CrossEntropyLoss (mean): -(1/N) sum_n log softmax(logits_n)[target_n].

    logits (N, C), target (N,) integer class indices.
    """
    import numpy as np
    target = np.asarray(target.data if isinstance(target, Tensor) else target)
    n = logits.shape[0]
    logp = log_softmax(logits, axis=1)
    picked = logp[np.arange(n), target.astype(np.intp)]
    return -ops.summation(picked) / float(n)
