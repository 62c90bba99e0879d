r"""Weight initialisers with PyTorch's names and formulas (``torch.nn.init``).

Each function fills a Parameter's ``data`` (or an ndarray) in place and returns it. Random
draws come from ``generator`` or refdl's default generator (``refdl.manual_seed``).

fan_in = shape[1] * prod(shape[2:]), fan_out = shape[0] * prod(shape[2:]) (so a
Linear(in, out) weight of shape (out, in) has fan_in = in, and a Conv2d weight
(C_out, C_in/groups, kH, kW) has fan_in = C_in/groups * kH * kW).

==================  ========================================================
xavier_uniform_     U(-a, a),  a = gain * sqrt(6 / (fan_in + fan_out))
xavier_normal_      N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))
kaiming_uniform_    U(-b, b),  b = gain * sqrt(3 / fan_mode)
kaiming_normal_     N(0, std^2), std = gain / sqrt(fan_mode)
orthogonal_         gain * Q, Q from the QR decomposition of a Gaussian matrix
dirac_              identity convolution kernel (one centred 1 per channel)
sparse_             N(0, std^2) with a fraction ``sparsity`` of each column zero
==================  ========================================================

The Xavier variance 2/(fan_in + fan_out) keeps activation and gradient variance constant
through *linear* (or tanh-near-0) layers; the Kaiming variance 2/fan_in compensates for
ReLU zeroing half of its input (E[relu(z)^2] = Var(z)/2). See docs/derivations/init.md.
"""
import math
import numbers

import numpy as np

from .random import get_rng

__all__ = [
    "calculate_gain", "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_",
    "eye_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
    "orthogonal_", "dirac_", "sparse_", "calculate_fan_in_and_fan_out",
]


def _array(tensor):
    # (an ndarray has a ``.data`` attribute too, its raw buffer: test for it first)
    data = tensor if isinstance(tensor, np.ndarray) else getattr(tensor, "data", None)
    if not isinstance(data, np.ndarray):
        raise TypeError(f"init: expected a Parameter or ndarray, got {type(tensor).__name__}")
    return data


def _fill(tensor, values):
    data = _array(tensor)
    data[...] = values
    return tensor


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for a nonlinearity (PyTorch's table).

    linear, conv*, sigmoid: 1;  tanh: 5/3;  relu: sqrt(2);
    leaky_relu: sqrt(2 / (1 + negative_slope^2)) (negative_slope = param, default 0.01);
    selu: 3/4.
    """
    linear_fns = ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                  "conv_transpose2d", "conv_transpose3d", "sigmoid"]
    if nonlinearity in linear_fns:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, numbers.Real) and not isinstance(param, (bool, np.bool_)):
            slope = float(param)
        else:
            raise ValueError(f"calculate_gain: negative_slope {param!r} is not a number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def calculate_fan_in_and_fan_out(tensor):
    shape = _array(tensor).shape
    if len(shape) < 2:
        raise ValueError("fan in and fan out can not be computed for a tensor with fewer "
                         f"than 2 dimensions, got shape {shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fan(tensor, mode):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"init: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor, a=0.0, b=1.0, generator=None):
    """Fill with U(a, b)."""
    data = _array(tensor)
    return _fill(tensor, get_rng(generator).uniform(a, b, size=data.shape))


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    """Fill with N(mean, std^2)."""
    data = _array(tensor)
    return _fill(tensor, get_rng(generator).normal(mean, std, size=data.shape))


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=None):
    """Fill with N(mean, std^2) truncated to [a, b] (by inverse-CDF sampling)."""
    from scipy.special import erf, erfinv
    data = _array(tensor)
    lo = 0.5 * (1 + erf((a - mean) / (std * math.sqrt(2))))
    hi = 0.5 * (1 + erf((b - mean) / (std * math.sqrt(2))))
    u = get_rng(generator).uniform(lo, hi, size=data.shape)
    vals = mean + std * math.sqrt(2) * erfinv(2 * u - 1)
    return _fill(tensor, np.clip(vals, a, b))


def constant_(tensor, val):
    return _fill(tensor, val)


def ones_(tensor):
    return _fill(tensor, 1.0)


def zeros_(tensor):
    return _fill(tensor, 0.0)


def eye_(tensor):
    data = _array(tensor)
    if data.ndim != 2:
        raise ValueError(f"eye_: only 2-D tensors are supported, got shape {data.shape}")
    return _fill(tensor, np.eye(*data.shape))


def xavier_uniform_(tensor, gain=1.0, generator=None):
    """Glorot & Bengio (2010): U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -a, a, generator)


def xavier_normal_(tensor, gain=1.0, generator=None):
    """Glorot & Bengio (2010): N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return normal_(tensor, 0.0, std, generator)


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He et al. (2015): U(-b, b), b = gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity, a).

    A zero-element tensor is left as it is (PyTorch: "a no-op"; its fan may be 0).
    """
    if _array(tensor).size == 0:
        return tensor
    fan = _fan(tensor, mode)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He et al. (2015): N(0, std^2), std = gain / sqrt(fan) (zero-element tensor: no-op)."""
    if _array(tensor).size == 0:
        return tensor
    fan = _fan(tensor, mode)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return normal_(tensor, 0.0, std, generator)


def orthogonal_(tensor, gain=1.0, generator=None):
    """Saxe et al. (2013): a (semi-)orthogonal matrix, rows = shape[0], cols = the rest.

    Q, R = qr(A) for Gaussian A; Q's columns are multiplied by sign(diag(R)) so that Q is
    uniformly (Haar) distributed.
    """
    data = _array(tensor)
    if data.ndim < 2:
        raise ValueError(f"orthogonal_: only tensors with 2 or more dimensions are "
                         f"supported, got shape {data.shape}")
    if data.size == 0:
        return tensor
    rows = data.shape[0]
    cols = data.size // rows
    flat = get_rng(generator).normal(size=(rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return _fill(tensor, gain * q.reshape(data.shape))


def dirac_(tensor, groups=1):
    """Identity-preserving kernel for a 3-, 4- or 5-D conv weight (C_out, C_in/groups, *k).

    W[g * C_out/groups + d, d, centre] = 1 for d < min(C_out/groups, C_in/groups), else 0,
    so a 'same'-padded convolution copies input channel d to output channel d of each group.
    """
    data = _array(tensor)
    if data.ndim not in (3, 4, 5):
        raise ValueError(f"dirac_: only tensors with 3, 4, or 5 dimensions are supported, "
                         f"got shape {data.shape}")
    if data.shape[0] % groups != 0:
        raise ValueError(f"dirac_: dim 0 ({data.shape[0]}) must be divisible by groups "
                         f"({groups})")
    per = data.shape[0] // groups
    data[...] = 0
    centre = tuple(k // 2 for k in data.shape[2:])
    for g in range(groups):
        for d in range(min(per, data.shape[1])):
            data[(g * per + d, d) + centre] = 1
    return tensor


def sparse_(tensor, sparsity, std=0.01, generator=None):
    """Martens (2010): N(0, std^2) entries with ceil(sparsity * rows) zeros in every column."""
    data = _array(tensor)
    if data.ndim != 2:
        raise ValueError(f"sparse_: only tensors with 2 dimensions are supported, got shape "
                         f"{data.shape}")
    rows, cols = data.shape
    num_zeros = int(math.ceil(sparsity * rows))
    rng = get_rng(generator)
    data[...] = rng.normal(0.0, std, size=data.shape)
    for c in range(cols):
        data[rng.permutation(rows)[:num_zeros], c] = 0
    return tensor
