r"""Learning-rate schedules with PyTorch's names, arguments and sequences.

A scheduler changes ``group["lr"]`` of an optimiser's param groups. Construction performs
step 0 (``last_epoch`` becomes 0 and the lrs are set to the schedule's first value, so
``LinearLR`` starts at start_factor * lr at once); every ``scheduler.step()`` after
``optimizer.step()`` advances ``last_epoch`` by one. ``base_lrs`` are the groups'
``initial_lr`` (set from ``lr`` on construction).

Like PyTorch, StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR and LinearLR update
the lr *recursively* from its current value (so schedulers can be chained); when they act
alone the result is the documented closed form, t = last_epoch, eta_0 = base lr:

=================  ===================================================================
StepLR             eta_t = eta_0 gamma^floor(t / step_size)
MultiStepLR        eta_t = eta_0 gamma^(number of milestones <= t)
ExponentialLR      eta_t = eta_0 gamma^t
CosineAnnealingLR  eta_t = eta_min + (eta_0 - eta_min) (1 + cos(pi t / T_max)) / 2
LinearLR           eta_t = eta_0 (s + (e - s) min(t, T) / T)    (s, e = start/end factor)
LambdaLR           eta_t = eta_0 lr_lambda(t)                     (closed form)
SequentialLR       schedulers[i] runs from milestones[i-1] on (restarted at epoch 0 there),
                   e.g. LinearLR warm-up then CosineAnnealingLR
OneCycleLR         warm-up from max_lr/div_factor to max_lr over pct_start of the steps,
                   then annealing to initial_lr/final_div_factor (cos or linear)
=================  ===================================================================

``state_dict()`` holds every attribute but the optimiser (LambdaLR drops the lambdas).
"""
import math
from bisect import bisect_right
from collections import Counter

from .optimizer import Optimizer

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR",
           "LinearLR", "OneCycleLR", "LambdaLR", "SequentialLR", "ReduceLROnPlateau"]


class LRScheduler:
    """Base class: ``step()``, ``get_last_lr()``, ``state_dict()``/``load_state_dict()``."""

    def __init__(self, optimizer, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: {type(optimizer).__name__} is not an "
                            "Optimizer")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] "
                                   "when resuming an optimizer")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self):
        self._step_count = 0
        self.step()

    def get_lr(self):
        raise NotImplementedError

    def get_last_lr(self):
        """The lrs set by the last step, one per param group."""
        return list(self._last_lr)

    def step(self, epoch=None):
        """Advance one epoch (call after ``optimizer.step()``).

        ``epoch`` (deprecated in PyTorch, kept for SequentialLR) jumps to that epoch and
        uses the closed form where the scheduler has one.
        """
        self._step_count += 1
        self._update_lr(epoch)

    def _update_lr(self, epoch=None):
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = epoch
            closed = getattr(self, "_get_closed_form_lr", None)
            values = closed() if closed is not None else self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self):
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        self.__dict__.update({k: (list(v) if isinstance(v, list) else v)
                              for k, v in state_dict.items()})

    def _lrs(self):
        return [group["lr"] for group in self.optimizer.param_groups]


