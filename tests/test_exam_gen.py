"""Exam items of topics vae and gan (papers 000, 002, 003, 004), recomputed with refdl.

Each test names its catalog ID; docs/exam.md gives the paper's claim, these numbers and
the verdict."""
import numpy as np
import pytest
from scipy import optimize, stats

from refdl.functional import gaussian as G
from refdl.functional import sigmoid
from refdl.gradcheck import check_module
from refdl.models.gan import (DiscriminatorLoss, GeneratorLoss, GradientPenalty, MLPCritic,
                              train_gan)
from refdl.models.linear_vae import LinearGaussianVAE


# -- vae ---------------------------------------------------------------------------------------
def _fit_linear_vae(X, dz, beta, steps=3000, seed=0):
    m = LinearGaussianVAE(X.shape[1], dz, eta_e=1.0, eta_d=0.5, beta=beta,
                          generator=np.random.default_rng(seed))
    m.fit(X, steps=steps, lr=0.03)
    return m


def _pca_data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    U = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 0.5]])
    return rng.standard_normal((n, 2)) @ U.T + 0.3 * rng.standard_normal((n, 3))


def test_vae_1_higher_beta_raises_posterior_entropy():
    X = _pca_data()
    betas = [0.25, 1.0, 4.0]
    post_entropy, info = [], []
    for b in betas:
        m = _fit_linear_vae(X, 2, b)
        S = m.encoder_covariance()
        post_entropy.append(G.normal_entropy(S))
        # aggregate posterior q(z) = N(0, W C W^T + S) with C the data covariance:
        # I(x; z) = H[q(z)] - H[q(z|x)] measures how much the code says about x
        C = X.T @ X / len(X)
        agg = m.W.data @ C @ m.W.data.T + S
        info.append(G.normal_entropy(agg) - G.normal_entropy(S))
    assert post_entropy[0] < post_entropy[1] < post_entropy[2]      # key A: agrees
    assert info[0] > info[1] > info[2]                               # ...and the code says less


def test_vae_2_kl_of_zero_mean_diagonal_gaussian():
    sigma2 = np.array([0.5, 1.0, 2.0, 3.0])
    mu = np.zeros(4)
    kl = G.kl_diag_normal(mu, np.log(sigma2))
    truth = 0.5 * np.sum(sigma2 - 1 - np.log(sigma2))
    assert kl == pytest.approx(truth, rel=1e-12)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((400_000, 4)) * np.sqrt(sigma2)
    d = G.diag_normal_log_prob(z, mu, np.log(sigma2)) - G.diag_normal_log_prob(z, mu, 0 * mu)
    assert abs(d.mean() - kl) < 4 * d.std() / np.sqrt(len(z))
    key_a = 0.5 * np.sum(sigma2)
    assert abs(key_a - kl) > 1.0                               # the key's (a) is wrong
    assert G.kl_diag_normal(mu, np.zeros(4)) == 0.0            # sigma = 1: KL 0, key gives 2


def test_vae_3_factorisations_imply_the_graph():
    rng = np.random.default_rng(0)
    K = 3

    def cpt(*shape):
        t = rng.uniform(0.1, 1.0, size=shape)
        return t / t.sum(-1, keepdims=True)
    pz1, pz2 = cpt(K), cpt(K)
    px1 = cpt(K, K, K)          # p(x1 | z1, z2)
    px2 = cpt(K, K)             # p(x2 | z2)
    p = np.einsum("a,b,abc,bd->abcd", pz1, pz2, px1, px2)      # p(z1, z2, x1, x2)
    assert p.sum() == pytest.approx(1.0)
    pz = p.sum((2, 3))
    assert np.allclose(pz, np.outer(pz.sum(1), pz.sum(0)))     # z1 and z2 independent
    # x2 depends on z2 only: p(x2 | z1, z2) the same for every z1
    px2_given = p.sum(2) / p.sum((2, 3))[..., None]
    assert np.allclose(px2_given, px2_given[0:1])
    # explaining away: given x1 (a common child) z1 and z2 become dependent in p
    post = p / p.sum((0, 1), keepdims=True)                    # p(z1, z2 | x1, x2)
    prod = post.sum(1, keepdims=True) * post.sum(0, keepdims=True)
    assert np.abs(post - prod).max() > 1e-3
    # q(z1, z2 | x1, x2) = q(z1 | x1, x2) q(z2 | x2): z2 ignores x1, z1 sees both
    qz1, qz2 = cpt(K, K, K), cpt(K, K)          # q(z1 | x1, x2), q(z2 | x2)
    q = np.einsum("cda,db->abcd", qz1, qz2)     # q(z1, z2 | x1, x2) indexed [z1, z2, x1, x2]
    assert np.allclose(q.sum((0, 1)), 1.0)
    q_z2 = q.sum(0)                               # q(z2 | x1, x2)
    assert np.allclose(q_z2, q_z2[:, 0:1, :])     # the same for every x1
    # so q cannot represent p's posterior exactly (q's z1, z2 independent given x)
    assert np.allclose(q, q.sum(1, keepdims=True) * q.sum(0, keepdims=True))


