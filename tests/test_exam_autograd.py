"""Exam items of topics graph, frame and viz (paper 001 Q5, Q12; paper 000 Beginner Q6 and
Intermediate Q1; paper 003 Q4(a)), computed with refdl.autograd and refdl.interpret."""
import numpy as np
import pytest

from refdl.autograd import Tensor, grad, ops
from refdl.autograd.ops import EWiseAdd, EWiseMul, EWiseSub, MatMul, PowerScalar
from refdl.gradcheck import check_function, numeric_gradient

SYMBOL = {EWiseAdd: "+", EWiseSub: "-", EWiseMul: "*"}


def symbol(node):
    op = node.op
    if isinstance(op, PowerScalar) and op.n == 2:
        return "square"
    return SYMBOL[type(op)]


# ---------------------------------------------------------------- graph (paper 001 Q5) --
def test_graph_1_scalar_graph_blanks_and_fan_out():
    x1, x2, x3 = (Tensor(np.array(v), requires_grad=True) for v in (0.7, -1.3, 2.1))
    a = x1 + x2            # blank (a)
    b = x2 * x3            # blank (b)
    c = a ** 2             # blank (c)
    d = c + b              # blank (d)
    y = d - x3             # blank (e)
    # the graph the engine recorded, read back from y: (e) consumes (d) and x3, ...
    assert y.inputs[0] is d and y.inputs[1] is x3
    assert d.inputs == (c, b) and c.inputs[0] is a and a.inputs == (x1, x2)
    assert [symbol(n) for n in (a, b, c, d, y)] == ["+", "*", "square", "+", "-"]
    assert y.item() == pytest.approx((0.7 - 1.3) ** 2 + (-1.3) * 2.1 - 2.1, rel=1e-15)
    y.backward()
    # x2 feeds (a) and (b), x3 feeds (b) and (e): their adjoints are sums over consumers
    assert x2.grad.item() == pytest.approx(2 * (0.7 - 1.3) + 2.1, rel=1e-14)
    assert x3.grad.item() == pytest.approx(-1.3 - 1.0, rel=1e-14)

    def f(v):
        return np.array((v[0] + v[1]) ** 2 + v[1] * v[2] - v[2])

    def vjp(g, v):
        t = Tensor(v, requires_grad=True)
        out = (t[0] + t[1]) ** 2 + t[1] * t[2] - t[2]
        out.backward(g)
        return t.grad.data
    check_function(f, [np.array([0.7, -1.3, 2.1])], vjp)


def _v_graph(listing, d=4, seed=0):
    """Paper 001 Q5(f): v1 = x, v2 = W, v3 = y, v4 = v1 @ v2, v5 = exp(v4),
    v6 = v4 + v3 (listing on the question's page) or v4 + v5 (the copy on the next page),
    v7 = MSE(v6, v3)."""
    r = np.random.default_rng(seed)
    v1 = Tensor(r.standard_normal(d) * 0.5, requires_grad=True)
    v2 = Tensor(r.standard_normal((d, d)) * 0.5, requires_grad=True)
    v3 = Tensor(r.standard_normal(d), requires_grad=True)
    v4 = v1 @ v2
    v5 = ops.exp(v4)
    v6 = v4 + (v3 if listing == "v4+v3" else v5)
    v7 = ops.mse(v6, v3)
    return v1, v2, v3, v4, v5, v6, v7


