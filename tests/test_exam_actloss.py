"""Exam items on MLPs, activations, losses, autograd's scalar-loss rule and dropout:
mlp-1..8, act-1..4, loss-1, loss-2, loss-4, frame-5, reg-2, reg-3 (../shared/exam/CATALOG.md).

Every number is computed with refdl's layers; docs/exam.md reports them and the verdicts.
"""
import itertools
import math

import numpy as np
import pytest
from scipy import optimize, special

import refdl
from refdl import nn
from refdl.gradcheck import check_loss, check_module, numeric_gradient
from refdl.optim import SGD


def set_linear(layer, weight, bias=None):
    layer.weight.data[...] = weight
    if bias is not None:
        layer.bias.data[...] = bias
    return layer


# -- mlp -----------------------------------------------------------------------------------
def _unit_crossings(net, k, rng, n_lines=40):
    """Points where hidden unit k of refdl's forward crosses sigmoid = 1/2, found by
    bisection along random lines (only refdl's forward is evaluated)."""
    hidden = lambda x: net[1](net[0](x))[:, k] - 0.5          # noqa: E731
    pts = []
    while len(pts) < n_lines:
        a, b = rng.uniform(-20, 20, (2, 1, 3))
        fa, fb = hidden(a)[0], hidden(b)[0]
        if fa * fb > 0:
            continue
        for _ in range(80):
            m = (a + b) / 2
            fm = hidden(m)[0]
            a, b, fa = (m, b, fm) if fa * fm > 0 else (a, m, fa)
        pts.append(((a + b) / 2)[0])
    return np.array(pts)


def test_mlp_1_hyperplanes_of_a_3_5_1_sigmoid_mlp():
    """A 3-5-1 sigmoid MLP: each hidden unit gives one hyperplane w_k.x + b_k = 0 in the
    input space, so 5 hyperplanes (key C says 20, which is the number of weights).
    The planes are found from refdl's forward pass alone (where each unit crosses 1/2)
    and compared with the weights; the regions they cut R^3 into are counted from the
    forward pass on random points and by linear programming on the weights."""
    refdl.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Sigmoid(), nn.Linear(5, 1), nn.Sigmoid()).double()
    net.eval()                                          # forwards only: record no caches
    W, b = net[0].weight.data, net[0].bias.data
    rng = np.random.default_rng(1)
    planes = []
    for k in range(5):
        pts = _unit_crossings(net, k, rng)
        A = np.c_[pts, np.ones(len(pts))]
        _, sv, vt = np.linalg.svd(A)
        assert sv[-1] < 1e-9 * sv[0]                    # the crossings lie on one plane
        n = vt[-1] / np.linalg.norm(vt[-1, :3])
        wb = np.r_[W[k], b[k]] / np.linalg.norm(W[k])
        np.testing.assert_allclose(n * np.sign(n @ wb), wb, atol=1e-9)   # = w_k.x + b_k = 0
        planes.append(wb)
    distinct = {tuple(np.round(pl, 6)) for pl in planes}
    assert len(distinct) == 5                           # 5 hyperplanes, answer (b)
    # 20 is the weight count 3*5 + 5*1 (refdl's parameters); with biases 26
    assert sum(p.size for n_, p in net.named_parameters() if n_.endswith("weight")) == 20
    assert net.num_parameters() == 26
    # the regions these 5 planes cut R^3 into: one LP per sign pattern (maximise t subject
    # to s_k (w_k.x + b_k) >= t, t <= 1); at most C(5,0)+C(5,1)+C(5,2)+C(5,3) = 26
    regions = set()
    for signs in itertools.product([-1.0, 1.0], repeat=5):
        s = np.array(signs)
        A = np.c_[-(s[:, None] * W), np.ones(5)]          # -s(Wx + b) + t <= 0
        res = optimize.linprog(np.r_[0, 0, 0, -1.0], A_ub=A, b_ub=s * b,
                               bounds=[(None, None)] * 3 + [(None, 1.0)], method="highs")
        if res.status == 0 and -res.fun > 1e-9:
            regions.add(tuple(s > 0))
    assert len(regions) == sum(math.comb(5, i) for i in range(4)) == 26
    # every activation pattern refdl's forward produces on random points is one of them
    x = rng.uniform(-60, 60, (200_000, 3))
    seen = {tuple(r) for r in net[1](net[0](x)) > 0.5}
    assert seen <= regions and len(seen) >= 20
    # the output unit is not a hyperplane in input space: its level set bends
    xs = rng.standard_normal((200, 3))
    assert np.linalg.matrix_rank(np.c_[xs, np.ones(200), net(xs)]) == 5   # not affine in x