def test_vae_4_which_statements_hold():
    # 5 TRUE: the ELBO lower-bounds log p(x) for every encoder
    rng = np.random.default_rng(0)
    X = _pca_data(50)
    m = LinearGaussianVAE(3, 2, generator=rng)
    for _ in range(5):
        m.W.data[...] = rng.standard_normal(m.W.shape)
        m.log_sigma.data[...] = rng.standard_normal(2)
        assert np.all(m.elbo(X) <= m.log_likelihood(X) + 1e-12)
    # 1 FALSE: the best q maximises the ELBO = log p(x) - KL(q || p(z|x)) (reverse KL).
    # A bimodal posterior, a Gaussian q: the ELBO optimum is mode-seeking, not the
    # moment-matching minimiser of KL(p || q).
    z = np.linspace(-8, 8, 4001)
    dz = z[1] - z[0]
    p = 0.5 * stats.norm.pdf(z, -2, 0.5) + 0.5 * stats.norm.pdf(z, 2, 0.5)
    p /= p.sum() * dz

    def reverse_kl(th):
        q = stats.norm.pdf(z, th[0], np.exp(th[1]))
        return np.sum(q * (np.log(q + 1e-300) - np.log(p + 1e-300))) * dz
    best = optimize.minimize(reverse_kl, [1.0, 0.0], method="Nelder-Mead").x
    m_p, s_p = np.sum(z * p) * dz, np.sqrt(np.sum(z ** 2 * p) * dz)
    assert abs(best[0]) > 1.5 and np.exp(best[1]) < 0.8          # sits on one mode
    assert abs(m_p) < 1e-6 and s_p > 2.0                           # forward KL: both modes
    # 2 FALSE: a discrete latent works: exact ELBO by enumeration, tight at the posterior
    pz = np.array([0.3, 0.7])
    px_z = np.array([[0.9, 0.1], [0.2, 0.8]])                      # p(x | z)
    x = 1
    log_px = np.log(np.sum(pz * px_z[:, x]))
    for qz in ([0.5, 0.5], [0.1, 0.9]):
        qz = np.array(qz)
        elbo = np.sum(qz * (np.log(pz * px_z[:, x]) - np.log(qz)))
        assert elbo <= log_px
    post = pz * px_z[:, x] / np.sum(pz * px_z[:, x])
    assert np.sum(post * (np.log(pz * px_z[:, x]) - np.log(post))) == pytest.approx(log_px)
    # 4 FALSE: the score-function (REINFORCE) estimator needs no reparameterisation
    mu, f = 0.7, (lambda v: v ** 2 + np.sin(v))
    zs = mu + rng.standard_normal(1_000_000)
    score = np.mean(f(zs) * (zs - mu))                 # d/dmu E[f], via grad log q
    reparam = np.mean(2 * zs + np.cos(zs))             # d/dmu E[f], via z = mu + eps
    exact = 2 * mu + np.cos(mu) * np.exp(-0.5)
    assert score == pytest.approx(exact, abs=0.02) and reparam == pytest.approx(exact, abs=0.005)
    # 3 FALSE: lower reconstruction error, lower likelihood. A near-deterministic encoder
    # reconstructs better than the exact posterior but its ELBO (and samples) are worse.
    m.set_encoder(*m.optimal_encoder())
    rec_opt = np.mean(np.sum((X - X @ m.W.data.T @ m.U.data.T) ** 2, 1))
    W_ae = np.linalg.pinv(m.U.data)                   # reconstruction-optimal linear encoder
    rec_ae = np.mean(np.sum((X - X @ W_ae.T @ m.U.data.T) ** 2, 1))
    elbo_opt = m.elbo(X).mean()
    m.set_encoder(W_ae, 1e-4 * np.eye(2))
    assert rec_ae < rec_opt and m.elbo(X).mean() < elbo_opt - 1.0


