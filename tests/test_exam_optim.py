"""Exam items init-1..init-5, opt-1..opt-4 and reg-1, computed with refdl.

See docs/exam.md (sections init, opt, reg) for each question, the paper's answer and the
verdict. Every experiment is seeded and small.
"""
import math

import numpy as np
import pytest
from scipy import stats

from refdl import init
from refdl.gradcheck import numeric_gradient
from refdl.nn import Linear, ReLU, Sequential, Sigmoid
from refdl.nn.module import Parameter
from refdl.optim import SGD, Adam, clip_grad_norm_, l1_penalty, prox_l1
from refdl.optim.lr_scheduler import CosineAnnealingLR


def _rng(seed=0):
    return np.random.default_rng(seed)


def _relu_stack(depth, width, weight_init, seed=0):
    """depth bias-free Linear(width, width) layers, each followed by ReLU, float64."""
    g = _rng(seed)
    layers = []
    for _ in range(depth):
        lin = Linear(width, width, bias=False, dtype=np.float64, generator=g)
        weight_init(lin.weight, g)
        layers += [lin, ReLU()]
    return Sequential(*layers)


def _preactivation_second_moments(net, x):
    """E[z_l^2] of every Linear's output, layer by layer."""
    out = []
    for m in net:
        x = m(x)
        if isinstance(m, Linear):
            out.append(float(np.mean(x ** 2)))
    return np.array(out)


# ----------------------------------------------------------------------------- init

def test_init_1_xavier_formula_and_its_decay_through_relu():
    # the paper's formula is exactly xavier_uniform_'s bound ...
    n_in, n_out = 300, 100
    w = np.empty((n_out, n_in))
    init.xavier_uniform_(w, generator=_rng(1))
    bound = math.sqrt(6 / (n_in + n_out))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert np.var(w) == pytest.approx(2 / (n_in + n_out), rel=0.03)
    # ... but Xavier is not the ReLU initialisation: through 20 ReLU layers the second
    # moment of the pre-activations halves at every layer (0.5^L); He keeps it.
    depth, width = 20, 256
    x = _rng(2).standard_normal((512, width))
    xav = _relu_stack(depth, width, lambda p, g: init.xavier_uniform_(p, generator=g))
    he = _relu_stack(depth, width, lambda p, g: init.kaiming_uniform_(
        p, nonlinearity="relu", generator=g))
    q_xav = _preactivation_second_moments(xav, x)
    q_he = _preactivation_second_moments(he, x)
    per_layer_xav = (q_xav[-1] / q_xav[0]) ** (1 / (depth - 1))
    per_layer_he = (q_he[-1] / q_he[0]) ** (1 / (depth - 1))
    assert per_layer_xav == pytest.approx(0.5, abs=0.03)
    assert per_layer_he == pytest.approx(1.0, abs=0.05)
    assert q_xav[-1] / q_xav[0] < 1e-5                      # ~0.5^19 = 1.9e-6
    assert 0.3 < q_he[-1] / q_he[0] < 3
    # He's uniform bound for this ReLU layer: sqrt(6 / n_in), not sqrt(6 / (n_in + n_out))
    init.kaiming_uniform_(w, nonlinearity="relu", generator=_rng(3))
    assert np.abs(w).max() <= math.sqrt(6 / n_in) and np.abs(w).max() > 0.99 * math.sqrt(6 / n_in)


