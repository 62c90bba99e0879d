"""The bridge: refdl.nn modules driven by refdl.autograd's tape (docs/autograd-modules.md).

Every module call on Tensors records one node whose VJP is the module's own backward with
that call's caches; Parameters in free-form code send their gradient to Parameter.grad;
refdl.nn.functional runs each op through its layer. Independent values here: central
differences (refdl.gradcheck), the explicit chain rule (model.backward), untied copies of a
reused module, and the layers themselves.
"""
import copy
import difflib
import gc
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import refdl
from refdl import nn, optim
from refdl.autograd import Tensor, grad
from refdl.autograd.bridge import ModuleCall
from refdl.gradcheck import gradgradcheck, numeric_gradient, relative_error
from refdl.nn import CacheError
from refdl.nn import functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def tape_gradcheck(f, arrays, params=(), rtol=1e-6, seed=0):
    """Check the tape's gradients of ``<f(*tensors), R>`` for every input array and every
    Parameter in ``params`` against central differences (float64)."""
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    params = list(params)
    R = None

    def value():
        out = f(*[Tensor(a) for a in arrays])
        return float(np.sum(out.data * R))

    ts = [Tensor(a, requires_grad=True) for a in arrays]
    out = f(*ts)
    R = np.random.default_rng(seed).standard_normal(out.shape)
    for p in params:
        p.grad[...] = 0
    (out * Tensor(R)).sum().backward()
    checks = [(a, t.grad.data, f"input {i}") for i, (a, t) in enumerate(zip(arrays, ts))]
    checks += [(p.data, p.grad.copy(), f"param {i}") for i, p in enumerate(params)]
    for x, analytic, name in checks:
        num = numeric_gradient(value, x)
        err = float(np.max(relative_error(analytic, num), initial=0.0))
        assert err < rtol, f"{name}: max relative error {err:.3g}"


# -- one switch --------------------------------------------------------------------------------

def test_autograd_no_grad_is_refdl_no_grad():
    assert refdl.autograd.no_grad is refdl.no_grad
    assert refdl.autograd.is_grad_enabled is refdl.is_grad_enabled
    x = Tensor(rand(3), requires_grad=True)
    with refdl.no_grad():
        y = (x * 2).sum()
    assert not y.requires_grad and y.op is None


def test_a_module_called_under_no_grad_records_nothing():
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = Tensor(rand(5, 3), requires_grad=True)
    with refdl.no_grad():
        y = m(x)
    assert isinstance(y, Tensor) and not y.requires_grad and y.op is None
    assert [c.num_saved for c in m] == [0, 0, 0]
    np.testing.assert_array_equal(y.data, m.eval()(x.data))


def test_a_call_records_one_node_with_the_modules_caches():
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    y = m(Tensor(rand(5, 3), requires_grad=True))
    assert isinstance(y.op, ModuleCall) and y.op.module is m
    # inputs: x, then every Parameter's leaf
    assert [t.shape for t in y.inputs] == [(5, 3), (4, 3), (4,), (2, 4), (2,)]
    assert [t.param for t in y.inputs[1:]] == list(m.parameters())
    assert [c.num_saved for c in m] == [1, 1, 1]
    y.sum().backward()
    assert [c.num_saved for c in m] == [0, 0, 0]


# -- gradient checks of Tensor programs mixing modules and free-form ops -----------------------

def test_gradcheck_mlp_with_free_form_ops():
    refdl.manual_seed(0)
    lin1, lin2, act = nn.Linear(3, 5).double(), nn.Linear(5, 3).double(), nn.GELU()

    def f(x, s):
        h = act(lin1(x)) * s[:, None]                     # a module, broadcasting, indexing
        z = lin2(h).reshape(2, 6) @ x.reshape(6, 2)       # reshape and a matmul
        return refdl.cat([z, lin2(h)[:, :1].reshape(2, 2) ** 2], dim=1)

    tape_gradcheck(f, [rand(4, 3), rand(4, seed=1)], params=[*lin1.parameters(),
                                                              *lin2.parameters()])


