"""Optimisers, gradient clipping and penalties.

Each optimiser is compared with an independent, straightforward transcription of PyTorch's
documented pseudo-code (written here in float64 on plain arrays), with hand-computed first
steps, and with itself across a state_dict round trip (bit-identical continuation).
"""
import math

import numpy as np
import pytest

import refdl
from refdl import optim
from refdl.gradcheck import check_function
from refdl.nn import Linear, Sequential
from refdl.nn.module import Parameter
from refdl.optim import SGD, Adagrad, Adam, AdamW, RMSprop

# ---------------------------------------------------------------------------------------
# a small smooth non-convex objective: f(theta) = 1/2 theta^T A theta - b^T theta + sum sin(theta)

RNG = np.random.default_rng(0)
_M = RNG.standard_normal((5, 5))
A = _M @ _M.T / 5 + np.eye(5)
B = RNG.standard_normal(5)
THETA0 = RNG.standard_normal(5)


def grad_f(theta):
    return A @ theta - B + np.cos(theta)


def run(opt_cls, steps=7, theta0=THETA0, dtype=np.float64, **kw):
    p = Parameter(np.array(theta0, dtype=dtype))
    opt = opt_cls([p], **kw)
    traj = []
    for _ in range(steps):
        opt.zero_grad()
        p.grad += grad_f(p.data.astype(np.float64)).astype(dtype)
        opt.step()
        traj.append(p.data.copy())
    return np.array(traj)


# -- independent references: the pseudo-code line by line --------------------------------

def ref_sgd(steps, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
            maximize=False):
    theta, b, out = THETA0.copy(), None, []
    for t in range(1, steps + 1):
        g = grad_f(theta)
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * theta
        if momentum != 0:
            b = g.copy() if t == 1 else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        theta = theta - lr * g
        out.append(theta)
    return np.array(out)


def ref_adam(steps, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
             decoupled=False, maximize=False):
    b1, b2 = betas
    theta = THETA0.copy()
    m = np.zeros(5)
    v = np.zeros(5)
    vmax = np.zeros(5)
    out = []
    for t in range(1, steps + 1):
        g = grad_f(theta)
        if maximize:
            g = -g
        if decoupled:
            theta = theta - lr * weight_decay * theta
        elif weight_decay != 0:
            g = g + weight_decay * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        mhat = m / (1 - b1 ** t)
        if amsgrad:
            vmax = np.maximum(vmax, v)
            vhat = vmax / (1 - b2 ** t)
        else:
            vhat = v / (1 - b2 ** t)
        theta = theta - lr * mhat / (np.sqrt(vhat) + eps)
        out.append(theta)
    return np.array(out)


def ref_rmsprop(steps, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                centered=False):
    theta = THETA0.copy()
    v = np.zeros(5)
    b = np.zeros(5)
    gave = np.zeros(5)
    out = []
    for _ in range(steps):
        g = grad_f(theta)
        if weight_decay != 0:
            g = g + weight_decay * theta
        v = alpha * v + (1 - alpha) * g ** 2
        vt = v
        if centered:
            gave = alpha * gave + (1 - alpha) * g
            vt = vt - gave ** 2
        if momentum > 0:
            b = momentum * b + g / (np.sqrt(vt) + eps)
            theta = theta - lr * b
        else:
            theta = theta - lr * g / (np.sqrt(vt) + eps)
        out.append(theta)
    return np.array(out)


def ref_adagrad(steps, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                eps=1e-10):
    theta = THETA0.copy()
    s = np.full(5, float(initial_accumulator_value))
    out = []
    for t in range(1, steps + 1):
        g = grad_f(theta)
        clr = lr / (1 + (t - 1) * lr_decay)
        if weight_decay != 0:
            g = g + weight_decay * theta
        s = s + g ** 2
        theta = theta - clr * g / (np.sqrt(s) + eps)
        out.append(theta)
    return np.array(out)


CLOSE = dict(rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kw", [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.5, weight_decay=0.1),
    dict(lr=0.05, momentum=0.8, weight_decay=0.1, nesterov=True),
    dict(lr=0.01, weight_decay=0.2, maximize=True),
])
def test_sgd_matches_pseudocode(kw):
    np.testing.assert_allclose(run(SGD, **kw), ref_sgd(7, **kw), **CLOSE)


@pytest.mark.parametrize("kw", [
    dict(), dict(lr=0.1), dict(lr=0.1, betas=(0.5, 0.9)), dict(lr=0.1, weight_decay=0.3),
    dict(lr=0.1, amsgrad=True), dict(lr=0.1, amsgrad=True, weight_decay=0.1, eps=1e-3),
    dict(lr=0.05, maximize=True),
])
def test_adam_matches_pseudocode(kw):
    np.testing.assert_allclose(run(Adam, **kw), ref_adam(7, **kw), **CLOSE)


