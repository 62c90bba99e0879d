"""Per-call caches: modules used several times, inference without caches, and the rule
for the one ambiguous case (an extra training-mode forward before a backward).

The rule (Module's docstring, docs/caches.md): each training-mode forward records one
cache; backward consumes the newest (last in, first out); eval() and refdl.no_grad()
record nothing; a cache left behind by a backward is reported by the optimiser's step
(CacheError) and by the module's next training-mode forward (StaleCacheWarning).
"""
import contextlib
import threading
import tracemalloc
import warnings

import numpy as np
import pytest

import refdl
from refdl import nn, optim
from refdl.gradcheck import check_module
from refdl.nn import CacheError, StaleCacheWarning


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# -- one module object used several times -------------------------------------------------

class ReusedReLUBlock(nn.Module):
    """relu(b(relu(a(x)))) with ONE nn.ReLU, as torchvision's BasicBlock uses self.relu."""

    def __init__(self, d=5):
        super().__init__()
        self.a, self.b, self.relu = nn.Linear(d, d), nn.Linear(d, d), nn.ReLU()

    def forward(self, x):
        return self.relu(self.b(self.relu(self.a(x))))

    def backward(self, g):
        g = self.b.backward(self.relu.backward(g))       # the second use first
        return self.a.backward(self.relu.backward(g))    # then the first


class TiedAutoencoder(nn.Module):
    """x -> tanh(enc(x)) -> dec(.), with dec.weight the same Parameter as enc.weight."""

    def __init__(self, d=4):
        super().__init__()
        self.enc, self.act, self.dec = nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d)
        self.dec.weight = self.enc.weight                 # tied: one Parameter, two uses

    def forward(self, x):
        return self.dec(self.act(self.enc(x)))

    def backward(self, g):
        return self.enc.backward(self.act.backward(self.dec.backward(g)))


def brute_force_reused_block_grads(block, x, g):
    """The same network built from separate (untied) copies: the reference gradient."""
    a1, b, relu1, relu2 = block.a, block.b, nn.ReLU(), nn.ReLU()
    h = relu1(a1(x))
    y = relu2(b(h))
    dx = a1.backward(relu1.backward(b.backward(relu2.backward(g))))
    return y, dx


def test_one_relu_used_twice_passes_the_gradient_check():
    block = ReusedReLUBlock().double()
    result = check_module(block, rand(6, 5, seed=1))
    assert result.passed and block.relu.num_saved == 0
    # the reference network with two separate ReLUs gives the same numbers
    x, g = rand(6, 5, seed=2), rand(6, 5, seed=3)
    y = block(x)
    dx = block.backward(g)
    gw = block.a.weight.grad.copy()
    block.zero_grad()
    y_ref, dx_ref = brute_force_reused_block_grads(block, x, g)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(gw, block.a.weight.grad)


def test_sequential_holding_the_same_linear_twice():
    lin = nn.Linear(4, 4).double()
    net = nn.Sequential(lin, nn.Tanh(), lin)
    check_module(net, rand(3, 4, seed=4))
    # and against a brute-force: dL/dW = g2^T h + g1^T x through the two uses
    x, g = rand(3, 4, seed=5), rand(3, 4, seed=6)
    W, b = lin.weight.data, lin.bias.data
    h = np.tanh(x @ W.T + b)
    g1 = (g @ W) * (1 - h ** 2)
    net.zero_grad()
    net(x)
    dx = net.backward(g)
    np.testing.assert_allclose(lin.weight.grad, g.T @ h + g1.T @ x, rtol=1e-13)
    np.testing.assert_allclose(dx, g1 @ W, rtol=1e-13)


def test_weight_tied_autoencoder():
    ae = TiedAutoencoder().double()
    assert [n for n, _ in ae.named_parameters()] == ["enc.weight", "enc.bias", "dec.bias"]
    check_module(ae, rand(5, 4, seed=7))