@pytest.mark.parametrize("name", ["layernorm", "conv_pool", "lstm", "mha", "embedding_ce"])
def test_gradcheck_layers_on_the_tape(name):
    refdl.manual_seed(1)
    if name == "layernorm":
        m = nn.LayerNorm(4).double()
        f = lambda x: m(x * x + x) * x.sum(dim=1, keepdim=True)          # noqa: E731
        arrays = [rand(3, 4)]
    elif name == "conv_pool":
        m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).double()
        f = lambda x: m(F.pad(x, (1, 0, 0, 1))).flatten(1)               # noqa: E731
        arrays = [rand(2, 2, 5, 5)]
    elif name == "lstm":
        m = nn.LSTM(3, 4, batch_first=True).double()

        def f(x, h0):
            out, (h, c) = m(x, (h0, h0 * 0.5))
            return out.sum(dim=1) * 2 + h[0] - c[0] ** 2
        arrays = [rand(2, 5, 3), rand(1, 2, 4, seed=1) * 0.5]
    elif name == "mha":
        m = nn.MultiheadAttention(6, 2, batch_first=True).double()

        def f(x, y):
            out, w = m(x, y, y)
            return refdl.cat([out.reshape(2, -1), w.reshape(2, -1) ** 2], dim=1)
        arrays = [rand(2, 3, 6), rand(2, 4, 6, seed=1)]
    else:
        emb = nn.Embedding(7, 4).double()
        head = nn.Linear(4, 7).double()
        idx = np.array([[1, 2, 3], [4, 4, 6]])
        m = nn.ModuleList([emb, head])

        def f(scale):
            logits = head(emb(refdl.tensor(idx)) * scale)
            return F.cross_entropy(logits.view(6, 7), refdl.tensor([1, 2, 0, 6, -100, 3]),
                                   label_smoothing=0.1).reshape(1)
        arrays = [rand(4) + 2]
    tape_gradcheck(f, arrays, params=list(m.parameters()))


def test_gradgradcheck_through_module_nodes():
    """create_graph=True through Linear/Tanh/Sequential nodes (their engine formulas) mixed
    with free-form ops: Hessian-vector products against central differences."""
    refdl.manual_seed(2)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    soft = nn.Softmax(dim=1)

    def f(x):
        h = m(x)
        return soft(h * h).sum(axis=1) + (x ** 3).sum(axis=1)
    gradgradcheck(f, [rand(5, 3)])
    assert [c.num_saved for c in m] == [0, 0, 0] and soft.num_saved == 0


def test_create_graph_through_a_module_without_engine_formula_is_an_error():
    m = nn.LayerNorm(3).double()
    x = Tensor(rand(2, 3), requires_grad=True)
    with pytest.raises(RuntimeError, match="create_graph=True through LayerNorm"):
        grad((m(x) ** 3).sum(), x, create_graph=True)


# -- the same model trained both ways ----------------------------------------------------------

def _train_mlp(tape, steps=20):
    refdl.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    crit = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        x = rng.standard_normal((8, 6)).astype(np.float32)
        y = rng.integers(0, 3, 8)
        opt.zero_grad()
        if tape:
            loss = crit(model(Tensor(x, dtype=np.float32)), y)
            loss.backward()
        else:
            crit(model(x), y)
            model.backward(crit.backward())
        opt.step()
    return [p.data.copy() for p in model.parameters()]


def test_mlp_trained_both_ways_is_identical():
    explicit, tape = _train_mlp(False), _train_mlp(True)
    assert not np.array_equal(explicit[0], _fresh_mlp_weight())       # it did train
    for a, b in zip(explicit, tape):
        np.testing.assert_array_equal(a, b)


def _fresh_mlp_weight():
    refdl.manual_seed(0)
    return nn.Linear(6, 16).weight.data


