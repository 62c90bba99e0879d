r"""Explicit L1 and L2 penalties: their value, and their (sub)gradient added to ``p.grad``.

A penalty is a prior in disguise. Minimising  L(w) + penalty(w)  is maximum a posteriori
(MAP) estimation when L(w) = -log p(data | w) and penalty(w) = -log p(w) + const:

    l2_penalty:  lam * sum_i w_i^2     = -log N(w; 0, sigma^2 I) + const, sigma^2 = 1/(2 lam)
                 gradient 2 lam w
    l1_penalty:  lam * sum_i |w_i|     = -log Laplace(w; 0, b) + const,    b = 1/lam
                 subgradient lam sign(w)   (sign(0) = 0, a valid element of [-lam, lam])

(Gaussian prior: -log p(w) = w^2/(2 sigma^2) + log(sqrt(2 pi) sigma); Laplace prior:
-log p(w) = |w|/b + log(2 b).) Derivation: docs/derivations/penalty.md.

Note the factor 2: SGD's ``weight_decay=wd`` adds wd * w to the gradient, which is the
gradient of (wd/2) ||w||^2, i.e. l2_penalty with lam = wd/2.

Usage, after the loss's backward and before the optimiser's step::

    loss = criterion(model(x), y); model.backward(criterion.backward())
    loss = loss + l1_penalty(model.parameters(), 1e-4)    # grads now include lam sign(w)
    opt.step()

Parameters with requires_grad=False are skipped (neither counted nor given a gradient).
"""
import numpy as np

from ..nn.module import Parameter

__all__ = ["l1_penalty", "l2_penalty", "l1_value_and_grad", "l2_value_and_grad", "prox_l1"]


def _params(parameters):
    if isinstance(parameters, Parameter):
        parameters = [parameters]
    ps = list(parameters)
    for p in ps:
        if not isinstance(p, Parameter):
            raise TypeError(f"penalty: expected Parameters, got {type(p).__name__}")
    return [p for p in ps if p.requires_grad]


def _check_lam(lam, name):
    lam = float(lam)
    if not lam >= 0:
        raise ValueError(f"{name}: lam must be >= 0, got {lam}")
    return lam


def l2_value_and_grad(w, lam):
    """(lam * sum w^2, 2 lam w) for one array."""
    w = np.asarray(w)
    return lam * float(np.sum(w * w, dtype=np.float64)), (2 * lam) * w


def l1_value_and_grad(w, lam):
    """(lam * sum |w|, lam sign(w)) for one array; sign(0) = 0 is a valid subgradient."""
    w = np.asarray(w)
    return lam * float(np.sum(np.abs(w), dtype=np.float64)), lam * np.sign(w)


def l2_penalty(parameters, lam):
    """Return lam * sum ||w||_2^2 over ``parameters`` and add 2 lam w to each p.grad."""
    lam = _check_lam(lam, "l2_penalty")
    total = 0.0
    for p in _params(parameters):
        v, g = l2_value_and_grad(p.data, lam)
        total += v
        p.grad += g.astype(p.grad.dtype, copy=False)
    return total


def l1_penalty(parameters, lam):
    """Return lam * sum ||w||_1 over ``parameters`` and add lam sign(w) to each p.grad."""
    lam = _check_lam(lam, "l1_penalty")
    total = 0.0
    for p in _params(parameters):
        v, g = l1_value_and_grad(p.data, lam)
        total += v
        p.grad += g.astype(p.grad.dtype, copy=False)
    return total


def prox_l1(w, threshold):
    r"""Soft thresholding, the proximal map of threshold * ||w||_1:

        prox(w) = argmin_u  1/2 ||u - w||^2 + threshold ||u||_1 = sign(w) max(|w| - threshold, 0)

    One ISTA step for  L(w) + lam ||w||_1  is  w <- prox_l1(w - eta grad L(w), eta lam);
    unlike a subgradient step (l1_penalty + SGD), it lands exactly on 0 (a sparse w).
    """
    w = np.asarray(w)
    return np.sign(w) * np.maximum(np.abs(w) - threshold, 0)
