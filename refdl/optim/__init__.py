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
import copy
import math

import numpy as np

from ..nn.module import Parameter, _zero_grad, check_caches_consumed
from ..nn.utils import clip_grad_norm_, clip_grad_value_
from .penalty import l1_penalty, l2_penalty, prox_l1

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "NAdam", "RMSprop", "Adagrad", "Adadelta",
           "clip_grad_norm_", "clip_grad_value_", "l1_penalty", "l2_penalty", "prox_l1",
           "lr_scheduler"]


class _Required:
    def __repr__(self):
        return "<required parameter>"


required = _Required()


def _check_nonneg(name, value, cls):
    if not (isinstance(value, (int, float, np.floating, np.integer))
            and not isinstance(value, bool)):
        raise TypeError(f"{cls}: {name} must be a number, got {value!r}")
    if value < 0:
        raise ValueError(f"{cls}: invalid {name} {value!r} (must be >= 0)")


class Optimizer:
    """Base class: param groups, per-parameter state, zero_grad, state_dict.

    Subclasses implement ``_update(p, grad, state, group)`` for one parameter; ``step``
    loops over groups and parameters, skips frozen ones, and hands over the gradient cast
    to the parameter's dtype.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}             # Parameter -> dict (PyTorch: defaultdict keyed by tensor)
        self.param_groups = []
        if isinstance(params, Parameter):
            raise TypeError(f"{type(self).__name__}: params should be an iterable of "
                            "Parameters or dicts, got a single Parameter")
        groups = list(params)
        if len(groups) == 0:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    # -- groups -------------------------------------------------------------------------
    def add_param_group(self, param_group):
        """Add a dict ``{"params": [...], <hyper-parameters>}``; defaults fill the rest."""
        if not isinstance(param_group, dict):
            raise TypeError(f"{type(self).__name__}.add_param_group: expected a dict, got "
                            f"{type(param_group).__name__}")
        group = dict(param_group)
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"{type(self).__name__} can only optimize Parameters, got "
                                f"{type(p).__name__}")
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{type(self).__name__}: a parameter group contains a "
                             "parameter twice")
        group["params"] = params
        for key, value in self.defaults.items():
            if value is required and key not in group:
                raise ValueError(f"{type(self).__name__}: parameter group didn't specify "
                                 f"a value of required optimization parameter {key}")
            group.setdefault(key, value)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError(f"{type(self).__name__}: some parameters appear in more than "
                             "one parameter group")
        self.param_groups.append(group)

    def _all_params(self):
        return [p for g in self.param_groups for p in g["params"]]

    # -- the step -------------------------------------------------------------------------
    def zero_grad(self, set_to_none=True):
        """Set every parameter's gradient to zero.

        (refdl's backward accumulates with ``+=`` into an array, so grads are zeroed in
        place rather than set to None; ``set_to_none`` is accepted for compatibility.)
        """
        for p in self._all_params():
            _zero_grad(p)

    def step(self, closure=None):
        """One update of every trainable parameter; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            loss = closure()
        check_caches_consumed(self._all_params(), type(self).__name__)
        for group in self.param_groups:
            self._prepare_group(group)
            for p in group["params"]:
                if not p.requires_grad or p.grad is None:
                    continue
                grad = np.asarray(p.grad)
                if grad.shape != p.data.shape:
                    raise ValueError(f"{type(self).__name__}.step: gradient of shape "
                                     f"{grad.shape} for a parameter of shape {p.data.shape}")
                grad = grad.astype(p.data.dtype, copy=False)
                state = self.state.setdefault(p, {})
                self._update(p, grad, state, group)
        return loss

    def _prepare_group(self, group):
        pass

    def _update(self, p, grad, state, group):
        raise NotImplementedError

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self):
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}``.

        Parameters are numbered across groups in order (PyTorch's convention); arrays in
        the state are copies, so later steps do not change a saved dict.
        """
        index = {}
        groups = []
        for g in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
            ids = []
            for p in g["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            packed["params"] = ids
            groups.append(packed)
        state = {}
        for p in self._all_params():
            if p in self.state:
                state[index[id(p)]] = {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                       for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and state saved by :meth:`state_dict`.

        The groups must have the same sizes as this optimiser's. Floating state arrays are
        copied and cast to their parameter's dtype.
        """
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{type(self).__name__}.load_state_dict: loaded state dict has "
                             f"{len(saved_groups)} parameter groups, the optimizer has "
                             f"{len(self.param_groups)}")
        id_map = {}
        for mine, saved in zip(self.param_groups, saved_groups):
            if len(mine["params"]) != len(saved["params"]):
                raise ValueError(f"{type(self).__name__}.load_state_dict: loaded state dict "
                                 "contains a parameter group that doesn't match the size of "
                                 f"the optimizer's group ({len(saved['params'])} vs "
                                 f"{len(mine['params'])})")
            for idx, p in zip(saved["params"], mine["params"]):
                id_map[idx] = p
        new_state = {}
        for idx, st in state_dict["state"].items():
            p = id_map.get(int(idx))
            if p is None:
                continue
            out = {}
            for k, v in st.items():
                if isinstance(v, np.ndarray):
                    if np.issubdtype(v.dtype, np.floating):
                        v = v.astype(p.data.dtype, copy=True)
                    else:
                        v = v.copy()
                    if v.shape != p.data.shape:
                        raise ValueError(f"{type(self).__name__}.load_state_dict: state "
                                         f"{k!r} of parameter {idx} has shape {v.shape}, "
                                         f"the parameter has shape {p.data.shape}")
                out[k] = v
            new_state[p] = out
        self.state = new_state
        for mine, saved in zip(self.param_groups, saved_groups):
            for k, v in saved.items():
                if k != "params":
                    mine[k] = copy.deepcopy(v)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"


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
    second moment is SGD(lr=gamma (1 - beta1), momentum=beta1) (exam item opt-1). (With
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


from . import lr_scheduler  # noqa: E402,F401