def test_k_forwards_then_k_backwards_in_reverse_equal_separate_passes():
    refdl.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2)).double()
    xs = [rand(5, 3, seed=s) for s in range(3)]
    gs = [rand(5, 2, seed=10 + s) for s in range(3)]
    dx_sep, grads = [], []
    for x, g in zip(xs, gs):                               # one pass at a time
        net.zero_grad()
        net(x)
        dx_sep.append(net.backward(g))
        grads.append([p.grad.copy() for p in net.parameters()])
    net.zero_grad()
    for x in xs:                                           # three forwards ...
        net(x)
    assert [m.num_saved for m in net] == [3, 3, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dx_stack = [net.backward(g) for g in reversed(gs)][::-1]   # ... backwards reversed
    for a, b in zip(dx_stack, dx_sep):
        np.testing.assert_array_equal(a, b)
    for p, *gp in zip(net.parameters(), *grads):
        np.testing.assert_allclose(p.grad, sum(gp), rtol=1e-14)
    assert all(m.num_saved == 0 for m in net.modules())


# -- inference without caches ---------------------------------------------------------------

def mlp():
    refdl.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(),
                         nn.Linear(8, 3), nn.LogSoftmax(dim=1)).double()


def train_grads(net, x, g, extra=None):
    net.zero_grad()
    net(x)
    if extra is not None:
        extra(net)
    dx = net.backward(g)
    return dx, [p.grad.copy() for p in net.parameters()]


@pytest.mark.parametrize("how", ["no_grad", "eval", "no_grad_decorator"])
def test_validation_forward_between_forward_and_backward_changes_nothing(how):
    net = mlp()
    x, xv, g = rand(4, 6, seed=1), rand(4, 6, seed=2), rand(4, 3, seed=3)
    dx0, grads0 = train_grads(net, x, g)

    @refdl.no_grad
    def validate(m):
        return m(xv)

    def extra(m):
        if how == "no_grad":
            with refdl.no_grad():
                m(xv)
        elif how == "eval":
            m.eval()
            m(xv)
            m.train()
        else:
            validate(m)
    dx1, grads1 = train_grads(net, x, g, extra)
    np.testing.assert_array_equal(dx0, dx1)                # bit for bit
    for a, b in zip(grads0, grads1):
        np.testing.assert_array_equal(a, b)


def test_eval_and_no_grad_leave_pending_caches_untouched():
    net = mlp()
    x = rand(4, 6)
    net(x)
    before = [m._saved[-1] for m in net]
    with refdl.no_grad():
        for _ in range(5):
            net(rand(7, 6))
    net.eval()
    net(rand(2, 6))
    net.train()
    assert [m.num_saved for m in net] == [1] * 6
    assert all(m._saved[-1] is c for m, c in zip(net, before))


@pytest.mark.parametrize("mode", ["eval", "no_grad"])
def test_no_memory_growth_over_1000_inference_calls(mode):
    net = mlp()
    x = rand(16, 6)
    ctx = refdl.no_grad() if mode == "no_grad" else contextlib.nullcontext()
    if mode == "eval":
        net.eval()
    with ctx:
        net(x)
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(1000):
            net(x)
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
    assert all(m.num_saved == 0 for m in net.modules())
    # one call's output is 16*3*8 = 384 bytes; 1,000 recorded calls would hold > 1 MB
    assert grown < 64 * 1024, f"{grown} bytes kept after 1,000 {mode} calls"


def test_training_mode_forwards_do_record_one_cache_each():
    # the counterpart of the test above: without no_grad the caches pile up, one per call
    net = mlp()
    for _ in range(3):
        net(rand(2, 6))
    assert [m.num_saved for m in net] == [3] * 6


def test_backward_without_pending_forward_names_the_module():
    lin = nn.Linear(4, 3)
    with pytest.raises(CacheError, match=r"Linear\(in_features=4, out_features=3.*backward "
                                         r"called before forward.*no_grad"):
        lin.backward(np.zeros((2, 3), np.float32))
    lin.eval()
    lin(np.zeros((2, 4), np.float32))
    with pytest.raises(CacheError, match="eval"):
        lin.backward(np.zeros((2, 3), np.float32))
    lin.train()
    lin(np.zeros((2, 4), np.float32))
    lin.backward(np.zeros((2, 3), np.float32))
    with pytest.raises(CacheError, match="once per forward"):   # a second backward
        lin.backward(np.zeros((2, 3), np.float32))


