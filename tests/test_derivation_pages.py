"""The formulas the derivation pages (docs/derivations/*.md) state, recomputed: each test
names its page and compares the page's formula with refdl's code or with an independent
value (central differences, SciPy, a brute-force loop). The layers' own gradient checks
live with the layers; these tests pin the pages' closed forms and the steps the pages
were corrected on (issue 16)."""
import math

import numpy as np
import pytest
from scipy import optimize

import refdl
from refdl import nn
from refdl.functional import gaussian as G
from refdl.gradcheck import numeric_gradient


def rng(seed=0):
    return np.random.default_rng(seed)


def spd(d, seed):
    a = rng(seed).standard_normal((d, d))
    return a @ a.T + d * np.eye(d)


# ------------------------------------------------------------------------- gaussian.md
def test_gaussian_kl_closed_form_and_mean_gradient():
    d = 3
    m1, m2 = rng(1).standard_normal(d), rng(2).standard_normal(d)
    S1, S2 = spd(d, 3), spd(d, 4)
    # the page's closed form against a direct evaluation
    S2i = np.linalg.inv(S2)
    kl = 0.5 * (np.log(np.linalg.det(S2) / np.linalg.det(S1)) + np.trace(S2i @ S1)
                + (m2 - m1) @ S2i @ (m2 - m1) - d)
    assert G.kl_normal(m1, S1, m2, S2) == pytest.approx(kl, rel=1e-12)
    # d/dm1 of the quadratic form is 2 S2^-1 (m1 - m2); of the KL (with the 1/2) S2^-1 (m1 - m2)
    m = m1.copy()
    quad = numeric_gradient(lambda: (m2 - m) @ S2i @ (m2 - m), m)
    np.testing.assert_allclose(quad, 2 * S2i @ (m1 - m2), rtol=1e-9)
    dkl = numeric_gradient(lambda: G.kl_normal(m, S1, m2, S2), m)
    np.testing.assert_allclose(dkl, S2i @ (m1 - m2), rtol=1e-9)
    np.testing.assert_allclose(G.kl_normal_grad(m1, S1, m2, S2)[0], dkl, rtol=1e-9)
    # dKL/dS1 = (S2^-1 - S1^-1)/2 (symmetric perturbations)
    E = rng(5).standard_normal((d, d))
    E = (E + E.T) / 2
    h = 1e-6
    fd = (G.kl_normal(m1, S1 + h * E, m2, S2) - G.kl_normal(m1, S1 - h * E, m2, S2)) / (2 * h)
    assert fd == pytest.approx(np.sum(G.kl_normal_grad(m1, S1, m2, S2)[1] * E), rel=1e-7)


def test_gaussian_diagonal_kl_against_standard_normal():
    mu, lv = rng(6).standard_normal(4), rng(7).standard_normal(4)
    v = np.exp(lv)
    assert float(G.kl_diag_normal(mu, lv)) == pytest.approx(
        0.5 * np.sum(mu ** 2 + v - 1 - lv), rel=1e-12)


# ------------------------------------------------------------------------------ rnn.md
def test_rnn_gradient_bound():
    """||dL/dh_s|| <= ||dL/dh_T|| ||W_hh||^(T-s) for tanh; without ||dL/dh_T|| it fails."""
    H, T = 4, 5
    Q, _ = np.linalg.qr(rng(8).standard_normal((H, H)))
    refdl.manual_seed(0)
    rnn = nn.RNN(1, H).to(np.float64)
    rnn.weight_hh_l0.data[...] = 0.9 * Q
    x = rng(9).standard_normal((T, 1, 1))
    out, h = rnn(x, np.zeros((1, 1, H)))
    gT = 10 * np.ones_like(h)
    _, dh0 = rnn.backward(np.zeros_like(out), gT)
    norm = np.linalg.norm(dh0)
    assert norm <= np.linalg.norm(gT) * 0.9 ** T
    assert norm > 0.9 ** T                 # the bound without ||dL/dh_T|| is violated
    assert norm == pytest.approx(1.7875, abs=1e-3)   # the number rnn.md quotes