def test_init_2_kaiming_variance_keeps_activation_magnitude():
    depth, width = 15, 256
    x = _rng(4).standard_normal((512, width))
    kaiming = _relu_stack(depth, width, lambda p, g: init.kaiming_normal_(
        p, nonlinearity="relu", generator=g), seed=5)
    lecun = _relu_stack(depth, width, lambda p, g: init.normal_(
        p, 0.0, 1 / math.sqrt(width), generator=g), seed=5)
    double = _relu_stack(depth, width, lambda p, g: init.normal_(
        p, 0.0, 2 / math.sqrt(width), generator=g), seed=5)

    def activation_ratios(net):
        h, ms = x, [float(np.mean(x ** 2))]
        for m in net:
            h = m(h)
            if isinstance(m, ReLU):
                ms.append(float(np.mean(h ** 2)))
        ms = np.array(ms)
        return ms[1:] / ms[:-1], h

    r_k, out_k = activation_ratios(kaiming)
    r_l, _ = activation_ratios(lecun)
    r_d, _ = activation_ratios(double)
    # Var(w) = 2/n: output activation magnitude matches the input's (answer A)
    assert np.exp(np.mean(np.log(r_k[1:]))) == pytest.approx(1.0, abs=0.05)
    assert np.exp(np.mean(np.log(r_l[1:]))) == pytest.approx(0.5, abs=0.03)   # vanishes
    assert np.exp(np.mean(np.log(r_d[1:]))) == pytest.approx(2.0, abs=0.12)   # explodes
    # the gradient flowing back is preserved too: ||dL/dx|| ~ ||dL/dy||
    g = _rng(6).standard_normal(out_k.shape)
    gx = kaiming.backward(g)
    assert 0.3 < np.mean(gx ** 2) / np.mean(g ** 2) < 3


def _sigmoid_mlp(depth=10, width=32, seed=0):
    g = _rng(seed)
    layers = []
    for _ in range(depth):
        layers += [Linear(width, width, dtype=np.float64, generator=g), Sigmoid()]
    return Sequential(*layers)


def _layer_weights(net):
    return [m.weight for m in net if isinstance(m, Linear)]


def test_init_3_lower_lr_does_not_fix_vanishing_gradients_adam_does():
    net = _sigmoid_mlp()
    x = _rng(1).standard_normal((64, 32))
    y = net(x)
    net.zero_grad()
    net.backward(_rng(2).standard_normal(y.shape))
    ws = _layer_weights(net)
    norms = np.array([np.linalg.norm(w.grad) for w in ws])
    assert norms[0] / norms[-1] < 1e-4                       # vanishing towards the input

    def first_step_update_rms(opt_cls, **kw):
        n2 = _sigmoid_mlp()
        for w, w0 in zip(_layer_weights(n2), ws):
            w.grad[...] = w0.grad
        for m in n2:
            if isinstance(m, Linear):
                m.bias.requires_grad = False
        before = [w.data.copy() for w in _layer_weights(n2)]
        opt_cls(n2.parameters(), **kw).step()
        return np.array([np.sqrt(np.mean((w.data - b) ** 2))
                         for w, b in zip(_layer_weights(n2), before)])

    sgd_hi = first_step_update_rms(SGD, lr=1.0)
    sgd_lo = first_step_update_rms(SGD, lr=0.01)
    # reducing the lr scales every update by the same factor: the first layer's update is
    # still ~1e-4 of the last layer's, and now 100 times smaller in absolute terms (C)
    assert sgd_lo[0] / sgd_lo[-1] == pytest.approx(sgd_hi[0] / sgd_hi[-1], rel=1e-9)
    assert sgd_lo[0] == pytest.approx(0.01 * sgd_hi[0], rel=1e-9)
    # Adam divides by the gradient's own magnitude: every layer moves by ~lr (A mitigates;
    # only entries whose gradient is below eps = 1e-8 move less)
    adam = first_step_update_rms(Adam, lr=1e-3)
    assert adam[0] / adam[-1] > 0.5
    assert np.all((adam > 0.5e-3) & (adam <= 1e-3 + 1e-15))


def test_init_3_adam_is_invariant_to_gradient_scale():
    def trajectory(scale):
        p = Parameter(np.array([1.0, -2.0, 0.5]))
        opt = Adam([p], lr=0.05, eps=1e-12)
        for _ in range(20):
            p.grad[...] = scale * np.array([1.0, 10.0, 100.0]) * (p.data - [0.3, 0.1, -0.2])
            opt.step()
        return p.data.copy()
    # the loss (so every gradient) multiplied by 1e-3 or 1e3: the same trajectory, while
    # SGD's steps would shrink or grow a thousand-fold
    np.testing.assert_allclose(trajectory(1e-3), trajectory(1.0), rtol=1e-6)
    np.testing.assert_allclose(trajectory(1e3), trajectory(1.0), rtol=1e-9)