@pytest.mark.parametrize("kw", [
    dict(lr=0.1), dict(lr=0.1, weight_decay=0.3), dict(lr=0.1, weight_decay=0.0),
    dict(lr=0.1, amsgrad=True, weight_decay=0.2),
])
def test_adamw_matches_pseudocode(kw):
    ref_kw = dict(kw)
    ref_kw.setdefault("weight_decay", 1e-2)
    np.testing.assert_allclose(run(AdamW, **kw), ref_adam(7, decoupled=True, **ref_kw), **CLOSE)


@pytest.mark.parametrize("kw", [
    dict(), dict(lr=0.05, alpha=0.9), dict(lr=0.05, weight_decay=0.1),
    dict(lr=0.02, momentum=0.9), dict(lr=0.02, centered=True),
    dict(lr=0.02, centered=True, momentum=0.5, weight_decay=0.1, eps=1e-4),
])
def test_rmsprop_matches_pseudocode(kw):
    np.testing.assert_allclose(run(RMSprop, **kw), ref_rmsprop(7, **kw), **CLOSE)


@pytest.mark.parametrize("kw", [
    dict(), dict(lr=0.5), dict(lr=0.5, lr_decay=0.1), dict(lr=0.5, weight_decay=0.2),
    dict(lr=0.5, initial_accumulator_value=0.7, eps=1e-3),
])
def test_adagrad_matches_pseudocode(kw):
    np.testing.assert_allclose(run(Adagrad, **kw), ref_adagrad(7, **kw), **CLOSE)


# -- hand-computed first steps ------------------------------------------------------------

def _param(values, dtype=np.float64):
    p = Parameter(np.array(values, dtype=dtype))
    return p


def test_sgd_hand_computed_momentum_steps():
    p = _param([1.0, -2.0])
    opt = SGD([p], lr=0.1, momentum=0.9, dampening=0.5)
    p.grad[:] = [1.0, 2.0]
    opt.step()                                  # b1 = g1 = [1, 2]
    np.testing.assert_allclose(p.data, [0.9, -2.2], rtol=0, atol=1e-15)
    p.grad[:] = [3.0, -1.0]                     # b2 = 0.9 b1 + 0.5 g2 = [2.4, 1.3]
    opt.step()
    np.testing.assert_allclose(p.data, [0.9 - 0.24, -2.2 - 0.13], rtol=0, atol=1e-15)
    np.testing.assert_allclose(opt.state[p]["momentum_buffer"], [2.4, 1.3], atol=1e-15)


def test_sgd_hand_computed_nesterov_step():
    p = _param([1.0])
    opt = SGD([p], lr=0.1, momentum=0.9, nesterov=True)
    p.grad[:] = 2.0                             # b = 2, step g + mu b = 2 + 1.8 = 3.8
    opt.step()
    np.testing.assert_allclose(p.data, [1.0 - 0.38], atol=1e-15)


def test_adam_first_step_is_lr_times_sign():
    g = np.array([0.3, -5.0, 1e-3])
    p = _param([0.0, 0.0, 0.0])
    opt = Adam([p], lr=0.01)
    p.grad[:] = g
    opt.step()                                  # m^ = g, v^ = g^2: step lr g/(|g| + eps)
    np.testing.assert_allclose(p.data, -0.01 * g / (np.abs(g) + 1e-8), rtol=1e-14)
    assert opt.state[p]["step"] == 1
    np.testing.assert_allclose(opt.state[p]["exp_avg"], 0.1 * g, rtol=1e-14)
    np.testing.assert_allclose(opt.state[p]["exp_avg_sq"], 0.001 * g * g, rtol=1e-12)


def test_adamw_first_step_decays_then_adam():
    p = _param([2.0, -1.0])
    opt = AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad[:] = [4.0, -0.5]
    opt.step()
    expect = np.array([2.0, -1.0]) * (1 - 0.05) - 0.1 * np.array([1.0, -1.0])
    np.testing.assert_allclose(p.data, expect, rtol=1e-7)


def test_adam_l2_and_adamw_differ():
    a = run(Adam, lr=0.1, weight_decay=0.3)
    w = run(AdamW, lr=0.1, weight_decay=0.3)
    assert np.max(np.abs(a - w)) > 1e-3