# --------------------------------------------------------------------------- gradcam.md
def test_gradcampp_mixed_second_derivatives_are_not_zero():
    """Y = exp(S) with S = GAP + Linear: d2Y/dA^ab dA^ij = e^S g^ab g^ij, not 0 for ab != ij
    (Grad-CAM++'s derivation drops these terms by assumption)."""
    refdl.manual_seed(0)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)).to(np.float64)
    A = rng(10).standard_normal((1, 2, 3, 3))
    c = 1

    def Y():
        return math.exp(head(A)[0, c])
    S = head(A)[0, c]
    g = head[2].weight.data[c][:, None, None] / 9 * np.ones((2, 3, 3))   # dS/dA
    h = 1e-4
    for (i1, i2) in (((0, 0, 0), (0, 1, 2)), ((1, 2, 2), (0, 0, 1))):
        def at(d1, d2):
            A[0][i1] += d1
            A[0][i2] += d2
            v = Y()
            A[0][i1] -= d1
            A[0][i2] -= d2
            return v
        mixed = (at(h, h) - at(h, -h) - at(-h, h) + at(-h, -h)) / (4 * h * h)
        expect = math.exp(S) * g[i1] * g[i2]
        assert mixed == pytest.approx(expect, rel=1e-5) and abs(expect) > 1e-4


def test_gradcam_gap_linear_map_sums_to_the_score():
    refdl.manual_seed(1)
    lin = nn.Linear(3, 4).to(np.float64)
    A = rng(11).standard_normal((3, 4, 5))
    c = 2
    S = lin(A.mean(axis=(1, 2))[None])[0, c]
    a = lin.weight.data[c] / 20                      # a_k = w_ck / hw
    signed = np.tensordot(a, A, 1)
    assert signed.sum() == pytest.approx(S - lin.bias.data[c], rel=1e-12)


# ---------------------------------------------------------------------------- optim.md
def test_optim_trust_region_and_proximal_minimisers():
    g = rng(12).standard_normal(5)
    r, gamma = 0.3, 0.1
    # min g.D subject to ||D|| <= r: -r g/||g||
    res = optimize.minimize(lambda D: g @ D, np.zeros(5), method="SLSQP",
                            constraints=[{"type": "ineq", "fun": lambda D: r ** 2 - D @ D}])
    np.testing.assert_allclose(res.x, -r * g / np.linalg.norm(g), atol=1e-5)
    # min g.D + ||D||^2/(2 gamma): -gamma g, refdl's SGD step
    res = optimize.minimize(lambda D: g @ D + D @ D / (2 * gamma), np.zeros(5))
    p = nn.module.Parameter(np.zeros(5))
    p.grad[...] = g
    refdl.optim.SGD([p], lr=gamma).step()
    np.testing.assert_allclose(res.x, p.data, atol=1e-6)
    np.testing.assert_allclose(p.data, -gamma * g, rtol=1e-15)


def test_optim_adam_first_step():
    g = np.array([3.0, -0.05, 0.5])
    p = nn.module.Parameter(np.zeros(3))
    p.grad[...] = g
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    refdl.optim.Adam([p], lr=lr, betas=(b1, b2), eps=eps).step()
    np.testing.assert_allclose(p.data, -lr * g / (np.abs(g) + eps), rtol=1e-12)   # ~ sign
    # the uncorrected rule's first step is (1 - b1)/sqrt(1 - b2) = 3.16 times larger
    m, v = (1 - b1) * g, (1 - b2) * g * g
    uncorrected = -lr * m / (np.sqrt(v) + eps)
    np.testing.assert_allclose(uncorrected / p.data, (1 - b1) / math.sqrt(1 - b2), rtol=1e-4)
    assert (1 - b1) / math.sqrt(1 - b2) == pytest.approx(3.162, abs=1e-3)