def _key_adjoints(listing, v):
    """The answer key's symbolic adjoints of Q5(f), with each local partial dv_j/dv_i of
    the listing evaluated as a Jacobian (0 where v_j does not use v_i)."""
    v1, v2, v3, v4, v5, v6, v7 = (t.data for t in v)
    d = v6.size
    eye = np.eye(d)
    dv7_dv6, dv7_dv3 = 2 / d * (v6 - v3), -2 / d * (v6 - v3)
    dv6_dv5 = eye if listing == "v4+v5" else 0 * eye      # v6 does not use v5 in v4+v3
    dv6_dv4, dv5_dv4 = eye, np.diag(np.exp(v4))
    b7 = 1.0
    b6 = b7 * dv7_dv6
    b5 = b6 @ dv6_dv5
    b4 = b5 @ dv5_dv4 + b6 @ dv6_dv4
    b3 = b7 * dv7_dv3
    b2 = np.outer(v1, b4)               # b4 @ dv4/dv2 as a (d, d) adjoint
    b1 = b4 @ v2.T                      # b4 @ dv4/dv1
    return {1: b1, 2: b2, 3: b3, 4: b4, 5: b5, 6: b6}


@pytest.mark.parametrize("listing", ["v4+v5", "v4+v3"])
def test_graph_2_symbolic_adjoints_both_listings(listing):
    v = _v_graph(listing)
    adj = grad(v[6], list(v[:6]), allow_unused=True)
    engine = {i + 1: (a.data if a is not None else np.zeros_like(v[i].data))
              for i, a in enumerate(adj)}
    key = _key_adjoints(listing, v)
    if listing == "v4+v5":             # the listing the key was written for: all agree
        for i in range(1, 7):
            np.testing.assert_allclose(key[i], engine[i], rtol=1e-12, atol=1e-15)
    else:
        # v3 = y also feeds v6, so v3_bar = v7_bar dv7/dv3 + v6_bar dv6/dv3; the key drops
        # the second term. Here v7 = mean(v4^2) does not depend on y at all: v3_bar = 0.
        np.testing.assert_allclose(engine[3], 0.0, atol=1e-15)
        assert np.max(np.abs(key[3])) > 0.1
        np.testing.assert_allclose(key[3] + key[6], engine[3], atol=1e-15)
        for i in (1, 2, 4, 5, 6):      # the rest agree (v5_bar = 0: v5 is unused)
            np.testing.assert_allclose(key[i], engine[i], rtol=1e-12, atol=1e-15)
    # the engine's adjoints of the leaves against central differences
    x0, W0, y0 = (t.data.copy() for t in v[:3])

    def loss():
        v4 = x0 @ W0
        v6 = v4 + (y0 if listing == "v4+v3" else np.exp(v4))
        return np.mean((v6 - y0) ** 2)
    for i, a in enumerate((x0, W0, y0)):
        np.testing.assert_allclose(engine[i + 1], numeric_gradient(loss, a), rtol=1e-7,
                                   atol=1e-9)


def test_graph_3_explicit_adjoints():
    v = _v_graph("v4+v5")
    v1, v2, v3, v4, v5, v6, v7 = (t.data for t in v)
    d = v6.size
    adj = [a.data for a in grad(v[6], list(v[:6]))]
    b6 = 2 / d * (v6 - v3)
    b4 = 2 / d * (v6 - v3) * np.exp(v4) + 2 / d * (v6 - v3)   # elementwise '*'
    np.testing.assert_allclose(adj[5], b6, rtol=1e-13)
    np.testing.assert_allclose(adj[4], b6, rtol=1e-13)          # v5_bar = v6_bar
    np.testing.assert_allclose(adj[3], b4, rtol=1e-13)
    np.testing.assert_allclose(adj[2], -b6, rtol=1e-13)
    np.testing.assert_allclose(adj[0], b4 @ v2.T, rtol=1e-13)   # v1_bar = v4_bar @ v2^T
    # v2_bar = v1^T @ v4_bar only if v1 is a ROW vector (1, d): an outer product.
    np.testing.assert_allclose(adj[1], v1.reshape(1, d).T @ b4.reshape(1, d), rtol=1e-13)
    # with v1 a 1-D array, NumPy's v1.T @ v4_bar is an inner product: a scalar, not (d, d)
    assert np.shape(v1.T @ b4) == () and adj[1].shape == (d, d)