def test_mlp_2_fourier_partial_sums_vs_relu_approximants_of_a_step():
    """Square wave sign(sin x): Fourier partial sums converge in L2 but overshoot by the
    Gibbs constant (max -> 1.179); any continuous approximant (a ReLU net included) keeps
    a sup error >= half the jump. The paper's contrast is not a real difference."""
    x = np.linspace(-np.pi, np.pi, 40001)
    sq = np.sign(np.sin(x))
    peaks, l2 = [], []
    for n_terms in (10, 40, 160):
        k = 2 * np.arange(n_terms) + 1
        S = sum(4 / np.pi * np.sin(kk * x) / kk for kk in k)
        peaks.append(S.max())
        l2.append(np.sqrt(np.mean((S - sq) ** 2)))
    gibbs = 2 / np.pi * special.sici(np.pi)[0]          # the Gibbs limit 1.17898
    assert gibbs == pytest.approx(1.178979744, abs=1e-9)
    assert all(abs(p - gibbs) < 3e-3 for p in peaks)    # the overshoot does not shrink
    assert l2[0] > l2[1] > l2[2] and l2[2] < 0.05       # but the L2 error -> 0
    # a one-hidden-layer ReLU net (ramp of slope k): L2 error -> 0, sup error stays 1
    sup, l2r = [], []
    x = np.sort(np.r_[x, -1e-9, 1e-9])          # the sup sits right next to the jump
    sq = np.sign(x)
    for k in (10.0, 100.0, 1000.0):
        net = nn.Sequential(set_linear(nn.Linear(1, 2).double(), [[k], [k]], [1.0, -1.0]),
                            nn.ReLU(), set_linear(nn.Linear(2, 1).double(), [[1.0, -1.0]],
                                                  [-1.0]))
        y = net(x[:, None])[:, 0]
        err = y - sq
        sup.append(np.abs(err[x != 0]).max())
        l2r.append(np.sqrt(np.mean(err ** 2)))
    assert l2r[0] > l2r[1] > l2r[2] and l2r[2] < 0.02
    assert all(s > 0.99 for s in sup)       # continuous: cannot beat half the jump (1)


def random_feature_error(activation, width, seed=0, target=None):
    """Least-squares fit of ``target`` on [-1, 1] by c^T act(W x + b): RMS error, rank."""
    refdl.manual_seed(seed)
    lin = nn.Linear(1, width).double()
    lin.weight.data[...] = 3 * np.random.default_rng(seed).standard_normal((width, 1))
    lin.bias.data[...] = 3 * np.random.default_rng(seed + 1).standard_normal(width)
    x = np.linspace(-1, 1, 401)[:, None]
    H = activation(lin(x))
    H = np.c_[H, np.ones(len(x))]
    y = target(x[:, 0])
    c, *_ = np.linalg.lstsq(H, y, rcond=None)
    return float(np.sqrt(np.mean((H @ c - y) ** 2))), int(np.linalg.matrix_rank(H))


