"""VAEs: Gaussian KLs, the reparameterisation trick, the ELBO loss, the MLP VAE and the
linear-Gaussian VAE of paper 004 Q2 -- closed forms against Monte Carlo and gradient checks."""
import numpy as np
import pytest

import refdl
from refdl.functional import gaussian as G
from refdl.gradcheck import check_function, check_module
from refdl.models.linear_vae import LinearGaussianVAE
from refdl.models.vae import VAE, Reparameterize, VAELoss


def spd(rng, d):
    A = rng.standard_normal((d, d))
    return A @ A.T + d * np.eye(d) * 0.5


def test_kl_diag_normal_matches_monte_carlo():
    rng = np.random.default_rng(0)
    mu1, lv1 = rng.standard_normal(3), rng.standard_normal(3) * 0.5
    mu2, lv2 = rng.standard_normal(3), rng.standard_normal(3) * 0.5
    kl = G.kl_diag_normal(mu1, lv1, mu2, lv2)
    z = mu1 + np.exp(lv1 / 2) * rng.standard_normal((400_000, 3))
    mc = np.mean(G.diag_normal_log_prob(z, mu1, lv1) - G.diag_normal_log_prob(z, mu2, lv2))
    se = np.std(G.diag_normal_log_prob(z, mu1, lv1) - G.diag_normal_log_prob(z, mu2, lv2)) / 632
    assert abs(kl - mc) < 4 * se
    # the diagonal formula is the full-covariance one with diagonal matrices
    full = G.kl_normal(mu1, np.diag(np.exp(lv1)), mu2, np.diag(np.exp(lv2)))
    assert kl == pytest.approx(full, rel=1e-12)


def test_kl_full_covariance_matches_monte_carlo():
    rng = np.random.default_rng(1)
    d = 3
    m1, m2, S1, S2 = rng.standard_normal(d), rng.standard_normal(d), spd(rng, d), spd(rng, d)
    kl = G.kl_normal(m1, S1, m2, S2)
    z = rng.multivariate_normal(m1, S1, size=400_000)
    diff = G.normal_log_prob(z, m1, S1) - G.normal_log_prob(z, m2, S2)
    assert abs(kl - diff.mean()) < 4 * diff.std() / np.sqrt(len(z))
    assert G.kl_normal(m1, S1, m1, S1) == pytest.approx(0.0, abs=1e-12)


def test_kl_gradients_gradcheck():
    rng = np.random.default_rng(2)
    mu, lv = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    mu2, lv2 = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    check_function(lambda m, l: G.kl_diag_normal(m, l, mu2, lv2, axis=None), [mu, lv],
                   lambda g, m, l: tuple(g * t for t in G.kl_diag_normal_grad(m, l, mu2, lv2)))
    d = 3
    m1, m2, S2 = rng.standard_normal(d), rng.standard_normal(d), spd(rng, d)
    L = np.linalg.cholesky(spd(rng, d))

    def f(m, Lf):          # parameterise S1 = L L^T so every perturbation stays SPD
        return G.kl_normal(m, Lf @ Lf.T, m2, S2)

    def vjp(g, m, Lf):
        dm, dS = G.kl_normal_grad(m, Lf @ Lf.T, m2, S2)
        return g * dm, g * 2 * dS @ Lf
    check_function(f, [m1, L], vjp)


def test_gaussian_errors_name_the_problem():
    with pytest.raises(ValueError, match="not positive definite"):
        G.kl_normal(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="square covariance"):
        G.normal_entropy(np.ones((2, 3)))
    with pytest.raises(ValueError, match="same shape"):
        G.kl_diag_normal(np.zeros(3), np.zeros(2))


def test_reparameterize_gradcheck_and_statistics():
    rng = np.random.default_rng(3)
    check_module(Reparameterize(), rng.standard_normal((3, 2)), rng.standard_normal((3, 2)))
    refdl.manual_seed(0)
    rep = Reparameterize()
    z = rep(np.full((200_000, 1), 1.5), np.full((200_000, 1), np.log(0.25)))
    assert z.mean() == pytest.approx(1.5, abs=0.005) and z.std() == pytest.approx(0.5, abs=0.005)
    assert np.array_equal(rep.eval()(np.ones((2, 1)), np.zeros((2, 1))), np.ones((2, 1)))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("beta", [0.0, 1.0, 4.0])
def test_vae_loss_gradcheck(likelihood, beta):
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(4, 5))
    check_module(VAELoss(likelihood, beta=beta, sigma=0.7), rng.standard_normal((4, 5)),
                 rng.standard_normal((4, 2)), rng.standard_normal((4, 2)), x, wrt=[0, 1, 2])


def test_vae_loss_value_is_negative_elbo():
    rng = np.random.default_rng(5)
    x_hat, x = rng.standard_normal((3, 4)), rng.uniform(size=(3, 4))
    mu, lv = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    loss = VAELoss("gaussian", beta=2.0, sigma=0.5)(x_hat, mu, lv, x)
    rec = -G.diag_normal_log_prob(x, x_hat, np.full_like(x, np.log(0.25)))
    kl = 0.5 * np.sum(mu ** 2 + np.exp(lv) - 1 - lv, axis=1)
    assert float(loss) == pytest.approx(np.mean(rec + 2.0 * kl), rel=1e-12)