def test_vae_5_linear_vae_elbo_closed_form_mc_and_exact_likelihood():
    rng = np.random.default_rng(0)
    m = LinearGaussianVAE(4, 2, eta_e=1.3, eta_d=0.7, generator=rng)
    m.L_offdiag.data[...] = 0.3 * rng.standard_normal((2, 2))
    X = rng.standard_normal((3, 4))
    closed = m.elbo(X)
    mc = m.mc_elbo(X, n_samples=200_000, generator=rng)
    assert np.allclose(closed, mc, atol=0.01)
    exact = m.log_likelihood(X)
    assert np.all(closed < exact)                    # a strict bound for this q
    m.set_encoder(*m.optimal_encoder())
    assert np.allclose(m.elbo(X), exact, atol=1e-12)  # tight at the true posterior


def test_vae_6_training_reaches_the_ppca_maximum_likelihood():
    X = _pca_data(400)
    X = X - X.mean(0)
    m = _fit_linear_vae(X, 2, beta=1.0, steps=4000)
    U_mle, eta_d2_mle, ll_mle = LinearGaussianVAE.ppca_mle(X, 2)
    elbo = m.elbo(X).mean()
    assert elbo <= ll_mle + 1e-9
    assert elbo == pytest.approx(ll_mle, abs=2e-3)
    assert np.exp(2 * m.log_eta_d.data) == pytest.approx(eta_d2_mle, rel=1e-2)
    # decoder matches up to a rotation: U U^T is rotation invariant
    assert np.allclose(m.U.data @ m.U.data.T, U_mle @ U_mle.T, atol=2e-2)
    # a reparameterised Monte Carlo gradient of E_q log p(x|z) w.r.t. U agrees with the
    # closed form (r (Wx)^T - U Sigma) / eta_d^2
    rng = np.random.default_rng(1)
    x = X[:1]
    Lc = m.cholesky()
    z = x @ m.W.data.T + rng.standard_normal((400_000, 2)) @ Lc.T
    eta_d2 = np.exp(2 * m.log_eta_d.data)
    mc_grad = ((x - z @ m.U.data.T).T @ z) / len(z) / eta_d2
    zbar = x @ m.W.data.T
    closed = ((x - zbar @ m.U.data.T).T @ zbar - m.U.data @ (Lc @ Lc.T)) / eta_d2
    assert np.allclose(mc_grad, closed, atol=0.03)


# -- gan ---------------------------------------------------------------------------------------
def test_gan_1_gradient_penalty_parameter_gradient_is_a_checked_second_derivative():
    rng = np.random.default_rng(0)
    for act in ("tanh", "softplus", "leaky_relu"):
        critic = MLPCritic(3, (5, 4), activation=act, generator=rng)
        x = rng.standard_normal((6, 3))
        for center in (1.0, 0.0):      # WGAN-GP's (||g|| - 1)^2 and the paper's ||g||^2
            check_module(GradientPenalty(critic, lam=3.0, center=center), x)
    # the penalty enforces 1-Lipschitzness softly. Two point clouds a distance d apart: a
    # critic with slope s along the line gains d*s in the objective and pays
    # lam*(s - 1)^2, so the trained slope is s* = 1 + d / (2 lam) (-> 1 as lam grows).
    from refdl.optim import Adam
    critic = MLPCritic(2, (32, 32), activation="tanh", generator=np.random.default_rng(1))
    lam = 10.0
    gp = GradientPenalty(critic, lam=lam)
    opt = Adam(critic.parameters(), lr=3e-3, betas=(0.5, 0.9))
    real = rng.standard_normal((128, 2)) * 0.1 + 2.0
    fake = rng.standard_normal((128, 2)) * 0.1 - 2.0
    for _ in range(600):
        opt.zero_grad()
        critic(np.concatenate([real, fake]))
        critic.backward(np.concatenate([-np.ones((128, 1)) / 128, np.ones((128, 1)) / 128]))
        e = rng.uniform(size=(128, 1))
        gp(e * real + (1 - e) * fake)
        gp.backward()
        opt.step()
    d = np.linalg.norm(real.mean(0) - fake.mean(0))
    e = rng.uniform(size=(256, 1))
    norms = np.linalg.norm(critic.input_gradient(e * real[:1] + (1 - e) * fake[:1]), axis=1)
    assert np.median(norms) == pytest.approx(1 + d / (2 * lam), abs=0.05)
    gap = float(np.mean(critic(real)) - np.mean(critic(fake)))
    assert gap == pytest.approx(d * (1 + d / (2 * lam)), rel=0.05)