def test_optim_heavy_ball_rate():
    """Polyak's choice mu = ((sqrt k - 1)/(sqrt k + 1))^2, gamma = 4/(sqrt L + sqrt l)^2 gives
    spectral radius (sqrt k - 1)/(sqrt k + 1) on a quadratic (L = 100, l = 1)."""
    L, l = 100.0, 1.0
    k = L / l
    mu = ((math.sqrt(k) - 1) / (math.sqrt(k) + 1)) ** 2
    gamma = 4 / (math.sqrt(L) + math.sqrt(l)) ** 2
    radius = 0.0
    for lam in (l, L, 30.0):
        M = np.array([[1 + mu - gamma * lam, -mu], [1, 0]])   # (theta_t, theta_{t-1})
        radius = max(radius, np.max(np.abs(np.linalg.eigvals(M))))
    assert radius == pytest.approx((math.sqrt(k) - 1) / (math.sqrt(k) + 1), rel=1e-6)


# ----------------------------------------------------------- layernorm.md, groupnorm.md
def test_layernorm_is_groupnorm_with_one_group_only_without_affine():
    x = rng(13).standard_normal((2, 3, 4, 5))
    ln = nn.LayerNorm((3, 4, 5), elementwise_affine=False).to(np.float64)
    gn = nn.GroupNorm(1, 3, affine=False).to(np.float64)
    np.testing.assert_allclose(ln(x), gn(x), rtol=1e-12, atol=1e-12)
    ln = nn.LayerNorm((3, 4, 5)).to(np.float64)
    gn = nn.GroupNorm(1, 3).to(np.float64)
    gamma = rng(14).standard_normal(3)
    gn.weight.data[...] = gamma
    ln.weight.data[...] = gamma[:, None, None]          # constant over space: equal
    np.testing.assert_allclose(ln(x), gn(x), rtol=1e-12, atol=1e-12)
    ln.weight.data[...] = rng(15).standard_normal((3, 4, 5))   # per element: no GroupNorm
    assert not np.allclose(ln(x), gn(x))


def test_groupnorm_parameter_gradients():
    gn = nn.GroupNorm(2, 4).to(np.float64)
    x = rng(16).standard_normal((3, 4, 5))
    y = gn(x)
    g = rng(17).standard_normal(y.shape)
    gn.zero_grad()
    gn.backward(g)
    xg = x.reshape(3, 2, 10)
    xhat = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-5))
    xhat = xhat.reshape(x.shape)
    np.testing.assert_allclose(gn.bias.grad, g.sum((0, 2)), rtol=1e-12)
    np.testing.assert_allclose(gn.weight.grad, (g * xhat).sum((0, 2)), rtol=1e-10)


# --------------------------------------------------------------------------- batchnorm.md
def test_batchnorm_compact_backward():
    bn = nn.BatchNorm1d(3).to(np.float64)
    bn.weight.data[...] = [0.5, 2.0, -1.0]
    x = rng(18).standard_normal((7, 3))
    y = bn(x)
    g = rng(19).standard_normal(y.shape)
    dx = bn.backward(g)
    m = 7
    v = x.var(0)                                         # the biased batch variance
    sigma = np.sqrt(v + 1e-5)
    xhat = (x - x.mean(0)) / sigma
    gh = bn.weight.data * g
    expect = (m * gh - gh.sum(0) - xhat * (gh * xhat).sum(0)) / (m * sigma)
    np.testing.assert_allclose(dx, expect, rtol=1e-10)
    # and the running variance stores v * m / (m - 1)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * v * m / (m - 1), rtol=1e-12)


# ------------------------------------------------------------- dropout.md, embedding.md
def test_dropout_backward_is_the_mask_over_keep_probability():
    refdl.manual_seed(3)
    d = nn.Dropout(0.3)
    x = 1.0 + np.abs(rng(20).standard_normal((50, 40)))
    y = d(x)
    mask = (y != 0).astype(float)
    g = rng(21).standard_normal(x.shape)
    np.testing.assert_allclose(d.backward(g), g * mask / 0.7, rtol=1e-12)
    np.testing.assert_allclose(y, x * mask / 0.7, rtol=1e-12)


def test_embedding_backward_sums_repeated_indices():
    e = nn.Embedding(5, 3).to(np.float64)
    idx = np.array([[0, 3, 3], [1, 3, 0]])
    y = e(idx)
    g = rng(22).standard_normal(y.shape)
    e.zero_grad()
    e.backward(g)
    expect = np.zeros((5, 3))
    for p in np.ndindex(idx.shape):                      # brute force: one row at a time
        expect[idx[p]] += g[p]
    np.testing.assert_allclose(e.weight.grad, expect, rtol=1e-12)
    np.testing.assert_allclose(expect, np.eye(5)[idx.ravel()].T @ g.reshape(-1, 3))


