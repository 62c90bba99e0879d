"""Exam items of topics vae and gan (papers 000, 002, 003, 004), recomputed with refdl.

Each test names its catalog ID; docs/exam.md gives the paper's claim, these numbers and
the verdict."""
import itertools

import numpy as np
import pytest
from scipy import optimize, special, stats
from scipy.spatial import distance

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


def _parents(joint, names, order):
    """Read a directed graph off a joint table: for each variable (in the given order),
    the smallest set of earlier variables S with p(v | all earlier) = p(v | S). This is
    what drawing the graph of a factorisation means; it uses no refdl code (item vae-3
    is a drawing question, checked here with NumPy only)."""
    axes = {n: i for i, n in enumerate(names)}
    parents = {}
    for k, v in enumerate(order):
        earlier = order[:k]
        keep = [axes[n] for n in earlier + [v]]
        drop = tuple(i for i in range(joint.ndim) if i not in keep)
        marg = joint.sum(drop) if drop else joint
        marg = np.moveaxis(marg, [sorted(keep).index(axes[n]) for n in earlier + [v]],
                           range(len(keep)))
        cond_all = marg / marg.sum(-1, keepdims=True)
        best = None
        for r in range(len(earlier) + 1):
            for S in itertools.combinations(range(len(earlier)), r):
                rest = tuple(i for i in range(len(earlier)) if i not in S)
                m = marg.sum(rest, keepdims=True) if rest else marg
                cond_S = m / m.sum(-1, keepdims=True)
                if np.allclose(np.broadcast_to(cond_S, cond_all.shape), cond_all, atol=1e-12):
                    best = {earlier[i] for i in S}
                    break
            if best is not None:
                break
        parents[v] = best
    return parents


def test_vae_3_factorisations_imply_the_graph():
    """002 Q5: p = p(z1)p(z2)p(x1|z1,z2)p(x2|z2), q = q(z1|x1,x2)q(z2|x2). Random
    tables with 3 states each; the graph read off the joint tables has the edges
    z1->x1, z2->x1, z2->x2 (p) and x1->z1, x2->z1, x2->z2 (q)."""
    rng = np.random.default_rng(0)
    K = 3

    def cpt(*shape):
        return rng.dirichlet(np.ones(K), size=shape[:-1]) if len(shape) > 1 else \
            rng.dirichlet(np.ones(K))
    p = np.einsum("a,b,abc,bd->abcd", cpt(K), cpt(K), cpt(K, K, K), cpt(K, K))
    names = ["z1", "z2", "x1", "x2"]
    assert _parents(p, names, ["z1", "z2", "x1", "x2"]) == {
        "z1": set(), "z2": set(), "x1": {"z1", "z2"}, "x2": {"z2"}}
    # q(z1, z2 | x1, x2) with x1, x2 from any distribution (here uniform)
    qz1, qz2 = cpt(K, K, K), cpt(K, K)           # q(z1 | x1, x2) [x1, x2, z1], q(z2 | x2)
    q = np.einsum("cda,db->abcd", qz1, qz2) / K ** 2          # [z1, z2, x1, x2]
    assert _parents(q, names, ["x1", "x2", "z2", "z1"]) == {
        "x1": set(), "x2": set(), "z2": {"x2"}, "z1": {"x1", "x2"}}
    # explaining away: in p's posterior z1 and z2 are dependent (given x, through x1), so
    # q, in which z1 depends on z2 not at all, cannot represent it exactly
    post = p / p.sum((0, 1), keepdims=True)
    assert _parents(post[..., 0, 0], ["z1", "z2"], ["z2", "z1"])["z1"] == {"z2"}


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