class TokPos(nn.Module):
    """tok(x) + pos(arange(L)), a LayerNorm and a head: the issue's example."""

    def __init__(self, V=11, L=5, D=8):
        super().__init__()
        self.tok, self.pos = nn.Embedding(V, D), nn.Embedding(L, D)
        self.ln, self.head = nn.LayerNorm(D), nn.Linear(D, V)

    def forward(self, idx):                       # free-form: the tape runs it
        L = idx.shape[1]
        return self.head(self.ln(self.tok(idx) + self.pos(refdl.arange(L))))

    def forward_arrays(self, idx):                # the explicit path, by hand
        L = idx.shape[1]
        return self.head(self.ln(self.tok(idx) + self.pos(np.arange(L))))

    def backward_arrays(self, g):
        g = self.ln.backward(self.head.backward(g))
        self.pos.backward(g.sum(axis=0))          # the broadcast undone by hand
        self.tok.backward(g)


def _train_tokpos(tape, steps=20):
    refdl.manual_seed(3)
    model = TokPos()
    crit = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(4)
    for _ in range(steps):
        idx = rng.integers(0, 11, (4, 5))
        tgt = rng.integers(0, 11, (4 * 5,))
        opt.zero_grad()
        if tape:
            loss = crit(model(refdl.tensor(idx)).view(20, 11), tgt)
            loss.backward()
        else:
            crit(model.forward_arrays(idx).reshape(20, 11), tgt)
            model.backward_arrays(crit.backward().reshape(4, 5, 11))
        opt.step()
    return [p.data.copy() for p in model.parameters()]


def test_free_form_model_trained_both_ways_is_identical():
    for a, b in zip(_train_tokpos(False), _train_tokpos(True)):
        np.testing.assert_array_equal(a, b)


# -- one module, two independent uses ----------------------------------------------------------

def _two_branch_loss(lin1, lin2, x1, x2):
    """a = lin1(x1) and b = lin2(x2) on independent branches; the tape reaches b's node
    through a long chain, so it visits the nodes in the call order, not its reverse."""
    a = lin1(x1)
    b = lin2(x2)
    for _ in range(3):
        b = b * 1.5 + 0.1
    return (a.tanh() * 2).sum() + (b ** 2).sum()


def test_one_module_used_twice_on_independent_branches():
    refdl.manual_seed(5)
    lin = nn.Linear(3, 2).double()
    x1, x2 = Tensor(rand(4, 3), requires_grad=True), Tensor(rand(4, 3, seed=1),
                                                             requires_grad=True)
    _two_branch_loss(lin, lin, x1, x2).backward()
    # reference: two untied copies, their parameter gradients added
    c1, c2 = copy.deepcopy(lin), copy.deepcopy(lin)
    c1.zero_grad(), c2.zero_grad()
    y1, y2 = Tensor(x1.data, requires_grad=True), Tensor(x2.data, requires_grad=True)
    _two_branch_loss(c1, c2, y1, y2).backward()
    np.testing.assert_allclose(x1.grad.data, y1.grad.data, rtol=1e-13)
    np.testing.assert_allclose(x2.grad.data, y2.grad.data, rtol=1e-13)
    for p, q1, q2 in zip(lin.parameters(), c1.parameters(), c2.parameters()):
        np.testing.assert_allclose(p.grad, q1.grad + q2.grad, rtol=1e-13)
    assert lin.num_saved == 0


def test_the_tape_visits_the_first_call_first_so_caches_must_be_lifted(monkeypatch):
    """Without moving a node's caches to the top, the first-visited node (the first call)
    would take the second call's cache: the gradient would be wrong."""
    refdl.manual_seed(5)
    lin = nn.Linear(3, 2).double()
    x1, x2 = rand(4, 3), rand(4, 3, seed=1)
    t1 = Tensor(x1, requires_grad=True)
    _two_branch_loss(lin, lin, t1, Tensor(x2)).backward()
    good = lin.weight.grad.copy()
    lin.zero_grad()
    monkeypatch.setattr(ModuleCall, "_lift", lambda self: None)
    try:        # the first node's backward takes the second call's cache ...
        _two_branch_loss(lin, lin, Tensor(x1, requires_grad=True), Tensor(x2)).backward()
        broken = not np.allclose(lin.weight.grad, good)
    except CacheError:      # ... and the second finds its own dropped: wrong either way
        broken = True
    assert broken


