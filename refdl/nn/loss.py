r"""Loss functions (PyTorch's names, arguments, defaults and reductions).

Usage, as in PyTorch::

    crit = CrossEntropyLoss()
    loss = crit(logits, target)      # 0-d array ('mean'/'sum') or per-element ('none')
    dlogits = crit.backward()        # dL/d(input); optionally crit.backward(upstream)

``backward(grad=None)`` returns dL/d(input). ``grad`` is the upstream gradient dJ/dL of
whatever is computed from the loss: a scalar for 'mean' and 'sum' (default 1), and an
array of the loss's own shape for ``reduction='none'``, where it is required: a vector
"loss" has no single gradient, only a vector-Jacobian product with an explicit v
(``backward(v)`` is the gradient of the scalar <v, loss>). Gradients with respect to the
target are not computed.

Every loss here is written as a sum of per-element terms l_i, reduced by

    'none': L = (l_i)_i      'sum': L = sum_i l_i      'mean': L = sum_i l_i / D,

D = the number of terms, except for class-index targets with ``weight`` or
``ignore_index`` (NLLLoss, CrossEntropyLoss), where D = sum of the target classes'
weights over the non-ignored targets (PyTorch's weighted mean). So the backward is always

    dL/dx = dl/dx * u,   u = g / D ('mean'),  g ('sum'),  or the array g ('none').

Inputs are validated before any arithmetic: integer inputs, NaNs, wrong shapes and class
indices out of range raise ValueError naming the loss and the offending values.

Each training-mode call records one ``LossCache(dl_dx, D, l_shape, class_dim)`` and each
``backward`` consumes the newest: a criterion called twice before its backwards holds two
caches, consumed last in, first out. ``dl/dx`` is only computed when the call records
(not in eval mode or under ``refdl.no_grad()``, where the loss value is all one needs).
Derivations: docs/derivations/loss.md.
"""
from typing import NamedTuple, Optional

import numpy as np

from ..functional import activation as F
from .validate import layer_name
from .module import Module

__all__ = ["MSELoss", "L1Loss", "HuberLoss", "SmoothL1Loss", "NLLLoss", "CrossEntropyLoss",
           "BCELoss", "BCEWithLogitsLoss", "KLDivLoss"]

_REDUCTIONS = ("mean", "sum", "none")


class LossCache(NamedTuple):
    """One call of a loss: what dL/dx = dl/dx * u needs (docs/derivations/loss.md)."""
    dl_dx: np.ndarray         # dl_i/dx, the per-term derivative (the input's shape)
    D: float                  # the 'mean' denominator
    l_shape: tuple            # the per-term loss's shape (the 'none' output's)
    class_dim: Optional[int]  # the class axis, re-inserted into u for 'none' (else None)


class LossInputError(TypeError, ValueError):
    """A non-floating input to a loss (both a ValueError and a TypeError)."""


def _first_nan(x):
    idx = np.argwhere(np.isnan(x))[0]
    return tuple(int(i) for i in idx)