def _fit_table_discriminator(real_counts, fake_counts):
    """max_D V(D) on a finite space with refdl's discriminator: a bias-free-input
    ``MLPCritic`` on one-hot cells (one logit per cell) trained by L-BFGS on refdl's
    ``DiscriminatorLoss`` (its value) and the critic's and loss's backward (its gradient).
    The real batch holds cell c real_counts[c] times, the fake batch fake_counts[c] times,
    so the loss is exactly the expected loss under the two empirical distributions.
    Returns (D on every cell, the minimised loss, a numeric-vs-analytic gradient error)."""
    K = real_counts.size
    cells = np.eye(K)
    real_x = np.repeat(cells, real_counts.ravel(), axis=0)
    fake_x = np.repeat(cells, fake_counts.ravel(), axis=0)
    D = MLPCritic(K, hidden=(), dtype=np.float64)
    params = list(D.parameters())
    loss = DiscriminatorLoss()

    def set_theta(theta):
        i = 0
        for p in params:
            p.data[...] = theta[i:i + p.size].reshape(p.shape)
            i += p.size

    def f_and_grad(theta):
        set_theta(theta)
        for p in params:
            p.grad[...] = 0
        out = D(np.concatenate([real_x, fake_x]))
        value = float(loss(out[:len(real_x)], out[len(real_x):]))
        D.backward(np.concatenate(loss.backward()))
        return value, np.concatenate([p.grad.ravel() for p in params])

    theta0 = np.zeros(sum(p.size for p in params))
    rng = np.random.default_rng(1)
    probe = rng.standard_normal(theta0.size)
    g_an = f_and_grad(probe)[1]
    g_num = np.array([(f_and_grad(probe + 1e-6 * e)[0] - f_and_grad(probe - 1e-6 * e)[0]) / 2e-6
                      for e in np.eye(theta0.size)])
    grad_err = np.abs(g_an - g_num).max() / np.abs(g_num).max()
    res = optimize.minimize(f_and_grad, theta0, jac=True, method="L-BFGS-B",
                            options={"gtol": 1e-13, "ftol": 1e-15, "maxiter": 5000})
    set_theta(res.x)
    return sigmoid(D(cells)[:, 0]).reshape(real_counts.shape), res.fun, grad_err


def test_gan_3_optimal_conditional_discriminator():
    """002 Q7: the conditional discriminator D(x, y) takes the pair (here one-hot over
    the 4 x 3 cells); refdl's trained D equals p_data / (p_data + p_theta(x|y) p(y))."""
    rng = np.random.default_rng(0)
    nx, ny, n = 4, 3, 2000
    p_data = rng.multinomial(n, rng.dirichlet(np.ones(nx * ny))).reshape(nx, ny) + 1
    p_y = np.array([0.2, 0.5, 0.3])                  # the generator's labels: != p_data(y)
    p_x_given_y = rng.dirichlet(np.ones(nx), size=ny).T          # p_theta(x | y), (nx, ny)
    gen = np.rint(n * p_x_given_y * p_y).astype(int) + 1        # counts of p_theta(x|y)p(y)
    D, _, grad_err = _fit_table_discriminator(p_data, gen)
    assert grad_err < 1e-6                           # refdl's loss gradient is its derivative
    pd, pg = p_data / p_data.sum(), gen / gen.sum()
    np.testing.assert_allclose(D, pd / (pd + pg), rtol=1e-6)
    assert not np.allclose(pg.sum(0), pd.sum(0), atol=0.02)      # p(y) != p_data(y)


def test_gan_4_statements():
    # 3 TRUE: max_D V(D, G) = -log 4 + 2 JSD(p_data || p_g): refdl's discriminator trained
    # to optimality on a 6-point space against scipy's Jensen-Shannon distance
    rng = np.random.default_rng(0)
    a = rng.multinomial(3000, rng.dirichlet(np.ones(6))) + 1
    b = rng.multinomial(3000, rng.dirichlet(np.ones(6))) + 1
    _, min_loss, grad_err = _fit_table_discriminator(a, b)
    assert grad_err < 1e-6
    v_star = -min_loss                               # V = -L_D
    jsd = distance.jensenshannon(a / a.sum(), b / b.sum()) ** 2   # natural log
    assert v_star == pytest.approx(-np.log(4) + 2 * jsd, rel=1e-8)
    # 4 FALSE (arithmetic, no refdl): min-max and max-min differ, V(g, d) = (g - d)^2
    grid = np.linspace(0, 1, 1001)
    V = (grid[:, None] - grid[None, :]) ** 2                 # V[g, d]
    assert V.max(1).min() == pytest.approx(0.25) and V.min(0).max() == pytest.approx(0.0)
    # 1 FALSE: saturation happens when fakes are EASY to reject (D(G(z)) ~ 0), not when
    # they look real: refdl's saturating gradient -sigmoid(l)/N against a central difference
    l = np.array([[-8.0], [0.0]])
    sat = GeneratorLoss("saturating")
    sat(l)
    g = sat.backward()[:, 0]
    num = [(np.mean(np.log(1 - sigmoid(l + 1e-6 * e))) - np.mean(np.log(1 - sigmoid(l - 1e-6 * e))))
           / 2e-6 for e in np.eye(2)[:, :, None]]
    np.testing.assert_allclose(g, num, rtol=1e-6)
    assert abs(g[0]) < 1e-3 * abs(g[1])


