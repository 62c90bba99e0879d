"""Numerically stable elementwise and softmax functions on plain arrays.

They never overflow or warn, whatever the magnitude of the input (logits of +-1e4 and
beyond are fine): exponentials are only ever taken of non-positive numbers.
"""
import numpy as np

__all__ = ["sigmoid", "log_sigmoid", "softplus", "logsumexp", "softmax", "log_softmax"]


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
    """softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m)."""
    x = np.asarray(x)
    z = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return z / np.sum(z, axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    """log softmax(x)_i = x_i - logsumexp(x)."""
    x = np.asarray(x)
    return x - logsumexp(x, axis=axis, keepdims=True)