def test_mlp_3_polynomial_activation_collapses_but_polynomials_are_dense():
    target = np.abs
    square = lambda z: z * z                      # noqa: E731  (sigma(z) = z^2)
    tanh = nn.Tanh()
    sq = [random_feature_error(square, w, target=target) for w in (5, 20, 80)]
    th = [random_feature_error(tanh, w, target=target) for w in (5, 20, 80)]
    # z^2 features span {1, x, x^2}: rank <= 3 however wide, and the error plateaus
    assert all(rank <= 3 for _, rank in sq)
    assert sq[2][0] == pytest.approx(sq[1][0], rel=1e-6) and sq[2][0] > 0.05
    # tanh features keep improving with width
    assert th[0][0] > th[1][0] > th[2][0] and th[2][0] < 0.2 * sq[2][0]
    # ... yet polynomials ARE dense in C([-1, 1]) (Weierstrass): Chebyshev fits of |x|
    # converge. The paper's reason "polynomials are not dense" is wrong; the right one is
    # that a fixed-degree polynomial network only spans polynomials of bounded degree.
    xs = np.linspace(-1, 1, 2001)
    errs = [np.abs(np.polynomial.chebyshev.Chebyshev.interpolate(np.abs, d)(xs) - np.abs(xs)).max()
            for d in (8, 32, 128)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.01


def test_mlp_4_linear_operators_are_matrices():
    rng = np.random.default_rng(4)
    refdl.manual_seed(4)
    f = nn.Sequential(nn.Linear(6, 5, bias=False), nn.Dropout(0.5), nn.Linear(5, 3, bias=False))
    f.double().eval()                                   # eval: Dropout is the identity
    A = np.stack([f(e) for e in np.eye(6)], axis=1)     # columns: images of basis vectors
    assert A.shape == (3, 6)                            # [m, n]
    x = rng.standard_normal((10, 6))
    np.testing.assert_allclose(f(x), x @ A.T, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(A, f[2].weight.data @ f[0].weight.data, rtol=1e-13)
    # a backward pass is a linear operator of g too: Softmax's is J^T (J symmetric)
    sm = nn.Softmax(dim=0)
    z = rng.standard_normal(4)
    with refdl.no_grad():
        y = sm(z)
    B = np.stack([sm.backward(e) for e in np.eye(4) if sm(z) is not None], axis=1)  # a forward per backward
    np.testing.assert_allclose(B, np.diag(y) - np.outer(y, y), rtol=1e-13, atol=1e-16)
    # an affine layer (bias != 0) is not linear: f(0) = b, it needs the matrix [W b]
    lin = nn.Linear(3, 2).double()
    assert np.any(lin(np.zeros(3)) != 0)


def mlp_q4():
    refdl.manual_seed(5)
    return nn.Sequential(nn.Linear(2, 6), nn.LayerNorm(6), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(6, 20))


def test_mlp_5_parameter_counts_layer_by_layer():
    net = mlp_q4()
    counts = [m.num_parameters() for m in net]
    assert counts == [18, 12, 0, 0, 140]                # Linear1, LN1, ReLU1, Dropout1, L2
    assert nn.CrossEntropyLoss().num_parameters() == 0
    assert net.num_parameters() == 170


def test_mlp_6_activation_shapes():
    """001 Q4(b). Part (a)'s solution lists six layers (Linear1, LayerNorm1, Dropout1,
    ReLU1, Linear2, CrossEntropyLoss), so refdl's model has six activations; the key has
    five slots z1..z5 with three of shape [B, 6]. The key's five shapes are exactly those of
    the model WITHOUT Dropout1: the two parts of the key do not describe the same figure."""
    B = 7
    x = np.random.default_rng(6).standard_normal((B, 2)).astype(np.float32)
    y = np.arange(B) % 20

    def shapes(net):
        out, z = [], x
        for layer in net:
            z = layer(z)
            out.append(tuple(z.shape))
        ce = nn.CrossEntropyLoss()
        loss = ce(z, y)
        out.append(tuple(np.shape(loss)))
        assert net.backward(ce.backward()).shape == (B, 2)
        return out
    with_dropout = shapes(mlp_q4())
    assert with_dropout == [(B, 6), (B, 6), (B, 6), (B, 6), (B, 20), ()]     # six z's
    refdl.manual_seed(5)
    no_dropout = nn.Sequential(nn.Linear(2, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 20))
    key = [(B, 6), (B, 6), (B, 6), (B, 20), ()]          # z1..z5 of the key, B = 7
    assert shapes(no_dropout) == key
    assert len(with_dropout) != len(key)


def interpolating_relu_net(x, y):
    """One hidden ReLU layer with N - 1 units through N points (x sorted, distinct):
    f(x) = y_1 + sum_k c_k ReLU(x - x_k), the piecewise-linear interpolant."""
    N = len(x)
    slopes = np.diff(y) / np.diff(x)
    c = np.diff(np.r_[0.0, slopes])
    hidden = set_linear(nn.Linear(1, N - 1).double(), np.ones((N - 1, 1)), -x[:-1])
    out = set_linear(nn.Linear(N - 1, 1).double(), c[None, :], [y[0]])
    return nn.Sequential(hidden, nn.ReLU(), out)


def test_mlp_7_one_hidden_layer_memorises_any_labels_but_not_best_accuracy():
    rng = np.random.default_rng(7)
    N = 30
    X = rng.standard_normal((N, 5))
    labels = rng.integers(0, 10, N)                     # arbitrary labels
    u = rng.standard_normal(5)                          # distinct projections t = X u
    t = X @ u
    order = np.argsort(t)
    net = interpolating_relu_net(t[order], labels[order].astype(float))
    assert net[0].out_features == N - 1
    pred = net(t[:, None])[:, 0]
    np.testing.assert_allclose(pred, labels, atol=1e-9)  # 100% training accuracy
    assert np.mean(np.rint(pred) == labels) == 1.0
    # "best possible accuracy on any dataset" is more than the UAT says: with identical
    # inputs carrying different labels no function exceeds the majority rate. refdl's
    # one-hidden-layer classifier trained with cross-entropy on x = 0 (labels 0, 1, 1)
    # and x = 1 (label 0) learns the conditional frequencies p(1 | x=0) = 2/3 and
    # p(1 | x=1) = 0, and its accuracy is the Bayes rate, found by enumerating all labelings
    Xd = np.array([[0.0], [0.0], [0.0], [1.0]])
    yd = np.array([0, 1, 1, 0])
    refdl.manual_seed(7)
    clf = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 2)).double()
    ce, opt = nn.CrossEntropyLoss(), refdl.optim.Adam(clf.parameters(), lr=0.05)
    for _ in range(1500):
        opt.zero_grad()
        ce(clf(Xd), yd)
        clf.backward(ce.backward())
        opt.step()
    prob = np.exp(clf(Xd)) / np.exp(clf(Xd)).sum(1, keepdims=True)
    np.testing.assert_allclose(prob[:3, 1], 2 / 3, atol=2e-3)
    assert prob[3, 1] < 0.01
    acc = np.mean(clf(Xd).argmax(1) == yd)
    bayes = max(np.mean(np.array([a, a, a, b]) == yd) for a in (0, 1) for b in (0, 1))
    assert acc == bayes < 1.0


