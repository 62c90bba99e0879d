r"""Optimisers with PyTorch's names, arguments and update rules (``torch.optim``).

An optimiser holds ``param_groups``: a list of dicts, each with a ``"params"`` list of
refdl Parameters and that group's hyper-parameters (``lr``, ``weight_decay``, ...). It is
built from an iterable of Parameters (one group) or a list of dicts (one group each;
missing keys take the constructor's values), exactly as in PyTorch::

    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = Adam([{"params": body.parameters()},
                {"params": head.parameters(), "lr": 1e-2}], lr=1e-3)

    for x, y in loader:
        opt.zero_grad()
        loss = criterion(model(x), y)
        model.backward(criterion.backward())
        opt.step()

``step()`` reads ``p.grad`` and updates ``p.data`` in place, in ``p.data``'s dtype.
Parameters with ``requires_grad=False`` are skipped (PyTorch skips them because their
grad is None). Per-parameter state (moment estimates, step counts) lives in
``optimizer.state[p]``; ``state_dict()`` stores it keyed by the parameter's index
(counted across groups in order), so a checkpoint resumes bit for bit.

Every update rule is PyTorch's documented pseudo-code, copied into each class's docstring
(g_t = gradient, theta = parameter, gamma = lr, lambda = weight_decay). Derivations and
the difference between Adam's L2 and AdamW's decoupled decay: docs/derivations/optim.md.
"""
import math

import numpy as np