def test_gan_2_saturating_loss_vanishes_non_saturating_does_not():
    logits = np.array([[-10.0], [-5.0], [0.0]])               # D(G(z)) = 4.5e-5, 6.7e-3, 0.5
    sat, nonsat = GeneratorLoss("saturating"), GeneratorLoss("non_saturating")
    sat(logits)
    g_sat = sat.backward() * len(logits)                       # per-sample d/dlogit
    nonsat(logits)
    g_ns = nonsat.backward() * len(logits)
    assert abs(g_sat[0, 0]) < 1e-4 and abs(g_ns[0, 0]) > 0.9999
    np.testing.assert_allclose(g_sat[:, 0], -sigmoid(logits[:, 0]), rtol=1e-12)
    np.testing.assert_allclose(g_ns[:, 0], -sigmoid(-logits[:, 0]), rtol=1e-12)
    # with respect to D itself the saturating derivative is -1/(1 - D) ~ -1: the vanishing
    # comes from the sigmoid, d D / d logit = D (1 - D) -> 0
    D = sigmoid(logits[0, 0])
    assert -1 / (1 - D) == pytest.approx(-1.0, abs=1e-4)
    check_module(GeneratorLoss("saturating"), logits)
    check_module(GeneratorLoss("non_saturating"), logits)
    check_module(DiscriminatorLoss(), logits, -logits[:2])


def test_gan_3_optimal_conditional_discriminator():
    rng = np.random.default_rng(0)
    nx, ny = 4, 3
    p_data = rng.uniform(size=(nx, ny))
    p_data /= p_data.sum()
    p_theta_x_given_y = rng.uniform(size=(nx, ny))
    p_theta_x_given_y /= p_theta_x_given_y.sum(0, keepdims=True)
    p_y = np.array([0.2, 0.5, 0.3])              # need not equal p_data(y)
    p_gen = p_theta_x_given_y * p_y
    # maximise V(D) = sum p_data log D + sum p_gen log(1 - D) over D = sigmoid(l) by
    # gradient ascent, using refdl's discriminator loss gradients
    # (each cell is its own 1-D convex problem: Newton's method, the curvature being
    # (p_data + p_gen) D (1 - D))
    logits = np.zeros((nx, ny))
    for _ in range(60):
        d_real = -sigmoid(-logits)          # d(-log D)/dl
        d_fake = sigmoid(logits)            # d(-log(1-D))/dl
        grad = p_data * d_real + p_gen * d_fake
        D = sigmoid(logits)
        logits -= grad / ((p_data + p_gen) * D * (1 - D))
    D_star = p_data / (p_data + p_gen)
    np.testing.assert_allclose(sigmoid(logits), D_star, rtol=1e-10)


def test_gan_4_statements():
    # 3 TRUE: max_D V(D, G) = -log 4 + 2 JSD(p_data || p_g) on a discrete space
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(6)), rng.dirichlet(np.ones(6))
    D = p / (p + q)
    v_star = np.sum(p * np.log(D)) + np.sum(q * np.log(1 - D))
    m = (p + q) / 2
    jsd = 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))
    assert v_star == pytest.approx(-np.log(4) + 2 * jsd, rel=1e-12)
    # 4 FALSE: min-max and max-min differ, e.g. V(g, d) = (g - d)^2 on [0, 1]^2
    grid = np.linspace(0, 1, 1001)
    V = (grid[:, None] - grid[None, :]) ** 2                 # V[g, d]
    assert V.max(1).min() == pytest.approx(0.25) and V.min(0).max() == pytest.approx(0.0)
    # 1 FALSE: saturation happens when fakes are EASY to reject (D(G(z)) ~ 0), not when
    # they look real: the saturating gradient -sigmoid(l) is largest near D = 1/2
    l = np.array([[-8.0], [0.0]])
    sat = GeneratorLoss("saturating")
    sat(l)
    g = np.abs(sat.backward()[:, 0])
    assert g[0] < 1e-3 * g[1]