def test_graph_4_matmul_and_mse_vjps():
    r = np.random.default_rng(1)
    A, B, G = r.standard_normal((2, 3)), r.standard_normal((3, 4)), r.standard_normal((2, 4))
    At, Bt = Tensor(A, requires_grad=True), Tensor(B, requires_grad=True)
    (At @ Bt).backward(G)
    np.testing.assert_allclose(At.grad.data, G @ B.T, rtol=1e-14)
    np.testing.assert_allclose(Bt.grad.data, A.T @ G, rtol=1e-14)

    def mm_vjp(g, a, b):
        at, bt = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
        return tuple(t.data for t in grad(at @ bt, [at, bt], g))
    check_function(lambda a, b: a @ b, [A, B], mm_vjp)
    x, y = r.standard_normal(5), r.standard_normal(5)
    xt, yt = Tensor(x, requires_grad=True), Tensor(y, requires_grad=True)
    ops.mse(xt, yt).backward()
    np.testing.assert_allclose(xt.grad.data, 2 / 5 * (x - y), rtol=1e-14)
    np.testing.assert_allclose(yt.grad.data, -2 / 5 * (x - y), rtol=1e-14)
    check_function(lambda a, b: np.mean((a - b) ** 2), [x, y],
                   lambda g, a, b: (2 / 5 * (a - b) * g, -2 / 5 * (a - b) * g))


# ---------------------------------------------------------------- frame --------------------
def test_frame_1_backward_of_a_non_scalar_needs_out_grad():
    x = Tensor(np.ones(3), requires_grad=True)
    y = x + 2
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        y.backward()
    y.backward(np.ones(3))                 # the fix: pass d loss / d y
    np.testing.assert_array_equal(x.grad.data, np.ones(3))


class Spy(ops.Op):
    """out = 3 a; records the out_grad the engine hands to gradient()."""
    seen = []

    def compute(self, a):
        return 3.0 * a

    def gradient(self, out_grad, node):
        Spy.seen.append(out_grad.data.copy())
        return out_grad * 3.0


def test_frame_2_out_grad_is_dloss_dout():
    x = Tensor(np.array([0.2, -0.5, 1.0]), requires_grad=True)
    out = Spy()(x)
    loss = (out.tanh() * np.array([1.0, 2.0, 3.0])).sum()
    (dloss_dout, dloss_dx) = grad(loss, [out, x], retain_graph=True)
    Spy.seen.clear()
    loss.backward()
    (seen,) = Spy.seen
    np.testing.assert_allclose(seen, dloss_dout.data, rtol=1e-15)     # option B
    assert not np.allclose(seen, dloss_dx.data)                       # not option A
    assert not np.allclose(seen, 3.0)                                 # not option C
    # and d loss/d out is the numeric derivative of the loss in out
    o = out.data.copy()
    num = numeric_gradient(lambda: np.sum(np.tanh(o) * [1.0, 2.0, 3.0]), o)
    np.testing.assert_allclose(seen, num, rtol=1e-8)


class NewEWiseMul(ops.Op):
    """Paper 001 Q12(b)'s 'new implementation': the gradient on raw ndarrays, re-wrapped."""

    def compute(self, a, b):
        return a * b

    def gradient(self, out_grad, node):
        lhs, rhs = node.inputs
        lhs, rhs, out_grad = lhs.data, rhs.data, out_grad.data      # np.ndarray
        return Tensor(out_grad * rhs), Tensor(out_grad * lhs)


