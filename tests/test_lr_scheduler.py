"""Learning-rate schedulers against their documented closed forms."""
import math

import numpy as np
import pytest

from refdl.nn.module import Parameter
from refdl.optim import SGD, Adam
from refdl.optim.lr_scheduler import (CosineAnnealingLR, ExponentialLR, LambdaLR, LinearLR,
                                      MultiStepLR, OneCycleLR, SequentialLR, StepLR)


def _opt(lr=0.1, cls=SGD, **kw):
    return cls([Parameter(np.zeros(2))], lr=lr, **kw)


def _sequence(sched, n):
    """lr at epochs 0..n (construction sets epoch 0)."""
    out = [sched.get_last_lr()[0]]
    for _ in range(n):
        sched.optimizer.step()
        sched.step()
        out.append(sched.get_last_lr()[0])
    return np.array(out)


T = np.arange(31)


def test_step_lr():
    seq = _sequence(StepLR(_opt(0.1), step_size=3, gamma=0.5), 30)
    np.testing.assert_allclose(seq, 0.1 * 0.5 ** (T // 3), rtol=1e-14)


def test_multistep_lr_with_repeated_milestone():
    seq = _sequence(MultiStepLR(_opt(0.1), milestones=[2, 5, 5, 9], gamma=0.3), 30)
    count = np.array([sum(m <= t for m in [2, 5, 5, 9]) for t in T])
    np.testing.assert_allclose(seq, 0.1 * 0.3 ** count, rtol=1e-14)


def test_exponential_lr():
    seq = _sequence(ExponentialLR(_opt(0.2), gamma=0.9), 30)
    np.testing.assert_allclose(seq, 0.2 * 0.9 ** T, rtol=1e-13)


@pytest.mark.parametrize("T_max,eta_min", [(7, 0.01), (10, 0.0), (1, 0.05)])
def test_cosine_annealing_closed_form_including_restart_half(T_max, eta_min):
    seq = _sequence(CosineAnnealingLR(_opt(0.1), T_max=T_max, eta_min=eta_min), 30)
    closed = eta_min + (0.1 - eta_min) * (1 + np.cos(np.pi * T / T_max)) / 2
    np.testing.assert_allclose(seq, closed, rtol=1e-12, atol=1e-15)
    assert seq[T_max] == pytest.approx(eta_min, abs=1e-15)


def test_linear_lr_warmup():
    seq = _sequence(LinearLR(_opt(0.1), start_factor=0.1, end_factor=0.9, total_iters=6), 30)
    closed = 0.1 * (0.1 + (0.9 - 0.1) * np.minimum(T, 6) / 6)
    np.testing.assert_allclose(seq, closed, rtol=1e-13)
    opt = _opt(0.3)
    LinearLR(opt)                                   # defaults 1/3 -> 1 over 5 steps
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_lambda_lr_per_group():
    p, q = Parameter(np.zeros(1)), Parameter(np.zeros(1))
    opt = SGD([{"params": [p]}, {"params": [q], "lr": 1.0}], lr=0.5)
    s = LambdaLR(opt, [lambda e: 1 / (e + 1), lambda e: 0.5 ** e])
    for e in range(6):
        assert s.get_last_lr() == pytest.approx([0.5 / (e + 1), 0.5 ** e])
        opt.step()
        s.step()


def _onecycle_closed(t, N, max_lr, pct, div, fdiv, strategy, three_phase):
    init, lo = max_lr / div, max_lr / div / fdiv
    ann = ((lambda a, b, x: b + (a - b) * (1 + math.cos(math.pi * x)) / 2) if strategy == "cos"
           else (lambda a, b, x: a + (b - a) * x))
    e1 = pct * N - 1
    if not three_phase:
        if t <= e1:
            return ann(init, max_lr, t / e1)
        return ann(max_lr, lo, (t - e1) / (N - 1 - e1))
    e2 = 2 * pct * N - 2
    if t <= e1:
        return ann(init, max_lr, t / e1)
    if t <= e2:
        return ann(max_lr, init, (t - e1) / (e2 - e1))
    return ann(init, lo, (t - e2) / (N - 1 - e2))


@pytest.mark.parametrize("strategy", ["cos", "linear"])
@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_lr(strategy, three_phase):
    N = 40
    opt = _opt(0.1, momentum=0.9)
    s = OneCycleLR(opt, max_lr=2.0, epochs=4, steps_per_epoch=10, pct_start=0.25,
                   anneal_strategy=strategy, three_phase=three_phase, div_factor=20,
                   final_div_factor=100)
    seq = _sequence(s, N - 1)
    closed = [_onecycle_closed(t, N, 2.0, 0.25, 20, 100, strategy, three_phase)
              for t in range(N)]
    np.testing.assert_allclose(seq, closed, rtol=1e-12)
    assert seq[0] == pytest.approx(0.1)            # max_lr / div_factor
    assert seq.max() == pytest.approx(2.0)
    assert seq[-1] == pytest.approx(2.0 / 20 / 100)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)   # back to max at the end


def test_one_cycle_momentum_cycles_inversely_and_adam_betas():
    opt = _opt(0.1, momentum=0.9)
    s = OneCycleLR(opt, max_lr=1.0, total_steps=10)
    moms = [opt.param_groups[0]["momentum"]]
    for _ in range(3):
        opt.step()
        s.step()
        moms.append(opt.param_groups[0]["momentum"])
    assert moms[0] == pytest.approx(0.95) and moms[2] == pytest.approx(0.85)   # at max lr
    opt = _opt(0.1, cls=Adam, betas=(0.9, 0.99))
    OneCycleLR(opt, max_lr=1.0, total_steps=10)
    assert opt.param_groups[0]["betas"] == (0.95, 0.99)


def test_one_cycle_errors():
    opt = _opt(0.1, momentum=0.9)
    s = OneCycleLR(opt, max_lr=1.0, total_steps=3)
    for _ in range(3):
        s.step()
    with pytest.raises(ValueError, match="tried to step 4 times"):
        s.step()
    with pytest.raises(ValueError, match="total_steps"):
        OneCycleLR(_opt(0.1, momentum=0.9), max_lr=1.0)
    with pytest.raises(ValueError, match="momentum"):
        OneCycleLR(_NoMomentum(), max_lr=1.0, total_steps=5)


class _NoMomentum(SGD):
    def __init__(self):
        super().__init__([Parameter(np.zeros(1))], lr=0.1)
        del self.defaults["momentum"]


def test_state_dict_round_trip():
    opt = _opt(0.1)
    s = CosineAnnealingLR(opt, T_max=10, eta_min=0.001)
    for _ in range(4):
        opt.step()
        s.step()
    sd = s.state_dict()
    assert "optimizer" not in sd and sd["last_epoch"] == 4
    ref = _sequence(s, 5)

    opt2 = _opt(0.1)
    s2 = CosineAnnealingLR(opt2, T_max=10, eta_min=0.001)
    s2.load_state_dict(sd)
    opt2.param_groups[0]["lr"] = ref[0]             # the optimiser's lr comes from its state
    np.testing.assert_array_equal(_sequence(s2, 5), ref)


def test_lambda_state_dict_drops_lambdas():
    s = LambdaLR(_opt(), lambda e: 1.0)
    assert "lr_lambdas" not in s.state_dict()


def test_resuming_requires_initial_lr():
    with pytest.raises(KeyError, match="initial_lr"):
        StepLR(_opt(), step_size=2, last_epoch=3)


def test_sequential_warmup_cosine_exponential():
    opt = _opt(0.1)
    warm = LinearLR(opt, start_factor=0.01, total_iters=5)
    cos = CosineAnnealingLR(opt, T_max=20, eta_min=0.001)
    ex = ExponentialLR(opt, gamma=0.9)
    s = SequentialLR(opt, [warm, cos, ex], milestones=[5, 25])
    seq = _sequence(s, 40)
    closed = []
    for t in range(41):
        if t < 5:
            closed.append(0.1 * (0.01 + 0.99 * t / 5))
        elif t < 25:
            closed.append(0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * (t - 5) / 20)) / 2)
        else:
            closed.append(0.1 * 0.9 ** (t - 25))
    np.testing.assert_allclose(seq, closed, rtol=1e-12)
    sd = s.state_dict()
    assert len(sd["_schedulers"]) == 3 and "optimizer" not in sd
    with pytest.raises(ValueError, match="one more than the number of milestone"):
        SequentialLR(opt, [warm, cos], milestones=[])