from ..nn.utils import clip_grad_norm_, clip_grad_value_
from . import lr_scheduler
from .optimizer import Optimizer, _check_nonneg, required  # noqa: F401
from .penalty import l1_penalty, l2_penalty, prox_l1

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "NAdam", "RMSprop", "Adagrad", "Adadelta",
           "clip_grad_norm_", "clip_grad_value_", "l1_penalty", "l2_penalty", "prox_l1",
           "lr_scheduler"]


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, Nesterov and weight decay.

    PyTorch's pseudo-code (gamma = lr, mu = momentum, tau = dampening,
    lambda = weight_decay), for t = 1, 2, ...::

        g_t <- grad f_t(theta_{t-1})            (-grad if maximize; see below)
        if lambda != 0:  g_t <- g_t + lambda theta_{t-1}
        if mu != 0:
            if t > 1:  b_t <- mu b_{t-1} + (1 - tau) g_t
            else:      b_t <- g_t
            if nesterov:  g_t <- g_t + mu b_t
            else:         g_t <- b_t
        theta_t <- theta_{t-1} - gamma g_t

    ``maximize=True`` negates the gradient first (as PyTorch's implementation does), so
    weight decay still pulls towards zero while the objective is ascended.
    Momentum buffer: ``state[p]["momentum_buffer"]``.

    Note the momentum buffer holds gradients, not velocities: the step is gamma b_t. With
    mu = beta1 and tau = 0, (1 - beta1) b_t is Adam's first moment m_t, so Adam without its
    second moment is SGD(lr=gamma (1 - beta1), momentum=beta1). (With
    tau = 1 - beta1 instead, the first step differs: b_1 = g_1 is never damped.)
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, maximize=False):
        for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            _check_nonneg(name, v, "SGD")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def _update(self, p, grad, state, group):
        lr, mu = float(group["lr"]), float(group["momentum"])
        tau, wd = float(group["dampening"]), float(group["weight_decay"])
        g = -grad if group["maximize"] else grad
        if wd != 0:
            g = g + wd * p.data
        if mu != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = np.array(g, dtype=p.data.dtype, copy=True)
                state["momentum_buffer"] = buf
            else:
                buf *= mu
                buf += (1 - tau) * g
            g = g + mu * buf if group["nesterov"] else buf
        p.data -= lr * g


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015), with optional L2 weight decay and AMSGrad.

    PyTorch's pseudo-code (gamma = lr, beta1, beta2 = betas, lambda = weight_decay),
    m_0 = v_0 = v_0^max = 0, for t = 1, 2, ...::

        g_t <- grad f_t(theta_{t-1})            (-grad if maximize)
        if lambda != 0:  g_t <- g_t + lambda theta_{t-1}
        m_t <- beta1 m_{t-1} + (1 - beta1) g_t
        v_t <- beta2 v_{t-1} + (1 - beta2) g_t^2
        m^_t <- m_t / (1 - beta1^t)
        if amsgrad:
            v_t^max <- max(v_{t-1}^max, v_t)
            v^_t <- v_t^max / (1 - beta2^t)
        else:
            v^_t <- v_t / (1 - beta2^t)
        theta_t <- theta_{t-1} - gamma m^_t / (sqrt(v^_t) + eps)

    Evaluated in PyTorch's order: denom = sqrt(v_t) / sqrt(1 - beta2^t) + eps,
    theta <- theta - (gamma / (1 - beta1^t)) m_t / denom.
    State: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v), ``max_exp_avg_sq`` (amsgrad).
    """

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, maximize=False):
        name = type(self).__name__
        _check_nonneg("lr", lr, name)
        _check_nonneg("eps", eps, name)
        _check_nonneg("weight_decay", weight_decay, name)
        b1, b2 = betas
        if not 0.0 <= b1 < 1.0 or not 0.0 <= b2 < 1.0:
            raise ValueError(f"{name}: invalid betas {betas!r} (each must be in [0, 1))")
        super().__init__(params, dict(lr=lr, betas=(b1, b2), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    def _update(self, p, grad, state, group):
        lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        b1, b2 = (float(b) for b in group["betas"])
        g = -grad if group["maximize"] else grad
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        if wd != 0:
            if self._decoupled:
                p.data *= 1 - lr * wd                      # AdamW: theta <- theta - gamma lambda theta
            else:
                g = g + wd * p.data                        # Adam: L2 folded into the gradient
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        bc1 = 1 - b1 ** t
        bc2_sqrt = math.sqrt(1 - b2 ** t)
        if group["amsgrad"]:
            vmax = state["max_exp_avg_sq"]
            np.maximum(vmax, v, out=vmax)
            denom = np.sqrt(vmax) / bc2_sqrt + eps
        else:
            denom = np.sqrt(v) / bc2_sqrt + eps
        p.data -= (lr / bc1) * (m / denom)


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    PyTorch's pseudo-code: as :class:`Adam` without the L2 term in g_t, and first::

        theta_t <- theta_{t-1} - gamma lambda theta_{t-1}

    then m_t, v_t, m^_t, v^_t (and v_t^max with amsgrad) exactly as Adam, and
    theta_t <- theta_t - gamma m^_t / (sqrt(v^_t) + eps). Default weight_decay = 1e-2.

    The decay is not divided by sqrt(v^_t): every weight shrinks by the same factor
    (1 - gamma lambda), whereas Adam's L2 term is rescaled per coordinate.
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize)


class RMSprop(Optimizer):
    r"""RMSprop (Hinton's lecture 6e), optionally centered and with momentum.

    PyTorch's pseudo-code (gamma = lr, alpha = smoothing constant, mu = momentum,
    lambda = weight_decay), v_0 = 0, b_0 = 0, g^ave_0 = 0, for t = 1, 2, ...::

        g_t <- grad f_t(theta_{t-1})            (-grad if maximize)
        if lambda != 0:  g_t <- g_t + lambda theta_{t-1}
        v_t <- alpha v_{t-1} + (1 - alpha) g_t^2
        v~_t <- v_t
        if centered:
            g^ave_t <- alpha g^ave_{t-1} + (1 - alpha) g_t
            v~_t <- v~_t - (g^ave_t)^2
        if mu > 0:
            b_t <- mu b_{t-1} + g_t / (sqrt(v~_t) + eps)
            theta_t <- theta_{t-1} - gamma b_t
        else:
            theta_t <- theta_{t-1} - gamma g_t / (sqrt(v~_t) + eps)

    State: ``step``, ``square_avg`` (v), ``momentum_buffer`` (b, if mu > 0),
    ``grad_avg`` (g^ave, if centered).
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, maximize=False):
        for name, v in (("lr", lr), ("alpha", alpha), ("eps", eps),
                        ("weight_decay", weight_decay), ("momentum", momentum)):
            _check_nonneg(name, v, "RMSprop")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered,
                                      maximize=maximize))

    def _update(self, p, grad, state, group):
        lr, alpha, eps = float(group["lr"]), float(group["alpha"]), float(group["eps"])
        wd, mu = float(group["weight_decay"]), float(group["momentum"])
        g = -grad if group["maximize"] else grad
        if not state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(p.data)
            if mu > 0:
                state["momentum_buffer"] = np.zeros_like(p.data)
            if group["centered"]:
                state["grad_avg"] = np.zeros_like(p.data)
        state["step"] += 1
        if wd != 0:
            g = g + wd * p.data
        v = state["square_avg"]
        v *= alpha
        v += (1 - alpha) * (g * g)
        if group["centered"]:
            ga = state["grad_avg"]
            ga *= alpha
            ga += (1 - alpha) * g
            # v~ = v - ga^2 >= 0 in exact arithmetic (a variance); clamp rounding below 0
            avg = np.sqrt(np.maximum(v - ga * ga, 0)) + eps
        else:
            avg = np.sqrt(v) + eps
        if mu > 0:
            buf = state.setdefault("momentum_buffer", np.zeros_like(p.data))
            buf *= mu
            buf += g / avg
            p.data -= lr * buf
        else:
            p.data -= lr * (g / avg)