def test_vae_loss_errors():
    with pytest.raises(ValueError, match="sigma must be positive"):
        VAELoss("gaussian", sigma=0.0)
    with pytest.raises(ValueError, match="likelihood must be"):
        VAELoss("poisson")
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="NaN"):
        VAELoss()(np.full((2, 4), np.nan), z, z, np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"x_hat and x must have the same shape"):
        VAELoss()(np.zeros((2, 4)), z, z, np.zeros((2, 5)))


def test_mlp_vae_gradcheck_whole_model():
    """All three outputs get random upstream gradients: the fan-in at (mu, logvar) is checked."""
    rng = np.random.default_rng(6)
    check_module(VAE(5, 2, hidden=(6,)), rng.standard_normal((4, 5)))


def test_mlp_vae_bad_input():
    with pytest.raises(ValueError, match=r"VAE\(input_shape=\(64,\).*expected input of shape \(N, 64\), got \(2, 8, 8\)"):
        VAE(64, 2)(np.zeros((2, 8, 8), np.float32))


def test_mlp_vae_trains_on_digits():
    from sklearn.datasets import load_digits
    from refdl.optim import Adam
    refdl.manual_seed(0)
    X = (load_digits().data[:512] / 16.0).astype(np.float32)
    vae, crit = VAE(64, 2, hidden=(64,)), VAELoss("bernoulli")
    opt = Adam(vae.parameters(), lr=3e-3)
    losses = []
    for epoch in range(6):
        for i in range(0, len(X), 64):
            xb = X[i:i + 64]
            opt.zero_grad()
            loss = crit(*vae(xb), xb)
            vae.backward(*crit.backward())
            opt.step()
        with refdl.no_grad():                        # evaluation: the loss records nothing
            losses.append(float(crit(*vae.eval()(X), X)))
        vae.train()
    assert losses[-1] < 0.8 * losses[0] and crit.last_kl > 0.5
    assert vae.sample(3, generator=np.random.default_rng(0)).shape == (3, 64)


# -- linear-Gaussian VAE ---------------------------------------------------------------------
def make_lvae(beta=1.0, seed=0):
    rng = np.random.default_rng(seed)
    m = LinearGaussianVAE(4, 2, eta_e=1.3, eta_d=0.7, beta=beta, generator=rng)
    m.L_offdiag.data[...] = 0.3 * rng.standard_normal((2, 2))
    return m, rng


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_linear_vae_gradcheck(beta):
    m, rng = make_lvae(beta)
    check_module(m, rng.standard_normal((5, 4)))


def test_linear_vae_errors():
    with pytest.raises(ValueError, match="eta_e and eta_d must be positive"):
        LinearGaussianVAE(3, 2, eta_d=0.0)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3\), got \(4, 2\)"):
        LinearGaussianVAE(3, 2).elbo(np.zeros((4, 2)))


def test_conv_vae_shapes_gradcheck_and_loss_on_images():
    from refdl.models.vae import conv_vae
    rng = np.random.default_rng(7)
    refdl.manual_seed(0)
    m = conv_vae((1, 8, 8), latent_dim=2, channels=(3, 4))
    x = rng.uniform(size=(2, 1, 8, 8))
    x_hat, mu, lv = m(x.astype(np.float32))
    assert x_hat.shape == (2, 1, 8, 8) and mu.shape == lv.shape == (2, 2)
    check_module(m, x)
    check_module(VAELoss("bernoulli"), rng.standard_normal((2, 1, 8, 8)),
                 rng.standard_normal((2, 2)), rng.standard_normal((2, 2)), x, wrt=[0, 1, 2])
    with pytest.raises(ValueError, match="divisible by 4"):
        conv_vae((1, 6, 6))


def test_decode_checks_the_latent_size():
    with pytest.raises(ValueError, match=r"decode: expected z of shape \(N, 2\), got \(3, 5\)"):
        VAE(64, 2).decode(np.zeros((3, 5)))


def test_train_vae_checkpoints_and_stops_on_non_finite_loss(tmp_path):
    from refdl.checkpoint import load_checkpoint
    from refdl.models.vae import train_vae
    from refdl.optim import SGD
    from refdl.train import NonFiniteLossError
    refdl.manual_seed(0)
    X = np.random.default_rng(0).uniform(size=(64, 6)).astype(np.float32)
    vae, crit = VAE(6, 2, hidden=(8,)), VAELoss()
    path = tmp_path / "vae.npz"
    hist = train_vae(vae, crit, SGD(vae.parameters(), lr=0.05), X, epochs=2, batch_size=16,
                     checkpoint_path=path)
    assert len(hist) == 2 and hist[1] < hist[0]
    saved = {k: v.copy() for k, v in vae.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match=r"the loss became nan at epoch 1, step \d+"):
        train_vae(vae, crit, SGD(vae.parameters(), lr=1e30), X, epochs=3, batch_size=16,
                  checkpoint_path=path)
    fresh = VAE(6, 2, hidden=(8,))
    load_checkpoint(path, fresh)
    assert all(np.array_equal(fresh.state_dict()[k], v) for k, v in saved.items())