def test_enable_grad_records_in_eval_mode_and_inside_no_grad():
    net = mlp().eval()
    x, g = rand(3, 6), rand(3, 3)
    with refdl.no_grad(), refdl.enable_grad():
        net(x)
    dx = net.backward(g)
    net.train()
    net(x)
    np.testing.assert_array_equal(dx, net.backward(g))    # no Dropout/BN: same function


def test_grad_mode_switches_nest_restore_and_decorate():
    assert refdl.is_grad_enabled()
    with refdl.no_grad():
        assert not refdl.is_grad_enabled()
        with refdl.enable_grad():
            assert refdl.is_grad_enabled()
        assert not refdl.is_grad_enabled()
    assert refdl.is_grad_enabled()
    with refdl.set_grad_enabled(False):
        assert not refdl.is_grad_enabled()
    assert refdl.is_grad_enabled()
    refdl.set_grad_enabled(False)                         # as a function: takes effect now
    assert not refdl.is_grad_enabled()
    refdl.set_grad_enabled(True)
    assert refdl.is_grad_enabled()

    @refdl.no_grad()
    def f():
        return refdl.is_grad_enabled()

    @refdl.no_grad
    def h():
        return refdl.is_grad_enabled()
    assert f() is False and h() is False and refdl.is_grad_enabled()
    assert f.__name__ == "f"
    with pytest.raises(TypeError, match="bool"):
        refdl.set_grad_enabled("no")
    # an exception inside restores the mode
    with pytest.raises(KeyError):
        with refdl.no_grad():
            raise KeyError
    assert refdl.is_grad_enabled()


def test_grad_mode_belongs_to_the_thread():
    seen = []
    with refdl.no_grad():
        t = threading.Thread(target=lambda: seen.append(refdl.is_grad_enabled()))
        t.start()
        t.join()
        assert not refdl.is_grad_enabled()
    assert seen == [True]


# -- the ambiguous case: never silent ---------------------------------------------------------

def test_extra_training_forward_then_step_raises_before_the_update():
    net = mlp()
    opt = optim.SGD(net.parameters(), lr=0.1)
    x, xv, g = rand(4, 6, seed=1), rand(4, 6, seed=2), rand(4, 3, seed=3)
    weights = [p.data.copy() for p in net.parameters()]
    net(x)
    net(xv)                                   # the extra forward, in training mode
    opt.zero_grad()
    net.backward(g)                           # consumes xv's cache (the newest)
    with pytest.raises(CacheError, match=r"SGD.step: .*Linear\(in_features=6.*no_grad"):
        opt.step()
    for p, w in zip(net.parameters(), weights):   # nothing was applied
        np.testing.assert_array_equal(p.data, w)


def test_extra_training_forward_then_next_forward_warns_and_discard_clears():
    net = mlp()
    x, xv, g = rand(4, 6, seed=1), rand(4, 6, seed=2), rand(4, 3, seed=3)
    net(x)
    net(xv)
    net.backward(g)
    with pytest.warns(StaleCacheWarning, match=r"Linear\(in_features=6.*no_grad"):
        net(x)
    net.discard_saved()
    assert all(m.num_saved == 0 for m in net.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net(x)
        net.backward(g)


def test_step_after_complete_backward_is_silent_and_ignores_other_models():
    a, b = mlp(), mlp()
    opt = optim.Adam(a.parameters(), lr=1e-3)
    b(rand(2, 6))                             # another model's pending forward ...
    a(rand(2, 6))
    a.backward(rand(2, 3))
    opt.step()                                # ... does not concern a's optimiser
    assert b[0].num_saved == 1


def test_the_documented_rule_is_in_module_docstring_and_docs():
    doc = nn.Module.__doc__
    for phrase in ("last in, first out", "no_grad", "eval()", "CacheError",
                   "StaleCacheWarning", "enable_grad"):
        assert phrase in doc