def test_an_lstm_used_twice_on_independent_branches():
    refdl.manual_seed(15)
    lstm = nn.LSTM(3, 2).double()

    def run(m1, m2, x1, x2):
        a, (h, _) = m1(x1)
        b, _ = m2(x2)
        for _ in range(3):
            b = b * 1.5 + 0.1
        return (a.tanh() * 2).sum() + (b ** 2).sum() + h.sum()
    x1, x2 = rand(4, 2, 3), rand(5, 2, 3, seed=1)
    t1, t2 = Tensor(x1, requires_grad=True), Tensor(x2, requires_grad=True)
    run(lstm, lstm, t1, t2).backward()
    c1, c2 = copy.deepcopy(lstm).discard_saved(), copy.deepcopy(lstm).discard_saved()
    c1.zero_grad(), c2.zero_grad()
    u1, u2 = Tensor(x1, requires_grad=True), Tensor(x2, requires_grad=True)
    run(c1, c2, u1, u2).backward()
    np.testing.assert_allclose(t1.grad.data, u1.grad.data, rtol=1e-12)
    np.testing.assert_allclose(t2.grad.data, u2.grad.data, rtol=1e-12)
    for p, q1, q2 in zip(lstm.parameters(), c1.parameters(), c2.parameters()):
        np.testing.assert_allclose(p.grad, q1.grad + q2.grad, rtol=1e-12)


def test_composite_used_twice_and_a_shared_relu():
    refdl.manual_seed(6)
    block = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3)).double()
    relu = nn.ReLU()

    def f(x):
        a = relu(block(x))
        b = relu(block(x[::-1] * 0.5))
        return refdl.stack([a, b.exp()], dim=0)
    tape_gradcheck(f, [rand(4, 3)], params=list(block.parameters()))


class OldStyleScale(nn.Module):
    """A user's layer written the old way: its forward keeps its input in ``self._x``."""

    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(np.linspace(0.5, 1.5, d))

    def forward(self, x):
        self._x = x
        return x * self.w.data

    def backward(self, g):
        self.w.grad += (g * self._x).reshape(-1, self.w.data.size).sum(0)
        return g * self.w.data


def test_a_layer_keeping_one_cache_used_twice_is_an_error_not_a_silent_mix():
    """A layer that keeps one cache in attributes (a user's, written before per-call
    caches) has it overwritten by a second forward. The bridge notices (the attributes
    are not the ones its forward set) instead of mixing the two calls."""
    layer = OldStyleScale(3).double()
    x1, x2 = Tensor(rand(4, 3), requires_grad=True), Tensor(rand(4, 3, seed=1))
    with pytest.raises(CacheError, match="keeps a single cache"):
        _two_branch_loss(layer, layer, x1, x2).backward()
    once = layer(x1).sum()                    # one use is fine
    once.backward()
    np.testing.assert_allclose(layer.w.grad, x1.data.sum(0), rtol=1e-14)


# -- Parameters in free-form code --------------------------------------------------------------

class FreeLinear(nn.Module):
    def __init__(self, lin):
        super().__init__()
        self.weight, self.bias = lin.weight, lin.bias

    def forward(self, x):
        return x @ self.weight.T + self.bias


def test_parameters_in_free_form_code_fill_parameter_grad():
    refdl.manual_seed(7)
    lin = nn.Linear(3, 2).double()
    free = FreeLinear(lin)
    x = rand(5, 3)
    g = rand(5, 2, seed=1)
    (free(Tensor(x)) * Tensor(g)).sum().backward()
    gw, gb = lin.weight.grad.copy(), lin.bias.grad.copy()
    lin.zero_grad()
    lin(x)
    lin.backward(g)
    np.testing.assert_allclose(gw, lin.weight.grad, rtol=1e-13)
    np.testing.assert_allclose(gb, lin.bias.grad, rtol=1e-13)
    # autograd.grad of a Parameter sums over its uses and leaves .grad alone
    lin.zero_grad()
    out = (free(Tensor(x)) * Tensor(g)).sum() + (lin(Tensor(x)) * Tensor(g)).sum()
    (dw,) = grad(out, lin.weight)
    np.testing.assert_allclose(dw.data, 2 * gw, rtol=1e-13)
    assert not lin.weight.grad.any()