class _Loss(Module):
    """Shared plumbing: validation, reduction and the backward u * dl/dx."""

    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be 'mean', 'sum' or "
                             f"'none', got {reduction!r}")
        self.reduction = reduction

    def extra_repr(self):
        return f"reduction={self.reduction!r}"

    # -- validation --------------------------------------------------------------------
    def _check_input(self, x, what="input"):
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except Exception:
                raise LossInputError(f"{layer_name(self)}: expected {what} to be a numpy "
                                     f"array, got {type(x).__name__}") from None
        if not np.issubdtype(x.dtype, np.floating):
            raise LossInputError(f"{layer_name(self)}: expected a floating-point {what} "
                                 f"(float32 or float64), got dtype {x.dtype}")
        if np.isnan(x).any():
            raise ValueError(f"{layer_name(self)}: {what} contains NaN "
                             f"({int(np.isnan(x).sum())} of {x.size} entries, the first at "
                             f"index {_first_nan(x)})")
        return x

    def _check_float_target(self, x, t):
        t = np.asarray(t)
        if not (np.issubdtype(t.dtype, np.floating) or np.issubdtype(t.dtype, np.integer)
                or t.dtype == bool):
            raise ValueError(f"{layer_name(self)}: expected a numeric target, got dtype "
                             f"{t.dtype}")
        if t.shape != x.shape:
            raise ValueError(f"{layer_name(self)}: input and target must have the same "
                             f"shape, got input {tuple(x.shape)} and target {tuple(t.shape)}")
        t = t.astype(x.dtype, copy=False)
        if np.isnan(t).any():
            raise ValueError(f"{layer_name(self)}: target contains NaN "
                             f"({int(np.isnan(t).sum())} of {t.size} entries, the first at "
                             f"index {_first_nan(t)})")
        return t

    def _broadcast_weight(self, w, x, name):
        w = np.asarray(w).astype(x.dtype, copy=False)
        try:
            shape = np.broadcast_shapes(w.shape, x.shape)
        except ValueError:
            shape = None
        if shape != x.shape:
            raise ValueError(f"{layer_name(self)}: {name} of shape {tuple(w.shape)} does not "
                             f"broadcast to the input's shape {tuple(x.shape)}")
        return w

    # -- reduction and backward ----------------------------------------------------------
    def _reduce(self, l, dl_dx, D=None, class_dim=None):
        """Record dl/dx (when recording) and return the reduction of the per-term ``l``.

        ``dl_dx`` is None when the call does not record (nothing computed it).
        """
        D = float(l.size if D is None else D)
        if self.recording:
            self.save_for_backward(LossCache(dl_dx=dl_dx, D=D, l_shape=l.shape,
                                             class_dim=class_dim))
        if self.reduction == "none":
            return l
        total = np.sum(l, dtype=l.dtype)
        if self.reduction == "sum":
            return np.asarray(total, dtype=l.dtype)
        if D == 0:                  # empty batch, or every target ignored: NaN like PyTorch
            return np.asarray(np.nan, dtype=l.dtype)
        return np.asarray(total / D, dtype=l.dtype)

    def _weighted_reduce(self, x, l, dl):
        """BCE's: multiply l (and dl/dx) by ``weight``, cast to x's dtype, then reduce."""
        if self.weight is not None:
            w = self._broadcast_weight(self.weight, x, "weight")
            l = l * w
            dl = None if dl is None else dl * w
        return self._reduce(l.astype(x.dtype, copy=False),
                            None if dl is None else dl.astype(x.dtype, copy=False))

    def backward(self, grad=None):
        r"""dL/d(input) = dl/dx * u, u = grad/D ('mean'), grad ('sum'), the array ('none')."""
        c = self.pop_saved()
        dl = c.dl_dx
        if self.reduction == "none":
            if grad is None:
                raise ValueError(
                    f"{layer_name(self)}.backward: the loss is an array of shape "
                    f"{c.l_shape} (reduction='none'); pass its upstream gradient v of "
                    "that shape (backward(v) is the gradient of the scalar <v, loss>), or "
                    "reduce the loss to a scalar first")
            u = np.asarray(grad)
            if u.shape != c.l_shape:
                raise ValueError(f"{layer_name(self)}.backward: expected grad of shape "
                                 f"{c.l_shape} (the loss's), got {tuple(u.shape)}")
            if c.class_dim is not None:
                u = np.expand_dims(u, c.class_dim)
            return (dl * u).astype(dl.dtype, copy=False)
        if grad is None:
            u = 1.0
        else:
            if np.ndim(grad) != 0:
                raise ValueError(f"{layer_name(self)}.backward: expected a scalar upstream "
                                 f"grad (the loss is a scalar), got shape {np.shape(grad)}")
            u = float(grad)
        if self.reduction in ("mean", "batchmean"):
            u = u / c.D if c.D else 0.0
        return (dl * u).astype(dl.dtype, copy=False)


# -- regression losses -------------------------------------------------------------------
class MSELoss(_Loss):
    r"""Mean squared error  l_i = (x_i - t_i)^2.

    Shapes: input (*), target (*) the same shape -> loss () or (*) for 'none'.
    'mean' divides by the number of elements.
    Backward: dl_i/dx_i = 2 (x_i - t_i)  (times g/numel for 'mean').
    """

    def forward(self, input, target):
        x = self._check_input(input)
        t = self._check_float_target(x, target)
        d = x - t
        return self._reduce(d * d, 2 * d if self.recording else None)