def _cross_entropy(logits, target):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = len(target)
    loss = -logp[np.arange(n), target].mean()
    grad = np.exp(logp)
    grad[np.arange(n), target] -= 1
    return loss, grad / n


def _zero_init_classifier():
    net = Sequential(Linear(4, 8, bias=False, dtype=np.float64), ReLU(),
                     Linear(8, 8, bias=False, dtype=np.float64), ReLU(),
                     Linear(8, 3, bias=False, dtype=np.float64))
    for p in net.parameters():
        init.zeros_(p)
    return net


def test_init_4_zero_weights_learn_nothing():
    x = _rng(0).standard_normal((30, 4))
    t = _rng(1).integers(0, 3, 30)
    net = _zero_init_classifier()
    loss, g = _cross_entropy(net(x), t)
    assert loss == pytest.approx(math.log(3))
    net.backward(g)
    for p in net.parameters():
        assert np.all(p.grad == 0)                             # analytic: exactly zero
    for p in net.parameters():                                 # numeric: zero as well
        num = numeric_gradient(lambda: _cross_entropy(net(x), t)[0], p.data)
        assert np.all(np.abs(num) < 1e-12)
    opt = SGD(net.parameters(), lr=0.5, momentum=0.9)
    for _ in range(200):
        opt.zero_grad()
        loss, g = _cross_entropy(net(x), t)
        net.backward(g)
        opt.step()
    for p in net.parameters():
        assert np.all(p.data == 0)                             # answer D
    assert _cross_entropy(net(x), t)[0] == pytest.approx(math.log(3))
    # the same network with a random init does learn
    net2 = _zero_init_classifier()
    for p in net2.parameters():
        init.kaiming_uniform_(p, nonlinearity="relu", generator=_rng(2))
    opt = SGD(net2.parameters(), lr=0.1, momentum=0.9)
    for _ in range(200):
        opt.zero_grad()
        loss, g = _cross_entropy(net2(x), t)
        net2.backward(g)
        opt.step()
    assert _cross_entropy(net2(x), t)[0] < 0.5 * math.log(3)


def _big_bias_mlp(bias):
    g = _rng(3)
    net = Sequential(Linear(5, 16, dtype=np.float64, generator=g), ReLU(),
                     Linear(16, 16, dtype=np.float64, generator=g), ReLU(),
                     Linear(16, 3, dtype=np.float64, generator=g))
    for m in net:
        if isinstance(m, Linear):
            init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
            init.constant_(m.bias, bias)
    return net


def test_init_5_huge_bias_makes_the_relu_net_affine():
    x1, x2 = _rng(4).standard_normal((2, 50, 5))
    net = _big_bias_mlp(1e6)
    # the activation pattern is the same for every input. In layer 1 every ReLU is on
    # (z = W x + 1e6); in layer 2, z = 1e6 (W2 1 + 1) + O(1), so a unit whose weights sum
    # below -1 is off for EVERY input: not "all identities" but a fixed on/off pattern.
    patterns = []
    h = np.concatenate([x1, x2, 10 * x1])
    for m in net:
        if isinstance(m, ReLU):
            on = h > 0
            assert np.all(on == on[0])                    # same pattern for all 150 inputs
            patterns.append(on[0])
        h = m(h)
    assert patterns[0].all()
    L1, L2, L3 = (m for m in net if isinstance(m, Linear))
    np.testing.assert_array_equal(patterns[1], L2.weight.data.sum(axis=1) > -1)
    assert 0 < np.sum(~patterns[1]) < 16                  # some units dead, most identity
    f = net
    for a in (0.3, -1.5, 2.0):
        lhs = f(a * x1 + (1 - a) * x2)
        rhs = a * f(x1) + (1 - a) * f(x2)
        np.testing.assert_allclose(lhs, rhs, rtol=1e-9)
    # ... so it equals ONE Linear layer (answer B): with D = diag(pattern of layer 2),
    # W = W3 D W2 W1, b = W3 D (W2 b1 + b2) + b3
    D = np.diag(patterns[1].astype(np.float64))
    W = L3.weight.data @ D @ L2.weight.data @ L1.weight.data
    b = L3.weight.data @ D @ (L2.weight.data @ L1.bias.data + L2.bias.data) + L3.bias.data
    np.testing.assert_allclose(f(x1), x1 @ W.T + b, rtol=1e-9)
    # with zero biases the same weights give a genuinely non-linear function
    g0 = _big_bias_mlp(0.0)
    lhs = g0(0.5 * x1 + 0.5 * x2)
    rhs = 0.5 * g0(x1) + 0.5 * g0(x2)
    assert np.max(np.abs(lhs - rhs)) > 0.1 * np.max(np.abs(rhs))


