"""Numerically stable elementwise and softmax functions on plain arrays.

They never overflow or warn, whatever the magnitude of the input (logits of +-1e4 and
beyond are fine): exponentials are only ever taken of non-positive numbers.
"""
import numpy as np

__all__ = ["sigmoid", "log_sigmoid", "softplus", "logsumexp", "softmax", "softmax_backward",
           "log_softmax"]


def sigmoid(x):
    """sigma(x) = 1 / (1 + exp(-x)), evaluated as exp(min(x,0)) / (1 + exp(-|x|))."""
    x = np.asarray(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


def log_sigmoid(x):
    """log sigma(x) = min(x, 0) - log(1 + exp(-|x|))."""
    x = np.asarray(x)
    return np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))


def softplus(x, beta=1.0, threshold=20.0):
    """softplus(x) = (1/beta) log(1 + exp(beta x)); linear where beta x > threshold (PyTorch)."""
    x = np.asarray(x)
    bx = beta * x
    stable = (np.maximum(bx, 0) + np.log1p(np.exp(-np.abs(bx)))) / beta
    return np.where(bx > threshold, x, stable)


def logsumexp(x, axis=-1, keepdims=False):
    """log sum_i exp(x_i) = m + log sum_i exp(x_i - m), m = max_i x_i."""
    x = np.asarray(x)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    out = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def softmax(x, axis=-1):
    """softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m),  m = max_j x_j.

    Entries equal to -inf (masked scores) get probability 0; a slice that is entirely -inf
    gives all zeros (PyTorch gives NaN there). A NaN is not a masked entry: its slice stays
    NaN, as does a slice holding +inf (as in PyTorch), so bad numbers are never turned into
    zeros. Never warns.
    """
    x = np.asarray(x)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(m == -np.inf, 0, m)               # a fully masked slice: exp(-inf) = 0
    with np.errstate(invalid="ignore"):            # inf - inf in a slice holding +inf
        z = np.exp(x - m)
    s = np.sum(z, axis=axis, keepdims=True)
    # only slices whose sum is exactly 0 (every entry masked) are set to 0; a NaN slice
    # (NaN != 0) is divided, and stays NaN
    return np.divide(z, s, out=np.zeros_like(z), where=s != 0)


def softmax_backward(y, grad, axis=-1):
    r"""dL/dx from dL/dy = ``grad`` for y = softmax(x): y * (grad - sum_j grad_j y_j).

    (The Jacobian diag(y) - y y^T applied to grad; it is symmetric.)
    """
    return y * (grad - np.sum(grad * y, axis=axis, keepdims=True))


def log_softmax(x, axis=-1):
    """log softmax(x)_i = (x_i - m) - log sum_j exp(x_j - m),  m = max_j x_j.

    Subtracting m first keeps float32 exact where it matters: equal logits of -1e4 give
    exactly -log(n), not -1e4 - (-1e4 + log n) rounded at the spacing of 1e4.
    """
    x = np.asarray(x)
    m = np.max(x, axis=axis, keepdims=True)
    s = x - np.where(np.isfinite(m), m, 0)
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


# -- more elementwise activations (used by refdl.nn.activation) -----------------------------
__all__ += ["relu", "leaky_relu", "elu", "gelu", "gelu_grad", "silu"]

_SQRT_2 = 2.0 ** 0.5                      # Python floats keep float32 float32 (NEP 50)
_SQRT_2_OVER_PI = (2.0 / np.pi) ** 0.5
_INV_SQRT_2PI = 1.0 / (2.0 * np.pi) ** 0.5
_GELU_C = 0.044715


def relu(x):
    """max(x, 0)."""
    x = np.asarray(x)
    return np.maximum(x, 0)


def leaky_relu(x, negative_slope=0.01):
    """x if x >= 0 else negative_slope * x."""
    x = np.asarray(x)
    return np.where(x >= 0, x, negative_slope * x)


def elu(x, alpha=1.0):
    """x if x > 0 else alpha (exp(x) - 1); exp is taken of min(x, 0) only."""
    x = np.asarray(x)
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _erf(x):
    from scipy.special import erf
    return erf(x)


def gelu(x, approximate="none"):
    """GELU(x) = x Phi(x), Phi the standard normal CDF (PyTorch's ``approximate='none'``),
    or 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) with ``approximate='tanh'``."""
    x = np.asarray(x)
    if approximate == "none":
        return x * (0.5 * (1.0 + _erf(x / _SQRT_2)))
    if approximate == "tanh":
        xc = np.clip(x, -100, 100)        # tanh is saturated far earlier; avoids x^3 overflow
        return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (xc + _GELU_C * xc ** 3)))
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu_grad(x, approximate="none"):
    """d GELU / dx:  Phi(x) + x phi(x)  (exact), or for the tanh form, with
    u = sqrt(2/pi)(x + 0.044715 x^3) and t = tanh(u):
    0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)."""
    x = np.asarray(x)
    xc = np.clip(x, -100, 100)            # phi and 1 - t^2 are exactly 0 beyond |x| = 100
    if approximate == "none":
        cdf = 0.5 * (1.0 + _erf(x / _SQRT_2))
        pdf = np.exp(-0.5 * xc * xc) * _INV_SQRT_2PI
        return cdf + xc * pdf
    if approximate == "tanh":
        t = np.tanh(_SQRT_2_OVER_PI * (xc + _GELU_C * xc ** 3))
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * xc * xc)
        return 0.5 * (1.0 + t) + 0.5 * xc * (1.0 - t * t) * du
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def silu(x):
    """SiLU (swish): x sigma(x)."""
    x = np.asarray(x)
    return x * sigmoid(x)