class Adagrad(Optimizer):
    r"""Adagrad (Duchi et al., 2011).

    PyTorch's pseudo-code (gamma = lr, eta = lr_decay, lambda = weight_decay,
    tau = initial_accumulator_value), state_sum_0 = tau, for t = 1, 2, ...::

        g_t <- grad f_t(theta_{t-1})            (-grad if maximize)
        gamma~ <- gamma / (1 + (t - 1) eta)
        if lambda != 0:  g_t <- g_t + lambda theta_{t-1}
        state_sum_t <- state_sum_{t-1} + g_t^2
        theta_t <- theta_{t-1} - gamma~ g_t / (sqrt(state_sum_t) + eps)

    State: ``step``, ``sum``. (PyTorch creates the state in the constructor; refdl does
    the same, so ``state_dict()`` of a fresh Adagrad already holds ``sum = tau``.)
    """

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, maximize=False):
        for name, v in (("lr", lr), ("lr_decay", lr_decay), ("weight_decay", weight_decay),
                        ("initial_accumulator_value", initial_accumulator_value), ("eps", eps)):
            _check_nonneg(name, v, "Adagrad")
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize))
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p] = {"step": 0, "sum": np.full_like(
                    p.data, group["initial_accumulator_value"])}

    def _update(self, p, grad, state, group):
        lr, eta = float(group["lr"]), float(group["lr_decay"])
        wd, eps = float(group["weight_decay"]), float(group["eps"])
        g = -grad if group["maximize"] else grad
        if not state:
            state["step"] = 0
            state["sum"] = np.full_like(p.data, group["initial_accumulator_value"])
        state["step"] += 1
        t = state["step"]
        if wd != 0:
            g = g + wd * p.data
        clr = lr / (1 + (t - 1) * eta)
        s = state["sum"]
        s += g * g
        p.data -= clr * (g / (np.sqrt(s) + eps))