def test_tied_weight_between_a_module_and_free_form_code():
    refdl.manual_seed(8)
    emb = nn.Embedding(6, 4).double()
    idx = refdl.tensor([[0, 3, 5]])

    def f(s):
        h = emb(idx) * s
        return h @ emb.weight.T                      # weight tying, as in GPT-2
    tape_gradcheck(f, [rand(4)], params=[emb.weight])


# -- multiple inputs and outputs equal the explicit backward -----------------------------------

def test_lstm_and_mha_on_the_tape_equal_their_explicit_backward():
    refdl.manual_seed(9)
    lstm = nn.LSTM(3, 4).double()
    x, h0, c0 = rand(5, 2, 3), rand(1, 2, 4, seed=1), rand(1, 2, 4, seed=2)
    ts = [Tensor(a, requires_grad=True) for a in (x, h0, c0)]
    out, (h, c) = lstm(ts[0], (ts[1], ts[2]))
    ((out ** 2).sum() + (h * 3).sum() + (c ** 3).sum()).backward()
    tape = [t.grad.data for t in ts] + [p.grad.copy() for p in lstm.parameters()]
    lstm.zero_grad()
    o, (hn, cn) = lstm(x, (h0, c0))
    explicit = list(lstm.backward(2 * o, 3 * np.ones_like(hn), 3 * cn ** 2))
    explicit += [p.grad.copy() for p in lstm.parameters()]
    for a, b in zip(tape, explicit):
        np.testing.assert_array_equal(a, b)

    mha = nn.MultiheadAttention(8, 2, batch_first=True).double()
    q = Tensor(rand(2, 3, 8), requires_grad=True)
    o, w = mha(q, q, q)                               # self-attention: three uses of q
    ((o ** 2).sum() + (w * w).sum()).backward()
    o2, w2 = mha(q.data, q.data, q.data)
    dq, dk, dv = mha.backward(2 * o2, 2 * w2)
    np.testing.assert_allclose(q.grad.data, dq + dk + dv, rtol=1e-13)


# -- nn.functional against the layers, bit for bit ---------------------------------------------

def _compare_to_layer(fn, layer, inputs, weights=(), n_grad=None):
    """fn(*Tensors) and layer(*arrays): same output, same input and weight gradients
    (the first ``n_grad`` inputs require grad; default all floating ones)."""
    n_grad = len(inputs) if n_grad is None else n_grad
    ts = [Tensor(a, requires_grad=i < n_grad)
          if np.issubdtype(np.asarray(a).dtype, np.floating) else refdl.tensor(a)
          for i, a in enumerate(inputs)]
    out = fn(*ts)
    y = layer(*inputs)
    np.testing.assert_array_equal(out.data, y)
    g = rand(*np.shape(y), seed=11) if np.ndim(y) else np.float64(1.5)
    out.backward(g)
    tape_w = [w.grad.copy() for w in weights]
    for w in weights:
        w.grad[...] = 0
    dx = layer.backward(g)
    dx = dx if isinstance(dx, tuple) else (dx,)
    for t, d in zip(ts, dx):
        if t.requires_grad:
            np.testing.assert_array_equal(t.grad.data, d)
    for a, w in zip(tape_w, weights):
        np.testing.assert_array_equal(a, w.grad)