# ----------------------------------------------------------------------------- opt

def _quadratic_grad(theta):
    H = np.array([[3.0, 1.0], [1.0, 0.5]])
    return H @ theta - np.array([1.0, -1.0])


def _nonconvex_grad(theta):           # Rosenbrock
    x, y = theta
    return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])


@pytest.mark.parametrize("grad_fn,theta0,alpha", [
    (_quadratic_grad, [2.0, -3.0], 0.1), (_nonconvex_grad, [-1.2, 1.0], 1e-3)])
def test_opt_1_adam_without_second_moment_is_sgd_momentum(grad_fn, theta0, alpha):
    b1, steps = 0.9, 100
    # the paper's rule, transcribed literally
    theta, m, paper = np.array(theta0), np.zeros(2), []
    for _ in range(steps):
        m = b1 * m + (1 - b1) * grad_fn(theta)
        theta = theta - alpha * m
        paper.append(theta)
    # refdl's SGD + momentum (PyTorch's b_t = mu b_{t-1} + g_t, theta -= lr b_t) with
    # mu = beta1 and lr = alpha (1 - beta1): m_t = (1 - beta1) b_t, identical iterates (B)
    p = Parameter(np.array(theta0))
    opt = SGD([p], lr=alpha * (1 - b1), momentum=b1)
    ours = []
    for _ in range(steps):
        p.grad[...] = grad_fn(p.data)
        opt.step()
        ours.append(p.data.copy())
    np.testing.assert_allclose(ours, paper, rtol=1e-12, atol=1e-14)
    # not plain SGD (A): same lr, no momentum, different path
    q = Parameter(np.array(theta0))
    sgd = SGD([q], lr=alpha * (1 - b1))
    for _ in range(steps):
        q.grad[...] = grad_fn(q.data)
        sgd.step()
    assert np.max(np.abs(q.data - paper[-1])) > 1e-3
    # with bias correction (C) the step is alpha m_t / (1 - beta1^t): refdl's Adam with a
    # huge eps (so sqrt(v) / eps ~ 1e-9 and the second moment drops out) and lr = alpha eps
    # is that rule; its first step is alpha g_1, ten times the paper's alpha (1 - beta1) g_1
    eps = 1e9
    r = Parameter(np.array(theta0))
    adam = Adam([r], lr=alpha * eps, betas=(b1, 0.999), eps=eps)
    corrected, m_c = [], np.zeros(2)
    th = np.array(theta0)
    for t in range(1, 4):
        r.grad[...] = grad_fn(r.data)
        adam.step()
        corrected.append(r.data.copy())
        m_c = b1 * m_c + (1 - b1) * grad_fn(th)
        th = th - alpha * m_c / (1 - b1 ** t)
        np.testing.assert_allclose(corrected[-1], th, rtol=1e-6)
    g1 = grad_fn(np.array(theta0))
    np.testing.assert_allclose(np.array(theta0) - corrected[0], alpha * g1, rtol=1e-6)
    np.testing.assert_allclose(np.array(theta0) - ours[0], alpha * (1 - b1) * g1, rtol=1e-12)