def test_gan_5_jsd_saturates_wasserstein_does_not():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, 20_000)
    bins = np.linspace(-1, 12, 1301)
    shifts = [0.0, 0.5, 2.0, 5.0, 10.0]
    jsd, w1 = [], []
    for s in shifts:
        b = rng.uniform(0, 1, 20_000) + s
        pa, _ = np.histogram(a, bins)
        pb, _ = np.histogram(b, bins)
        pa, pb = pa / pa.sum(), pb / pb.sum()
        m = (pa + pb) / 2
        ka, kb = pa > 0, pb > 0
        jsd.append(0.5 * np.sum(pa[ka] * np.log(pa[ka] / m[ka]))
                   + 0.5 * np.sum(pb[kb] * np.log(pb[kb] / m[kb])))
        w1.append(stats.wasserstein_distance(a, b))
    # disjoint supports (shift >= 1): JSD is stuck at log 2 -> no gradient w.r.t. the shift
    np.testing.assert_allclose(jsd[2:], np.log(2), atol=1e-12)
    assert jsd[0] < 0.01 and jsd[1] < np.log(2) - 0.1
    # W1 keeps growing with the shift: an informative signal everywhere
    np.testing.assert_allclose(w1, shifts, atol=0.02)


def _uniform_pdf(x, lo, hi):
    return np.where((x >= lo) & (x <= hi), 1.0 / (hi - lo), 0.0)


def test_gan_7_density_test_for_the_uncovered_region():
    x = np.linspace(0.01, 1.99, 199)
    p_r, p_t = _uniform_pdf(x, 0, 2), _uniform_pdf(x, 0, 1)
    in_omega = (p_r > 0) & (p_t == 0)
    assert np.array_equal(in_omega, x > 1)


def test_gan_8_optimal_discriminator_tests_membership():
    x = np.linspace(0.01, 1.99, 199)
    p_r, p_t = _uniform_pdf(x, 0, 2), _uniform_pdf(x, 0, 1)
    D = p_r / (p_r + p_t)
    assert np.array_equal(D == 1.0, x > 1)                     # D* = 1 exactly on Omega
    np.testing.assert_allclose(D[x < 1], 1 / 3)               # p_r = 1/2, p_t = 1
    # a discriminator trained on samples approaches D*: smooth 1-D densities
    from refdl.optim import Adam
    rng = np.random.default_rng(0)
    Dnet = MLPCritic(1, (16,), activation="tanh", generator=rng)
    loss = DiscriminatorLoss()
    opt = Adam(Dnet.parameters(), lr=1e-2)
    for _ in range(800):
        real = rng.normal(0.0, 1.0, (256, 1))
        fake = rng.normal(1.0, 0.7, (256, 1))
        opt.zero_grad()
        out = Dnet(np.concatenate([real, fake]))
        loss(out[:256], out[256:])
        Dnet.backward(np.concatenate(loss.backward()))
        opt.step()
    grid = np.linspace(-1.5, 2.0, 36)[:, None]
    pr, pg = stats.norm.pdf(grid, 0, 1), stats.norm.pdf(grid, 1, 0.7)
    assert np.abs(sigmoid(Dnet(grid)) - pr / (pr + pg)).max() < 0.06


def test_gan_9_coverage_metric_of_the_training_set():
    rng = np.random.default_rng(0)
    T = rng.uniform(0, 2, 10_000)                              # training samples from P_r
    p_r, p_t = _uniform_pdf(T, 0, 2), _uniform_pdf(T, 0, 1)
    D = p_r / (p_r + p_t)
    coverage = np.mean(D < 1)          # share of T the generator can produce (P_theta > 0)
    assert coverage == pytest.approx(0.5, abs=0.02)
    # the same metric with a generator that covers everything is 1
    assert np.mean(_uniform_pdf(T, 0, 2) / (2 * _uniform_pdf(T, 0, 2)) < 1) == 1.0


def test_gan_training_runs_and_wgan_gp_stays_finite():
    """A smoke-level run of each training mode (the full comparison is benchmarks/gan_toys.py)."""
    def ring(n, rng):
        a = 2 * np.pi * rng.integers(0, 8, n) / 8
        return np.stack([2 * np.cos(a), 2 * np.sin(a)], 1) + 0.05 * rng.standard_normal((n, 2))
    for kind in ("gan", "wgan", "wgan-gp"):
        G_, D_, h = train_gan(ring, kind=kind, steps=20, batch_size=64, hidden=(16, 16),
                              generator=np.random.default_rng(0))
        assert len(h["g_loss"]) == 20 and np.all(np.isfinite(h["d_loss"]))
    with pytest.raises(ValueError, match="kind must be one of"):
        train_gan(ring, kind="vanilla")