def test_functional_activations_and_losses_equal_their_layers():
    x, t = rand(4, 5), rand(4, 5, seed=1)
    for fn, layer in [(F.relu, nn.ReLU()), (F.gelu, nn.GELU()), (F.silu, nn.SiLU()),
                      (F.tanh, nn.Tanh()), (F.sigmoid, nn.Sigmoid()),
                      (lambda a: F.gelu(a, approximate="tanh"), nn.GELU("tanh")),
                      (lambda a: F.softmax(a, dim=0), nn.Softmax(dim=0)),
                      (lambda a: F.log_softmax(a, dim=-1), nn.LogSoftmax(dim=-1))]:
        _compare_to_layer(fn, layer, [x])
    _compare_to_layer(F.mse_loss, nn.MSELoss(), [x, t], n_grad=1)
    _compare_to_layer(lambda a, b: F.l1_loss(a, b, reduction="sum"),
                      nn.L1Loss(reduction="sum"), [x, t], n_grad=1)
    _compare_to_layer(F.binary_cross_entropy_with_logits, nn.BCEWithLogitsLoss(),
                      [x, (t > 0).astype(np.float64)], n_grad=1)
    y = np.array([0, 4, -1, 2])
    _compare_to_layer(lambda a, b: F.cross_entropy(a, b, ignore_index=-1,
                                                   label_smoothing=0.2),
                      nn.CrossEntropyLoss(ignore_index=-1, label_smoothing=0.2), [x, y])
    _compare_to_layer(lambda a, b: F.cross_entropy(a, b, reduction="none"),
                      nn.CrossEntropyLoss(reduction="none"), [x, np.array([0, 1, 2, 3])])
    _compare_to_layer(lambda a, b: F.nll_loss(a, b), nn.NLLLoss(),
                      [x, np.array([0, 1, 2, 3])])
    # on arrays: the layer's forward, as an array
    np.testing.assert_array_equal(F.relu(x), nn.ReLU()(x))


def test_functional_layers_with_weights_equal_their_layers():
    refdl.manual_seed(12)
    lin = nn.Linear(5, 3).double()
    _compare_to_layer(lambda a: F.linear(a, lin.weight, lin.bias), lin, [rand(4, 5)],
                      [lin.weight, lin.bias])
    conv = nn.Conv2d(2, 4, 3, stride=2, padding=1).double()
    _compare_to_layer(lambda a: F.conv2d(a, conv.weight, conv.bias, stride=2, padding=1),
                      conv, [rand(2, 2, 7, 6)], [conv.weight, conv.bias])
    conv1 = nn.Conv1d(2, 3, 3, dilation=2).double()
    _compare_to_layer(lambda a: F.conv1d(a, conv1.weight, conv1.bias, dilation=2),
                      conv1, [rand(2, 2, 9)], [conv1.weight, conv1.bias])
    ln = nn.LayerNorm(5).double()
    ln.weight.data[...] = rand(5, seed=3)
    _compare_to_layer(lambda a: F.layer_norm(a, (5,), ln.weight, ln.bias), ln,
                      [rand(3, 5)], [ln.weight, ln.bias])
    emb = nn.Embedding(6, 3).double()
    _compare_to_layer(lambda i: F.embedding(i, emb.weight), emb,
                      [np.array([[0, 5], [5, 2]])], [emb.weight])
    _compare_to_layer(lambda a: F.max_pool2d(a, 2), nn.MaxPool2d(2), [rand(1, 2, 4, 6)])
    _compare_to_layer(lambda a: F.avg_pool2d(a, 3, stride=1, padding=1),
                      nn.AvgPool2d(3, stride=1, padding=1), [rand(1, 2, 4, 5)])


def test_functional_weights_given_as_tensors_get_their_gradient():
    W, b = rand(3, 4), rand(3, seed=1)
    tape_gradcheck(lambda x, w, c: F.linear(x, w * 2, c), [rand(5, 4, seed=2), W, b])
    tape_gradcheck(lambda x, g: F.layer_norm(x, 4, weight=g), [rand(3, 4), rand(4, seed=3)])


