r"""Gradient utilities (``torch.nn.utils``): clip_grad_norm_, clip_grad_value_.

Both act in place on ``p.grad`` of the given Parameters, after backward and before the
optimiser's step. Frozen parameters (``requires_grad=False``) are left out, as PyTorch
leaves them out (their grad is None there).

clip_grad_norm_ (PyTorch's formula)::

    total = || (||g_1||_p, ..., ||g_k||_p) ||_p        (= max_i max |g_i| for p = inf)
    coef  = min(max_norm / (total + 1e-6), 1)
    g_i  <- coef * g_i                                  for every i

The direction of the whole gradient is kept; only its length is capped at ~max_norm. This
is the standard remedy for exploding gradients in RNNs (Pascanu et al., 2013).

clip_grad_value_::

    g <- clip(g, -clip_value, clip_value)               elementwise (changes the direction)
"""
import math

import numpy as np

from .module import Parameter

__all__ = ["clip_grad_norm_", "clip_grad_value_", "grad_norm"]


def _grads(parameters):
    if isinstance(parameters, Parameter):
        parameters = [parameters]
    out = []
    for p in parameters:
        if not isinstance(p, Parameter):
            raise TypeError(f"expected Parameters, got {type(p).__name__}")
        if p.requires_grad and p.grad is not None:
            out.append(p.grad)
    return out


def _norm(a, p):
    """||a||_p of one array, in float64, without overflow for huge finite entries."""
    a = np.abs(np.asarray(a, dtype=np.float64)).reshape(-1)
    if a.size == 0:
        return 0.0
    if np.isnan(a).any():
        return math.nan
    s = float(a.max())
    if p == math.inf:
        return s
    if s == 0.0 or math.isinf(s):
        return s
    r = a / s                                   # entries in [0, 1]: no overflow
    if p == 1.0:
        return s * float(r.sum())
    if p == 2.0:
        return s * math.sqrt(float(np.dot(r, r)))
    return s * float(np.sum(r ** p)) ** (1.0 / p)


def _total_norm(grads, norm_type):
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"clip_grad_norm_: norm_type must be > 0 or inf, got {norm_type}")
    norms = [_norm(g, norm_type) for g in grads]
    return _norm(np.array(norms, dtype=np.float64), norm_type) if norms else 0.0


def grad_norm(parameters, norm_type=2.0):
    """The total p-norm of the gradients, as clip_grad_norm_ computes it (no clipping)."""
    return _total_norm(_grads(parameters), norm_type)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Rescale the gradients so that their total ``norm_type``-norm is at most max_norm.

    parameters: a Parameter or an iterable of Parameters. Returns the total norm of the
    gradients *before* clipping (a float; PyTorch returns a 0-d tensor).
    With ``error_if_nonfinite=True`` a NaN or infinite total norm raises RuntimeError;
    otherwise the gradients are scaled by max_norm / (inf + 1e-6) = 0 (or NaN).
    """
    grads = _grads(parameters)
    max_norm = float(max_norm)
    norm_type = float(norm_type)
    if not max_norm >= 0:        # also NaN: a negative factor would flip the gradient
        raise ValueError(f"clip_grad_norm_: max_norm must be non-negative, got {max_norm} "
                         "(a negative max_norm would reverse the gradients: training "
                         "would ascend the loss)")
    total = _total_norm(grads, norm_type)
    if not grads:
        return 0.0
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is "
            "non-finite, so it cannot be clipped. To disable this error and scale the "
            "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`")
    coef = max_norm / (total + 1e-6) if not math.isnan(total) else math.nan
    coef = min(coef, 1.0) if not math.isnan(coef) else coef
    with np.errstate(invalid="ignore"):       # inf * 0 -> nan, as in PyTorch
        for g in grads:
            g *= coef
    return total


def clip_grad_value_(parameters, clip_value):
    """Clip every gradient entry to [-clip_value, clip_value] in place."""
    clip_value = float(clip_value)
    if clip_value < 0:
        raise ValueError(f"clip_grad_value_: clip_value must be >= 0, got {clip_value}")
    for g in _grads(parameters):
        np.clip(g, -clip_value, clip_value, out=g)