class NAdam(Optimizer):
    r"""NAdam: Adam with Nesterov momentum (Dozat, 2016), PyTorch's variant.

    PyTorch's pseudo-code (gamma = lr, lambda = weight_decay, psi = momentum_decay),
    m_0 = v_0 = 0, for t = 1, 2, ...::

        g_t <- grad f_t(theta_{t-1})            (-grad if maximize)
        if lambda != 0:
            if decoupled_weight_decay:  theta_{t-1} <- theta_{t-1} - gamma lambda theta_{t-1}
            else:                       g_t <- g_t + lambda theta_{t-1}
        mu_t     <- beta1 (1 - 1/2 0.96^(t psi))
        mu_{t+1} <- beta1 (1 - 1/2 0.96^((t+1) psi))
        m_t <- beta1 m_{t-1} + (1 - beta1) g_t
        v_t <- beta2 v_{t-1} + (1 - beta2) g_t^2
        m^_t <- mu_{t+1} m_t / (1 - prod_{i<=t+1} mu_i) + (1 - mu_t) g_t / (1 - prod_{i<=t} mu_i)
        v^_t <- v_t / (1 - beta2^t)
        theta_t <- theta_{t-1} - gamma m^_t / (sqrt(v^_t) + eps)

    The look-ahead: the momentum term uses next step's mu_{t+1}, as Nesterov's method
    evaluates the momentum one step ahead. State: ``step``, ``mu_product``, ``exp_avg``
    (m), ``exp_avg_sq`` (v).
    """

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False):
        for name, v in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay),
                        ("momentum_decay", momentum_decay)):
            _check_nonneg(name, v, "NAdam")
        b1, b2 = betas
        if not 0.0 <= b1 < 1.0 or not 0.0 <= b2 < 1.0:
            raise ValueError(f"NAdam: invalid betas {betas!r} (each must be in [0, 1))")
        super().__init__(params, dict(lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize))

    def _update(self, p, grad, state, group):
        lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        b1, b2 = (float(b) for b in group["betas"])
        psi = float(group["momentum_decay"])
        g = -grad if group["maximize"] else grad
        if not state:
            state["step"] = 0
            state["mu_product"] = 1.0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        if wd != 0:
            if group["decoupled_weight_decay"]:
                p.data *= 1 - lr * wd
            else:
                g = g + wd * p.data
        mu = b1 * (1.0 - 0.5 * 0.96 ** (t * psi))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * psi))
        state["mu_product"] *= mu
        mu_product = state["mu_product"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        denom = np.sqrt(v / (1 - b2 ** t)) + eps
        p.data -= (lr * (1 - mu) / (1 - mu_product)) * (g / denom)
        p.data -= (lr * mu_next / (1 - mu_product * mu_next)) * (m / denom)


class Adadelta(Optimizer):
    r"""Adadelta (Zeiler, 2012): a step size from the ratio of two running RMS values.

    PyTorch's pseudo-code (gamma = lr, rho, lambda = weight_decay), v_0 = u_0 = 0::

        g_t <- grad f_t(theta_{t-1})            (-grad if maximize)
        if lambda != 0:  g_t <- g_t + lambda theta_{t-1}
        v_t <- rho v_{t-1} + (1 - rho) g_t^2
        Delta_t <- sqrt(u_{t-1} + eps) / sqrt(v_t + eps) * g_t
        u_t <- rho u_{t-1} + (1 - rho) Delta_t^2
        theta_t <- theta_{t-1} - gamma Delta_t

    The ratio has the units of theta (Zeiler's argument for needing no learning rate;
    PyTorch keeps gamma, default 1). State: ``step``, ``square_avg`` (v), ``acc_delta`` (u).
    """

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, maximize=False):
        for name, v in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            _check_nonneg(name, v, "Adadelta")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Adadelta: invalid rho {rho!r} (must be in [0, 1])")
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize))

    def _update(self, p, grad, state, group):
        lr, rho = float(group["lr"]), float(group["rho"])
        eps, wd = float(group["eps"]), float(group["weight_decay"])
        g = -grad if group["maximize"] else grad
        if not state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(p.data)
            state["acc_delta"] = np.zeros_like(p.data)
        state["step"] += 1
        if wd != 0:
            g = g + wd * p.data
        v, u = state["square_avg"], state["acc_delta"]
        v *= rho
        v += (1 - rho) * (g * g)
        delta = np.sqrt(u + eps) / np.sqrt(v + eps) * g
        u *= rho
        u += (1 - rho) * (delta * delta)
        p.data -= lr * delta