def test_opt_2_too_high_learning_rate_oscillates():
    lam = 4.0                                        # f = lam/2 theta^2, stable iff lr < 2/lam

    def gd(lr, steps=30):
        p = Parameter(np.array([1.0]))
        opt = SGD([p], lr=lr)
        out = []
        for _ in range(steps):
            p.grad[...] = lam * p.data
            opt.step()
            out.append(p.data[0])
        return np.array(out)

    smooth, zigzag, diverge = gd(0.1), gd(0.45), gd(0.55)
    assert np.all(smooth > 0) and np.all(np.diff(smooth) < 0)            # monotone
    assert np.all(np.sign(zigzag[:-1]) != np.sign(zigzag[1:]))           # overshoots
    assert abs(zigzag[-1]) < 1e-2                                        # but converges
    assert np.all(np.abs(diverge[1:]) > np.abs(diverge[:-1]))            # lr > 2/lam
    assert abs(diverge[-1]) > 5

    # mini-batch SGD on least squares: at a high lr the training loss keeps oscillating
    rng = _rng(0)
    X = rng.standard_normal((256, 10)) * np.linspace(0.5, 1.5, 10)
    y = X @ rng.standard_normal(10) + 0.1 * rng.standard_normal(256)

    def train(lr, schedule=False, steps=400):
        w = Parameter(np.zeros(10))
        opt = SGD([w], lr=lr)
        sched = CosineAnnealingLR(opt, T_max=steps) if schedule else None
        order = _rng(1)
        losses = []
        for _ in range(steps):
            idx = order.integers(0, 256, 8)
            r = X[idx] @ w.data - y[idx]
            w.grad[...] = X[idx].T @ r / 8
            opt.step()
            if sched:
                sched.step()
            losses.append(0.5 * np.mean((X @ w.data - y) ** 2))
        tail = np.array(losses[-100:])
        return tail.mean(), tail.std() / tail.mean()     # level, relative oscillation

    level_hi, osc_hi = train(0.5)
    level_lo, osc_lo = train(0.1)
    level_cos, osc_cos = train(0.5, schedule=True)
    assert osc_hi > 0.25 and osc_lo < 0.1                 # the high-lr curve oscillates
    assert level_hi > 1.5 * level_lo                      # and plateaus higher
    assert osc_cos < 0.1 and level_cos < level_hi / 1.5   # remedy: decay the lr


def _heavy_ball_iterations(lr, momentum, H, theta0, tol=1e-6, max_steps=20000):
    p = Parameter(np.array(theta0, dtype=np.float64))
    opt = SGD([p], lr=lr, momentum=momentum)
    f0 = 0.5 * p.data @ H @ p.data
    fs = []
    for k in range(1, max_steps + 1):
        p.grad[...] = H @ p.data
        opt.step()
        f = 0.5 * p.data @ H @ p.data
        fs.append(f)
        if f < tol * f0:
            return k, np.array(fs)
    return max_steps, np.array(fs)


def test_opt_3_momentum_on_a_convex_quadratic():
    mu, L = 1.0, 100.0                                  # condition number 100
    H = np.diag([mu, L])
    theta0 = [1.0, 1.0]
    k_gd, f_gd = _heavy_ball_iterations(2 / (L + mu), 0.0, H, theta0)
    beta = ((math.sqrt(L) - math.sqrt(mu)) / (math.sqrt(L) + math.sqrt(mu))) ** 2
    lr_hb = 4 / (math.sqrt(L) + math.sqrt(mu)) ** 2
    k_hb, f_hb = _heavy_ball_iterations(lr_hb, beta, H, theta0)
    k_hi, f_hi = _heavy_ball_iterations(lr_hb, 0.99, H, theta0)
    # momentum helps on a convex problem: ~sqrt(kappa) instead of ~kappa iterations
    assert k_gd > 300 and k_hb < 100 and k_gd > 5 * k_hb
    # too much momentum overshoots: the loss goes up on many steps, and it is slower
    assert np.sum(np.diff(f_gd) > 0) == 0
    assert np.sum(np.diff(f_hi) > 0) > 100
    assert k_hi > 5 * k_hb


