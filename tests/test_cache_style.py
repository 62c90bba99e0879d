"""One cache style across refdl.nn (docs/caches.md): every layer's training-mode forward
records exactly one NamedTuple per call, backward consumes it, eval() mode and
refdl.no_grad() record nothing, and k forwards followed by k backwards in reverse order
give, bit for bit, what k separate forward/backward pairs give.

The table below lists every layer class of the converted files (pooling, upsampling,
embedding, dropout, losses, normalisation, blocks) plus Linear, Flatten, Unflatten and
every activation; ``test_the_table_covers_every_class`` fails when a class is added to
one of those files without an entry here.
"""
import copy

import numpy as np
import pytest

import refdl
from refdl import nn
from refdl.gradcheck import check_module
from refdl.nn import activation, blocks, dropout, embedding, instancenorm, linear, loss, \
    normalization, pooling, upsampling
from refdl.nn import batchnorm


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def distinct(*shape, seed=0):
    """Well-separated values (no ties for the max poolings), in random order."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n) * 0.1 - n * 0.05).reshape(shape)


def positive(*shape, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 2.0, shape)


def ints(high, *shape, seed=0):
    return np.random.default_rng(seed).integers(0, high, shape)


def probs(*shape, seed=0):
    return np.random.default_rng(seed).uniform(0.05, 0.95, shape)


def classes(n, c, seed=0):
    return np.random.default_rng(seed).integers(0, c, n)


# (id, constructor, inputs(seed) -> tuple of inputs)
LAYERS = [
    ("Linear", lambda: nn.Linear(4, 3), lambda s: (rand(5, 4, seed=s),)),
    ("Flatten", lambda: nn.Flatten(), lambda s: (rand(2, 3, 4, seed=s),)),
    ("Unflatten", lambda: nn.Unflatten(1, (3, 4)), lambda s: (rand(2, 12, seed=s),)),
    # pooling
    ("MaxPool1d", lambda: nn.MaxPool1d(2), lambda s: (distinct(2, 3, 8, seed=s),)),
    ("MaxPool2d", lambda: nn.MaxPool2d(3, stride=2, padding=1),
     lambda s: (distinct(2, 2, 7, 6, seed=s),)),
    ("MaxPool2d-indices-unbatched", lambda: nn.MaxPool2d(2, return_indices=True),
     lambda s: (distinct(3, 6, 4, seed=s),)),
    ("MaxPool3d", lambda: nn.MaxPool3d(2), lambda s: (distinct(1, 2, 4, 4, 4, seed=s),)),
    ("AvgPool1d", lambda: nn.AvgPool1d(3, stride=2, padding=1),
     lambda s: (rand(2, 3, 9, seed=s),)),
    ("AvgPool2d", lambda: nn.AvgPool2d(2, count_include_pad=False, padding=1),
     lambda s: (rand(2, 2, 5, 6, seed=s),)),
    ("AvgPool3d", lambda: nn.AvgPool3d(2), lambda s: (rand(1, 2, 4, 4, 4, seed=s),)),
    ("AdaptiveAvgPool1d", lambda: nn.AdaptiveAvgPool1d(3), lambda s: (rand(2, 3, 7, seed=s),)),
    ("AdaptiveAvgPool2d", lambda: nn.AdaptiveAvgPool2d((2, 3)),
     lambda s: (rand(2, 2, 5, 7, seed=s),)),
    ("AdaptiveAvgPool3d", lambda: nn.AdaptiveAvgPool3d(2),
     lambda s: (rand(1, 2, 3, 5, 4, seed=s),)),
    ("AdaptiveMaxPool1d", lambda: nn.AdaptiveMaxPool1d(3),
     lambda s: (distinct(2, 3, 7, seed=s),)),
    ("AdaptiveMaxPool2d", lambda: nn.AdaptiveMaxPool2d((2, 3), return_indices=True),
     lambda s: (distinct(2, 2, 5, 7, seed=s),)),
    ("AdaptiveMaxPool3d", lambda: nn.AdaptiveMaxPool3d(2),
     lambda s: (distinct(1, 2, 3, 5, 4, seed=s),)),
    # upsampling
    ("Upsample-nearest", lambda: nn.Upsample(scale_factor=2),
     lambda s: (rand(2, 2, 3, 4, seed=s),)),
    ("Upsample-linear", lambda: nn.Upsample(size=7, mode="linear"),
     lambda s: (rand(2, 2, 4, seed=s),)),
    ("Upsample-trilinear", lambda: nn.Upsample(scale_factor=2, mode="trilinear"),
     lambda s: (rand(1, 2, 2, 3, 2, seed=s),)),
    ("UpsamplingNearest2d", lambda: nn.UpsamplingNearest2d(size=(5, 6)),
     lambda s: (rand(2, 2, 3, 4, seed=s),)),
    ("UpsamplingBilinear2d", lambda: nn.UpsamplingBilinear2d(scale_factor=2),
     lambda s: (rand(2, 2, 3, 4, seed=s),)),
    # embedding (integer input: no input gradient)
    ("Embedding", lambda: nn.Embedding(7, 3, padding_idx=0),
     lambda s: (ints(7, 4, 5, seed=s),)),
    # dropout
    ("Dropout", lambda: nn.Dropout(0.4), lambda s: (rand(6, 5, seed=s),)),
    ("Dropout-p1", lambda: nn.Dropout(1.0), lambda s: (rand(6, 5, seed=s),)),
    ("Dropout1d", lambda: nn.Dropout1d(0.5), lambda s: (rand(4, 6, 3, seed=s),)),
    ("Dropout2d", lambda: nn.Dropout2d(0.5), lambda s: (rand(4, 6, 3, 2, seed=s),)),
    ("Dropout3d", lambda: nn.Dropout3d(0.5), lambda s: (rand(5, 3, 2, 2, 2, seed=s),)),
    # normalisation
    ("LayerNorm", lambda: nn.LayerNorm((3, 4)), lambda s: (rand(2, 5, 3, 4, seed=s),)),
    ("BatchNorm1d", lambda: nn.BatchNorm1d(3), lambda s: (rand(6, 3, seed=s),)),
    ("BatchNorm1d-no-running", lambda: nn.BatchNorm1d(3, track_running_stats=False),
     lambda s: (rand(6, 3, 4, seed=s),)),
    ("BatchNorm2d", lambda: nn.BatchNorm2d(3), lambda s: (rand(4, 3, 3, 2, seed=s),)),
    ("BatchNorm3d", lambda: nn.BatchNorm3d(2), lambda s: (rand(2, 2, 2, 3, 2, seed=s),)),
    ("GroupNorm", lambda: nn.GroupNorm(2, 4), lambda s: (rand(3, 4, 5, seed=s),)),
    ("InstanceNorm1d", lambda: nn.InstanceNorm1d(3, affine=True),
     lambda s: (rand(2, 3, 6, seed=s),)),
    ("InstanceNorm2d-running-unbatched",
     lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
     lambda s: (rand(3, 4, 3, seed=s),)),
    ("InstanceNorm3d", lambda: nn.InstanceNorm3d(2), lambda s: (rand(2, 2, 2, 3, 2, seed=s),)),
    # blocks with a cache of their own
    ("Add", lambda: nn.Add(), lambda s: (rand(3, 4, seed=s), rand(3, 4, seed=s + 50),
                                         rand(3, 4, seed=s + 51))),
    ("Add-one", lambda: nn.Add(), lambda s: (rand(3, 4, seed=s),)),
    ("Concat", lambda: nn.Concat(dim=-1), lambda s: (rand(3, 2, seed=s),
                                                     rand(3, 5, seed=s + 50))),
]

_ACT_ARGS = {"Threshold": (0.1, -2.0), "GLU": (), "PReLU": ()}
ACTIVATIONS = [(name, (lambda name=name: getattr(nn, name)(*_ACT_ARGS.get(name, ()))),
                lambda s: (rand(4, 6, seed=s),)) for name in activation.__all__]

# (id, constructor, inputs(seed) -> (input, target), upstream grad or None)
LOSSES = [
    ("MSELoss", lambda: nn.MSELoss(), lambda s: (rand(4, 3, seed=s), rand(4, 3, seed=s + 9))),
    ("L1Loss", lambda: nn.L1Loss(reduction="sum"),
     lambda s: (rand(4, 3, seed=s), rand(4, 3, seed=s + 9))),
    ("HuberLoss", lambda: nn.HuberLoss(delta=0.5),
     lambda s: (rand(4, 3, seed=s), rand(4, 3, seed=s + 9))),
    ("SmoothL1Loss", lambda: nn.SmoothL1Loss(beta=0.5),
     lambda s: (rand(4, 3, seed=s), rand(4, 3, seed=s + 9))),
    ("KLDivLoss", lambda: nn.KLDivLoss(reduction="batchmean", log_target=True),
     lambda s: (rand(4, 3, seed=s), rand(4, 3, seed=s + 9))),
    ("NLLLoss", lambda: nn.NLLLoss(weight=[1.0, 2.0, 0.5]),
     lambda s: (rand(5, 3, seed=s), classes(5, 3, seed=s))),
    ("CrossEntropyLoss", lambda: nn.CrossEntropyLoss(label_smoothing=0.1),
     lambda s: (rand(5, 3, seed=s), classes(5, 3, seed=s))),
    ("CrossEntropyLoss-none", lambda: nn.CrossEntropyLoss(reduction="none"),
     lambda s: (rand(5, 3, 2, seed=s), ints(3, 5, 2, seed=s))),
    ("CrossEntropyLoss-probs", lambda: nn.CrossEntropyLoss(),
     lambda s: (rand(5, 3, seed=s), probs(5, 3, seed=s))),
    ("BCELoss", lambda: nn.BCELoss(weight=positive(3)),
     lambda s: (probs(4, 3, seed=s), probs(4, 3, seed=s + 9))),
    ("BCEWithLogitsLoss", lambda: nn.BCEWithLogitsLoss(pos_weight=positive(3)),
     lambda s: (rand(4, 3, seed=s), probs(4, 3, seed=s + 9))),
]

CONVERTED_FILES = [pooling, upsampling, embedding, dropout, loss, normalization, batchnorm,
                   instancenorm, blocks]


def _ids(table):
    return [row[0] for row in table]


def test_the_table_covers_every_class():
    covered = {type(make()).__name__ for _, make, _ in LAYERS + ACTIVATIONS}
    covered |= {type(make()).__name__ for _, make, _ in LOSSES}
    covered |= {"BasicBlock", "Bottleneck"}          # composite: test_blocks_record_nothing
    wanted = {n for f in CONVERTED_FILES for n in f.__all__ if isinstance(getattr(f, n), type)
              and issubclass(getattr(f, n), nn.Module)}
    wanted |= set(activation.__all__) | {"Linear", "Flatten", "Unflatten"}
    assert wanted - covered == set()
    assert set(linear.__all__) - covered == {"Identity"}     # records nothing: y = x


def build(make):
    refdl.manual_seed(3)
    return make().double()


def forward(m, inputs):
    out = m(*inputs)
    return out[0] if isinstance(out, tuple) else out    # (y, indices): y only


def upstream(y, seed):
    return rand(*np.shape(y), seed=seed)


def grads(m):
    return [p.grad.copy() for p in m.parameters()]


def is_named_tuple(c):
    return isinstance(c, tuple) and hasattr(type(c), "_fields") and len(c._fields) >= 1


@pytest.mark.parametrize("make, inputs", [r[1:] for r in LAYERS + ACTIVATIONS],
                         ids=_ids(LAYERS + ACTIVATIONS))
def test_one_named_cache_per_training_call_none_in_eval_or_no_grad(make, inputs):
    m = build(make)
    x = inputs(0)
    y = forward(m, x)
    assert m.num_saved == 1
    assert is_named_tuple(m._saved[-1]), type(m._saved[-1])
    m.backward(upstream(y, 1))
    assert m.num_saved == 0
    with refdl.no_grad():                               # training mode, no_grad: nothing
        forward(m, x)
    assert m.num_saved == 0
    m.eval()
    forward(m, x)                                       # eval mode: nothing
    assert m.num_saved == 0
    with refdl.enable_grad():                           # ... unless asked to
        y = forward(m, x)
    assert m.num_saved == 1
    m.backward(upstream(y, 1))
    assert m.num_saved == 0


def _pairs_vs_stack(make, inputs, k=2):
    """Outputs, input gradients and per-backward parameter gradients of k separate
    forward/backward pairs and of k forwards followed by k backwards in reverse order,
    from identical starting states (same weights, same random stream)."""
    xs = [inputs(s) for s in range(k)]
    sep = build(make)
    refdl.manual_seed(11)
    ys_sep, dx_sep, gp_sep = [], [], []
    for i, x in enumerate(xs):
        sep.zero_grad()
        y = forward(sep, x)
        ys_sep.append(y)
        dx_sep.append(sep.backward(upstream(y, 100 + i)))
        gp_sep.append(grads(sep))
    stack = build(make)
    refdl.manual_seed(11)
    ys = [forward(stack, x) for x in xs]
    assert stack.num_saved == k
    dx_stack, gp_stack = [None] * k, [None] * k
    for i in reversed(range(k)):
        stack.zero_grad()
        dx_stack[i] = stack.backward(upstream(ys[i], 100 + i))
        gp_stack[i] = grads(stack)
    assert stack.num_saved == 0
    for a, b in zip(ys, ys_sep):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(dx_stack, dx_sep):
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            if u is None:
                assert v is None
            else:
                np.testing.assert_array_equal(u, v)
    for a, b in zip(gp_stack, gp_sep):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    # and the running statistics (BatchNorm, InstanceNorm) moved the same way
    for (na, a), (nb, b) in zip(stack.named_buffers(), sep.named_buffers()):
        np.testing.assert_array_equal(a, b, err_msg=na)
    return ys, dx_stack


@pytest.mark.parametrize("make, inputs", [r[1:] for r in LAYERS + ACTIVATIONS],
                         ids=_ids(LAYERS + ACTIVATIONS))
def test_k_forwards_then_k_backwards_equal_separate_pairs_bit_for_bit(make, inputs):
    ys, dxs = _pairs_vs_stack(make, inputs)
    # the two calls saw different inputs, so a backward reading the wrong cache would
    # (almost surely) differ; make sure the check has teeth
    if not isinstance(build(make), (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.Flatten,
                                    nn.Unflatten, nn.Upsample, nn.AdaptiveAvgPool1d,
                                    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Add,
                                    nn.Concat, nn.Embedding, nn.Linear)) \
            and not (isinstance(build(make), nn.Dropout) and build(make).p == 1.0):
        assert not np.array_equal(ys[0], ys[1])


def test_dropout_draws_the_same_masks_in_every_grad_mode():
    x = rand(8, 9)
    outs = []
    for ctx in (refdl.enable_grad, refdl.no_grad):
        d = nn.Dropout(0.5)
        refdl.manual_seed(5)
        with ctx():
            outs.append([d(x), d(x)])
        d.discard_saved()
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert not np.array_equal(outs[0][0], outs[0][1])       # two different masks


def test_batchnorm_updates_running_stats_under_no_grad_but_records_nothing():
    a, b = nn.BatchNorm2d(3).double(), nn.BatchNorm2d(3).double()
    x = rand(4, 3, 2, 2) * 2 + 1
    ya = a(x)
    with refdl.no_grad():
        yb = b(x)
    assert (a.num_saved, b.num_saved) == (1, 0)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(a.running_mean, b.running_mean)
    np.testing.assert_array_equal(a.running_var, b.running_var)
    assert int(b.num_batches_tracked) == 1
    np.testing.assert_allclose(b.running_mean, 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-12)


# -- losses --------------------------------------------------------------------------------

def loss_backward(crit, l, seed):
    return crit.backward(upstream(l, seed) if crit.reduction == "none" else None)


@pytest.mark.parametrize("make, inputs", [r[1:] for r in LOSSES], ids=_ids(LOSSES))
def test_loss_records_one_cache_per_call_consumed_lifo(make, inputs):
    crit = make()
    x, t = inputs(0)
    l = crit(x, t)
    assert crit.num_saved == 1 and is_named_tuple(crit._saved[-1])
    loss_backward(crit, l, 1)
    assert crit.num_saved == 0
    with refdl.no_grad():
        crit(x, t)
    crit.eval()
    crit(x, t)
    crit.train()
    assert crit.num_saved == 0
    # two calls, then two backwards in reverse: the same as two separate pairs
    (x1, t1), (x2, t2) = inputs(1), inputs(2)
    sep = []
    for i, (xi, ti) in enumerate([(x1, t1), (x2, t2)]):
        li = crit(xi, ti)
        sep.append((li, loss_backward(crit, li, 10 + i)))
    l1, l2 = crit(x1, t1), crit(x2, t2)
    assert crit.num_saved == 2
    d2 = loss_backward(crit, l2, 11)
    d1 = loss_backward(crit, l1, 10)
    assert crit.num_saved == 0
    for (ls, ds), lk, dk in zip(sep, (l1, l2), (d1, d2)):
        np.testing.assert_array_equal(ls, lk)
        np.testing.assert_array_equal(ds, dk)
    assert not np.array_equal(d1, d2)


@pytest.mark.parametrize("make, inputs", [r[1:] for r in LOSSES], ids=_ids(LOSSES))
def test_loss_value_does_not_depend_on_recording(make, inputs):
    crit = make()
    x, t = inputs(0)
    with refdl.no_grad():                   # dl/dx is not computed here
        l0 = crit(x, t)
    l1 = crit(x, t)
    np.testing.assert_array_equal(l0, l1)
    assert l0.dtype == l1.dtype == x.dtype
    x32 = x.astype(np.float32)
    with refdl.no_grad():
        assert crit(x32, t).dtype == np.float32
    crit.discard_saved()


# -- composite blocks ------------------------------------------------------------------------

def test_blocks_record_nothing_of_their_own():
    refdl.manual_seed(0)
    for block in (nn.BasicBlock(3, 4, stride=2), nn.Bottleneck(4, 2)):
        block = block.double()
        # seed 1: every ReLU input stays clear of 0 by more than the finite-difference
        # step moves it (seed 0 puts one of Bottleneck's relu3 inputs 5e-4 from the kink;
        # with seed 1 the nearest is 1.1e-2 away)
        x = rand(2, block.inplanes, 5, 5, seed=1)
        y = block(x)
        assert block.num_saved == 0
        block.backward(upstream(y, 1))
        assert all(m.num_saved == 0 for m in block.modules())
        check_module(block, x)


class TorchvisionBasicBlock(nn.Module):
    """torchvision's BasicBlock, written as its users write it: ONE self.relu, used twice.

        out = relu(bn1(conv1(x)));  out = bn2(conv2(out));  out += x;  out = relu(out)
    """

    def __init__(self, planes):
        super().__init__()
        self.conv1 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)

    def backward(self, g):
        g = self.relu.backward(g)                      # the second use of relu first
        g_branch = self.conv1.backward(self.bn1.backward(self.relu.backward(
            self.conv2.backward(self.bn2.backward(g)))))
        return g_branch + g                            # x fanned out: sum


def test_torchvision_basic_block_with_one_relu_used_twice():
    refdl.manual_seed(0)
    block = TorchvisionBasicBlock(3).double()
    x = rand(2, 3, 4, 4, seed=1)
    check_module(block, x)
    check_module(block.eval(), x)
    # two forwards then two backwards in reverse: as two separate passes
    block.train()
    ref = copy.deepcopy(block)
    g = [rand(2, 3, 4, 4, seed=s) for s in (5, 6)]
    xs = [x, rand(2, 3, 4, 4, seed=2)]
    sep = []
    for xi, gi in zip(xs, g):
        ref.zero_grad()
        ref(xi)
        sep.append((ref.backward(gi), grads(ref)))
    ys = [block(xi) for xi in xs]
    assert block.relu.num_saved == 4
    for i in (1, 0):
        block.zero_grad()
        dx = block.backward(g[i])
        np.testing.assert_array_equal(dx, sep[i][0])
        for a, b in zip(grads(block), sep[i][1]):
            np.testing.assert_array_equal(a, b)
    assert all(m.num_saved == 0 for m in block.modules())
    assert ys[0].shape == ys[1].shape