def tent_layer():
    """t(x) = 2 ReLU(x) - 4 ReLU(x - 1/2): the tent map on [0, 1], two ReLU units."""
    return [set_linear(nn.Linear(1, 2).double(), [[1.0], [1.0]], [0.0, -0.5]), nn.ReLU(),
            set_linear(nn.Linear(2, 1).double(), [[2.0, -4.0]], [0.0])]


def count_pieces(f, n=2 ** 14):
    x = np.linspace(0, 1, n + 1)[:, None]              # dyadic grid: exact arithmetic
    y = f(x)[:, 0]
    slope = np.diff(y) * n
    return 1 + int(np.sum(np.abs(np.diff(slope)) > 1e-6))


def test_mlp_8_depth_multiplies_linear_pieces():
    pieces = {}
    for L in range(1, 7):
        net = nn.Sequential(*[m for _ in range(L) for m in tent_layer()])
        pieces[L] = count_pieces(net)
    assert pieces == {L: 2 ** L for L in range(1, 7)}     # 2L ReLUs -> 2^L pieces
    # one hidden layer of n ReLUs on the line has at most n + 1 pieces: matching the
    # 64 pieces of the 6-layer, 12-unit net needs at least 63 units
    refdl.manual_seed(8)
    wide = nn.Sequential(nn.Linear(1, 12), nn.ReLU(), nn.Linear(12, 1)).double()
    kinks = np.arange(1, 13) / 16                       # on the dyadic grid
    wide[0].bias.data[...] = -kinks * wide[0].weight.data[:, 0]
    assert count_pieces(wide) == 13


