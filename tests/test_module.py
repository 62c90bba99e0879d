"""The Module API: registration, traversal, modes, state_dict, dtype, errors."""
import numpy as np
import pytest

import refdl
from refdl import nn
from refdl.gradcheck import GradcheckError, check_function, check_module


def make():
    refdl.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Identity(), nn.Linear(4, 2))


def test_registration_order_and_names():
    m = make()
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [type(c).__name__ for c in m.children()] == ["Linear", "Identity", "Linear"]
    assert len(list(m.modules())) == 4
    assert m.num_parameters() == 3 * 4 + 4 + 4 * 2 + 2


def test_train_eval_chain_and_propagate():
    m = make()
    assert m.eval() is m and not any(x.training for x in m.modules())
    assert m.train() is m and all(x.training for x in m.modules())


def test_gradients_accumulate_and_zero_grad():
    m = make().to(np.float64)
    x = np.random.default_rng(0).standard_normal((5, 3))
    m(x)
    m.backward(np.ones((5, 2)))
    g1 = m[0].weight.grad.copy()
    m(x)
    m.backward(np.ones((5, 2)))
    np.testing.assert_allclose(m[0].weight.grad, 2 * g1, rtol=1e-14)
    m.zero_grad()
    assert all(np.all(p.grad == 0) for p in m.parameters())


def test_state_dict_round_trip_bit_for_bit():
    a, b = make(), nn.Sequential(nn.Linear(3, 4), nn.Identity(), nn.Linear(4, 2))
    b.load_state_dict(a.state_dict())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and va.tobytes() == vb.tobytes()


def test_load_state_dict_errors_name_the_key():
    m = make()
    sd = m.state_dict()
    del sd["0.bias"]
    sd["extra"] = np.zeros(1)
    with pytest.raises(KeyError, match=r"missing keys \['0.bias'\].*unexpected keys \['extra'\]"):
        m.load_state_dict(sd)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert missing == ["0.bias"] and unexpected == ["extra"]
    sd = m.state_dict()
    sd["2.weight"] = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"'2.weight'.*expected shape \(2, 4\), got \(3, 4\)"):
        m.load_state_dict(sd)


def test_to_dtype_returns_self_and_casts():
    m = make()
    assert m[0].weight.dtype == np.float32
    assert m.to(np.float64) is m
    assert all(p.data.dtype == np.float64 and p.grad.dtype == np.float64 for p in m.parameters())
    with pytest.raises(TypeError, match="floating dtype"):
        m.to(np.int32)


def test_manual_seed_repeats_initialisation():
    refdl.manual_seed(123)
    a = nn.Linear(5, 5).weight.data.copy()
    refdl.manual_seed(123)
    b = nn.Linear(5, 5).weight.data
    assert a.tobytes() == b.tobytes()


def test_linear_default_init_bounds():
    refdl.manual_seed(0)
    lin = nn.Linear(100, 50)
    assert np.abs(lin.weight.data).max() <= 0.1 and np.abs(lin.bias.data).max() <= 0.1
    assert np.abs(lin.weight.data).max() > 0.09


def test_linear_bad_input_messages():
    lin = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"Linear\(in_features=4.*expected input of shape \(\*, 4\), got \(2, 5\)"):
        lin(np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="floating-point input.*int64"):
        lin(np.zeros((2, 4), np.int64))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        nn.Linear(4, 3).backward(np.zeros((2, 3)))
    lin(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected grad_out of shape \(2, 3\).*got \(2, 4\)"):
        lin.backward(np.zeros((2, 4), np.float32))


@pytest.mark.parametrize("shape", [(5, 3), (2, 4, 3), (3,)])
def test_linear_gradcheck(shape):
    x = np.random.default_rng(1).standard_normal(shape)
    res = check_module(nn.Linear(3, 4), x)
    assert res.max_rel_error < 1e-7


def test_linear_no_bias_and_frozen_weight():
    lin = nn.Linear(3, 2, bias=False)
    assert lin.bias is None and [n for n, _ in lin.named_parameters()] == ["weight"]
    check_module(lin, np.random.default_rng(2).standard_normal((4, 3)))


def test_flatten_unflatten_gradcheck():
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2))
    check_module(nn.Flatten(), x)
    check_module(nn.Unflatten(1, (3, 4)), x.reshape(2, 12))
    assert nn.Flatten()(x).shape == (2, 12)
    assert nn.Flatten(0, 1)(x).shape == (6, 2, 2)


def test_gradcheck_catches_a_wrong_backward():
    class Bad(nn.Linear):
        def backward(self, g):
            out = super().backward(g)
            self.weight.grad *= 1.001       # a 0.1% error
            return out

    with pytest.raises(GradcheckError, match="FAIL weight"):
        check_module(Bad(3, 2), np.random.default_rng(0).standard_normal((4, 3)))


def test_gradcheck_reports_kink_not_failure():
    def relu(x):
        return np.maximum(x, 0)

    def vjp(g, x):
        return g * (x > 0)

    x = np.array([-1.0, 0.0, 2.0])      # 0.0 is exactly on the kink
    res = check_function(relu, [x], vjp)
    assert res.passed
    assert res.tensors[0].kinks and res.tensors[0].kinks[0][0] == (1,)


def test_gradcheck_flags_non_accumulating_backward():
    class Overwrites(nn.Linear):
        def backward(self, g):
            self.weight.grad[...] = 0
            self.bias.grad[...] = 0
            return super().backward(g)

    with pytest.raises(GradcheckError, match="does not accumulate"):
        check_module(Overwrites(3, 2), np.random.default_rng(0).standard_normal((4, 3)))


def test_summary_returns_rows():
    res = refdl.summary(make(), (2, 3), print_fn=None)
    assert [r["output_shape"] for r in res["rows"]] == [(2, 2), (2, 4), (2, 4), (2, 2)]
    assert [r["params"] for r in res["rows"]] == [0, 16, 0, 10]
    assert res["trainable_params"] == 26


def test_gradcheck_kink_within_the_step_is_recognised_and_a_wrong_slope_still_fails():
    def f(x):
        return 3 * np.maximum(x, 0)

    x = np.array([0.5, 5e-5, -5e-5, -1.0])      # two entries within 2h = 2e-4 of the kink
    res = check_function(f, [x], lambda g, x: 3 * g * (x > 0))
    assert res.passed and sorted(k[0] for k in res.tensors[0].kinks) == [(1,), (2,)]
    with pytest.raises(GradcheckError, match=r"FAIL input 0"):
        check_function(f, [x], lambda g, x: 3.001 * g * (x > 0))


def test_base_module_forward_and_backward_are_abstract():
    m = nn.Module()
    with pytest.raises(NotImplementedError, match="Module does not implement forward"):
        m(np.zeros(2))
    with pytest.raises(NotImplementedError, match="Module does not implement backward"):
        m.backward(np.zeros(2))