def test_functional_dropout_and_attention_draw_like_their_layers():
    x = rand(4, 6)
    refdl.manual_seed(13)
    y = nn.Dropout(0.3)(x)
    refdl.manual_seed(13)
    np.testing.assert_array_equal(F.dropout(Tensor(x), 0.3).data, y)
    assert F.dropout(Tensor(x), 0.3, training=False).data is not None
    np.testing.assert_array_equal(F.dropout(Tensor(x), 0.3, training=False).data, x)
    q, k, v = rand(2, 3, 4), rand(2, 5, 4, seed=1), rand(2, 5, 4, seed=2)
    mask = np.tril(np.ones((3, 5), dtype=bool))
    layer = nn.ScaledDotProductAttention(dropout=0.25)
    refdl.manual_seed(14)
    ref = layer(q, k, v, attn_mask=mask)
    refdl.manual_seed(14)
    ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ts, attn_mask=mask, dropout_p=0.25)
    np.testing.assert_array_equal(out.data, ref)
    g = rand(*ref.shape, seed=3)
    out.backward(g)
    for t, d in zip(ts, layer.backward(g)):
        np.testing.assert_array_equal(t.grad.data, d)
    tape_gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True),
                   [q, rand(2, 3, 4, seed=4), rand(2, 3, 4, seed=5)])


def test_pad_and_tensor_methods():
    tape_gradcheck(lambda x: F.pad(x, (1, 2, 0, 1), value=3.0), [rand(2, 3, 4)])
    np.testing.assert_array_equal(F.pad(np.ones((1, 2)), (1, 0)), [[0, 1, 1]])

    def f(x):
        a, b = x.chunk(2, dim=-1)
        c = a.masked_fill(np.eye(3, 2, dtype=bool), -1.0) + b.permute(1, 0).transpose(0, 1)
        d = refdl.cat(x.split([1, 3], dim=1), dim=1).view(3, 2, 2).mean(dim=2)
        return c * d + x.var(dim=1, keepdim=True) + x.softmax(dim=0)[:, :2] + \
            refdl.tril(x[:, 1:3].contiguous())
    tape_gradcheck(f, [rand(3, 4)])
    x = Tensor(rand(3, 4))
    assert x.size() == (3, 4) and x.size(1) == 4 and x.dim() == 2
    np.testing.assert_allclose(x.var(dim=0).data, np.var(x.data, axis=0, ddof=1))


def test_creation_helpers_follow_pytorch_dtypes():
    assert refdl.tensor([1, 2]).dtype == np.int64
    assert refdl.tensor([1.0]).dtype == np.float32
    assert refdl.arange(4).dtype == np.int64 and refdl.zeros(2, 3).shape == (2, 3)
    np.testing.assert_array_equal(refdl.tril(refdl.ones(3, 3)).data, np.tril(np.ones((3, 3))))
    refdl.manual_seed(0)
    probs = np.array([[0.0, 1.0, 0.0], [0.2, 0.0, 0.8]])
    draws = refdl.multinomial(probs, 2000, replacement=True).data
    assert set(draws[0]) == {1} and set(draws[1]) <= {0, 2}
    assert abs((draws[1] == 2).mean() - 0.8) < 0.05        # 4.5 standard deviations


# -- caches owned by the tape ------------------------------------------------------------------

def test_a_dropped_graph_takes_its_caches_with_it():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU()).double()
    y = m(Tensor(rand(2, 3)))
    assert [c.num_saved for c in m] == [1, 1]
    del y
    gc.collect()
    assert [c.num_saved for c in m] == [0, 0]


def test_eval_mode_records_a_node_like_pytorch():
    m = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5)).double().eval()
    x = Tensor(rand(2, 3), requires_grad=True)
    y = m(x)
    y.sum().backward()
    np.testing.assert_array_equal(y.data, m(x.data))            # dropout is the identity
    np.testing.assert_allclose(x.grad.data, np.ones((2, 4)) @ m[0].weight.data, rtol=1e-13)


def test_a_live_validation_graph_does_not_block_the_optimiser():
    """Tape-owned caches are never ambiguous: a forward whose graph is alive (a validation
    loss kept for printing) does not stop the step; the explicit path still does."""
    m = nn.Linear(3, 2).double()
    opt = optim.SGD(m.parameters(), lr=0.1)
    val = m(Tensor(rand(2, 3)))                       # kept alive, never backpropagated
    m(Tensor(rand(2, 3), requires_grad=True)).sum().backward()
    opt.step()
    assert m.num_saved == 1 and val.requires_grad
    m.discard_saved()
    m(rand(2, 3))                                     # an explicit forward left pending
    with pytest.raises(CacheError):
        opt.step()


