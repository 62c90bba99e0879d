"""NAdam, Adadelta and ReduceLROnPlateau against PyTorch's documented pseudo-code
(written out on plain floats here), and against PyTorch itself when it is installed."""
import math

import numpy as np
import pytest

from refdl import nn, optim
from refdl.optim.lr_scheduler import ReduceLROnPlateau


def quadratic_run(opt_cls, steps=25, **kw):
    """Minimise f(w) = sum(a w^2)/2 + b.w from w0; returns the trajectory of w."""
    a, b = np.array([1.0, 4.0, 0.5]), np.array([0.3, -1.0, 2.0])
    p = nn.Parameter(np.array([1.0, -2.0, 0.5]))
    opt = opt_cls([p], **kw)
    traj = []
    for _ in range(steps):
        opt.zero_grad()
        p.grad += a * p.data + b
        opt.step()
        traj.append(p.data.copy())
    return np.array(traj), a, b


def nadam_reference(w, a, b, steps, lr, b1, b2, eps, wd, psi, decoupled):
    m = v = 0.0
    prod = 1.0
    out = []
    for t in range(1, steps + 1):
        g = a * w + b
        if wd:
            if decoupled:
                w = w - lr * wd * w
            else:
                g = g + wd * w
        mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))
        mu1 = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        prod_t = prod * mu
        m_hat = mu1 * m / (1 - prod_t * mu1) + (1 - mu) * g / (1 - prod_t)
        prod = prod_t
        v_hat = v / (1 - b2 ** t)
        w = w - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(w)
    return np.array(out)


@pytest.mark.parametrize("wd,decoupled", [(0, False), (0.1, False), (0.1, True)])
def test_nadam_follows_the_pseudo_code(wd, decoupled):
    kw = dict(lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd, momentum_decay=4e-3,
              decoupled_weight_decay=decoupled)
    traj, a, b = quadratic_run(optim.NAdam, **kw)
    ref = nadam_reference(np.array([1.0, -2.0, 0.5]), a, b, 25, 0.05, 0.9, 0.99, 1e-8, wd,
                          4e-3, decoupled)
    np.testing.assert_allclose(traj, ref, rtol=1e-12, atol=1e-14)


def adadelta_reference(w, a, b, steps, lr, rho, eps, wd):
    v = u = 0.0
    out = []
    for _ in range(steps):
        g = a * w + b + wd * w
        v = rho * v + (1 - rho) * g * g
        d = np.sqrt(u + eps) / np.sqrt(v + eps) * g
        u = rho * u + (1 - rho) * d * d
        w = w - lr * d
        out.append(w)
    return np.array(out)


@pytest.mark.parametrize("wd", [0, 0.05])
def test_adadelta_follows_the_pseudo_code(wd):
    traj, a, b = quadratic_run(optim.Adadelta, lr=1.0, rho=0.9, eps=1e-6, weight_decay=wd)
    ref = adadelta_reference(np.array([1.0, -2.0, 0.5]), a, b, 25, 1.0, 0.9, 1e-6, wd)
    np.testing.assert_allclose(traj, ref, rtol=1e-12, atol=1e-14)


def test_new_optimisers_minimise_and_resume_bit_for_bit():
    for cls, kw in ((optim.NAdam, dict(lr=0.1)), (optim.Adadelta, dict(lr=1.0))):
        traj, a, b = quadratic_run(cls, steps=3000, **kw)
        assert np.linalg.norm(traj[-1] + b / a) < 0.05 * np.linalg.norm(b / a), cls
        p = nn.Parameter(np.array([1.0, -2.0]))
        opt = cls([p], **kw)
        for _ in range(3):
            opt.zero_grad()
            p.grad += p.data
            opt.step()
        sd = opt.state_dict()
        q = nn.Parameter(p.data.copy())
        opt2 = cls([q], **kw)
        opt2.load_state_dict(sd)
        for o, x in ((opt, p), (opt2, q)):
            o.zero_grad()
            x.grad += x.data
            o.step()
        np.testing.assert_array_equal(p.data, q.data)