def test_rmsprop_first_step():
    g = np.array([2.0, -0.1])
    p = _param([0.0, 0.0])
    RMSprop([p], lr=0.01, alpha=0.99)
    opt = RMSprop([p], lr=0.01, alpha=0.99)
    p.grad[:] = g
    opt.step()
    np.testing.assert_allclose(p.data, -0.01 * g / (0.1 * np.abs(g) + 1e-8), rtol=1e-13)


def test_rmsprop_centered_first_step():
    # v = (1-a) g^2, gave = (1-a) g, v~ = (1-a) a g^2
    g = np.array([2.0])
    p = _param([0.0])
    opt = RMSprop([p], lr=0.01, alpha=0.75, centered=True, eps=0.0)
    p.grad[:] = g
    opt.step()
    np.testing.assert_allclose(p.data, -0.01 * g / (math.sqrt(0.25 * 0.75) * 2.0), rtol=1e-14)


def test_adagrad_first_steps():
    p = _param([0.0])
    opt = Adagrad([p], lr=1.0, lr_decay=1.0, initial_accumulator_value=5.0, eps=0.0)
    p.grad[:] = 2.0                             # sum = 9, step 2/3
    opt.step()
    np.testing.assert_allclose(p.data, [-2.0 / 3], rtol=1e-15)
    p.grad[:] = 4.0                             # sum = 25, lr 1/2, step 1/2 * 4/5
    opt.step()
    np.testing.assert_allclose(p.data, [-2.0 / 3 - 0.4], rtol=1e-15)


# -- mechanics ----------------------------------------------------------------------------

@pytest.mark.parametrize("cls,kw", [(SGD, dict(lr=0.1, momentum=0.9)), (Adam, {}),
                                    (AdamW, {}), (RMSprop, dict(centered=True, momentum=0.5)),
                                    (Adagrad, {})])
def test_float32_in_place_and_dtype(cls, kw):
    p = Parameter(np.ones((3, 2), dtype=np.float32))
    data = p.data
    opt = cls([p], **kw)
    for _ in range(3):
        p.grad[...] = np.arange(6, dtype=np.float32).reshape(3, 2) - 2.5
        opt.step()
    assert p.data is data and p.data.dtype == np.float32
    for v in opt.state[p].values():
        if isinstance(v, np.ndarray):
            assert v.dtype == np.float32
    assert not np.array_equal(p.data, np.ones((3, 2)))


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW, RMSprop, Adagrad])
def test_frozen_parameters_are_skipped(cls):
    a = Parameter(np.ones(2))
    b = Parameter(np.ones(2), requires_grad=False)
    opt = cls([a, b], lr=0.1)
    a.grad[:] = 1.0
    b.grad[:] = 1.0
    opt.step()
    np.testing.assert_array_equal(b.data, [1.0, 1.0])
    assert not np.array_equal(a.data, [1.0, 1.0])


def test_param_groups_per_group_hyperparameters():
    net = Sequential(Linear(3, 4, dtype=np.float64), Linear(4, 2, dtype=np.float64))
    opt = SGD([{"params": net[0].parameters()},
               {"params": net[1].parameters(), "lr": 0.0, "momentum": 0.5}],
              lr=0.1, momentum=0.9)
    assert len(opt.param_groups) == 2
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[1]["lr"] == 0.0 and opt.param_groups[1]["momentum"] == 0.5
    assert opt.param_groups[1]["nesterov"] is False
    before = [p.data.copy() for p in net.parameters()]
    for p in net.parameters():
        p.grad[...] = 1.0
    opt.step()
    after = list(net.parameters())
    np.testing.assert_allclose(after[0].data, before[0] - 0.1)
    np.testing.assert_array_equal(after[2].data, before[2])   # lr 0 group unchanged
    opt.param_groups[1]["lr"] = 1.0                            # schedulers do this
    opt.step()
    np.testing.assert_allclose(after[2].data, before[2] - 1.5)  # b = 0.5*1 + 1


def test_zero_grad():
    p = Parameter(np.ones(3))
    p.grad[:] = 5.0
    opt = SGD([p], lr=0.1)
    opt.zero_grad()
    np.testing.assert_array_equal(p.grad, 0.0)


def test_closure_is_called_and_returned():
    p = Parameter(np.ones(1))
    opt = SGD([p], lr=0.5)

    def closure():
        p.grad[:] = 2.0
        return 42.0
    assert opt.step(closure) == 42.0
    np.testing.assert_allclose(p.data, [0.0])


def test_errors():
    p = Parameter(np.ones(2))
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="invalid lr"):
        Adam([p], lr=-1)
    with pytest.raises(ValueError, match="betas"):
        Adam([p], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="more than one parameter group"):
        SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(TypeError, match="single Parameter"):
        SGD(p, lr=0.1)
    with pytest.raises(TypeError, match="only optimize Parameters"):
        SGD([np.ones(2)], lr=0.1)