class L1Loss(_Loss):
    r"""Mean absolute error  l_i = |x_i - t_i|.

    Shapes: input (*), target (*) -> loss () or (*) for 'none'.
    Backward: dl_i/dx_i = sign(x_i - t_i)  (0 at x_i = t_i, as PyTorch).
    """

    def forward(self, input, target):
        x = self._check_input(input)
        t = self._check_float_target(x, target)
        d = x - t
        return self._reduce(np.abs(d), np.sign(d) if self.recording else None)


class HuberLoss(_Loss):
    r"""Huber loss  l_i = d^2/2 if |d| < delta else delta (|d| - delta/2),  d = x_i - t_i.

    Shapes: input (*), target (*) -> loss () or (*) for 'none'.
    Backward: dl_i/dx_i = clip(d, -delta, delta)  (quadratic inside, slope +-delta outside).
    """

    def __init__(self, reduction="mean", delta=1.0):
        super().__init__(reduction)
        if not delta > 0:
            raise ValueError(f"HuberLoss: delta must be positive, got {delta}")
        self.delta = float(delta)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, delta={self.delta}"

    def forward(self, input, target):
        x = self._check_input(input)
        t = self._check_float_target(x, target)
        d = x - t
        a = np.abs(d)
        dt = self.delta
        l = np.where(a < dt, 0.5 * d * d, dt * (a - 0.5 * dt)).astype(x.dtype, copy=False)
        return self._reduce(l, np.clip(d, -dt, dt) if self.recording else None)