def test_gan_5_jsd_saturates_wasserstein_does_not():
    """003 Q8(a). U(0, 1) real against U(s, s + 1) fake. A refdl discriminator trained to
    near-optimality measures -log 4 + 2 JSD = -L_D*: the JSD sticks at log 2 once the
    supports are disjoint, and the saturating generator gradient d L_G / ds vanishes. A
    refdl WGAN-GP critic (linear, lam = 10) keeps a slope k = 1 + s/(2 lam) (closed form of
    min_k -k s + lam (k - 1)^2), so its estimate k s grows with W1 = s (scipy) and the
    generator's gradient d(-mean f(fake))/ds = k >= 1 never vanishes."""
    from refdl.models.gan import WassersteinCriticLoss
    from refdl.optim import Adam
    rng = np.random.default_rng(0)
    real = rng.uniform(0, 1, (512, 1))
    u = rng.uniform(0, 1, (512, 1))
    jsd, gen_grad = {}, {}
    for s in (0.25, 3.0, 6.0):
        D = MLPCritic(1, (8,), activation="tanh", dtype=np.float64, generator=rng)
        loss, opt = DiscriminatorLoss(), Adam(D.parameters(), lr=0.05)
        xs = np.concatenate([real, u + s]) - s / 2          # centred inputs
        for _ in range(1500):
            opt.zero_grad()
            out = D(xs)
            value = float(loss(out[:512], out[512:]))
            D.backward(np.concatenate(loss.backward()))
            opt.step()
        jsd[s] = (np.log(4) - value) / 2
        # dL_G/ds of the saturating loss mean log(1 - D(u + s)) through refdl's backward
        sat = GeneratorLoss("saturating")
        sat(D(u + s - s / 2))
        gen_grad[s] = float(np.sum(D.backward(sat.backward())))
    assert jsd[3.0] == pytest.approx(np.log(2), abs=0.01)
    assert jsd[6.0] == pytest.approx(np.log(2), abs=0.01)
    assert jsd[0.25] < np.log(2) - 0.2                   # overlap: the JSD still varies
    assert abs(gen_grad[3.0]) < 0.02 * abs(gen_grad[0.25])
    assert abs(gen_grad[6.0]) < 0.02 * abs(gen_grad[0.25])
    lam = 10.0
    for s in (0.5, 2.0, 5.0):
        f = MLPCritic(1, (), dtype=np.float64, generator=rng)
        crit, gp = WassersteinCriticLoss(), GradientPenalty(f, lam=lam)
        opt = Adam(f.parameters(), lr=0.05)
        fake = real + s                                  # W1 = s exactly
        f.layers[0].weight.data[...] = 0.0     # (|k| - 1)^2 has a second, wrong-signed minimum
        for _ in range(1500):
            opt.zero_grad()
            out = f(np.concatenate([real, fake]))
            crit(out[:512], out[512:])
            f.backward(np.concatenate(crit.backward()))
            gp(real + (fake - real) * rng.uniform(size=(512, 1)))
            gp.backward()
            opt.step()
        estimate = float(np.mean(f(real)) - np.mean(f(fake)))
        w1 = stats.wasserstein_distance(real[:, 0], fake[:, 0])
        assert w1 == pytest.approx(s, rel=1e-9)
        assert estimate == pytest.approx(w1 * (1 + s / (2 * lam)), rel=0.02)
        g = GeneratorLoss("wasserstein")
        g(f(fake))
        dG_ds = float(np.sum(f.backward(g.backward())))
        assert dG_ds == pytest.approx(1 + s / (2 * lam), rel=0.02)    # never vanishes


# 004 Q1(b)-(d): real data a ring of 8 Gaussians, a generator that covers 6 of them
RING = 2.0 * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], 1)
STD = 0.05