# -- checkpoints ---------------------------------------------------------------------------

def _make(cls, kw, seed=3):
    net = Sequential(Linear(4, 5, generator=np.random.default_rng(seed)),
                     Linear(5, 2, generator=np.random.default_rng(seed + 1)))
    params = list(net.parameters())
    opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.003}], **kw)
    return net, opt


def _train(net, opt, steps, seed):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = rng.standard_normal((6, 4)).astype(np.float32)
        opt.zero_grad()
        y = net(x)
        net.backward((2 * y).astype(np.float32))
        opt.step()


@pytest.mark.parametrize("cls,kw", [
    (SGD, dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    (Adam, dict(lr=0.01, amsgrad=True)), (AdamW, dict(lr=0.01)),
    (RMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
    (Adagrad, dict(lr=0.1, lr_decay=0.01))])
def test_state_dict_round_trip_is_bit_identical(cls, kw):
    net, opt = _make(cls, kw)
    _train(net, opt, 3, seed=10)
    model_sd = net.state_dict()
    opt_sd = opt.state_dict()
    assert sorted(opt_sd["state"]) == [0, 1, 2, 3]
    assert opt_sd["param_groups"][0]["params"] == [0, 1]
    assert opt_sd["param_groups"][1]["params"] == [2, 3]
    _train(net, opt, 4, seed=11)                       # continue the original
    expected = [p.data.copy() for p in net.parameters()]

    net2, opt2 = _make(cls, dict(kw, lr=123.0))        # wrong lr: must be restored
    net2.load_state_dict(model_sd)
    opt2.load_state_dict(opt_sd)
    assert opt2.param_groups[1]["lr"] == 0.003
    _train(net2, opt2, 4, seed=11)
    for a, b in zip(expected, net2.parameters()):
        np.testing.assert_array_equal(a, b.data)


def test_state_dict_is_a_copy():
    p = Parameter(np.ones(3))
    opt = Adam([p], lr=0.1)
    p.grad[:] = 1.0
    opt.step()
    sd = opt.state_dict()
    saved = sd["state"][0]["exp_avg"].copy()
    opt.step()
    np.testing.assert_array_equal(sd["state"][0]["exp_avg"], saved)
    opt2 = Adam([Parameter(np.ones(3))], lr=0.1)
    opt2.load_state_dict(sd)
    sd["state"][0]["exp_avg"][:] = 99
    assert not np.any(opt2.state_dict()["state"][0]["exp_avg"] == 99)


def test_load_state_dict_checks_groups():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(2))
    sd = SGD([a, b], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="doesn't match the size"):
        SGD([a], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="parameter groups"):
        SGD([{"params": [a]}, {"params": [b]}], lr=0.1).load_state_dict(sd)


# -- clipping ------------------------------------------------------------------------------

def _grads(*arrays):
    ps = []
    for a in arrays:
        p = Parameter(np.zeros(np.shape(a)))
        p.grad[...] = a
        ps.append(p)
    return ps


def test_clip_grad_norm_scales_to_max_norm():
    ps = _grads([3.0, 0.0], [[4.0]], [0.0, 12.0])        # total 2-norm 13
    total = optim.clip_grad_norm_(ps, max_norm=1.3)
    assert total == pytest.approx(13.0, rel=1e-15)
    coef = 1.3 / (13.0 + 1e-6)
    np.testing.assert_allclose(ps[0].grad, [3.0 * coef, 0.0], rtol=1e-15)
    np.testing.assert_allclose(ps[2].grad, [0.0, 12.0 * coef], rtol=1e-15)
    new_total = math.sqrt(sum(float(np.sum(p.grad ** 2)) for p in ps))
    assert new_total == pytest.approx(1.3, rel=1e-6)


def test_clip_grad_norm_leaves_small_gradients():
    ps = _grads([0.3, 0.4])
    total = optim.clip_grad_norm_(iter(ps), max_norm=1.0)
    assert total == pytest.approx(0.5)
    np.testing.assert_array_equal(ps[0].grad, [0.3, 0.4])


def test_clip_grad_norm_other_norms():
    ps = _grads([3.0, -7.0], [5.0])
    assert optim.clip_grad_norm_(ps, 100.0, norm_type="inf") == 7.0
    assert optim.clip_grad_norm_(ps, 100.0, norm_type=math.inf) == 7.0
    assert optim.clip_grad_norm_(ps, 100.0, norm_type=1) == pytest.approx(15.0)
    assert optim.clip_grad_norm_(ps, 100.0, norm_type=3) == pytest.approx(
        (27 + 343 + 125) ** (1 / 3))
    optim.clip_grad_norm_(ps, 1.0, norm_type=1)
    np.testing.assert_allclose(ps[0].grad, np.array([3.0, -7.0]) / (15 + 1e-6))


def test_clip_grad_norm_skips_frozen_and_accepts_one_parameter():
    a = _grads([3.0, 4.0])[0]
    b = _grads([100.0])[0]
    b.requires_grad = False
    assert optim.clip_grad_norm_([a, b], 1.0) == pytest.approx(5.0)
    np.testing.assert_array_equal(b.grad, [100.0])
    assert optim.clip_grad_norm_(a, 10.0) == pytest.approx(1.0, rel=1e-6)


def test_clip_grad_norm_huge_and_nonfinite():
    ps = _grads([1e200, 1e200], [1e200])                 # squares overflow float64
    total = optim.clip_grad_norm_(ps, 1.0)
    assert total == pytest.approx(math.sqrt(3) * 1e200, rel=1e-14)
    ps = _grads([np.inf, 1.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.clip_grad_norm_(ps, 1.0, error_if_nonfinite=True)
    assert optim.clip_grad_norm_(ps, 1.0) == math.inf
    assert ps[0].grad[1] == 0.0
    ps = _grads([np.nan, 1.0])
    assert math.isnan(optim.clip_grad_norm_(ps, 1.0))


def test_grad_norm_without_clipping():
    from refdl.nn.utils import grad_norm
    ps = _grads([3.0, 4.0], [12.0])
    assert grad_norm(ps) == pytest.approx(13.0)
    np.testing.assert_array_equal(ps[1].grad, [12.0])
    with pytest.raises(ValueError, match="norm_type"):
        grad_norm(ps, norm_type=0)


def test_clip_grad_value():
    ps = _grads([-3.0, 0.5, 2.0], [[0.1, -0.2]])
    optim.clip_grad_value_(ps, 1.0)
    np.testing.assert_array_equal(ps[0].grad, [-1.0, 0.5, 1.0])
    np.testing.assert_array_equal(ps[1].grad, [[0.1, -0.2]])
    assert optim.clip_grad_value_ is refdl.nn.utils.clip_grad_value_


# -- penalties -----------------------------------------------------------------------------

W = np.array([[0.5, -1.2, 0.3], [2.0, -0.7, 0.9]])


def test_l2_penalty_gradient_checks():
    from refdl.optim.penalty import l2_value_and_grad
    check_function(lambda w: np.array(l2_value_and_grad(w, 0.3)[0]), [W.copy()],
                   lambda g, w: g * l2_value_and_grad(w, 0.3)[1])


def test_l1_penalty_gradient_checks_away_from_zero():
    from refdl.optim.penalty import l1_value_and_grad
    check_function(lambda w: np.array(l1_value_and_grad(w, 0.7)[0]), [W.copy()],
                   lambda g, w: g * l1_value_and_grad(w, 0.7)[1])


def test_penalties_add_to_grad_and_return_value():
    p = Parameter(W.copy())
    q = Parameter(np.array([0.0, -2.0]))
    frozen = Parameter(np.array([10.0]), requires_grad=False)
    p.grad[...] = 1.0
    v = optim.l2_penalty([p, q, frozen], 0.5)
    assert v == pytest.approx(0.5 * (np.sum(W ** 2) + 4.0))
    np.testing.assert_allclose(p.grad, 1.0 + W)
    np.testing.assert_allclose(q.grad, [0.0, -2.0])
    np.testing.assert_array_equal(frozen.grad, [0.0])
    q.grad[...] = 0
    v = optim.l1_penalty([q], 0.25)
    assert v == pytest.approx(0.5)
    np.testing.assert_array_equal(q.grad, [0.0, -0.25])     # subgradient 0 at w = 0


def test_l2_penalty_equals_sgd_weight_decay():
    a = Parameter(W.copy())
    b = Parameter(W.copy())
    opt_a = SGD([a], lr=0.1, weight_decay=0.4)
    opt_b = SGD([b], lr=0.1)
    for _ in range(3):
        a.grad[...] = np.sin(a.data)
        b.grad[...] = np.sin(b.data)
        optim.l2_penalty([b], 0.2)                            # lam = wd / 2
        opt_a.step()
        opt_b.step()
        opt_a.zero_grad()
        opt_b.zero_grad()
    np.testing.assert_allclose(a.data, b.data, rtol=1e-14)


def test_penalty_errors():
    with pytest.raises(ValueError, match="lam must be >= 0"):
        optim.l1_penalty([Parameter(np.ones(1))], -1.0)