@pytest.mark.parametrize("impl", ["old", "new"])
def test_frame_3_raw_array_gradient_loses_second_derivatives(impl):
    mul = (lambda a, b: EWiseMul()(a, b)) if impl == "old" else (lambda a, b: NewEWiseMul()(a, b))
    xv = np.array([-1.5, 0.5, 2.0])
    x = Tensor(xv, requires_grad=True)
    y = mul(mul(x, x), x).sum()                        # x^3 with two multiplications
    (g,) = grad(y, x, create_graph=True)
    np.testing.assert_allclose(g.data, 3 * xv ** 2, rtol=1e-15)   # first order: both right
    if impl == "old":
        (h,) = grad(g.sum(), x)
        np.testing.assert_allclose(h.data, 6 * xv, rtol=1e-15)    # d2(x^3)/dx2 = 6x
    else:
        assert not g.requires_grad          # no adjoint graph was built: the 2nd pass fails
        with pytest.raises(RuntimeError, match="does not require grad"):
            grad(g.sum(), x)
        # mixed with a correct op, the loss is silent: x * x^2 gives 2x instead of 6x
        x2 = Tensor(xv, requires_grad=True)
        (g2,) = grad(NewEWiseMul()(x2, x2 ** 2).sum(), x2, create_graph=True)
        np.testing.assert_allclose(g2.data, 3 * xv ** 2, rtol=1e-15)
        (h2,) = grad(g2.sum(), x2)
        np.testing.assert_allclose(h2.data, 2 * xv, rtol=1e-15)


def test_frame_4_matmul_gradient_returns_dloss_dA_and_dloss_dB():
    r = np.random.default_rng(2)
    A = Tensor(r.standard_normal((2, 3)), requires_grad=True)
    B = Tensor(r.standard_normal((3, 4)), requires_grad=True)
    out = A @ B
    G = r.standard_normal((2, 4))                       # d loss / d out for loss = <out, G>
    dA, dB = MatMul().gradient(Tensor(G), out)
    assert dA.shape == A.shape and dB.shape == B.shape   # not d out/dA: that is 2x4x2x3
    a, b = A.data.copy(), B.data.copy()
    np.testing.assert_allclose(dA.data, numeric_gradient(lambda: np.sum((a @ b) * G), a),
                               rtol=1e-8)
    np.testing.assert_allclose(dB.data, numeric_gradient(lambda: np.sum((a @ b) * G), b),
                               rtol=1e-8)


def test_frame_5_vector_backward_is_the_gradient_of_v_dot_L():
    r = np.random.default_rng(3)
    xv, v = r.standard_normal(4), r.standard_normal(3)
    W = r.standard_normal((3, 4))
    x = Tensor(xv, requires_grad=True)
    L = (Tensor(W) @ x).tanh()                          # a vector 'loss' (3,)
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        L.backward(retain_graph=True)
    L.backward(v)
    x2 = Tensor(xv, requires_grad=True)
    ((Tensor(W) @ x2).tanh() * v).sum().backward()
    np.testing.assert_allclose(x.grad.data, x2.grad.data, rtol=1e-15)
    # a different v gives a different 'gradient': without v the vector loss is ambiguous
    x3 = Tensor(xv, requires_grad=True)
    (Tensor(W) @ x3).tanh().backward(np.ones(3))
    assert not np.allclose(x3.grad.data, x.grad.data)


# ---------------------------------------------------------------- viz (paper 000 Int. Q1) --
import refdl  # noqa: E402
from refdl import nn  # noqa: E402
from refdl.gradcheck import gradgradcheck  # noqa: E402
from refdl.interpret import (cam_from_weights, grad_cam, grad_cam_pp, grad_cam_pp_weights,  # noqa: E402
                             grad_cam_weights, score_derivatives, to_engine)
from refdl.interpret import exp_score_derivatives as _exp_score  # noqa: E402
from experiments.gradcam_shapes import paper000_weights  # noqa: E402

K, H, W, C = 3, 4, 4, 3


def feature_model(act="tanh", hidden=8, depth=1, seed=0, scale=1.0):
    """A CNN-free model: input = feature maps A (N, K, h, w) (layer '0'), then an MLP head."""
    refdl.manual_seed(seed)
    layers, width = [nn.Identity(), nn.Flatten()], K * H * W
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), {"tanh": nn.Tanh, "relu": nn.ReLU}[act]()]
        width = hidden
    layers.append(nn.Linear(width, C))
    model = nn.Sequential(*layers).to(np.float64)
    model[-1].weight.data *= scale
    return model


