"""GAN pieces: the critic's first and second derivatives, the losses, weight clipping,
mode metrics, and a conditional GAN."""
import numpy as np
import pytest

from refdl.gradcheck import check_module
from refdl.metrics import mode_coverage
from refdl.models.gan import (MLPCritic, GradientPenalty, WassersteinCriticLoss,
                              clip_weights_, train_gan)


@pytest.mark.parametrize("act", ["tanh", "leaky_relu", "softplus"])
def test_critic_gradcheck_and_input_gradient(act):
    rng = np.random.default_rng(0)
    critic = MLPCritic(3, (5, 4), activation=act, generator=rng)
    x = rng.standard_normal((6, 3))
    check_module(critic, x)
    c64 = critic.to(np.float64)
    v = c64.input_gradient(x)
    c64(x)
    np.testing.assert_allclose(v, c64.backward(np.ones((6, 1))), rtol=1e-12)


def test_wasserstein_loss_gradcheck_and_value():
    rng = np.random.default_rng(1)
    r, f = rng.standard_normal((4, 1)), rng.standard_normal((3, 1))
    check_module(WassersteinCriticLoss(), r, f)
    assert float(WassersteinCriticLoss()(r, f)) == pytest.approx(f.mean() - r.mean())


def test_gradient_penalty_value_and_zero_at_unit_slope():
    # a linear critic f(x) = a . x has gradient a everywhere: P = lam (|a| - 1)^2
    critic = MLPCritic(2, (3,), activation="leaky_relu", negative_slope=1.0)
    c = critic.to(np.float64)
    c.layers[0].weight.data[...] = np.eye(3, 2)
    c.layers[0].bias.data[...] = 0
    c.layers[1].weight.data[...] = [[0.6, 0.8, 5.0]]
    gp = GradientPenalty(c, lam=7.0)
    x = np.random.default_rng(0).standard_normal((5, 2))
    assert float(gp(x)) == pytest.approx(0.0, abs=1e-24)
    c.layers[1].weight.data[...] = [[1.2, 1.6, 5.0]]
    assert float(gp(x)) == pytest.approx(7.0 * (2.0 - 1.0) ** 2)


def test_clip_weights():
    critic = MLPCritic(2, (4,), generator=np.random.default_rng(0))
    for p in critic.parameters():
        p.data *= 100
    clip_weights_(critic, 0.01)
    assert max(np.abs(p.data).max() for p in critic.parameters()) <= 0.01


def test_mode_metrics_counts():
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    rng = np.random.default_rng(0)
    s = np.concatenate([centers[0] + 0.1 * rng.standard_normal((90, 2)),
                        centers[1] + 0.1 * rng.standard_normal((10, 2)),
                        np.full((20, 2), 5.0)])
    m = mode_coverage(s, centers, std=0.1)
    assert m["counts"].tolist() == [90, 10, 0]
    assert m["modes_covered"] == 2 and m["high_quality"] == pytest.approx(100 / 120)


def test_errors():
    with pytest.raises(ValueError, match="unknown activation 'cube'"):
        MLPCritic(2, activation="cube")
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 2\), got \(3, 4\)"):
        MLPCritic(2)(np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="expected an MLPCritic"):
        GradientPenalty(object())


def test_conditional_gan_puts_each_label_on_its_mode():
    """Paper 002 Q7's conditional GAN: G(z, y) learns p(x | y) on a 4-mode mixture."""
    centers = np.array([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [0.0, -2.0]])

    def sample(n, rng):
        y = rng.integers(0, 4, n)
        return centers[y] + 0.1 * rng.standard_normal((n, 2)), y

    from refdl.models.gan import sample_generator
    G, D, h = train_gan(sample, kind="gan", steps=400, batch_size=128, hidden=(32, 32),
                        lr=2e-3, n_classes=4, generator=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for k in range(4):
        x = sample_generator(G, 200, labels=np.full(200, k), n_classes=4, generator=rng)
        nearest = np.argmin(((x[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
        assert np.mean(nearest == k) > 0.9