class SmoothL1Loss(_Loss):
    r"""Smooth L1  l_i = d^2 / (2 beta) if |d| < beta else |d| - beta/2,  d = x_i - t_i.

    Huber's loss divided by beta (HuberLoss(delta=beta) / beta); beta = 0 is L1Loss.
    Shapes: input (*), target (*) -> loss () or (*) for 'none'.
    Backward: dl_i/dx_i = d / beta inside, sign(d) outside (0 at d = 0 when beta = 0).
    """

    def __init__(self, reduction="mean", beta=1.0):
        super().__init__(reduction)
        if not beta >= 0:
            raise ValueError(f"SmoothL1Loss: beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, beta={self.beta}"

    def forward(self, input, target):
        x = self._check_input(input)
        t = self._check_float_target(x, target)
        d = x - t
        a, b = np.abs(d), self.beta
        if b == 0:
            return self._reduce(a, np.sign(d) if self.recording else None)
        l = np.where(a < b, 0.5 * d * d / b, a - 0.5 * b).astype(x.dtype, copy=False)
        dl = np.where(a < b, d / b, np.sign(d)).astype(x.dtype, copy=False) \
            if self.recording else None
        return self._reduce(l, dl)


class KLDivLoss(_Loss):
    r"""KL divergence with the input as log-probabilities, PyTorch's ``KLDivLoss``.

    l_i = t_i (log t_i - x_i)  (0 where t_i = 0), or with ``log_target=True`` (the target
    given as log-probabilities too) l_i = exp(t_i) (t_i - x_i). Summed over a distribution
    this is KL(t || exp x). Reductions: 'mean' (over every element, PyTorch's default,
    which is not the KL), 'batchmean' (the sum over the batch's distributions divided by
    N = input.shape[0]: the mean KL), 'sum', 'none'.
    Shapes: input (*), target (*) -> loss () or (*) for 'none'.
    Backward: dl_i/dx_i = -t_i  (-exp(t_i) with log_target).
    """

    def __init__(self, reduction="mean", log_target=False):
        if reduction not in _REDUCTIONS + ("batchmean",):
            raise ValueError(f"KLDivLoss: reduction must be 'mean', 'batchmean', 'sum' or "
                             f"'none', got {reduction!r}")
        super().__init__("none")
        self.reduction = reduction
        self.log_target = bool(log_target)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, log_target={self.log_target}"

    def forward(self, input, target):
        x = self._check_input(input)
        t = self._check_float_target(x, target)
        if self.log_target:
            p = np.exp(t)
            l = p * (t - x)
        else:
            if np.any(t < 0):
                raise ValueError(f"{layer_name(self)}: target probabilities must be >= 0 "
                                 f"(pass log_target=True for log-probabilities), got "
                                 f"minimum {float(t.min())}")
            p = t
            with np.errstate(divide="ignore", invalid="ignore"):
                l = np.where(t > 0, t * (np.log(np.where(t > 0, t, 1)) - x), 0.0)
        D = (x.shape[0] if x.ndim else 1) if self.reduction == "batchmean" else None
        return self._reduce(l.astype(x.dtype, copy=False),
                            (-p).astype(x.dtype, copy=False) if self.recording else None, D)


# -- classification losses on class indices ----------------------------------------------
class _ClassLoss(_Loss):
    """NLLLoss and CrossEntropyLoss: class dimension 1 (0 for unbatched input)."""

    def __init__(self, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__(reduction)
        if weight is not None:
            weight = np.array(weight, copy=True)
            if weight.ndim != 1 or not np.issubdtype(weight.dtype, np.number):
                raise ValueError(f"{type(self).__name__}: weight must be a 1-D array of one "
                                 f"weight per class, got shape {weight.shape}")
            if not np.issubdtype(weight.dtype, np.floating):
                weight = weight.astype(np.float32)
        self.register_buffer("weight", weight)
        self.ignore_index = int(ignore_index)

    def extra_repr(self):
        s = f"reduction={self.reduction!r}, ignore_index={self.ignore_index}"
        if self.weight is not None:
            s += f", weight={np.array2string(np.asarray(self.weight), precision=4)}"
        return s

    def _check_logits(self, input):
        x = self._check_input(input)
        if x.ndim == 0:
            raise ValueError(f"{layer_name(self)}: expected input of shape (C,), (N, C) or "
                             f"(N, C, d1, ...), got a 0-d array")
        cdim = 0 if x.ndim == 1 else 1
        C = x.shape[cdim]
        if self.weight is not None and self.weight.shape != (C,):
            raise ValueError(f"{layer_name(self)}: weight has shape {self.weight.shape} but "
                             f"the input has {C} classes (shape {tuple(x.shape)}, class "
                             f"dimension {cdim})")
        return x, cdim, C

    def _index_targets(self, x, cdim, C, target):
        """Validate class indices; return (indices with ignored set to 0, keep mask)."""
        t = np.asarray(target)
        want = x.shape[:cdim] + x.shape[cdim + 1:]
        if not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"{layer_name(self)}: expected class indices of an integer "
                             f"dtype and shape {want}, or class probabilities of the input's "
                             f"shape {tuple(x.shape)}, got dtype {t.dtype} and shape "
                             f"{tuple(t.shape)}")
        if t.shape != want:
            raise ValueError(f"{layer_name(self)}: input of shape {tuple(x.shape)} needs "
                             f"target class indices of shape {want}, got {tuple(t.shape)}")
        keep = t != self.ignore_index
        bad = keep & ((t < 0) | (t >= C))
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{layer_name(self)}: target class index {int(t[idx])} (at "
                             f"position {idx}) is out of range for {C} classes (valid: "
                             f"0..{C - 1}, or ignore_index={self.ignore_index})")
        return np.where(keep, t, 0), keep

    def _class_weights(self, x, cdim):
        """weight reshaped to broadcast along the class dimension (or None)."""
        if self.weight is None:
            return None
        shape = [1] * x.ndim
        shape[cdim] = -1
        return np.asarray(self.weight, dtype=x.dtype).reshape(shape)

    def _index_coefficients(self, x, cdim, C, target, smoothing=0.0):
        r"""Dense coefficients a (input's shape) with l_n = -sum_c a_nc logp_nc, and D.

        a_nc = (1-eps) w_{y_n} [c = y_n] + (eps/C) w_c   for kept n, 0 for ignored n;
        D = sum_n w_{y_n} over kept n (or their count without weight).
        """
        t, keep = self._index_targets(x, cdim, C, target)
        onehot = (np.expand_dims(t, cdim) ==
                  np.arange(C).reshape([-1 if i == cdim else 1 for i in range(x.ndim)]))
        keep_c = np.expand_dims(keep, cdim)
        w = self._class_weights(x, cdim)
        a = onehot.astype(x.dtype)
        if w is not None:
            a = a * w
        wy = np.sum(a, axis=cdim) * keep            # w_{y_n}, 0 where ignored
        if smoothing > 0:
            a = (1 - smoothing) * a + (smoothing / C) * (w if w is not None else 1.0)
        a = np.where(keep_c, a, 0).astype(x.dtype, copy=False)
        denom = float(np.sum(wy, dtype=np.float64))
        return a, denom


def _dot_class(a, logp, cdim):
    """sum_c a_c logp_c along cdim, with 0 * (-inf) taken as 0 (no NaN, no warning)."""
    prod = np.multiply(a, logp, out=np.zeros(np.broadcast_shapes(a.shape, logp.shape),
                                             dtype=logp.dtype), where=a != 0)
    return np.sum(prod, axis=cdim)


class NLLLoss(_ClassLoss):
    r"""Negative log-likelihood of class indices, on log-probabilities.

    l_n = -w_{y_n} x_{n, y_n}  (0 where y_n == ignore_index).
    Shapes: input (N, C) or (N, C, d1, ...) or (C,); target (N,), (N, d1, ...) or () of
    integer class indices -> loss () or the target's shape for 'none'.
    'mean' divides by sum_n w_{y_n} over the non-ignored targets (NaN if there are none).
    Backward: dl_n/dx_{n,c} = -w_{y_n} [c = y_n].
    """

    def forward(self, input, target):
        x, cdim, C = self._check_logits(input)
        a, denom = self._index_coefficients(x, cdim, C, target)
        l = -_dot_class(a, x, cdim)
        return self._reduce(l, -a if self.recording else None, denom, class_dim=cdim)


class CrossEntropyLoss(_ClassLoss):
    r"""Cross-entropy of logits: log-softmax along the class dimension, then NLL.

    Class-index targets (integer, shape (N,), (N, d1, ...) or () for input (N, C),
    (N, C, d1, ...) or (C,)), with p = softmax(x) along the class dim, eps = label_smoothing:

        l_n = -(1 - eps) w_{y_n} log p_{n,y_n} - (eps / C) sum_c w_c log p_{n,c}

    (w = 1 without ``weight``; l_n = 0 where y_n == ignore_index), 'mean' divides by
    D = sum_n w_{y_n} over the non-ignored targets (PyTorch's weighted mean).
    Class-probability targets (floating, the input's shape; ``ignore_index`` unused):

        l_n = -sum_c w_c t'_{n,c} log p_{n,c},  t' = (1 - eps) t + eps / C,

    and 'mean' divides by the number of samples N * d1 * ... (not by the weights).
    Both are l_n = -sum_c a_{n,c} log p_{n,c} for coefficients a, and the backward is

        dl_n/dx_{n,c} = p_{n,c} sum_k a_{n,k} - a_{n,c}

    which is softmax(x) - onehot(y) in the plain case.
    Logits of any size are fine: log-softmax subtracts the maximum first.
    Derivation: docs/derivations/loss.md.
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(weight, ignore_index, reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got "
                             f"{label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def extra_repr(self):
        return super().extra_repr() + f", label_smoothing={self.label_smoothing}"

    def forward(self, input, target):
        x, cdim, C = self._check_logits(input)
        eps = self.label_smoothing
        t = np.asarray(target)
        if np.issubdtype(t.dtype, np.floating):
            if t.shape != x.shape:
                raise ValueError(f"{layer_name(self)}: class-probability targets must have "
                                 f"the input's shape {tuple(x.shape)}, got {tuple(t.shape)} "
                                 "(class indices must be integers)")
            t = self._check_float_target(x, t)
            a = (1 - eps) * t + eps / C if eps > 0 else t
            w = self._class_weights(x, cdim)
            if w is not None:
                a = a * w
            a = a.astype(x.dtype, copy=False)
            denom = x.size // C if C else 0
        else:
            a, denom = self._index_coefficients(x, cdim, C, t, eps)
        logp = F.log_softmax(x, axis=cdim)
        l = -_dot_class(a, logp, cdim)
        dl = None
        if self.recording:                   # dl/dx = p sum_k a_k - a
            dl = np.exp(logp) * np.sum(a, axis=cdim, keepdims=True) - a
        return self._reduce(l, dl, denom, class_dim=cdim)


# -- binary classification ---------------------------------------------------------------
class BCELoss(_Loss):
    r"""Binary cross-entropy on probabilities x in [0, 1]:

        l_i = -w_i [t_i log x_i + (1 - t_i) log(1 - x_i)],  each log clamped at >= -100

    (PyTorch's clamp: x = 0 or 1 gives a loss of at most 100 w, never inf).
    Shapes: input (*), target (*) the same shape, weight broadcastable to it -> loss () or
    (*) for 'none'; 'mean' divides by the number of elements.
    Backward (PyTorch's): dl_i/dx_i = w_i (x_i - t_i) / max(x_i (1 - x_i), 1e-12), which
    equals -w t/x + w (1-t)/(1-x) inside (0, 1) and stays finite at 0 and 1.
    Prefer BCEWithLogitsLoss on logits: it is stable where sigmoid saturates.
    """

    def __init__(self, weight=None, reduction="mean"):
        super().__init__(reduction)
        self.register_buffer("weight", None if weight is None else
                             np.array(weight, dtype=np.result_type(np.asarray(weight).dtype,
                                                                   np.float32)))

    def forward(self, input, target):
        x = self._check_input(input)
        t = self._check_float_target(x, target)
        if x.size and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"{layer_name(self)}: input must be probabilities in [0, 1], "
                             f"got values in [{x.min():.6g}, {x.max():.6g}] (use "
                             "BCEWithLogitsLoss for logits)")
        if t.size and not (t.min() >= 0 and t.max() <= 1):     # NaN fails too
            raise ValueError(f"{layer_name(self)}: target must be in [0, 1] (PyTorch: all "
                             f"elements of target should be between 0 and 1), got values "
                             f"in [{np.min(t):.6g}, {np.max(t):.6g}]")
        with np.errstate(divide="ignore"):       # log(0) = -inf, clamped to -100 next
            logx = np.maximum(np.log(x), -100)
            log1mx = np.maximum(np.log1p(-x), -100)
        l = -(t * logx + (1 - t) * log1mx)
        dl = (x - t) / np.maximum(x * (1 - x), 1e-12) if self.recording else None
        return self._weighted_reduce(x, l, dl)


class BCEWithLogitsLoss(_Loss):
    r"""Sigmoid + binary cross-entropy in one stable step, on logits x:

        l_i = -w_i [p t_i log sigma(x_i) + (1 - t_i) log(1 - sigma(x_i))]
            =  w_i [(1 - t_i) x_i + (1 + (p - 1) t_i) softplus(-x_i)]

    with p = pos_weight (broadcast along the last, class dimension; 1 if None) and
    softplus(-x) = max(-x, 0) + log(1 + exp(-|x|)) evaluated without overflow.
    Shapes: input (*), target (*) the same shape; weight and pos_weight broadcastable to
    it -> loss () or (*) for 'none'; 'mean' divides by the number of elements.
    Backward: dl_i/dx_i = w_i [(1 - t_i) sigma(x_i) - p t_i (1 - sigma(x_i))]
    (= w_i (sigma(x_i) - t_i) when p = 1).
    """

    def __init__(self, weight=None, reduction="mean", pos_weight=None):
        super().__init__(reduction)
        as_float = (lambda v: None if v is None else
                    np.array(v, dtype=np.result_type(np.asarray(v).dtype, np.float32)))
        self.register_buffer("weight", as_float(weight))
        self.register_buffer("pos_weight", as_float(pos_weight))

    def forward(self, input, target):
        x = self._check_input(input)
        t = self._check_float_target(x, target)
        sp = -F.log_sigmoid(x)            # softplus(-x) = -log sigma(x)
        s = F.sigmoid(x) if self.recording else None
        dl = None
        if self.pos_weight is None:
            l = (1 - t) * x + sp
            if s is not None:
                dl = s - t
        else:
            p = self._broadcast_weight(self.pos_weight, x, "pos_weight")
            l = (1 - t) * x + (1 + (p - 1) * t) * sp
            if s is not None:
                dl = (1 - t) * s - p * t * (1 - s)
        return self._weighted_reduce(x, l, dl)