# -- act -----------------------------------------------------------------------------------
def sigmoid_chain(depth, width, w_std, seed=0):
    refdl.manual_seed(seed)
    layers = []
    for i in range(depth):
        lin = nn.Linear(width, width).double()
        lin.weight.data[...] = w_std * np.random.default_rng(seed + i).standard_normal(
            (width, width)) / np.sqrt(width)
        layers += [lin, nn.Sigmoid()]
    return nn.Sequential(*layers)


def test_act_1_sigmoid_saturation_vanishes_gradients():
    # sigma'(z) = sigma(1 - sigma) <= 1/4, and ~e^-|z| for large |z|
    s = nn.Sigmoid()
    z = np.array([0.0, 2.0, 5.0, 10.0, -10.0])
    s(z)
    d = s.backward(np.ones(5))
    assert d[0] == 0.25 and d[3] < 5e-5 and d[4] < 5e-5
    # per-layer weight-gradient norms in a 10-layer sigmoid MLP shrink towards the input
    net = sigmoid_chain(10, 16, w_std=1.0)
    x = np.random.default_rng(1).standard_normal((64, 16))
    net(x)
    net.backward(np.random.default_rng(2).standard_normal((64, 16)))
    norms = [np.linalg.norm(m.weight.grad) for m in net if isinstance(m, nn.Linear)]
    assert norms[0] < 1e-3 * norms[-1]
    # large pre-activations (inputs x20) saturate the first layer: the input gradient
    # shrinks by orders of magnitude
    net(x)
    dx = net.backward(np.random.default_rng(2).standard_normal((64, 16)))
    net2 = sigmoid_chain(10, 16, w_std=1.0)
    net2(20 * x)
    dx2 = net2.backward(np.random.default_rng(2).standard_normal((64, 16)))
    assert np.linalg.norm(dx2) < 0.5 * np.linalg.norm(dx)
    with refdl.no_grad():                               # first-layer sigmoid outputs
        y1, y2 = net[:2](x), net2[:2](20 * x)
    sat = lambda y: np.mean(y * (1 - y) < 1e-3)         # noqa: E731  sigma' < 1e-3
    assert sat(y1) < 0.05 and sat(y2) > 0.7
    # layer by layer towards the input they only shrink (slow training, key B), they
    # never grow (no exploding, unstable updates)
    assert all(a < b for a, b in zip(norms, norms[1:]))


def test_act_2_max_minus_kx_x_is_abs_at_k_1_not_identity():
    x = np.linspace(-2, 2, 9)
    for k in (0.0, 0.25, 0.5, 1.0):
        act = nn.LeakyReLU(negative_slope=-k)           # max(-kx, x) for 0 <= k <= 1
        np.testing.assert_allclose(act(x), np.maximum(-k * x, x))
    np.testing.assert_allclose(nn.LeakyReLU(-1.0)(x), np.abs(x))    # k = 1: |x|
    np.testing.assert_allclose(nn.LeakyReLU(1.0)(x), x)             # max(kx, x): identity
    target = lambda t: np.sin(4 * t) + 0.5 * np.abs(t)              # noqa: E731
    err = {k: random_feature_error(nn.LeakyReLU(-k), 60, target=target)[0]
           for k in (0.0, 0.5, 1.0)}
    ident = random_feature_error(nn.LeakyReLU(1.0), 60, target=target)[0]
    assert max(err.values()) < 0.02                    # every k fits the target well
    # ... equally well: max(-kz, z) = (1 + k) ReLU(z) - k z, and these random features
    # already span the linear functions, so the span (the capacity) does not depend on k
    assert max(err.values()) == pytest.approx(min(err.values()), rel=1e-8)
    assert ident > 0.4                                 # the identity (a linear model) can't
    assert err[1.0] < 0.05 * ident