def features(n=2, seed=1):
    return np.abs(np.random.default_rng(seed).standard_normal((n, K, H, W)))


def numeric_diagonals(f, A, h2=1e-3, h3=1e-3):
    """Central differences of the diagonal second and third derivatives of f(A)."""
    d2, d3 = np.zeros_like(A), np.zeros_like(A)
    for e in range(A.size):
        def at(t):
            B = A.copy()
            B.reshape(-1)[e] += t
            return f(B)
        d2.reshape(-1)[e] = (at(h2) - 2 * at(0) + at(-h2)) / h2 ** 2
        d3.reshape(-1)[e] = (at(2 * h3) - 2 * at(h3) + 2 * at(-h3) - at(-2 * h3)) / (2 * h3 ** 3)
    return d2, d3


def test_viz_1_gradcampp_second_third_derivatives_and_paper_formula():
    A = features(1)
    c = np.array([1])
    model = feature_model("tanh")
    head = to_engine(model[1:])
    s1, s2, s3 = score_derivatives(head, A, c)
    # the engine's exact diagonal derivatives against finite differences
    score = lambda B: model(B)[0, 1]          # noqa: E731
    n2, n3 = numeric_diagonals(score, A)
    np.testing.assert_allclose(s2, n2, rtol=0, atol=1e-6 * np.abs(s2).max())
    np.testing.assert_allclose(s3, n3, rtol=0, atol=1e-4 * np.abs(s3).max())
    gradgradcheck(lambda t: head(t)[0, 1], [A.copy()])       # Hessian-vector products
    # ReLU head: S is piecewise linear, exact == the paper's exp-score closed form
    relu_model = feature_model("relu")
    r1, r2, r3 = score_derivatives(to_engine(relu_model[1:]), A, c)
    assert np.all(r2 == 0) and np.all(r3 == 0)
    exact_w, exact_alpha = grad_cam_pp_weights(A, *_exp_score(r1, r2, r3))
    closed_w, closed_alpha = grad_cam_pp_weights(A, r1)
    np.testing.assert_allclose(exact_alpha, closed_alpha, rtol=1e-13)
    np.testing.assert_allclose(grad_cam_pp(relu_model, A, "0", c, derivatives="exact"),
                               grad_cam_pp(relu_model, A, "0", c), rtol=1e-12)
    # tanh head: the closed form is only an approximation of the exact alpha
    _, alpha_exact = grad_cam_pp_weights(A, *_exp_score(s1, s2, s3))
    _, alpha_closed = grad_cam_pp_weights(A, s1)
    assert np.max(np.abs(alpha_exact - alpha_closed)) > 1e-2
    # paper 000's formula, f = raw score, ReLU head: d2f = 0, so every alpha_k = 0 and the
    # map is identically zero; the published weights are not
    assert np.all(paper000_weights(r1, r2) == 0)
    assert np.all(cam_from_weights(A, paper000_weights(r1, r2)) == 0)
    assert np.max(cam_from_weights(A, closed_w)) > 0
    # with f = exp(S) (divided by e^S): alpha_k = sum g^3 / sum g, another ranking
    p_w = paper000_weights(*_exp_score(r1, r2, r3)[:2])
    np.testing.assert_allclose(p_w, (r1 ** 3).sum((2, 3)) / r1.sum((2, 3)), rtol=1e-12)
    assert not np.allclose(p_w / np.abs(p_w).max(), closed_w / np.abs(closed_w).max())