class LambdaLR(LRScheduler):
    """eta_t = eta_0 * lr_lambda(t); lr_lambda is a function or one per param group."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"LambdaLR: expected {n} lr_lambdas, got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * n
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base * fn(self.last_epoch) for fn, base in zip(self.lr_lambdas, self.base_lrs)]

    def state_dict(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}


class StepLR(LRScheduler):
    """Multiply the lr by gamma every step_size epochs: eta_t = eta_0 gamma^floor(t/step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        if int(step_size) != step_size or step_size <= 0:
            raise ValueError(f"StepLR: step_size must be a positive integer, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._lrs()
        return [lr * self.gamma for lr in self._lrs()]

    def _get_closed_form_lr(self):
        return [b * self.gamma ** (self.last_epoch // self.step_size) for b in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the lr by gamma at each milestone (a repeated milestone multiplies twice)."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch not in self.milestones:
            return self._lrs()
        k = self.milestones[self.last_epoch]
        return [lr * self.gamma ** k for lr in self._lrs()]

    def _get_closed_form_lr(self):
        ms = sorted(self.milestones.elements())
        return [b * self.gamma ** bisect_right(ms, self.last_epoch) for b in self.base_lrs]


class ExponentialLR(LRScheduler):
    """eta_t = eta_0 gamma^t."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0:
            return self._lrs()
        return [lr * self.gamma for lr in self._lrs()]

    def _get_closed_form_lr(self):
        return [b * self.gamma ** self.last_epoch for b in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing (SGDR without restarts, Loshchilov & Hutter 2017).

    Closed form: eta_t = eta_min + (eta_0 - eta_min) (1 + cos(pi t / T_max)) / 2.
    PyTorch's recursion (used here, as in PyTorch; equal to the closed form when this
    scheduler alone sets the lr)::

        eta_t = eta_min + (eta_{t-1} - eta_min) (1 + cos(pi t/T_max)) / (1 + cos(pi (t-1)/T_max))

    and, where the denominator vanishes ((t - 1 - T_max) % (2 T_max) == 0),
    eta_t = eta_{t-1} + (eta_0 - eta_min)(1 - cos(pi / T_max)) / 2. Past T_max the lr
    rises again along the same cosine (period 2 T_max).
    """

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        if T_max <= 0:
            raise ValueError(f"CosineAnnealingLR: T_max must be positive, got {T_max!r}")
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        t, T, lo = self.last_epoch, self.T_max, self.eta_min
        if t == 0:
            return self._lrs()
        if self._step_count == 1 and t > 0:
            return [lo + (b - lo) * (1 + math.cos(t * math.pi / T)) / 2 for b in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:
            return [lr + (b - lo) * (1 - math.cos(math.pi / T)) / 2
                    for lr, b in zip(self._lrs(), self.base_lrs)]
        return [(1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
                * (lr - lo) + lo for lr in self._lrs()]

    def _get_closed_form_lr(self):
        t, T, lo = self.last_epoch, self.T_max, self.eta_min
        return [lo + (b - lo) * (1 + math.cos(math.pi * t / T)) / 2 for b in self.base_lrs]


class LinearLR(LRScheduler):
    r"""Linear warm-up (or decay) of a multiplicative factor over total_iters steps.

    eta_t = eta_0 (s + (e - s) min(t, T) / T), s = start_factor, e = end_factor,
    T = total_iters. PyTorch's recursion: eta_0' = s eta_0, then for 1 <= t <= T
    eta_t = eta_{t-1} (1 + (e - s) / (T s + (t - 1)(e - s))), constant afterwards.
    """

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5,
                 last_epoch=-1):
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError("LinearLR: starting multiplicative factor expected to be greater "
                             f"than 0 and less or equal to 1, got {start_factor}")
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError("LinearLR: ending multiplicative factor expected to be between "
                             f"0 and 1, got {end_factor}")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        s, e, T, t = self.start_factor, self.end_factor, self.total_iters, self.last_epoch
        if t == 0:
            return [lr * s for lr in self._lrs()]
        if t > T:
            return self._lrs()
        return [lr * (1.0 + (e - s) / (T * s + (t - 1) * (e - s))) for lr in self._lrs()]

    def _get_closed_form_lr(self):
        s, e, T, t = self.start_factor, self.end_factor, self.total_iters, self.last_epoch
        return [b * (s + (e - s) * min(T, t) / T) for b in self.base_lrs]


def _one_cycle_total_steps(total_steps, epochs, steps_per_epoch):
    """N: ``total_steps``, or ``epochs * steps_per_epoch``."""
    if total_steps is not None:
        if int(total_steps) != total_steps or total_steps <= 0:
            raise ValueError(f"OneCycleLR: expected positive integer total_steps, got "
                             f"{total_steps}")
        return int(total_steps)
    if epochs is not None and steps_per_epoch is not None:
        if epochs <= 0 or steps_per_epoch <= 0:
            raise ValueError(f"OneCycleLR: expected positive epochs and steps_per_epoch, "
                             f"got {epochs}, {steps_per_epoch}")
        return int(epochs) * int(steps_per_epoch)
    raise ValueError("OneCycleLR: you must define either total_steps OR "
                     "(epochs AND steps_per_epoch)")


def _one_cycle_phases(N, pct_start, three_phase):
    """The phases of 1cycle: each ends at ``end_step`` and names the group keys of its
    start and end learning rate and momentum (PyTorch's table)."""
    if three_phase:
        return [
            dict(end_step=float(pct_start * N) - 1, start_lr="initial_lr", end_lr="max_lr",
                 start_momentum="max_momentum", end_momentum="base_momentum"),
            dict(end_step=float(2 * pct_start * N) - 2, start_lr="max_lr",
                 end_lr="initial_lr", start_momentum="base_momentum",
                 end_momentum="max_momentum"),
            dict(end_step=N - 1, start_lr="initial_lr", end_lr="min_lr",
                 start_momentum="max_momentum", end_momentum="max_momentum"),
        ]
    return [
        dict(end_step=float(pct_start * N) - 1, start_lr="initial_lr", end_lr="max_lr",
             start_momentum="max_momentum", end_momentum="base_momentum"),
        dict(end_step=N - 1, start_lr="max_lr", end_lr="min_lr",
             start_momentum="base_momentum", end_momentum="max_momentum"),
    ]


class OneCycleLR(LRScheduler):
    r"""The 1cycle policy (Smith & Topin, 2018), PyTorch's phases.

    initial_lr = max_lr / div_factor, min_lr = initial_lr / final_div_factor,
    N = total_steps (or epochs * steps_per_epoch), p = pct_start. Two phases (default)::

        steps 0 .. p N - 1:      initial_lr -> max_lr      (momentum max -> base)
        steps p N - 1 .. N - 1:  max_lr     -> min_lr      (momentum base -> max)

    three_phase=True: initial -> max over p N - 1 steps, max -> initial until 2 p N - 2,
    then initial -> min_lr until N - 1. Within a phase of steps [a, b] at step t,
    pct = (t - a) / (b - a) and

        cos:     lr = end + (start - end) (1 + cos(pi pct)) / 2
        linear:  lr = start + (end - start) pct

    With cycle_momentum (default) the optimiser's ``momentum`` (SGD, RMSprop) or
    ``betas[0]`` (Adam) cycles inversely between max_momentum and base_momentum.
    Stepping more than total_steps times is a ValueError.
    """

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", cycle_momentum=True,
                 base_momentum=0.85, max_momentum=0.95, div_factor=25.0,
                 final_div_factor=1e4, three_phase=False, last_epoch=-1):
        self.total_steps = _one_cycle_total_steps(total_steps, epochs, steps_per_epoch)
        if not 0 <= pct_start <= 1 or not isinstance(pct_start, (int, float)):
            raise ValueError(f"OneCycleLR: expected float between 0 and 1 pct_start, got "
                             f"{pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError("OneCycleLR: anneal_strategy must be one of 'cos' or 'linear', "
                             f"got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self._schedule_phases = _one_cycle_phases(self.total_steps, pct_start, three_phase)
        groups = optimizer.param_groups
        max_lrs = _per_group(max_lr, len(groups), "max_lr")
        if last_epoch == -1:
            for lr, group in zip(max_lrs, groups):
                group["initial_lr"] = lr / div_factor
                group["max_lr"] = lr
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self._init_momentum(optimizer, base_momentum, max_momentum, last_epoch)
        super().__init__(optimizer, last_epoch)

    def _init_momentum(self, optimizer, base_momentum, max_momentum, last_epoch):
        """Record each group's momentum range; a fresh schedule starts at max_momentum."""
        if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
            raise ValueError("OneCycleLR: optimizer must support momentum or beta1 with "
                             "`cycle_momentum` option enabled")
        self.use_beta1 = "betas" in optimizer.defaults
        groups = optimizer.param_groups
        max_moms = _per_group(max_momentum, len(groups), "max_momentum")
        base_moms = _per_group(base_momentum, len(groups), "base_momentum")
        if last_epoch != -1:
            return
        for m_mom, b_mom, group in zip(max_moms, base_moms, groups):
            if self.use_beta1:
                group["betas"] = (m_mom, *group["betas"][1:])
            else:
                group["momentum"] = m_mom
            group["max_momentum"] = m_mom
            group["base_momentum"] = b_mom

    @staticmethod
    def _annealing_cos(start, end, pct):
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    @staticmethod
    def _annealing_linear(start, end, pct):
        return (end - start) * pct + start

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return self._annealing_cos(start, end, pct)
        return self._annealing_linear(start, end, pct)

    def get_lr(self):
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {t} times. The specified number of "
                             f"total steps is {self.total_steps}")
        lrs = []
        for group in self.optimizer.param_groups:
            start = 0
            for i, phase in enumerate(self._schedule_phases):
                end = phase["end_step"]
                if t <= end or i == len(self._schedule_phases) - 1:
                    pct = (t - start) / (end - start)
                    lr = self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct)
                    if self.cycle_momentum:
                        mom = self._anneal(group[phase["start_momentum"]],
                                           group[phase["end_momentum"]], pct)
                    break
                start = phase["end_step"]
            lrs.append(lr)
            if self.cycle_momentum:
                if self.use_beta1:
                    group["betas"] = (mom, *group["betas"][1:])
                else:
                    group["momentum"] = mom
        return lrs


class SequentialLR(LRScheduler):
    """Run ``schedulers[0]`` until ``milestones[0]``, then ``schedulers[1]`` (restarted at
    its epoch 0, from the groups' initial lr), and so on: PyTorch's SequentialLR.

    Typical use, linear warm-up for w steps then cosine decay::

        warm = LinearLR(opt, start_factor=0.01, total_iters=w)
        cos = CosineAnnealingLR(opt, T_max=total - w)
        sched = SequentialLR(opt, [warm, cos], milestones=[w])
    """

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        schedulers = list(schedulers)
        if len(schedulers) < 1:
            raise ValueError("SequentialLR expects at least one scheduler, but got no scheduler")
        for i, sch in enumerate(schedulers):
            if getattr(sch, "optimizer", None) is not optimizer:
                raise ValueError(f"SequentialLR expects all schedulers to belong to the same "
                                 f"optimizer, but scheduler {i} ({type(sch).__name__}) does not")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError("SequentialLR expects number of schedulers provided to be one more "
                             f"than the number of milestone points, but got {len(schedulers)} "
                             f"schedulers and {len(milestones)} milestones")
        self._schedulers = schedulers
        self._milestones = list(milestones)
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        for sch in schedulers:                       # undo the step each one took
            sch.last_epoch -= 1
        idx = bisect_right(self._milestones, 0)
        schedulers[idx]._initial_step()
        self._last_lr = schedulers[idx].get_last_lr()

    def step(self):
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        sch = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            sch._update_lr(0)
        else:
            sch.step()
        self._last_lr = sch.get_last_lr()

    def state_dict(self):
        sd = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_schedulers")}
        sd["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        subs = state_dict.pop("_schedulers")
        self.__dict__.update(state_dict)
        for sch, sd in zip(self._schedulers, subs):
            sch.load_state_dict(sd)


class ReduceLROnPlateau:
    r"""Divide the learning rate when a monitored metric stops improving (PyTorch's).

    ``step(metric)`` once per epoch, after validation. A value is *better* than the best so
    far when (mode 'min', threshold_mode 'rel') metric < best (1 - threshold), ('min',
    'abs') metric < best - threshold, and mirrored for 'max'. After more than ``patience``
    epochs without a better value each group's lr becomes max(lr factor, min_lr) (changes
    smaller than ``eps`` are skipped), then ``cooldown`` epochs pass before counting again.
    """

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0, eps=1e-8):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"ReduceLROnPlateau: {type(optimizer).__name__} is not an "
                            "Optimizer")
        if not 0 <= factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor should be in [0, 1), got {factor}")
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs', "
                             f"got {threshold_mode!r}")
        if not isinstance(patience, int) or patience < 0 or cooldown < 0:
            raise ValueError(f"ReduceLROnPlateau: patience and cooldown must be ints >= 0, "
                             f"got {patience!r}, {cooldown!r}")
        self.optimizer = optimizer
        self.min_lrs = [float(v) for v in _per_group(min_lr, len(optimizer.param_groups),
                                                      "min_lr")]
        self.mode, self.factor, self.patience = mode, float(factor), patience
        self.threshold, self.threshold_mode = float(threshold), threshold_mode
        self.cooldown, self.eps = cooldown, float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        self._last_lr = [group["lr"] for group in optimizer.param_groups]

    def is_better(self, a, best):
        if self.mode == "min":
            return a < (best * (1 - self.threshold) if self.threshold_mode == "rel"
                        else best - self.threshold)
        return a > (best * (1 + self.threshold) if self.threshold_mode == "rel"
                    else best + self.threshold)

    def step(self, metrics):
        current = float(metrics)
        if math.isnan(current):
            raise ValueError("ReduceLROnPlateau.step: the monitored metric is NaN")
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for group, min_lr in zip(self.optimizer.param_groups, self.min_lrs):
                old = float(group["lr"])
                new = max(old * self.factor, min_lr)
                if old - new > self.eps:
                    group["lr"] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return list(self._last_lr)

    def state_dict(self):
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        self.__dict__.update(state_dict)


def _per_group(value, n, name):
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"expected {n} values for {name}, got {len(value)}")
        return list(value)
    return [value] * n