def test_optimiser_arguments_are_checked():
    p = [nn.Parameter(np.zeros(2))]
    with pytest.raises(ValueError, match="NAdam: invalid betas"):
        optim.NAdam(p, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="Adadelta: invalid rho"):
        optim.Adadelta(p, rho=1.5)
    with pytest.raises(ValueError, match="lr"):
        optim.NAdam(p, lr=-1)


def plateau_lrs(metrics, **kw):
    p = nn.Parameter(np.zeros(1))
    opt = optim.SGD([p], lr=1.0)
    sched = ReduceLROnPlateau(opt, **kw)
    out = []
    for m in metrics:
        sched.step(m)
        out.append(sched.get_last_lr()[0])
    return out


def test_plateau_reduces_after_patience_bad_epochs_then_cools_down():
    # best 1.0 at epoch 1; epochs 2, 3, 4 are not better; with patience 2 the third bad
    # epoch (epoch 4) cuts the lr; cooldown 1 then ignores epoch 5, counting restarts at 6
    metrics = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5]
    lrs = plateau_lrs(metrics, patience=2, cooldown=1, factor=0.5)
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_plateau_threshold_modes_max_mode_and_min_lr():
    # rel threshold 0.1: 0.95 is not better than 1.0 (needs < 0.9); abs 0.01: it is
    assert plateau_lrs([1.0, 0.95], patience=0, threshold=0.1) == [1.0, 0.1]
    assert plateau_lrs([1.0, 0.95], patience=0, threshold=0.01,
                       threshold_mode="abs") == [1.0, 1.0]
    assert plateau_lrs([0.5, 0.6, 0.6], mode="max", patience=0) == [1.0, 1.0, 0.1]
    lrs = plateau_lrs([1.0] * 6, patience=0, factor=0.1, min_lr=0.005)
    assert lrs[-1] == 0.005 and min(lrs) == 0.005


def test_plateau_rejects_bad_arguments_and_nan():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="factor"):
        ReduceLROnPlateau(opt, factor=1.0)
    with pytest.raises(ValueError, match="mode"):
        ReduceLROnPlateau(opt, mode="lowest")
    with pytest.raises(ValueError, match="NaN"):
        ReduceLROnPlateau(opt).step(math.nan)


def test_against_pytorch_when_installed():
    torch = pytest.importorskip("torch")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)     # PyTorch keeps mu_product in this dtype
    try:
        _compare_with_torch(torch)
    finally:
        torch.set_default_dtype(old)


def _compare_with_torch(torch):
    w0 = np.array([1.0, -2.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.5]), np.array([0.3, -1.0, 2.0])
    for ours, theirs, kw in (
            (optim.NAdam, torch.optim.NAdam, dict(lr=0.05, weight_decay=0.1)),
            (optim.NAdam, torch.optim.NAdam, dict(lr=0.05, weight_decay=0.1,
                                                   decoupled_weight_decay=True)),
            (optim.Adadelta, torch.optim.Adadelta, dict(lr=1.0, weight_decay=0.05))):
        traj, _, _ = quadratic_run(ours, steps=25, **kw)
        t = torch.tensor(w0, requires_grad=True)
        o = theirs([t], **kw)
        for _ in range(25):
            o.zero_grad()
            t.grad = torch.tensor(a) * t.detach() + torch.tensor(b)
            o.step()
        np.testing.assert_allclose(traj[-1], t.detach().numpy(), rtol=1e-12)
    p = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.SGD([p], lr=1.0)
    ts = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, patience=2, cooldown=1, factor=0.5)
    metrics = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.7, 0.7, 0.7, 0.7]
    theirs = []
    for m in metrics:
        ts.step(m)
        theirs.append(topt.param_groups[0]["lr"])
    assert plateau_lrs(metrics, patience=2, cooldown=1, factor=0.5) == theirs