def test_retain_graph_through_a_module_node():
    m = nn.Sequential(nn.Linear(3, 2), nn.Tanh()).double()
    x = Tensor(rand(4, 3), requires_grad=True)
    loss = (m(x) ** 2).sum()
    loss.backward(retain_graph=True)
    first = (x.grad.data.copy(), m[0].weight.grad.copy())
    loss.backward()
    np.testing.assert_allclose(x.grad.data, 2 * first[0], rtol=1e-13)
    np.testing.assert_allclose(m[0].weight.grad, 2 * first[1], rtol=1e-13)
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_a_loss_target_that_requires_grad_is_refused():
    with pytest.raises(RuntimeError, match="differentiates its input only"):
        F.mse_loss(Tensor(rand(3), requires_grad=True),
                   Tensor(rand(3), requires_grad=True)).backward()


# -- the port ----------------------------------------------------------------------------------

def test_port_gpt_differs_from_the_pytorch_script_only_in_names():
    with open(os.path.join(ROOT, "examples", "port_gpt_torch.py")) as f:
        torch_src = f.read().splitlines()
    with open(os.path.join(ROOT, "examples", "port_gpt.py")) as f:
        refdl_src = f.read().splitlines()
    assert len(torch_src) == len(refdl_src)
    changed = [(a, b) for a, b in zip(torch_src, refdl_src) if a != b]
    assert changed, "the port must differ somewhere (its imports)"
    for a, b in changed:
        assert re.sub(r"\btorch\b", "refdl", a) == b, (a, b)
    assert difflib.SequenceMatcher(None, torch_src, refdl_src).ratio() > 0.9
    imports = [b for a, b in changed if b.startswith(("import", "from"))]
    assert imports == ["import refdl", "import refdl.nn as nn",
                       "from refdl.nn import functional as F"]


def test_port_gpt_trains():
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "port_gpt.py"),
                          "12"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    steps = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", run.stdout)
    assert [s[0] for s in steps] == ["0", "11"]
    first, last = float(steps[0][1]), float(steps[-1][1])
    assert last < first - 0.3, run.stdout
    assert len(run.stdout.splitlines()[-1]) > 0                    # generated some text


def _definitions(path):
    """The port's definitions (everything before the model is built), run in a namespace."""
    with open(path) as f:
        src = f.read()
    src = src[:src.index("model = GPTLanguageModel()")]
    ns = {"__file__": path}
    argv, sys.argv = sys.argv, [path, "0"]
    try:
        exec(compile(src, path, "exec"), ns)
    finally:
        sys.argv = argv
    return ns


def test_port_gpt_matches_pytorch_on_the_same_weights():
    """Interop check (skipped without PyTorch): loss and every gradient of the port equal
    the PyTorch original's on the same float64 weights and batch."""
    torch = pytest.importorskip("torch")
    T = _definitions(os.path.join(ROOT, "examples", "port_gpt_torch.py"))
    R = _definitions(os.path.join(ROOT, "examples", "port_gpt.py"))
    torch.manual_seed(0)
    tm, rm = T["GPTLanguageModel"]().double(), R["GPTLanguageModel"]().double()
    rm.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    xb, yb = T["get_batch"]("train")
    tl = tm(xb, yb)[1]
    tl.backward()
    rl = rm(refdl.tensor(xb.numpy()), refdl.tensor(yb.numpy()))[1]
    rl.backward()
    np.testing.assert_allclose(rl.item(), tl.item(), rtol=1e-13)
    tg = dict(tm.named_parameters())
    for n, p in rm.named_parameters():
        np.testing.assert_allclose(p.grad, tg[n].grad.numpy(), rtol=1e-9, atol=1e-13,
                                   err_msg=n)
