"""DDPM (refdl.models.diffusion): forward process, posterior, ELBO terms, eps-network,
training and sampling on 8 Gaussians on a ring. All seeded."""
import math

import numpy as np
import pytest

from refdl.data.synthetic import make_ring, ring_centers
from refdl.gradcheck import check_module
from refdl.metrics import mode_coverage
from refdl.models.diffusion import (GaussianDiffusion, LinearGaussianReverse, MixtureOracleEps,
                                    NoisePredictor, SinusoidalTimeEmbedding,
                                    gaussian_log_prob, make_beta_schedule, normal_kl,
                                    train_ddpm)


def ring_mixture(n, std=0.05, generator=None, dtype=np.float32):
    """The points of refdl.data.make_ring (8 modes of radius 2) without their labels."""
    return make_ring(n, std=std, generator=generator, dtype=dtype)[0]


# --------------------------------------------------------------------------- schedules
def test_linear_schedule_is_ho_for_T_1000_and_rescaled_otherwise():
    b = make_beta_schedule("linear", 1000)
    assert b.shape == (1000,) and b.dtype == np.float64
    assert b[0] == pytest.approx(1e-4, rel=1e-12) and b[-1] == pytest.approx(0.02, rel=1e-12)
    np.testing.assert_allclose(np.diff(b), (0.02 - 1e-4) / 999, rtol=1e-9)
    b50 = make_beta_schedule("linear", 50)
    assert b50[0] == pytest.approx(2e-3) and b50[-1] == pytest.approx(0.4)
    b = make_beta_schedule("linear", 10, beta_start=0.1, beta_end=0.2)
    np.testing.assert_allclose(b, np.linspace(0.1, 0.2, 10))


def test_cosine_schedule_alpha_bar_is_the_squared_cosine():
    T, s = 100, 0.008
    d = GaussianDiffusion.from_schedule("cosine", T)
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    ab = (f / f[0])[1:]
    # exact except where beta is clipped at 0.999 (only the last step)
    np.testing.assert_allclose(d.alphas_cumprod[:-1], ab[:-1], rtol=1e-12)
    assert d.betas.max() <= 0.999 and np.all(np.diff(d.betas) > 0)


def test_alpha_bar_is_the_product_of_alphas():
    d = GaussianDiffusion.from_schedule("linear", 30)
    for t in (1, 7, 30):
        assert d.alphas_cumprod[t - 1] == pytest.approx(np.prod(1 - d.betas[:t]), rel=1e-13)
    assert d.alphas_cumprod_prev[0] == 1.0


# --------------------------------------------------------------------------- forward process
def test_q_sample_equals_composition_of_one_step_kernels_monte_carlo():
    """x_t after t one-step kernels has mean sqrt(ab_t) x_0 and variance 1 - ab_t."""
    d = GaussianDiffusion.from_schedule("linear", 40)
    rng = np.random.default_rng(0)
    x0 = np.array([[1.5, -0.5], [-2.0, 0.3]])
    n = 20000
    x = np.repeat(x0[None], n, axis=0).reshape(-1, 2)           # (n*2, 2) chains
    for t in range(1, d.T + 1):
        x = d.q_step(x, t, rng)
        if t in (1, 5, 20, 40):
            xs = x.reshape(n, 2, 2)
            m, v = d.q_mean_variance(x0, t)
            emp_m, emp_v = xs.mean(0), xs.var(0, ddof=1)
            se_m, se_v = np.sqrt(v / n), v * np.sqrt(2 / (n - 1))
            assert np.all(np.abs(emp_m - m) < 5 * se_m), (t, emp_m, m)
            assert np.all(np.abs(emp_v - v) < 5 * se_v), (t, emp_v, v)
            # one-shot q_sample draws from the same law
            y = d.q_sample(np.repeat(x0[None], n, 0).reshape(-1, 2), t, generator=rng)
            ys = y.reshape(n, 2, 2)
            assert np.all(np.abs(ys.mean(0) - m) < 5 * se_m)
            assert np.all(np.abs(ys.var(0, ddof=1) - v) < 5 * se_v)