# --------------------------------------------------------------------------- attention.md
def test_attention_backward_formulas():
    L, S, E = 3, 4, 5
    q, k, v = (rng(s).standard_normal(shape) for s, shape in
               ((23, (L, E)), (24, (S, E)), (25, (S, 2))))
    att = nn.ScaledDotProductAttention()
    o = att(q, k, v)
    G_ = rng(26).standard_normal(o.shape)
    dq, dk, dv = att.backward(G_)
    c = 1 / math.sqrt(E)
    U = c * q @ k.T
    P = np.exp(U - U.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    dA = G_ @ v.T
    dU = P * (dA - (dA * P).sum(1, keepdims=True))
    np.testing.assert_allclose(dv, P.T @ G_, rtol=1e-10)
    np.testing.assert_allclose(dq, c * dU @ k, rtol=1e-10)
    np.testing.assert_allclose(dk, c * dU.T @ q, rtol=1e-10)
    np.testing.assert_allclose(dU.sum(1), 0, atol=1e-12)     # rowsum(dU) = 0


# ----------------------------------------------------------------------- transformer.md
def test_patch_embedding_is_a_linear_layer_on_patches():
    refdl.manual_seed(4)
    p, C, D = 2, 3, 5
    conv = nn.Conv2d(C, D, p, stride=p).to(np.float64)
    x = rng(27).standard_normal((2, C, 4, 6))
    y = conv(x)
    T = x.reshape(2, C, 2, p, 3, p).transpose(0, 2, 4, 1, 3, 5).reshape(2, 6, C * p * p)
    w2 = conv.weight.data.reshape(D, -1)
    lin = T @ w2.T + conv.bias.data
    np.testing.assert_allclose(y.reshape(2, D, 6).transpose(0, 2, 1), lin, rtol=1e-12)


# ----------------------------------------------------------------------- diffusion.md
def test_diffusion_mean_from_eps_is_the_posterior_mean_at_predicted_x0():
    from refdl.models.diffusion import GaussianDiffusion
    d = GaussianDiffusion.from_schedule("linear", 30)
    xt, eps = rng(28).standard_normal((4, 2)), rng(29).standard_normal((4, 2))
    for t in (1, 7, 30):
        x0 = d.predict_x0_from_eps(xt, t, eps)
        mean, _ = d.q_posterior(x0, xt, t)
        np.testing.assert_allclose(d.p_mean_from_eps(xt, t, eps), mean, rtol=1e-10, atol=1e-12)
    ab = np.cumprod(1 - d.betas)                            # abar_t = prod_{tau<=t} alpha_tau
    np.testing.assert_allclose(d.alphas_cumprod, ab, rtol=1e-12)
    np.testing.assert_allclose(np.diff(d.betas), np.diff(d.betas)[0], rtol=1e-9)   # linear


# ----------------------------------------------------------------------- wgan_gp.md
def test_gradient_penalty_input_gradient_formula():
    """dP/dv_n = (2 lam / N) (||v_n|| - center) v_n / ||v_n|| (the docstring's u)."""
    from refdl.models.gan import GradientPenalty, MLPCritic
    f = MLPCritic(2, (), dtype=np.float64, generator=rng(30))
    lam, center = 10.0, 1.0
    x = rng(31).standard_normal((3, 2))
    v = f.input_gradient(x)                      # a linear critic: v_n = w for every n
    n = np.linalg.norm(v, axis=1)
    P = lam * np.mean((n - center) ** 2)
    gp = GradientPenalty(f, lam=lam, center=center)
    assert float(gp(x)) == pytest.approx(P, rel=1e-12)
    f.zero_grad()
    gp.backward()
    # P depends on w only through v = w: dP/dw = sum_n u_n
    u = (2 * lam / 3) * ((n - center) / n)[:, None] * v
    np.testing.assert_allclose(f.layers[0].weight.grad[0], u.sum(0), rtol=1e-12)