def test_viz_2_relu_keeps_regions_that_increase_the_score():
    # GAP + linear head: S^c = sum_k w_ck mean_ij A_k^ij + b_c (CAM), Grad-CAM a_k = w_ck/hw
    refdl.manual_seed(3)
    lin = nn.Linear(K, C).to(np.float64)

    class GAPHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Identity()
            self.fc = lin

        def forward(self, a):
            self._shape = self.features(a).shape
            return self.fc(a.mean(axis=(2, 3)))

        def backward(self, g):
            ga = self.fc.backward(g)[:, :, None, None] / (H * W)
            return self.features.backward(np.broadcast_to(ga, self._shape).copy())

    model = GAPHead()
    A = np.random.default_rng(4).standard_normal((1, K, H, W))     # signed activations
    c = 2
    cam = grad_cam(model, A, "features", c, relu=False)[0]
    S = model(A)[0, c]
    assert cam.sum() == pytest.approx(S - lin.bias.data[c], rel=1e-12)   # the map adds up
    neg, pos = cam < 0, cam > 0
    assert neg.any() and pos.any()
    for region, sign in ((neg, +1), (pos, -1)):
        B = A.copy()
        B[0][:, region] = 0.0                  # remove the activations of that region
        change = model(B)[0, c] - S
        assert sign * change > 0               # removing negative regions raises S^c
        assert change == pytest.approx(-cam[region].sum(), rel=1e-12)
    relu_cam = grad_cam(model, A, "features", c)[0]
    np.testing.assert_array_equal(relu_cam > 0, pos)     # ReLU keeps exactly those


def test_viz_3_flat_score_second_order_terms_vanish():
    A = features(1)
    rows = []
    for eps in (1.0, 1e-2, 1e-4):
        m = feature_model("relu", scale=eps)
        s1, s2, s3 = score_derivatives(to_engine(m[1:]), A, np.array([0]))
        w_pp, alpha = grad_cam_pp_weights(A, s1)
        half = 0.5 * np.maximum(s1, 0).sum((2, 3))       # GC++ with its 2nd-order terms gone
        mt = feature_model("tanh", scale=eps)
        t1, t2, _ = score_derivatives(to_engine(mt[1:]), A, np.array([0]))
        cam = grad_cam(m, A, "0", 0)
        rows.append((eps, np.abs(t2).max(), np.abs(w_pp - half).max() / np.abs(half).max(),
                     cam / cam.max()))
    # the raw second derivatives shrink with the score's sensitivity ...
    assert rows[1][1] < 2e-2 * rows[0][1] and rows[2][1] < 2e-4 * rows[0][1]
    # ... and Grad-CAM++'s weights tend to (1/2) sum ReLU(g): a first-order method
    assert rows[0][2] > 0.05 and rows[1][2] < 0.05 and rows[2][2] < 1e-3
    # while normalised Grad-CAM maps do not change at all (a scale does not matter)
    np.testing.assert_allclose(rows[2][3], rows[0][3], rtol=1e-10)


def test_viz_4_noisy_gradients_hurt_gradcampp_more():
    r = np.random.default_rng(5)
    A = np.abs(r.standard_normal((1, 8, 6, 6)))
    g = 0.3 * r.standard_normal((1, 8, 1, 1)) + 0.05 * r.standard_normal((1, 8, 6, 6))
    clean_gc = cam_from_weights(A, grad_cam_weights(g))[0].ravel()
    clean_pp = cam_from_weights(A, grad_cam_pp_weights(A, g)[0])[0].ravel()
    corr = {"gc": [], "pp": []}
    for _ in range(50):
        noisy = g + 0.3 * r.standard_normal(g.shape)
        gc = cam_from_weights(A, grad_cam_weights(noisy))[0].ravel()
        pp = cam_from_weights(A, grad_cam_pp_weights(A, noisy)[0])[0].ravel()
        corr["gc"].append(np.corrcoef(gc, clean_gc)[0, 1] if gc.std() > 0 else 0.0)
        corr["pp"].append(np.corrcoef(pp, clean_pp)[0, 1] if pp.std() > 0 else 0.0)
    gc_mean, pp_mean = np.mean(corr["gc"]), np.mean(corr["pp"])
    assert gc_mean > pp_mean
    print(f"viz-4: mean correlation with the clean map, Grad-CAM {gc_mean:.3f}, "
          f"Grad-CAM++ {pp_mean:.3f}")


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("width", [4, 32])
def test_viz_5_diagonal_hessian_of_relu_heads_is_zero(depth, width):
    A = features(2)
    idx = np.array([0, 2])
    relu = feature_model("relu", hidden=width, depth=depth, seed=depth)
    s1, s2, s3 = score_derivatives(to_engine(relu[1:]), A, idx)
    assert np.any(s1 != 0)
    assert np.all(s2 == 0) and np.all(s3 == 0)        # higher-order terms: only from exp(S)
    tanh = feature_model("tanh", hidden=width, depth=depth, seed=depth)
    t1, t2 = score_derivatives(to_engine(tanh[1:]), A, idx, order=2)
    ratio = np.abs(t2).mean() / (t1 ** 2).mean()
    print(f"viz-5: depth {depth} width {width}: tanh head mean|S''| / mean S'^2 = {ratio:.3g}")
    assert np.abs(t2).max() > 0