def chain_gradient(weights, biases, activation):
    """d a_n / d a_0 of the scalar chain a_k = act(w_k a_{k-1} + b_k), by backward."""
    layers = []
    for w, b in zip(weights, biases):
        layers += [set_linear(nn.Linear(1, 1).double(), [[w]], [b]), activation()]
    net = nn.Sequential(*layers)
    net(np.zeros((1, 1)))
    return float(net.backward(np.ones((1, 1)))[0, 0]), net


def test_act_3_gradient_products_along_a_sigmoid_chain():
    # the paper's 0.25 per layer is sigma'(0), reached with w = 1 and z = 0 at every layer
    # (biases -1/2 after the first, since sigma(0) = 1/2): 0.25^5 = 1/1024 exactly
    g, _ = chain_gradient([1.0] * 5, [0.0] + [-0.5] * 4, nn.Sigmoid)
    assert g == 0.25 ** 5 == 0.0009765625
    # with the paper's weights 0.5 each factor is w sigma'(z) <= 0.125: far smaller
    g05, _ = chain_gradient([0.5] * 5, [0.0] * 5, nn.Sigmoid)
    assert g05 <= 0.125 ** 5 and g05 == pytest.approx(2.9e-5, rel=0.05)
    # 5^100 needs identity activations: with sigmoid and w = 5 the factor is
    # 5 sigma'(z) <= 1.25, and along the actual chain it vanishes (sigma saturates)
    g_id, _ = chain_gradient([5.0] * 100, [0.0] * 100, nn.Identity)
    assert g_id == pytest.approx(5.0 ** 100, rel=1e-12)
    g_sig, _ = chain_gradient([5.0] * 100, [0.0] * 100, nn.Sigmoid)
    assert g_sig < 1e-100 < 1.25 ** 100


def test_act_4_relu_derivative_one_on_active_paths():
    g_relu, _ = chain_gradient([1.0] * 50, [0.1] * 50, nn.ReLU)
    assert g_relu == 1.0                                # every factor is w * 1
    g_sig, _ = chain_gradient([1.0] * 50, [0.0] * 50, nn.Sigmoid)
    assert g_sig < 0.25 ** 50
    # but a ReLU path through a negative pre-activation is cut entirely (dead unit)
    g_dead, _ = chain_gradient([1.0] * 50, [0.1] * 25 + [-100.0] + [0.1] * 24, nn.ReLU)
    assert g_dead == 0.0


# -- loss ----------------------------------------------------------------------------------
def blobs(n, d=20, classes=10, seed=0, sep=1.2):
    rng = np.random.default_rng(seed)
    means = sep * rng.standard_normal((classes, d))
    y = rng.integers(0, classes, n)
    return means[y] + rng.standard_normal((n, d)), y


def test_loss_1_zero_one_loss_has_zero_gradient_almost_everywhere():
    X, y = blobs(200, d=5, classes=3, seed=1)
    refdl.manual_seed(1)
    clf = nn.Linear(5, 3).double()

    def zero_one():
        return float(np.mean(np.argmax(clf(X), axis=1) != y))

    for p in clf.parameters():                          # at a random parameter point
        g = numeric_gradient(zero_one, p.data, eps=1e-6)
        assert np.all(g == 0.0)
    assert 0 < zero_one() < 1
    # cross-entropy gives a non-zero gradient at the same point
    ce = nn.CrossEntropyLoss()
    ce(clf(X), y)
    clf.backward(ce.backward())
    assert np.linalg.norm(clf.weight.grad) > 1e-2


