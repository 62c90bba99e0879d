"""Exam items diff-1..3 (paper 003, Question 9: the DDPM variational bound).

The paper holds only answers. The derivation they answer is the usual one:

    log p(x_0) = ELBO + KL(q(x_{1:T} | x_0) || p_theta(x_{1:T} | x_0))          (*)
    ELBO = E_q[log p_theta(x_{0:T}) - log q(x_{1:T} | x_0)]
         = -L_T - sum_{t>=2} L_{t-1} - L_0

(a) drops the KL of (*) ("non-negative"), (b) says why it is not computed, (c) drops L_T.
Every number here is computed by refdl.models.diffusion; verdicts are in docs/exam.md.
"""
import contextlib

import numpy as np
import pytest

from refdl.data.synthetic import make_ring
from refdl.functional.gaussian import gaussian_log_prob, normal_kl
from refdl.models.diffusion import GaussianDiffusion, LinearGaussianReverse, NoisePredictor


def one_blas_thread():
    """T x T Cholesky factors: a multi-threaded BLAS only spins on a shared machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                      # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1)


def perturbed_reverse(d, data_var, scale_a, scale_s2, seed):
    """A linear-Gaussian reverse model theta = (a_t, s2_t) away from the true reverse."""
    rng = np.random.default_rng(seed)
    true = LinearGaussianReverse.true_reverse(d, data_var, prior="standard")
    return LinearGaussianReverse(d, true.a * (1 + scale_a * rng.standard_normal(d.T)),
                                 true.s2 * np.exp(scale_s2 * rng.standard_normal(d.T)))


# ------------------------------------------------------------------------------- diff-1
def test_diff_1_dropped_kl_is_the_posterior_gap_nonnegative_but_theta_dependent():
    """Which KL: KL(q(x_{1:T}|x0) || p_theta(x_{1:T}|x0)) = log p(x0) - ELBO, exactly.
    Non-negative, so the ELBO is a lower bound (the paper is right there); but it depends
    on theta and is not small in general (the paper's "small or constant" is not true)."""
    d = GaussianDiffusion.from_schedule("linear", 100)
    x0s = (-1.2, 0.1, 0.8)
    gaps = {}
    models = {"true reverse": LinearGaussianReverse.true_reverse(d, 0.25, prior="standard"),
              "perturbed 1%": perturbed_reverse(d, 0.25, 0.01, 0.01, 0),
              "perturbed 10%": perturbed_reverse(d, 0.25, 0.1, 0.1, 0)}
    for name, m in models.items():
        logp = m.log_likelihood(np.array(x0s))
        elbo = m.elbo(np.array(x0s))
        with one_blas_thread():
            kl = np.array([m.posterior_gap(x) for x in x0s])
        np.testing.assert_allclose(logp - elbo, kl, rtol=1e-7, atol=1e-9)   # (*) exactly
        assert np.all(kl >= -1e-12) and np.all(elbo <= logp + 1e-12)           # a lower bound
        gaps[name] = kl
    # theta matters: the gap grows from ~0 (true reverse, only the N(0,1) prior is off)
    # to a large share of log p when the reverse kernels are 10% off
    assert np.all(gaps["true reverse"] < 1e-2)
    assert np.all(gaps["perturbed 1%"] > gaps["true reverse"])
    assert np.all(gaps["perturbed 10%"] > 10 * gaps["perturbed 1%"])
    assert np.all(gaps["perturbed 10%"] > 1.0)                 # nats: not "small"
    # the gap's derivative in one parameter is not zero: it is not "constant"
    m = models["perturbed 10%"]
    h = 1e-5
    a_plus, a_minus = m.a.copy(), m.a.copy()
    a_plus[10] += h
    a_minus[10] -= h
    g = (LinearGaussianReverse(d, a_plus, m.s2).posterior_gap(0.8)
         - LinearGaussianReverse(d, a_minus, m.s2).posterior_gap(0.8)) / (2 * h)
    assert abs(g) > 1e-2


def test_diff_1_mc_elbo_is_below_exact_log_likelihood():
    """The bound checked without the decomposition: Monte Carlo of log p(x_{0:T}) - log q."""
    d = GaussianDiffusion.from_schedule("cosine", 30)
    m = perturbed_reverse(d, 0.5, 0.05, 0.1, 3)
    for x0 in (-1.0, 0.5):
        mc, se = m.elbo_monte_carlo(x0, 100000, np.random.default_rng(1))
        logp, exact = float(m.log_likelihood(x0)), float(m.elbo(x0))
        assert abs(mc - exact) < 4 * se
        assert mc + 4 * se < logp                          # strictly below: gap >> MC error
        assert logp - exact == pytest.approx(m.posterior_gap(x0), rel=1e-7)


# ------------------------------------------------------------------------------- diff-2
def test_diff_2_terms_are_tractable_gaussian_kls_and_sum_to_the_elbo():
    """Every ELBO term is a closed-form KL of Gaussians: the posterior q(x_{t-1}|x_t,x0)
    is Gaussian conditioning of the fixed forward process; the terms sum to the ELBO."""
    d = GaussianDiffusion.from_schedule("linear", 50)
    rng = np.random.default_rng(0)
    x0, xt = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    for t in (2, 25, 50):
        mean, var = d.q_posterior(x0, xt, t)
        ab_prev, ab, a = d.alphas_cumprod[t - 2], d.alphas_cumprod[t - 1], d.alphas[t - 1]
        v_prev = 1 - ab_prev                             # Var(x_{t-1} | x0)
        cov = np.sqrt(a) * v_prev                        # Cov(x_{t-1}, x_t | x0)
        np.testing.assert_allclose(mean, np.sqrt(ab_prev) * x0 + cov / (1 - ab)
                                   * (xt - np.sqrt(ab) * x0), rtol=1e-10)
        np.testing.assert_allclose(var, v_prev - cov ** 2 / (1 - ab), rtol=1e-10)
    # decomposition = full ELBO (exact 1-D model, Monte Carlo of the joint ratio)
    d1 = GaussianDiffusion.from_schedule("linear", 40)
    m = perturbed_reverse(d1, 0.7, 0.05, 0.1, 4)
    terms = m.elbo_terms(0.6)
    elbo_terms = -(terms["L_T"] + terms["L_t"].sum() + terms["L_0"])
    mc, se = m.elbo_monte_carlo(0.6, 100000, np.random.default_rng(2))
    assert abs(mc - elbo_terms) < 4 * se and se < 0.05


def test_diff_2_joint_is_tractable_posterior_needs_the_marginal():
    """log p_theta(x_{0:T}) of a neural DDPM is a sum of Gaussian log-densities (tractable);
    the posterior p_theta(x_{1:T}|x0) = p_theta(x_{0:T}) / p_theta(x0) needs the marginal
    p_theta(x0), an integral over x_{1:T} (T*D = 40 dims here). The paper names the joint
    p(x_{0:T}) as the intractable thing: it is the posterior / marginal. And q(x_{1:T}|x0)
    in a DDPM is the fixed forward process, with no parameters to fit."""
    d = GaussianDiffusion.from_schedule("linear", 20, beta_start=0.01, beta_end=0.5)
    net = NoisePredictor(2, 16, 2, 8, dtype=np.float64, generator=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x = [make_ring(4, std=0.05, generator=rng, dtype=np.float64)[0]]
    for t in range(1, d.T + 1):
        x.append(d.q_step(x[-1], t, rng))
    log_joint = gaussian_log_prob(x[-1], 0.0, 1.0).sum(1)
    for t in range(d.T, 0, -1):
        mu = d.p_mean_from_eps(x[t], t, net(x[t], np.full(4, t)))
        log_joint += gaussian_log_prob(x[t - 1], mu, d.model_variance[t - 1]).sum(1)
    assert log_joint.shape == (4,)
    # the same sum written out independently: the schedule from np.linspace, the mean
    # mu = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t), scipy's normal log-density
    from scipy import stats
    beta = np.linspace(0.01, 0.5, 20)
    alpha, abar = 1 - beta, np.cumprod(1 - beta)
    np.testing.assert_allclose(d.betas, beta, rtol=1e-12)
    ref = stats.norm.logpdf(x[-1]).sum(1)
    for t in range(d.T, 0, -1):
        eps = net(x[t], np.full(4, t))
        mu = (x[t] - beta[t - 1] / np.sqrt(1 - abar[t - 1]) * eps) / np.sqrt(alpha[t - 1])
        ref += stats.norm.logpdf(x[t - 1], mu, np.sqrt(d.model_variance[t - 1])).sum(1)
    np.testing.assert_allclose(log_joint, ref, rtol=1e-10)
    # q(x_t | x_0) of the fixed forward process (no parameters): N(sqrt(abar_t) x0,
    # (1 - abar_t) I), checked on 20,000 chains of q_step from one x0
    x0 = np.full((20_000, 2), 0.8)
    xt = x0
    for t in range(1, 11):
        xt = d.q_step(xt, t, rng)
    assert abs(xt.mean() - np.sqrt(abar[9]) * 0.8) < 0.02
    assert abs(xt.var() - (1 - abar[9])) < 0.02


# ------------------------------------------------------------------------------- diff-3
def test_diff_3_prior_term_for_ddpm_schedule_is_tiny_and_theta_free():
    d = GaussianDiffusion.from_schedule("linear", 1000)     # betas 1e-4 .. 0.02
    assert d.betas[0] == pytest.approx(1e-4) and d.betas[-1] == pytest.approx(0.02)
    ab_T = d.alphas_cumprod[-1]
    assert ab_T == pytest.approx(4.0358e-5, rel=1e-4)
    # unit-scale data: L_T per coordinate for x0 = 1, and its expectation for x0 ~ N(0, 1)
    LT1 = float(d.prior_kl(np.array([[1.0]]))[0])
    assert LT1 == pytest.approx(2.0180e-5, rel=1e-4)
    # 0.5 [ab x0^2 + (1 - ab) - 1 - log(1 - ab)] with x0 = 1
    assert LT1 == pytest.approx(0.5 * (ab_T * 1.0 ** 2 - ab_T - np.log1p(-ab_T)), rel=1e-9)
    x0 = np.random.default_rng(0).standard_normal((100000, 1))
    assert float(d.prior_kl(x0).mean()) == pytest.approx(2.018e-5, rel=1e-2)
    # an image of 3072 coordinates in [-1, 1]: at most 3072 * L_T(1) = 0.062 nats
    assert float(d.prior_kl(np.ones((1, 3072)))[0]) == pytest.approx(3072 * LT1, rel=1e-12)
    assert 3072 * LT1 == pytest.approx(0.0620, rel=1e-3)
    # no theta in it: the same value under two different networks, zero change when a
    # weight moves
    small = GaussianDiffusion.from_schedule("linear", 10, beta_start=0.05, beta_end=0.9)
    x = make_ring(6, std=0.05, generator=np.random.default_rng(1), dtype=np.float64)[0] / 2
    n1 = NoisePredictor(2, 8, 1, 4, dtype=np.float64, generator=np.random.default_rng(2))
    n2 = NoisePredictor(2, 8, 1, 4, dtype=np.float64, generator=np.random.default_rng(3))
    a = small.elbo_terms(n1, x, np.random.default_rng(4))
    b = small.elbo_terms(n2, x, np.random.default_rng(4))
    np.testing.assert_array_equal(a["L_T"], b["L_T"])
    n1.net[0].weight.data[0, 0] += 1.0
    c = small.elbo_terms(n1, x, np.random.default_rng(4))
    np.testing.assert_array_equal(a["L_T"], c["L_T"])
    assert not np.allclose(a["L_t"], c["L_t"])


def test_diff_3_negligible_depends_on_schedule_constant_does_not():
    """Negligible only because alpha_bar_T ~ 0: Ho's betas with T = 50 leave L_T = 0.46
    nats per unit coordinate; still constant in theta (no parameter enters it)."""
    short = GaussianDiffusion(np.linspace(1e-4, 0.02, 50))
    assert short.alphas_cumprod[-1] == pytest.approx(0.60295, rel=1e-4)
    LT = float(short.prior_kl(np.array([[1.0]]))[0])
    assert LT == pytest.approx(0.46185, rel=1e-4)
    ab = short.alphas_cumprod[-1]
    assert LT == pytest.approx(float(normal_kl(np.sqrt(ab), 1 - ab, 0.0, 1.0)), rel=1e-12)
    cosine = GaussianDiffusion.from_schedule("cosine", 1000)
    assert float(cosine.prior_kl(np.array([[1.0]]))[0]) < 2e-9