@pytest.fixture(scope="module")
def trained_shapes_cnn():
    """A small CNN trained on generated shapes (experiments.gradcam_shapes), ~15 s."""
    from experiments.gradcam_shapes import run_shapes_experiment
    return run_shapes_experiment(n_train=300, n_test=48, epochs=8, seed=0)


def test_trained_cnn_maps_localise_the_shapes(trained_shapes_cnn, tmp_path):
    from refdl.interpret import save_overlays
    out = trained_shapes_cnn
    t = out["table"]
    print(out["accuracy"], {k: tuple(round(v, 3) for v in vals) for k, vals in t.items()})
    assert out["accuracy"] > 0.8
    for method in ("saliency", "Grad-CAM", "Grad-CAM++ (closed form)",
                   "Grad-CAM++ (exact derivatives)"):
        assert t[method][0] > 2 * t["baseline: centre"][0] > 2 * t["baseline: random"][0]
    for method in ("Grad-CAM", "Grad-CAM++ (closed form)"):
        assert t[method][1] > t["baseline: centre"][1]          # IoU@0.5 too
    # paper 000's formula with f = S: S'' comes from the one tanh of the head only, and
    # the map is zero (a miss) for most images
    assert t["paper 000 formula, f = S"][0] < 0.5 * t["Grad-CAM"][0]
    ds = out["test"]
    cams = grad_cam(out["model"], ds.images[:4], "7", ds.labels[:4])
    path = save_overlays(tmp_path / "cams.png", ds.images[:4], cams, boxes=ds.boxes[:4])
    assert path.stat().st_size > 1000


def _mean_corr(a, b):
    r = [np.corrcoef(u, v)[0, 1] if u.std() > 0 and v.std() > 0 else 0.0
         for u, v in zip(a.reshape(len(a), -1), b.reshape(len(b), -1))]
    return float(np.mean(r))


def test_viz_4_input_noise_on_a_trained_cnn(trained_shapes_cnn):
    # the other kind of instability: noisy INPUTS of a trained CNN (global max pooling head)
    model, ds = trained_shapes_cnn["model"], trained_shapes_cnn["test"]
    x, c = ds.images, ds.labels
    gc0, pp0 = grad_cam(model, x, "7", c), grad_cam_pp(model, x, "7", c)
    r = np.random.default_rng(0)
    rows = []
    for sigma in (0.1, 0.2):
        xn = (x + sigma * r.standard_normal(x.shape)).astype(np.float32)
        rows.append((sigma, _mean_corr(grad_cam(model, xn, "7", c), gc0),
                     _mean_corr(grad_cam_pp(model, xn, "7", c), pp0)))
    print("viz-4 (input noise, trained CNN): sigma, corr Grad-CAM, corr Grad-CAM++:", rows)
    for sigma, gc, pp in rows:
        assert pp > gc          # here Grad-CAM++ is the MORE stable map