def train_softmax_linear(loss_name, X, y, Xt, yt, epochs=300, lr=0.5):
    refdl.manual_seed(2)
    clf = nn.Linear(X.shape[1], 10).double()
    opt = SGD(clf.parameters(), lr=lr)
    sm, mse, ce = nn.Softmax(dim=1), nn.MSELoss(reduction="sum"), nn.CrossEntropyLoss()
    onehot = np.eye(10)[y]
    for _ in range(epochs):
        opt.zero_grad()
        z = clf(X)
        if loss_name == "ce":
            ce(z, y)
            g = ce.backward()
        else:                                            # MSE on softmax vs one-hot
            mse(sm(z), onehot)
            g = sm.backward(mse.backward() / len(X))
        clf.backward(g)
        opt.step()
    return float(np.mean(np.argmax(clf(Xt), 1) == yt))


def test_loss_2_mse_trains_a_classifier_nearly_as_well_as_cross_entropy():
    sep = 0.6                                           # overlapping classes: not trivial
    X, y = blobs(1000, seed=3, sep=sep)
    means = sep * np.random.default_rng(3).standard_normal((10, 20))   # blobs' means
    rng = np.random.default_rng(4)
    yt = rng.integers(0, 10, 2000)                      # a fresh test set
    Xt = means[yt] + rng.standard_normal((2000, 20))
    acc_ce = train_softmax_linear("ce", X, y, Xt, yt)
    acc_mse = train_softmax_linear("mse", X, y, Xt, yt, lr=2.0)
    assert acc_ce > 0.75 and acc_mse > 0.7              # chance is 0.10
    assert acc_mse > acc_ce - 0.05                      # MSE: adequate, CE a bit better
    assert acc_ce >= acc_mse


def test_loss_4_mse_l1_on_video_tensors_and_the_gaussian_nll():
    rng = np.random.default_rng(5)
    # a batch of 2 videos (N, C, F, H, W) = (2, 3, 10, 32, 32), as in the paper
    x = rng.random((2, 3, 10, 32, 32))
    recon = x + 0.1 * rng.standard_normal(x.shape)
    mse, l1 = nn.MSELoss(), nn.L1Loss()
    m = mse(recon, x)
    assert m.shape == () and m == pytest.approx(np.mean((recon - x) ** 2), rel=1e-12)
    assert l1(recon, x) == pytest.approx(np.mean(np.abs(recon - x)), rel=1e-12)
    K = x.size
    # Gaussian NLL of x under N(recon, s^2), summed: K/(2 s^2) * MSE + K/2 log(2 pi s^2)
    from scipy import stats
    for s in (0.1, 1.0):
        nll = -stats.norm.logpdf(x, loc=recon, scale=s).sum()
        assert nll == pytest.approx(K / (2 * s * s) * m + K / 2 * np.log(2 * np.pi * s * s),
                                    rel=1e-10)
    # Laplace NLL with scale b: K/b * L1 + K log(2b)
    lap = -stats.laplace.logpdf(x, loc=recon, scale=0.5).sum()
    assert lap == pytest.approx(K / 0.5 * l1(recon, x) + K * np.log(1.0), rel=1e-10)
    # the gradients agree up to the constant factor: d NLL/d recon = K/(2 s^2) dMSE/d recon
    g = mse.backward()
    np.testing.assert_allclose(K / 2 * g, recon - x, rtol=1e-10)    # s = 1
    small = rng.standard_normal((1, 2, 2, 2, 3))
    check_loss(nn.MSELoss(), small, rng.standard_normal(small.shape))
    check_loss(nn.L1Loss(), small, rng.standard_normal(small.shape))