def test_opt_4_gradient_clipping_tames_exploding_gradients():
    # h_T = w^T h_0: a scalar linear RNN unrolled over T = 30 steps; L = (h_T - 1)^2
    T, target = 30, 1.0

    def grad(w):
        return 2 * (w ** T - target) * T * w ** (T - 1)

    g0 = grad(1.5)
    assert g0 > 1e11                                      # exploding: ~ T w^(2T-1)
    p = Parameter(np.array([1.5]))
    p.grad[...] = g0
    SGD([p], lr=5e-4).step()
    assert abs(p.data[0]) > 1e8                           # one plain step blows w away

    p = Parameter(np.array([1.5]))
    opt = SGD([p], lr=5e-4)
    for _ in range(3000):
        p.grad[...] = grad(p.data)
        total = clip_grad_norm_([p], max_norm=1.0)
        assert np.linalg.norm(p.grad) <= 1.0 + 1e-12
        opt.step()
    assert p.data[0] == pytest.approx(target ** (1 / T), abs=1e-6)
    assert total < 1.0                                   # no clipping once it is tame
    # clipping by norm keeps the direction
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(1))
    a.grad[...] = [3e6, -4e6]
    b.grad[...] = [12e6]
    d = np.concatenate([a.grad, b.grad])
    clip_grad_norm_([a, b], 5.0)
    np.testing.assert_allclose(np.concatenate([a.grad, b.grad]), 5.0 * d / np.linalg.norm(d),
                               rtol=1e-6)


# ----------------------------------------------------------------------------- reg

def test_reg_1_laplace_prior_map_is_the_lasso():
    rng = _rng(0)
    n, d, sigma, b = 60, 20, 0.5, 0.02
    X = rng.standard_normal((n, d))
    w_true = np.zeros(d)
    w_true[[1, 5, 12]] = [2.0, -3.0, 1.5]
    y = X @ w_true + sigma * rng.standard_normal(n)
    lam = 1.0 / b                                         # Laplace(0, b) prior

    def neg_log_posterior(w):                             # up to log p(y): the evidence
        return -(stats.norm.logpdf(y, X @ w, sigma).sum() + stats.laplace.logpdf(w, 0, b).sum())

    def objective(w):                                     # the L1-penalised least squares
        p = Parameter(w.copy())
        return np.sum((y - X @ w) ** 2) / (2 * sigma ** 2) + l1_penalty([p], lam)

    diffs = [neg_log_posterior(w) - objective(w) for w in rng.standard_normal((5, d))]
    const = n * math.log(math.sqrt(2 * math.pi) * sigma) + d * math.log(2 * b)
    np.testing.assert_allclose(diffs, const, rtol=1e-12)       # a constant: same argmin

    # ISTA: gradient step on the likelihood term, then soft thresholding
    A = X.T @ X / sigma ** 2
    eta = 1.0 / np.linalg.eigvalsh(A).max()
    w = np.zeros(d)
    for _ in range(3000):
        w = prox_l1(w - eta * (A @ w - X.T @ y / sigma ** 2), eta * lam)
    # KKT: X_j^T (y - X w)/sigma^2 = lam sign(w_j) where w_j != 0, |.| <= lam where w_j = 0
    c = X.T @ (y - X @ w) / sigma ** 2
    nz = w != 0
    np.testing.assert_allclose(c[nz], lam * np.sign(w[nz]), rtol=1e-8)
    assert np.all(np.abs(c[~nz]) <= lam * (1 + 1e-8))
    assert set(np.flatnonzero(nz)) == {1, 5, 12}              # sparse: the true support
    # a Gaussian prior with the same variance (2 b^2) gives ridge: no exact zeros
    ridge = np.linalg.solve(A + np.eye(d) / (2 * b * b), X.T @ y / sigma ** 2)
    assert np.count_nonzero(ridge) == d
    assert np.sum(w == 0) == d - 3
