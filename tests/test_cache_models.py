"""Per-call caches in refdl.models: the WGAN-GP critic objective calls the critic twice
and the penalty once before any backward, and is gradient-checked as one module."""
import numpy as np
import pytest

import refdl
from refdl import nn
from refdl.gradcheck import check_module
from refdl.models.gan import GradientPenalty, MLPCritic, WassersteinCriticLoss


class CriticObjective(nn.Module):
    """L = mean f(fake) - mean f(real) + lam mean (||grad f(x_hat)|| - 1)^2, with one
    critic called on real, then the penalty at x_hat, then the critic on fake; the
    backwards run in reverse order: critic (fake), penalty, critic (real)."""

    def __init__(self, act):
        super().__init__()
        self.critic = MLPCritic(3, (6, 5), activation=act)
        self.gp = GradientPenalty(self.critic, lam=2.0)
        self.loss = WassersteinCriticLoss()

    def forward(self, real, fake, x_hat):
        f_real = self.critic(real)
        penalty = self.gp(x_hat)
        f_fake = self.critic(fake)
        return self.loss(f_real, f_fake) + penalty

    def backward(self, g):
        d_real, d_fake = self.loss.backward(g)
        dx_fake = self.critic.backward(d_fake)
        dx_hat = self.gp.backward(g)
        dx_real = self.critic.backward(d_real)
        return dx_real, dx_fake, dx_hat


@pytest.mark.parametrize("act", ["tanh", "softplus"])
def test_wgan_gp_objective_with_the_critic_called_twice_passes_the_gradient_check(act):
    refdl.manual_seed(0)
    obj = CriticObjective(act).double()
    rng = np.random.default_rng(1)
    real, fake, x_hat = (rng.standard_normal((4, 3)) for _ in range(3))
    assert check_module(obj, real, fake, x_hat).passed
    # and the gradients equal the sum of three separate passes
    obj.zero_grad()
    obj(real, fake, x_hat)
    assert obj.critic.num_saved == 2
    dx_real, dx_fake, dx_hat = obj.backward(np.array(1.0))
    assert all(m.num_saved == 0 for m in obj.modules())
    total = [p.grad.copy() for p in obj.critic.parameters()]
    sep = [np.zeros_like(p.data) for p in obj.critic.parameters()]
    for x, up in ((real, -1.0 / 4), (fake, 1.0 / 4)):
        obj.zero_grad()
        obj.critic(x)
        obj.critic.backward(np.full((4, 1), up))
        sep = [s + p.grad for s, p in zip(sep, obj.critic.parameters())]
    obj.zero_grad()
    obj.gp(x_hat)
    obj.gp.backward()
    sep = [s + p.grad for s, p in zip(sep, obj.critic.parameters())]
    for a, b in zip(total, sep):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