# -- frame ---------------------------------------------------------------------------------
def test_frame_5_backward_of_a_vector_is_a_vector_jacobian_product():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3))
    t = np.array([0, 2, 1, 1])
    crit = nn.CrossEntropyLoss(reduction="none")
    loss = crit(x, t)
    assert loss.shape == (4,)
    with pytest.raises(ValueError, match="pass its upstream gradient v"):
        crit.backward()                                  # no implicit v for a vector
    v = rng.standard_normal(4)
    crit(x, t)                                           # the failed backward used the call
    g = crit.backward(v)

    def scalar():                                        # <v, loss(x)>
        return float(v @ nn.CrossEntropyLoss(reduction="none")(x, t))

    np.testing.assert_allclose(g, numeric_gradient(scalar, x), rtol=1e-8, atol=1e-10)
    # the same for any module: module.backward(v) is the gradient of <v, y>
    sm = nn.Softmax(dim=1)
    V = rng.standard_normal((4, 3))
    sm(x)
    gs = sm.backward(V)
    num = numeric_gradient(lambda: float(np.sum(V * nn.Softmax(dim=1)(x))), x)
    np.testing.assert_allclose(gs, num, rtol=1e-8, atol=1e-10)
    # different v, different "gradients": the choice is the caller's, hence the rule
    crit(x, t), crit(x, t)                               # one call per backward
    assert not np.allclose(crit.backward(np.ones(4)), crit.backward(v))
    check_module(nn.Softmax(dim=1), x)


# -- reg -----------------------------------------------------------------------------------
def exam_dropout(x, p, training, rng):
    """The paper's code, verbatim in NumPy (with the bug on line [7])."""
    mask = (rng.random(x.shape) < 1 - p).astype(x.dtype)
    if training:
        return (mask * x) / (1 - p)
    else:
        return mask * x


def test_reg_2_dropout_is_the_identity_in_eval():
    x = np.random.default_rng(7).standard_normal((500, 40))
    p = 0.3
    refdl.manual_seed(7)
    d = nn.Dropout(p)
    mean_train = np.mean([d(x) for _ in range(200)], axis=0)
    assert np.abs(mean_train - x).mean() < 0.05          # E[y] = x in training
    d.eval()
    assert np.array_equal(d(x), x) and np.array_equal(d(x), d(x))   # eval: exactly x
    rng = np.random.default_rng(8)
    bug1, bug2 = (exam_dropout(x, p, False, rng) for _ in range(2))
    assert not np.array_equal(bug1, bug2)                # random at test time
    xp = 1 + np.abs(x)
    mean_bug = np.mean([exam_dropout(xp, p, False, rng) for _ in range(200)], axis=0)
    np.testing.assert_allclose(np.mean(mean_bug / xp), 1 - p, rtol=0.01)   # and biased


def test_reg_3_dropout_on_logits():
    rng = np.random.default_rng(9)
    N, C, p = 4000, 10, 0.5
    y = rng.integers(0, C, N)
    logits = rng.standard_normal((N, C))
    logits[np.arange(N), y] += 3.0                      # a decent classifier
    refdl.manual_seed(9)
    drop, ce = nn.Dropout(p), nn.CrossEntropyLoss()
    z = drop(logits)
    true_dropped = z[np.arange(N), y] == 0
    assert true_dropped.mean() == pytest.approx(p, abs=0.03)
    # a dropped logit receives exactly zero gradient: no signal to raise the true class
    ce(z, y)
    g = drop.backward(ce.backward())
    assert np.all(g[np.arange(N), y][true_dropped] == 0)
    # the prediction flips for many samples, unlike the clean logits
    acc_clean = np.mean(np.argmax(logits, 1) == y)
    acc_drop = np.mean(np.argmax(z, 1) == y)
    assert acc_clean > 0.9 and acc_drop < acc_clean - 0.3
    # the same dropout on a hidden layer of a wider representation costs far less: the
    # class evidence is spread over many units (averaging 64 noisy copies of the logits)
    H = np.repeat(logits, 64, axis=1) + rng.standard_normal((N, C * 64))
    Hd = drop(H)
    acc_hidden = np.mean(np.argmax(Hd.reshape(N, C, 64).mean(2), 1) == y)
    assert acc_hidden > acc_clean - 0.05