def test_q_sample_with_given_noise_and_per_example_t():
    d = GaussianDiffusion.from_schedule("linear", 10, beta_start=0.01, beta_end=0.2)
    x0 = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    eps = np.array([[0.1, -0.2], [0.3, 0.0], [-1.0, 1.0]])
    t = np.array([1, 5, 10])
    xt = d.q_sample(x0, t, eps)
    for n in range(3):
        ab = np.prod(1 - d.betas[:t[n]])
        np.testing.assert_allclose(xt[n], np.sqrt(ab) * x0[n] + np.sqrt(1 - ab) * eps[n])
    assert d.q_sample(x0.astype(np.float32), 3, eps.astype(np.float32)).dtype == np.float32


# --------------------------------------------------------------------------- posterior
def conditioning_posterior(d, x0, xt, t):
    """q(x_{t-1} | x_t, x_0) from the joint covariance of (x_{t-1}, x_t) given x_0."""
    ab_prev = 1.0 if t == 1 else d.alphas_cumprod[t - 2]
    ab, a = d.alphas_cumprod[t - 1], d.alphas[t - 1]
    m_prev, v_prev = math.sqrt(ab_prev) * x0, 1 - ab_prev
    m_t = math.sqrt(ab) * x0
    S11, S12 = v_prev, math.sqrt(a) * v_prev              # x_t = sqrt(a) x_{t-1} + sqrt(b) z
    S22 = a * v_prev + d.betas[t - 1]
    assert S22 == pytest.approx(1 - ab, rel=1e-12)
    return m_prev + S12 / S22 * (xt - m_t), S11 - S12 ** 2 / S22


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_equals_gaussian_conditioning(schedule):
    d = GaussianDiffusion.from_schedule(schedule, 60)
    rng = np.random.default_rng(1)
    x0, xt = rng.standard_normal((4, 2)), rng.standard_normal((4, 2))
    for t in range(1, d.T + 1):
        mean, var = d.q_posterior(x0, xt, t)
        m_ref, v_ref = conditioning_posterior(d, x0, xt, t)
        np.testing.assert_allclose(mean, m_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(var, v_ref, rtol=1e-10, atol=1e-15)
    mean, var = d.q_posterior(x0, xt, 1)                   # t = 1: a point mass at x_0
    np.testing.assert_allclose(mean, x0, atol=1e-15)
    assert np.all(var == 0)


def test_posterior_monte_carlo_on_the_chain():
    """Sample (x_{t-1}, x_t) from the chain, keep x_t near a value: x_{t-1} matches mu~, beta~."""
    d = GaussianDiffusion.from_schedule("linear", 20, beta_start=0.01, beta_end=0.5)
    rng = np.random.default_rng(2)
    t, x0 = 8, np.array([[0.7]])
    n = 400000
    xprev = d.q_sample(np.full((n, 1), 0.7), t - 1, generator=rng)
    xt = d.q_step(xprev, t, rng)
    # regress x_{t-1} on x_t: slope = coef2, intercept = coef1 x0, residual var = beta~
    A = np.column_stack([np.ones(n), xt[:, 0]])
    coef, *_ = np.linalg.lstsq(A, xprev[:, 0], rcond=None)
    resid = xprev[:, 0] - A @ coef
    assert coef[1] == pytest.approx(d.posterior_mean_coef2[t - 1], abs=5e-3)
    assert coef[0] == pytest.approx(d.posterior_mean_coef1[t - 1] * 0.7, abs=5e-3)
    assert resid.var() == pytest.approx(d.posterior_variance[t - 1], rel=1e-2)
    assert x0.shape == (1, 1)


def test_mean_from_true_eps_is_posterior_mean():
    d = GaussianDiffusion.from_schedule("cosine", 30)
    rng = np.random.default_rng(3)
    x0, eps = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    t = rng.integers(1, 31, size=5)
    xt = d.q_sample(x0, t, eps)
    np.testing.assert_allclose(d.p_mean_from_eps(xt, t, eps), d.q_posterior(x0, xt, t)[0],
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(d.predict_x0_from_eps(xt, t, eps), x0, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- ELBO terms
def test_normal_kl_against_monte_carlo():
    rng = np.random.default_rng(4)
    m1, v1, m2, v2 = 0.3, 0.5, -0.4, 1.7
    x = m1 + math.sqrt(v1) * rng.standard_normal(400000)
    w = gaussian_log_prob(x, m1, v1) - gaussian_log_prob(x, m2, v2)
    kl = float(normal_kl(m1, v1, m2, v2))
    assert abs(w.mean() - kl) < 5 * w.std() / math.sqrt(x.size)
    assert float(normal_kl(m1, v1, m1, v1)) == 0.0


def test_prior_kl_closed_form_and_size():
    d = GaussianDiffusion.from_schedule("linear", 1000)
    x0 = np.array([[1.0, -1.0], [0.0, 0.0]])
    ab = d.alphas_cumprod[-1]
    per_dim = 0.5 * (ab * x0 ** 2 - ab - np.log1p(-ab))      # (1 - ab) - 1 = -ab exactly
    np.testing.assert_allclose(d.prior_kl(x0), per_dim.sum(1), rtol=1e-9)
    assert ab == pytest.approx(4.0358e-5, rel=1e-4)
    assert d.prior_kl(x0)[0] < 5e-5


@pytest.mark.parametrize("model_var", ["beta", "beta_tilde"])
def test_kl_term_is_weighted_eps_mse(model_var):
    """L_{t-1} integrand - (its value at eps_theta = eps) = lambda_t ||eps - eps_theta||^2."""
    d = GaussianDiffusion.from_schedule("linear", 50, model_var=model_var)
    rng = np.random.default_rng(5)
    x0, eps, eps_pred = (rng.standard_normal((6, 2)) for _ in range(3))
    for t in (2, 3, 17, 50):
        xt = d.q_sample(x0, t, eps)
        kl = d.kl_term(x0, xt, t, eps_pred)
        const = d.kl_term(x0, xt, t, eps)                      # the mean terms vanish
        sv, bt = d.model_variance[t - 1], d.posterior_variance[t - 1]
        np.testing.assert_allclose(const, 2 * 0.5 * (np.log(sv / bt) + bt / sv - 1),
                                   rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(kl - const, d.eps_weight(t) * ((eps - eps_pred) ** 2).sum(1),
                                   rtol=1e-9)
    if model_var == "beta_tilde":      # sigma^2 = beta~: the constant is 0
        assert np.allclose(d.kl_term(x0, d.q_sample(x0, 9, eps), 9, eps), 0, atol=1e-12)


def test_elbo_terms_shapes_and_prior_term_is_parameter_free():
    d = GaussianDiffusion.from_schedule("linear", 12, beta_start=0.01, beta_end=0.5)
    x0 = ring_mixture(5, generator=np.random.default_rng(0), dtype=np.float64)
    m1 = NoisePredictor(2, 8, 1, 4, dtype=np.float64, generator=np.random.default_rng(1))
    m2 = NoisePredictor(2, 8, 1, 4, dtype=np.float64, generator=np.random.default_rng(2))
    a = d.elbo_terms(m1, x0, np.random.default_rng(3))
    b = d.elbo_terms(m2, x0, np.random.default_rng(3))
    assert a["L_t"].shape == (5, 11) and a["L_T"].shape == (5,) and a["L_0"].shape == (5,)
    np.testing.assert_array_equal(a["L_T"], b["L_T"])           # theta does not enter L_T
    assert not np.allclose(a["L_t"], b["L_t"])
    np.testing.assert_allclose(a["bound"], a["L_T"] + a["L_t"].sum(1) + a["L_0"])
    assert np.all(a["L_t"] >= 0)


# --------------------------------------------------------------------------- exact 1-D model
def some_reverse(d, seed=0):
    rng = np.random.default_rng(seed)
    true = LinearGaussianReverse.true_reverse(d, data_var=0.8, prior="standard")
    return LinearGaussianReverse(d, true.a * (1 + 0.1 * rng.standard_normal(d.T)),
                                 true.s2 * np.exp(0.3 * rng.standard_normal(d.T)))


def test_linear_gaussian_elbo_terms_sum_to_monte_carlo_elbo():
    d = GaussianDiffusion.from_schedule("linear", 15, beta_start=0.01, beta_end=0.5)
    model = some_reverse(d)
    for x0 in (-1.3, 0.4):
        exact = float(model.elbo(x0))
        mc, se = model.elbo_monte_carlo(x0, 200000, np.random.default_rng(6))
        assert abs(mc - exact) < 4 * se, (exact, mc, se)
        assert se < 0.02


def test_linear_gaussian_gap_is_the_posterior_kl():
    d = GaussianDiffusion.from_schedule("cosine", 15)
    model = some_reverse(d, 1)
    for x0 in (-2.0, 0.0, 0.9):
        logp, elbo, gap = float(model.log_likelihood(x0)), float(model.elbo(x0)), \
            model.posterior_gap(x0)
        assert gap > 0
        assert logp - elbo == pytest.approx(gap, rel=1e-8, abs=1e-10)


def test_linear_gaussian_true_reverse_has_zero_gap():
    d = GaussianDiffusion.from_schedule("linear", 10, beta_start=0.01, beta_end=0.5)
    model = LinearGaussianReverse.true_reverse(d, data_var=0.5, prior="exact")
    assert model.marginal_variances()[0] == pytest.approx(0.5, rel=1e-12)
    for x0 in (-1.0, 0.3):
        assert float(model.elbo(x0)) == pytest.approx(float(gaussian_log_prob(x0, 0, 0.5)),
                                                      abs=1e-10)
        assert abs(model.posterior_gap(x0)) < 1e-9


# --------------------------------------------------------------------------- networks
def test_time_embedding_values_and_gradcheck():
    emb = SinusoidalTimeEmbedding(6, max_period=100.0)
    e = emb(np.array([0, 3]))
    f = np.exp(-np.log(100.0) * np.arange(3) / 3)
    np.testing.assert_allclose(e[1], np.concatenate([np.sin(3 * f), np.cos(3 * f)]), rtol=1e-6)
    np.testing.assert_allclose(e[0], [0, 0, 0, 1, 1, 1])
    assert e.dtype == np.float32
    check_module(SinusoidalTimeEmbedding(6, max_period=100.0), np.array([0.3, 2.5, 7.1]))
    emb(np.array([1, 2]))
    assert emb.backward(np.ones((2, 6))) is None                # integer t: no gradient


@pytest.mark.parametrize("activation", ["silu", "gelu", "tanh", "relu"])
def test_noise_predictor_gradcheck(activation):
    rng = np.random.default_rng(7)
    net = NoisePredictor(data_dim=2, hidden=5, num_layers=2, time_dim=4, activation=activation,
                         generator=rng)
    x = rng.standard_normal((3, 2))
    res = check_module(net, x, np.array([1, 7, 30]))
    assert res.passed
    # float time: backward returns (dL/dx, dL/dt)
    check_module(net, x, np.array([1.5, 7.0, 30.2]))
    assert net(x.astype(np.float32), np.array([1, 2, 3])).shape == (3, 2)


def test_simple_loss_gradient_is_the_mse_gradient():
    d = GaussianDiffusion.from_schedule("linear", 20, beta_start=0.01, beta_end=0.5)
    net = NoisePredictor(2, 6, 1, 4, dtype=np.float64, generator=np.random.default_rng(0))
    x0 = ring_mixture(7, generator=np.random.default_rng(1), dtype=np.float64)
    net.zero_grad()
    loss = d.simple_loss(net, x0, np.random.default_rng(2))
    g = {n: p.grad.copy() for n, p in net.named_parameters()}
    p = net.net[0].weight
    for idx in [(0, 0), (3, 5)]:
        old = p.data[idx]
        vals = []
        for h in (1e-6, -1e-6):
            p.data[idx] = old + h
            vals.append(d.simple_loss(net, x0, np.random.default_rng(2), backward=False))
        p.data[idx] = old
        assert (vals[0] - vals[1]) / 2e-6 == pytest.approx(g["net.0.weight"][idx], rel=1e-5,
                                                           abs=1e-9)
    assert loss > 0


# --------------------------------------------------------------------------- sampling
def test_oracle_sampler_reaches_the_mixture():
    """With the exact eps (the mixture's score), ancestral sampling with T = 50 covers all
    modes: the sampler's own error is small, so what remains is the network's."""
    d = GaussianDiffusion.from_schedule("linear", 50)
    oracle = MixtureOracleEps(d, ring_centers(), 0.1)
    s = d.sample(oracle, (2000, 2), generator=np.random.default_rng(0), dtype=np.float64)
    r = mode_coverage(s, ring_centers(), 0.1, min_fraction=0.1)
    assert r["modes_covered"] == 8 and r["high_quality"] > 0.93


def test_oracle_is_the_minimiser_of_the_simple_loss():
    """E[eps | x_t]: on samples, the oracle's MSE is below that of perturbed predictions."""
    d = GaussianDiffusion.from_schedule("linear", 50)
    oracle = MixtureOracleEps(d, ring_centers(), 0.1)
    rng = np.random.default_rng(8)
    x0 = ring_mixture(20000, std=0.1, generator=rng, dtype=np.float64)
    t = np.full(20000, 10)
    eps = rng.standard_normal(x0.shape)
    xt = d.q_sample(x0, t, eps)
    pred = oracle(xt, t)
    base = np.mean((pred - eps) ** 2)
    for scale in (0.9, 1.1):
        assert np.mean((scale * pred - eps) ** 2) > base
    # zero-mean residual given x_t: uncorrelated with the prediction
    assert abs(np.mean((eps - pred) * pred)) < 0.01


def test_train_ddpm_on_ring_covers_all_modes(single_blas_thread):
    d = GaussianDiffusion.from_schedule("linear", 50)
    net = NoisePredictor(2, 64, 3, 16, generator=np.random.default_rng(1))
    rng = np.random.default_rng(0)
    losses = train_ddpm(net, d, lambda n, g: ring_mixture(n, std=0.1, generator=g), 1500,
                        batch_size=128, lr=3e-3, generator=rng)
    s = d.sample(net, (2000, 2), generator=rng)
    assert np.mean(losses[-100:]) < 0.8 * np.mean(losses[:100])
    r = mode_coverage(s, ring_centers(), 0.1, min_fraction=0.1)
    assert r["modes_covered"] == 8
    assert r["high_quality"] > 0.2
    assert s.dtype == np.float32 and np.all(np.isfinite(s))


def test_mode_coverage_counts():
    c = ring_centers(4, 1.0)
    s = np.array([[1.0, 0.0], [1.05, 0.0], [0.0, 1.0], [5.0, 5.0]])
    r = mode_coverage(s, c, std=0.1, min_fraction=0.5)
    np.testing.assert_array_equal(r["counts"], [2, 1, 0, 0])
    assert r["high_quality"] == 0.75 and r["modes_covered"] == 2


# --------------------------------------------------------------------------- bad input
def test_bad_betas_and_schedules():
    with pytest.raises(ValueError, match=r"GaussianDiffusion: every beta_t must lie in \(0, 1\), "
                                         r"got beta_2 = -0.1"):
        GaussianDiffusion([0.1, -0.1, 0.2])
    with pytest.raises(ValueError, match="beta_1 = 0.0"):
        GaussianDiffusion([0.0, 0.1])
    with pytest.raises(ValueError, match="beta_3 = 1.0"):
        GaussianDiffusion([0.1, 0.2, 1.0])
    with pytest.raises(ValueError, match=r"make_beta_schedule: every beta_t.*beta_20 = 1.0"):
        make_beta_schedule("linear", 20)                     # 0.02 * 1000/20 = 1
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'"):
        make_beta_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="T must be a positive integer, got 0"):
        make_beta_schedule("linear", 0)
    with pytest.raises(ValueError, match="model_var must be"):
        GaussianDiffusion([0.1], model_var="learned")


def test_bad_time_steps_and_shapes():
    d = GaussianDiffusion.from_schedule("linear", 50)
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"GaussianDiffusion.q_sample: t must lie in 1..T=50, got 0"):
        d.q_sample(x, 0)
    with pytest.raises(ValueError, match="got 51"):
        d.q_sample(x, np.array([1, 51, 2]))
    with pytest.raises(TypeError, match="t must be an integer time step"):
        d.q_sample(x, 2.5)
    with pytest.raises(ValueError, match=r"t has shape \(2,\) but x has shape \(3, 2\)"):
        d.q_sample(x, np.array([1, 2]))
    with pytest.raises(ValueError, match=r"noise must have x0's shape \(3, 2\), got \(3, 1\)"):
        d.q_sample(x, 1, np.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"kl_term: t must lie in 2..T=50, got 1"):
        d.kl_term(x, x, 1, x)
    with pytest.raises(ValueError, match="x0 and xt must have one shape"):
        d.q_posterior(x, np.zeros((3, 3)), 4)
    with pytest.raises(TypeError, match="GaussianDiffusion.q_sample.*float"):
        d.q_sample(np.zeros((3, 2), dtype=np.int64), 1)


def test_bad_variances():
    with pytest.raises(ValueError, match="normal_kl: var1 must be positive and finite, got -1.0"):
        normal_kl(0.0, -1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="normal_kl: var2 must be positive and finite, got 0.0"):
        normal_kl(0.0, 1.0, 0.0, 0.0)
    d = GaussianDiffusion.from_schedule("linear", 5, beta_start=0.1, beta_end=0.3)
    with pytest.raises(ValueError, match=r"LinearGaussianReverse: s2 \(every reverse variance\) "
                                         r"must be positive and finite, got -0.5"):
        LinearGaussianReverse(d, np.ones(5), [1, 1, -0.5, 1, 1])
    with pytest.raises(ValueError, match=r"a and s2 must have shape \(T,\) = \(5,\)"):
        LinearGaussianReverse(d, np.ones(4), np.ones(5))
    with pytest.raises(ValueError, match="make_gaussian_mixture: std must be positive, got 0"):
        ring_mixture(4, std=0)


def test_bad_network_input():
    net = NoisePredictor(2, 4, 1, 4)
    with pytest.raises(ValueError, match=r"NoisePredictor\(data_dim=2, hidden=4.*expected x of "
                                         r"shape \(N, 2\), got \(3, 3\)"):
        net(np.zeros((3, 3), np.float32), np.ones(3, int))
    with pytest.raises(ValueError, match=r"expected t of shape \(3,\).*got \(2,\)"):
        net(np.zeros((3, 2), np.float32), np.ones(2, int))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        NoisePredictor(2, 4, 1, 4).backward(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="SinusoidalTimeEmbedding: dim must be an even integer"):
        SinusoidalTimeEmbedding(5)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        NoisePredictor(activation="swish")


def test_training_stops_on_non_finite_loss_and_keeps_last_good_parameters():
    d = GaussianDiffusion.from_schedule("linear", 10, beta_start=0.05, beta_end=0.3)
    net = NoisePredictor(2, 4, 1, 4, generator=np.random.default_rng(0))
    calls = []
    snapshots = []

    def data(n, g):
        calls.append(1)
        x = ring_mixture(n, generator=g)
        if len(calls) == 3:
            x[0, 0] = np.nan
        return x

    def remember(step, loss):
        snapshots.append(net.state_dict())

    with pytest.raises(FloatingPointError, match="train_ddpm: non-finite loss nan at step 3; "
                                                 "the model keeps its parameters after step 2"):
        train_ddpm(net, d, data, 10, batch_size=8, generator=np.random.default_rng(1),
                   callback=remember)
    assert len(snapshots) == 2
    for k, v in net.state_dict().items():
        assert np.all(np.isfinite(v))
        np.testing.assert_array_equal(v, snapshots[-1][k])


def test_training_restores_parameters_that_became_non_finite():
    d = GaussianDiffusion.from_schedule("linear", 10, beta_start=0.05, beta_end=0.3)
    net = NoisePredictor(2, 4, 1, 4, generator=np.random.default_rng(0))
    saved = []

    def poison(step, loss):
        saved.append(net.state_dict())
        if step == 2:
            net.net[0].bias.data[0] = np.nan        # as if the update had diverged

    with pytest.raises(FloatingPointError, match="at step 3; the parameters had become "
                                                 "non-finite; restored those used at step 2"):
        train_ddpm(net, d, lambda n, g: ring_mixture(n, generator=g), 10, batch_size=8,
                   generator=np.random.default_rng(1), callback=poison)
    for k, v in net.state_dict().items():
        assert np.all(np.isfinite(v))
        np.testing.assert_array_equal(v, saved[0][k])     # the parameters used at step 2
