"""Losses: gradient checks over every option combination, forward values against direct
per-sample formulas, extremes, upstream gradients, errors."""
import warnings

import numpy as np
import pytest
from scipy import special

from refdl import nn
from refdl.gradcheck import check_loss

REDUCTIONS = ["mean", "sum", "none"]
W3 = np.array([0.3, 1.0, 2.5])


def rand(*shape, seed=0, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


def reduce(l, reduction, denom=None):
    if reduction == "none":
        return l
    if reduction == "sum":
        return l.sum()
    return l.sum() / (l.size if denom is None else denom)


# -- reference implementations: one sample at a time, straight from the formulas ---------
def ref_cross_entropy(x, t, weight, ignore_index, reduction, eps, log_probs=False):
    cdim = 0 if x.ndim == 1 else 1
    C = x.shape[cdim]
    w = np.ones(C) if weight is None else weight
    xs = np.moveaxis(x, cdim, -1).reshape(-1, C)
    prob = np.issubdtype(np.asarray(t).dtype, np.floating)
    ts = np.moveaxis(t, cdim, -1).reshape(-1, C) if prob else np.asarray(t).reshape(-1)
    losses, denom = [], 0.0
    for n in range(xs.shape[0]):
        lp = xs[n] if log_probs else special.log_softmax(xs[n])
        if prob:
            tt = (1 - eps) * ts[n] + eps / C
            losses.append(-np.sum(w * tt * lp))
            denom += 1
        elif ts[n] == ignore_index:
            losses.append(0.0)
        else:
            y = ts[n]
            losses.append(-(1 - eps) * w[y] * lp[y] - eps / C * np.sum(w * lp))
            denom += w[y]
    lshape = x.shape[:cdim] + x.shape[cdim + 1:]
    return reduce(np.array(losses).reshape(lshape), reduction, denom)


def class_targets(shape, seed, ignore):
    """Class indices for an input of ``shape``; a few set to ``ignore`` when it is given."""
    cdim = 0 if len(shape) == 1 else 1
    C = shape[cdim]
    tshape = shape[:cdim] + shape[cdim + 1:]
    rng = np.random.default_rng(seed)
    t = rng.integers(0, C, size=tshape)
    if ignore is not None and t.size > 1:
        flat = t.reshape(-1)
        flat[::3] = ignore
    elif t.ndim == 0 and t == ignore:       # one unbatched target: keep it
        t = (t + 1) % C
    return t


CE_SHAPES = [(4,), (5, 3), (2, 3, 2, 2)]


@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [None, "default", "class"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_cross_entropy_index_targets(shape, reduction, weighted, ignore, eps):
    C = shape[0 if len(shape) == 1 else 1]
    w = np.linspace(0.5, 2.0, C) if weighted else None
    ignore_index = {None: -100, "default": -100, "class": 1}[ignore]
    t = class_targets(shape, 1, None if ignore is None else ignore_index)
    x = rand(*shape, seed=2, scale=1.5)
    crit = nn.CrossEntropyLoss(weight=w, ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=eps)
    out = crit(x, t)
    ref = ref_cross_entropy(x, t, w, ignore_index, reduction, eps)
    assert np.shape(out) == np.shape(ref)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-14)
    check_loss(crit, x, t)


@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_cross_entropy_probability_targets(shape, reduction, weighted, eps):
    cdim = 0 if len(shape) == 1 else 1
    C = shape[cdim]
    w = np.linspace(0.5, 2.0, C) if weighted else None
    t = special.softmax(rand(*shape, seed=3, scale=2.0), axis=cdim)
    x = rand(*shape, seed=4, scale=1.5)
    crit = nn.CrossEntropyLoss(weight=w, reduction=reduction, label_smoothing=eps)
    out = crit(x, t)
    np.testing.assert_allclose(out, ref_cross_entropy(x, t, w, -100, reduction, eps),
                               rtol=1e-12, atol=1e-14)
    check_loss(crit, x, t)


def test_cross_entropy_gradient_is_softmax_minus_onehot():
    x = rand(6, 4, seed=5)
    t = np.array([0, 3, 1, 1, 2, 0])
    crit = nn.CrossEntropyLoss(reduction="sum")
    crit(x, t)
    np.testing.assert_allclose(crit.backward(), special.softmax(x, axis=1) - np.eye(4)[t],
                               rtol=1e-13, atol=1e-15)
    # one-hot probability targets give the same loss and gradient as the indices
    crit2 = nn.CrossEntropyLoss(reduction="sum")
    np.testing.assert_allclose(crit2(x, np.eye(4)[t]), crit(x, t), rtol=1e-14)
    np.testing.assert_allclose(crit2.backward(), crit.backward(), rtol=1e-14)


def test_cross_entropy_equals_logsoftmax_then_nll():
    x = rand(5, 3, 2, seed=6)
    t = np.array([[0, 2], [1, 1], [2, -100], [0, 0], [1, 2]])
    ce = nn.CrossEntropyLoss(weight=W3)
    nll = nn.NLLLoss(weight=W3)
    ls = nn.LogSoftmax(dim=1)
    np.testing.assert_allclose(ce(x, t), nll(ls(x), t), rtol=1e-14)
    np.testing.assert_allclose(ce.backward(), ls.backward(nll.backward()), rtol=1e-12,
                               atol=1e-15)


def test_weighted_mean_divides_by_sum_of_target_weights():
    x = rand(3, 3, seed=7)
    t = np.array([0, 2, 2])
    l_none = nn.CrossEntropyLoss(weight=W3, reduction="none")(x, t)
    l_mean = nn.CrossEntropyLoss(weight=W3)(x, t)
    assert l_mean == pytest.approx(l_none.sum() / (0.3 + 2.5 + 2.5), rel=1e-14)


def test_label_smoothing_formula_by_hand():
    # unweighted: l = (1-eps)(-log p_y) + eps * mean_c(-log p_c)
    x = np.array([2.0, -1.0, 0.5])
    lp = special.log_softmax(x)
    out = nn.CrossEntropyLoss(label_smoothing=0.3)(x, np.array(0))
    assert out.shape == ()
    assert out == pytest.approx(-0.7 * lp[0] - 0.3 * lp.mean(), rel=1e-14)


# Computed by PyTorch 2.13.0 (torch.nn.CrossEntropyLoss / BCEWithLogitsLoss in float64, run
# by hand outside the test suite on exactly these inputs) to pin the conventions: weighted
# mean over the target weights, label smoothing, ignore_index, probability targets.
PT_X = np.array([[1.0, -0.5, 2.0], [0.3, 0.1, -1.2], [-2.0, 1.5, 0.0], [0.7, 0.7, 0.2]])
PT_T = np.array([2, 0, -100, 1])
PT_W = np.array([0.2, 1.0, 3.0])
PYTORCH_CE_W_LS = 0.6134795528581272       # weight=PT_W, label_smoothing=0.1, indices
PYTORCH_CE_LS = 0.7444735747362945         # label_smoothing=0.1, indices
PYTORCH_CE_W_LS_PROB = 1.587430742884201   # weight=PT_W, label_smoothing=0.1, softmax(X/2)
PYTORCH_BCEL_POS = 0.8084541661252169      # BCEWithLogitsLoss(pos_weight=PT_W), softmax(X/2)


def test_conventions_match_recorded_pytorch_values():
    P = special.softmax(PT_X / 2, axis=1)
    assert nn.CrossEntropyLoss(weight=PT_W, label_smoothing=0.1)(PT_X, PT_T) == \
        pytest.approx(PYTORCH_CE_W_LS, rel=1e-13)
    assert nn.CrossEntropyLoss(label_smoothing=0.1)(PT_X, PT_T) == \
        pytest.approx(PYTORCH_CE_LS, rel=1e-13)
    assert nn.CrossEntropyLoss(weight=PT_W, label_smoothing=0.1)(PT_X, P) == \
        pytest.approx(PYTORCH_CE_W_LS_PROB, rel=1e-13)
    assert nn.BCEWithLogitsLoss(pos_weight=PT_W)(PT_X, P) == \
        pytest.approx(PYTORCH_BCEL_POS, rel=1e-13)


@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_nll_loss(shape, reduction, weighted, ignore):
    cdim = 0 if len(shape) == 1 else 1
    C = shape[cdim]
    w = np.linspace(0.5, 2.0, C) if weighted else None
    t = class_targets(shape, 8, -100 if ignore else None)
    x = special.log_softmax(rand(*shape, seed=9), axis=cdim)
    crit = nn.NLLLoss(weight=w, reduction=reduction)
    out = crit(x, t)
    np.testing.assert_allclose(out, ref_cross_entropy(x, t, w, -100, reduction, 0.0,
                                                      log_probs=True), rtol=1e-12)
    check_loss(crit, x, t)


def test_all_targets_ignored_gives_nan_mean_and_zero_gradient():
    x = rand(3, 4, seed=10)
    t = np.full(3, -100)
    for crit in (nn.CrossEntropyLoss(), nn.NLLLoss(), nn.CrossEntropyLoss(label_smoothing=0.1)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = crit(x, t)
            g = crit.backward()
        assert np.isnan(out) and np.all(g == 0)
    crit = nn.CrossEntropyLoss(reduction="sum")
    assert crit(x, t) == 0


# -- binary cross-entropy ----------------------------------------------------------------
def ref_bce(p, t, w, reduction):
    l = -(t * np.maximum(np.log(p), -100) + (1 - t) * np.maximum(np.log1p(-p), -100))
    return reduce(l * (1 if w is None else w), reduction)


def ref_bce_logits(x, t, w, pw, reduction):
    pw = 1.0 if pw is None else pw
    l = -(pw * t * special.log_expit(x) + (1 - t) * special.log_expit(-x))
    return reduce(l * (1 if w is None else w), reduction)


BCE_SHAPES = [(5,), (4, 3), (2, 3, 2)]


def bce_weights(shape, kind):
    if kind is None:
        return None
    if kind == "class":
        return np.linspace(0.5, 2.0, shape[-1])
    return 0.5 + np.random.default_rng(11).random(shape)


@pytest.mark.parametrize("shape", BCE_SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("wkind", [None, "class", "full"])
@pytest.mark.parametrize("soft", [False, True])
def test_bce_loss(shape, reduction, wkind, soft):
    rng = np.random.default_rng(12)
    p = 0.05 + 0.9 * rng.random(shape)
    t = rng.random(shape) if soft else (rng.random(shape) > 0.5).astype(float)
    w = bce_weights(shape, wkind)
    crit = nn.BCELoss(weight=w, reduction=reduction)
    np.testing.assert_allclose(crit(p, t), ref_bce(p, t, w, reduction), rtol=1e-12)
    check_loss(crit, p, t)


@pytest.mark.parametrize("shape", BCE_SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("wkind", [None, "class", "full"])
@pytest.mark.parametrize("pos", [False, True])
def test_bce_with_logits(shape, reduction, wkind, pos):
    rng = np.random.default_rng(13)
    x = 2 * rng.standard_normal(shape)
    t = rng.random(shape)
    w = bce_weights(shape, wkind)
    pw = np.linspace(0.5, 3.0, shape[-1]) if pos else None
    crit = nn.BCEWithLogitsLoss(weight=w, reduction=reduction, pos_weight=pw)
    np.testing.assert_allclose(crit(x, t), ref_bce_logits(x, t, w, pw, reduction),
                               rtol=1e-12)
    check_loss(crit, x, t)


def test_bce_with_logits_equals_sigmoid_then_bce():
    x = rand(4, 3, seed=14)
    t = (rand(4, 3, seed=15) > 0).astype(float)
    a, b, s = nn.BCEWithLogitsLoss(), nn.BCELoss(), nn.Sigmoid()
    np.testing.assert_allclose(a(x, t), b(s(x), t), rtol=1e-13)
    np.testing.assert_allclose(a.backward(), s.backward(b.backward()), rtol=1e-12)
    a(x, t)                                       # one forward per backward
    np.testing.assert_allclose(a.backward(), (special.expit(x) - t) / 12, rtol=1e-13)


def test_bce_clamps_log_at_minus_100():
    crit = nn.BCELoss(reduction="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = crit(np.array([0.0, 1.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0, 1.0]))
        g = crit.backward(np.ones(4))
    np.testing.assert_array_equal(out, [100, 100, 0, 0])
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, [-1e12, 1e12, 0, 0])     # (x - t) / max(x(1-x), 1e-12)


# -- regression losses -------------------------------------------------------------------
REG = [
    (lambda r: nn.MSELoss(reduction=r), lambda d: d * d),
    (lambda r: nn.L1Loss(reduction=r), np.abs),
    (lambda r: nn.HuberLoss(reduction=r), lambda d: np.where(np.abs(d) < 1, d * d / 2,
                                                             np.abs(d) - 0.5)),
    (lambda r: nn.HuberLoss(reduction=r, delta=0.3),
     lambda d: np.where(np.abs(d) < 0.3, d * d / 2, 0.3 * (np.abs(d) - 0.15))),
]


@pytest.mark.parametrize("make,ref", REG, ids=["mse", "l1", "huber", "huber0.3"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(6,), (3, 4), (1, 2, 2, 2, 3)], ids=str)
def test_regression_losses(make, ref, reduction, shape):
    x = rand(*shape, seed=16)
    t = rand(*shape, seed=17)
    crit = make(reduction)
    np.testing.assert_allclose(crit(x, t), reduce(ref(x - t), reduction), rtol=1e-13)
    check_loss(crit, x, t)


def test_regression_gradients_by_formula():
    x, t = rand(10, seed=18, scale=2), rand(10, seed=19)
    d = x - t
    for crit, g in [(nn.MSELoss(), 2 * d / 10), (nn.L1Loss(), np.sign(d) / 10),
                    (nn.HuberLoss(delta=0.5), np.clip(d, -0.5, 0.5) / 10)]:
        crit(x, t)
        np.testing.assert_allclose(crit.backward(), g, rtol=1e-14)


# -- upstream gradients, dtypes, extremes ------------------------------------------------
def all_losses():
    return [nn.MSELoss(), nn.L1Loss(), nn.HuberLoss(), nn.CrossEntropyLoss(),
            nn.NLLLoss(), nn.BCEWithLogitsLoss(), nn.BCELoss()]


def inputs_for(crit, dtype=np.float64):
    x = rand(4, 3, seed=20).astype(dtype)
    if isinstance(crit, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return x, np.array([0, 2, 1, 1])
    if isinstance(crit, nn.BCELoss):
        return special.expit(x), (x > 0).astype(dtype)
    return x, rand(4, 3, seed=21).astype(dtype)


@pytest.mark.parametrize("crit", all_losses(), ids=repr)
def test_upstream_scalar_scales_and_dtype_follows_input(crit):
    x, t = inputs_for(crit)
    crit(x, t)
    g1 = crit.backward()
    crit(x, t)                                    # one forward per backward
    np.testing.assert_allclose(crit.backward(np.array(2.5)), 2.5 * g1, rtol=1e-15)
    crit(x, t)
    np.testing.assert_allclose(crit.backward(2.5), 2.5 * g1, rtol=1e-15)
    x32, t32 = inputs_for(crit, np.float32)
    out = crit(x32, t32)
    assert out.shape == () and out.dtype == np.float32
    assert crit.backward().dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_logits_finite_without_warnings(dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [-1e4, 1e4, 1e4]], dtype=dtype)
    t = np.array([1, 0, 2])
    probs = np.array([[0.0, 1, 0], [1, 0, 0], [0.5, 0, 0.5]], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for crit, tgt in [(nn.CrossEntropyLoss(), t),
                          (nn.CrossEntropyLoss(weight=W3, label_smoothing=0.1), t),
                          (nn.CrossEntropyLoss(label_smoothing=0.1), probs),
                          (nn.BCEWithLogitsLoss(), probs),
                          (nn.BCEWithLogitsLoss(pos_weight=W3), probs)]:
            loss = crit(x, tgt)
            g = crit.backward()
            assert np.isfinite(loss) and np.all(np.isfinite(g)), crit
            assert loss.dtype == dtype and g.dtype == dtype
    # the wrong-class row costs 2e4: -log softmax(x)_1 = 1e4 - (-1e4) = 2e4
    l = nn.CrossEntropyLoss(reduction="none")(x, t)
    np.testing.assert_allclose(l, [2e4, np.log(3), np.log(2)], rtol=1e-6)
    lb = nn.BCEWithLogitsLoss(reduction="none")(x, probs)
    np.testing.assert_allclose(lb[0], [1e4, 1e4, np.log(2)], rtol=1e-6)


# -- reduction='none' backward and the vector-Jacobian product ----------------------------
def test_none_reduction_backward_needs_explicit_upstream():
    x, t = rand(4, 3, seed=22), np.array([0, 1, 2, 0])
    crit = nn.CrossEntropyLoss(reduction="none")
    l = crit(x, t)
    with pytest.raises(ValueError, match=r"the loss is an array of shape \(4,\) "
                                         r"\(reduction='none'\); pass its upstream"):
        crit.backward()
    v = rand(4, seed=23)
    mean = nn.CrossEntropyLoss(reduction="sum")
    # backward(v) of the vector loss is the gradient of the scalar <v, l>
    crit(x, t)                                    # the failed backward consumed the call
    g = crit.backward(v)
    np.testing.assert_allclose(g, v[:, None] * (special.softmax(x, 1) - np.eye(3)[t]),
                               rtol=1e-13)
    mean(x, t)
    crit(x, t)
    np.testing.assert_allclose(crit.backward(np.ones(4)), mean.backward(), rtol=1e-14)
    crit(x, t)
    with pytest.raises(ValueError, match=r"expected grad of shape \(4,\).*got \(3,\)"):
        crit.backward(np.ones(3))
    assert l.shape == (4,)


# -- errors ------------------------------------------------------------------------------
def test_class_index_out_of_range_names_index_classes_and_layer():
    x = rand(3, 4)
    with pytest.raises(ValueError, match=r"CrossEntropyLoss\(.*\): target class index 7 "
                                         r"\(at position \(1,\)\) is out of range for 4 "
                                         r"classes \(valid: 0..3, or ignore_index=-100\)"):
        nn.CrossEntropyLoss()(x, np.array([0, 7, 1]))
    with pytest.raises(ValueError, match=r"NLLLoss\(.*\): target class index -1 .*4 classes"):
        nn.NLLLoss()(x, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match=r"index -100 .*ignore_index=1"):
        nn.CrossEntropyLoss(ignore_index=1)(x, np.array([0, -100, 1]))


def test_shape_and_dtype_errors():
    ce = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"CrossEntropyLoss\(.*\): input of shape \(3, 4\) "
                                         r"needs target class indices of shape \(3,\), "
                                         r"got \(4,\)"):
        ce(rand(3, 4), np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"class-probability targets must have the input's "
                                         r"shape \(3, 4\), got \(3,\)"):
        ce(rand(3, 4), np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss\(.*\): expected a floating-point "
                                         r"input \(float32 or float64\), got dtype int64"):
        ce(np.arange(12).reshape(3, 4), np.array([0, 1, 2]))
    with pytest.raises(TypeError):      # LossInputError is also a TypeError
        ce(np.arange(12).reshape(3, 4), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"weight has shape \(3,\) but the input has 4 "
                                         r"classes"):
        nn.CrossEntropyLoss(weight=W3)(rand(2, 4), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"MSELoss\(reduction='mean'\): input and target must "
                                         r"have the same shape, got input \(2, 3\) and target "
                                         r"\(3, 2\)"):
        nn.MSELoss()(rand(2, 3), rand(3, 2))
    with pytest.raises(ValueError, match=r"BCELoss\(.*\): input must be probabilities in "
                                         r"\[0, 1\], got values in \[-0.5, 1\]"):
        nn.BCELoss()(np.array([-0.5, 1.0]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"pos_weight of shape \(4,\) does not broadcast to "
                                         r"the input's shape \(2, 3\)"):
        nn.BCEWithLogitsLoss(pos_weight=np.ones(4))(rand(2, 3), rand(2, 3))
    with pytest.raises(ValueError, match=r"reduction must be 'mean', 'sum' or 'none', got "
                                         r"'avg'"):
        nn.MSELoss(reduction="avg")
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got 1.5"):
        nn.CrossEntropyLoss(label_smoothing=1.5)


def test_nan_input_names_loss_and_position():
    x = rand(3, 4)
    x[1, 2] = np.nan
    for crit, t in [(nn.CrossEntropyLoss(), np.array([0, 1, 2])), (nn.MSELoss(), rand(3, 4)),
                    (nn.BCEWithLogitsLoss(), rand(3, 4))]:
        with pytest.raises(ValueError, match=type(crit).__name__ + r"\(.*\): input contains "
                                             r"NaN \(1 of 12 entries, the first at index "
                                             r"\(1, 2\)\)"):
            crit(x, t)
    t = rand(3, 4)
    t[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"L1Loss\(.*\): target contains NaN"):
        nn.L1Loss()(rand(3, 4), t)


def test_backward_before_forward_and_bad_upstream():
    crit = nn.MSELoss()
    with pytest.raises(RuntimeError, match=r"MSELoss\(reduction='mean'\).backward called "
                                           r"before forward"):
        crit.backward()
    crit(rand(2), rand(2))
    with pytest.raises(ValueError, match=r"expected a scalar upstream grad.*got shape \(2,\)"):
        crit.backward(np.ones(2))


def test_weights_are_buffers_and_follow_dtype():
    crit = nn.CrossEntropyLoss(weight=[1, 2, 3])
    assert list(crit.state_dict()) == ["weight"] and crit.num_parameters() == 0
    assert crit.to(np.float64).weight.dtype == np.float64
    b = nn.BCEWithLogitsLoss(pos_weight=np.ones(3))
    assert list(b.state_dict()) == ["pos_weight"]
