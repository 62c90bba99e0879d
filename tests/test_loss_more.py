"""SmoothL1Loss and KLDivLoss: closed forms, gradient checks, PyTorch's reductions and
conventions, and PyTorch itself when it is installed."""
import numpy as np
import pytest
from scipy import special

import refdl
from refdl import nn
from refdl.gradcheck import check_loss


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_smooth_l1_closed_form_and_gradcheck(beta, reduction):
    x, t = rand(4, 5, seed=1), rand(4, 5, seed=2)
    d = x - t
    ref = np.abs(d) if beta == 0 else np.where(np.abs(d) < beta, 0.5 * d * d / beta,
                                                 np.abs(d) - 0.5 * beta)
    crit = nn.SmoothL1Loss(reduction=reduction, beta=beta)
    with refdl.no_grad():
        out = crit(x, t)
    want = {"mean": ref.mean(), "sum": ref.sum(), "none": ref}[reduction]
    np.testing.assert_allclose(out, want, rtol=1e-14)
    check_loss(crit, x, t)
    # beta > 0: SmoothL1 is Huber(delta=beta) / beta
    if beta:
        with refdl.no_grad():
            h = nn.HuberLoss(reduction=reduction, delta=beta)(x, t)
        np.testing.assert_allclose(out, h / beta, rtol=1e-13)


def kl_reference(x, t, log_target):
    p = np.exp(t) if log_target else t
    logp = t if log_target else np.log(np.where(t > 0, t, 1))
    return np.where(p > 0, p * (logp - x), 0.0)


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
def test_kldiv_closed_form_and_gradcheck(log_target, reduction):
    x = special.log_softmax(rand(3, 6, seed=3), axis=1)          # log q
    p = special.softmax(rand(3, 6, seed=4), axis=1)
    p[0, 2] = 0.0                                                 # a zero probability
    p /= p.sum(1, keepdims=True)
    t = np.log(np.where(p > 0, p, 1e-300)) if log_target else p
    crit = nn.KLDivLoss(reduction=reduction, log_target=log_target)
    with refdl.no_grad():
        out = crit(x, t)
    ref = kl_reference(x, t, log_target)
    want = {"mean": ref.mean(), "batchmean": ref.sum() / 3, "sum": ref.sum(),
            "none": ref}[reduction]
    np.testing.assert_allclose(out, want, rtol=1e-13, atol=1e-300)
    if reduction == "batchmean":
        # the batch mean of KL(p_n || q_n), computed from its definition
        kl = [np.sum(p[n][p[n] > 0] * np.log(p[n][p[n] > 0] / np.exp(x[n][p[n] > 0])))
              for n in range(3)]
        assert float(out) == pytest.approx(np.mean(kl), rel=1e-12)
    check_loss(crit, x, t)


def test_kldiv_rejects_negative_probabilities_and_bad_reduction():
    with pytest.raises(ValueError, match="target probabilities must be >= 0"):
        nn.KLDivLoss()(np.zeros(3), np.array([0.5, -0.1, 0.6]))
    with pytest.raises(ValueError, match="batchmean"):
        nn.KLDivLoss(reduction="avg")


def test_against_pytorch_when_installed():
    torch = pytest.importorskip("torch")
    x, t = rand(4, 5, seed=5), rand(4, 5, seed=6)
    g = rand(4, 5, seed=7)
    for ours, theirs in ((nn.SmoothL1Loss(reduction="none", beta=0.7),
                          torch.nn.SmoothL1Loss(reduction="none", beta=0.7)),
                         (nn.KLDivLoss(reduction="none", log_target=True),
                          torch.nn.KLDivLoss(reduction="none", log_target=True))):
        tx = torch.tensor(x, requires_grad=True)
        ty = theirs(tx, torch.tensor(t))
        ty.backward(torch.tensor(g))
        y = ours(x, t)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-13)
        np.testing.assert_allclose(ours.backward(g), tx.grad.numpy(), rtol=1e-13)
    p = special.softmax(rand(4, 5, seed=8), axis=1)
    for red in ("batchmean", "mean", "sum"):
        ours = float(nn.KLDivLoss(reduction=red)(x, p))
        theirs = float(torch.nn.KLDivLoss(reduction=red)(torch.tensor(x), torch.tensor(p)))
        assert ours == pytest.approx(theirs, rel=1e-13)