def _mixture_log_density(x, centers):
    """log of the equal-weight mixture density, with refdl's normal_log_prob per mode."""
    S = STD ** 2 * np.eye(2)
    lp = np.stack([G.normal_log_prob(x, c, S) for c in centers], 1)
    return special.logsumexp(lp, axis=1) - np.log(len(centers))


def test_gan_7_density_test_for_the_uncovered_region():
    """Omega = where P_r > 0 and P_theta = 0. With refdl's mixture sampler and refdl's
    Gaussian log-densities, the test 'log P_theta(x) < log P_r(x) - 30' flags exactly the
    real samples drawn from the two modes the generator misses (their sampler labels)."""
    from refdl.data.synthetic import make_gaussian_mixture
    x, label = make_gaussian_mixture(RING, 4000, std=STD, generator=np.random.default_rng(0))
    x = x.astype(np.float64)
    log_pr, log_pt = _mixture_log_density(x, RING), _mixture_log_density(x, RING[:6])
    flagged = log_pt < log_pr - 30
    np.testing.assert_array_equal(flagged, label >= 6)
    # scipy's densities as the independent check of refdl's log-densities
    ref = np.log(np.mean([stats.multivariate_normal(c, STD ** 2).pdf(x[:50]) for c in RING], 0))
    np.testing.assert_allclose(log_pr[:50], ref, rtol=1e-10)


def _uniform_pdf(x, lo, hi):
    return np.where((x >= lo) & (x <= hi), 1.0 / (hi - lo), 0.0)


def test_gan_8_optimal_discriminator_tests_membership():
    x = np.linspace(0.01, 1.99, 199)
    p_r, p_t = _uniform_pdf(x, 0, 2), _uniform_pdf(x, 0, 1)   # the toy of 004 Q1(c)
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


def _trained_gan_discriminator(real, fake, steps=600, seed=0):
    from refdl.optim import Adam
    rng = np.random.default_rng(seed)
    D = MLPCritic(2, (32, 32), activation="tanh", dtype=np.float64, generator=rng)
    loss, opt = DiscriminatorLoss(), Adam(D.parameters(), lr=3e-3)
    for _ in range(steps):
        i, j = rng.integers(0, len(real), 256), rng.integers(0, len(fake), 256)
        opt.zero_grad()
        out = D(np.concatenate([real[i], fake[j]]))
        loss(out[:256], out[256:])
        D.backward(np.concatenate(loss.backward()))
        opt.step()
    return D


def test_gan_9_coverage_metric_of_the_training_set():
    """004 Q1(d): the share of the training set T on which D(x) < 1 - delta (points the
    generator can also produce). With refdl's densities D* gives exactly the share of T in
    the 6 covered modes (sampler labels); a refdl discriminator trained on T against the
    generator's samples gives the same share; a generator covering all modes scores 1."""
    from refdl.data.synthetic import make_gaussian_mixture
    T, label = make_gaussian_mixture(RING, 2000, std=STD, generator=np.random.default_rng(1))
    fake, _ = make_gaussian_mixture(RING[:6], 2000, std=STD, generator=np.random.default_rng(2))
    T, fake = T.astype(np.float64), fake.astype(np.float64)
    truth = np.mean(label < 6)
    d_star = 1 / (1 + np.exp(_mixture_log_density(T, RING[:6]) - _mixture_log_density(T, RING)))
    assert np.mean(d_star < 0.9) == truth
    np.testing.assert_allclose(d_star[label < 6], 3 / 7, rtol=1e-6)   # (1/8) / (1/8 + 1/6)
    D = _trained_gan_discriminator(T, fake)
    d_hat = sigmoid(D(T)[:, 0])
    assert abs(np.mean(d_hat < 0.9) - truth) < 0.02
    full, _ = make_gaussian_mixture(RING, 2000, std=STD, generator=np.random.default_rng(3))
    d_full = 1 / (1 + np.exp(_mixture_log_density(T, RING) - _mixture_log_density(T, RING)))
    assert np.mean(d_full < 0.9) == 1.0
    D2 = _trained_gan_discriminator(T, full.astype(np.float64), seed=1)
    assert np.mean(sigmoid(D2(T)[:, 0]) < 0.9) > 0.97


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
