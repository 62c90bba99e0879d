"""refdl.train (fit, evaluate, early stopping, the non-finite guard), refdl.metrics, MLP."""
import io

import numpy as np
import pytest

import refdl
from refdl import metrics, nn, optim
from refdl.data import DataLoader, TensorDataset, load_digits
from refdl.gradcheck import check_module
from refdl.models import get_model
from refdl.train import EarlyStopping, NonFiniteLossError, clip_grad_norm_, evaluate, fit

def digits_loaders(batch_size=64):
    xtr, ytr, xte, yte = load_digits()
    return (DataLoader(TensorDataset(xtr, ytr), batch_size, shuffle=True),
            DataLoader(TensorDataset(xte, yte), 256))


def test_mlp_shapes_and_registry():
    refdl.manual_seed(0)
    m = get_model("mlp", num_classes=10, input_shape=(1, 8, 8))
    out = m(np.zeros((3, 1, 8, 8), np.float32))
    assert out.shape == (3, 10) and out.dtype == np.float32
    assert [k for k in m.state_dict()][:2] == ["1.weight", "1.bias"]
    assert m.num_parameters() == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    with pytest.raises(ValueError, match="unknown activation"):
        get_model("mlp", activation="swoosh")


def test_mlp_gradcheck():
    refdl.manual_seed(0)
    from refdl.models.mlp import MLP
    m = MLP(input_shape=(2, 3), num_classes=3, hidden=(5,))
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    check_module(m, x)


def test_fit_digits_reaches_95_percent():
    refdl.manual_seed(0)
    train, test = digits_loaders(32)
    model = get_model("mlp", num_classes=10, input_shape=(1, 8, 8))
    opt = optim.Adam(model.parameters(), lr=2e-3)
    out = io.StringIO()
    h = fit(model, nn.CrossEntropyLoss(), opt, train, test, epochs=8, stream=out)
    assert h["epoch"] == list(range(1, 9))
    assert h["loss"][-1] < h["loss"][0]
    ev = evaluate(model, test, nn.CrossEntropyLoss())
    assert ev["accuracy"] > 0.95 and ev["confusion"].sum() == 360
    assert ev["accuracy"] == h["val_accuracy"][-1]
    text = out.getvalue()
    assert "epoch 8/8" in text and "samples/s" in text and "val_acc" in text
    assert model.training      # evaluate restored the mode


def test_fit_repeats_bit_for_bit_with_manual_seed():
    def run():
        refdl.manual_seed(1)
        train, _ = digits_loaders(128)
        model = get_model("mlp", num_classes=10, input_shape=(1, 8, 8), hidden=(16,))
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return fit(model, nn.CrossEntropyLoss(), opt, train, epochs=2, progress=False)["loss"]
    assert run() == run()


class NaNAfter(nn.Module):
    """A loss that turns NaN at a given call (a stand-in for a diverging run)."""

    def __init__(self, at):
        super().__init__()
        self.at, self.calls, self.inner = at, 0, nn.CrossEntropyLoss()

    def forward(self, out, y):
        self.calls += 1
        v = self.inner(out, y)
        return np.array(np.nan) if self.calls == self.at else v

    def backward(self, grad=None):
        return self.inner.backward()


def test_non_finite_guard_says_where_and_keeps_checkpoint(tmp_path):
    refdl.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    model = get_model("mlp", num_classes=2, input_shape=(4,), hidden=(8,))
    opt = optim.SGD(model.parameters(), lr=0.1)
    ck = tmp_path / "ck.npz"
    with pytest.raises(NonFiniteLossError, match=r"nan at epoch 3, step 2.*holds epoch 2") as e:
        fit(model, NaNAfter(10), opt, loader, epochs=5, checkpoint_path=ck, progress=False)
    assert e.value.epoch == 3 and e.value.step == 2 and len(e.value.history["loss"]) == 2
    from refdl.checkpoint import read_checkpoint
    assert read_checkpoint(ck)["epoch"] == 2


def test_early_stopping_restores_best():
    refdl.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((32, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    model = get_model("mlp", num_classes=2, input_shape=(3,), hidden=(4,))
    opt = optim.SGD(model.parameters(), lr=0.0)      # nothing improves
    es = EarlyStopping("val_loss", patience=2)
    h = fit(model, nn.CrossEntropyLoss(), opt, loader, loader, epochs=10, early_stopping=es,
            progress=False)
    assert h["epoch"] == [1, 2, 3] and es.stopped_epoch == 3 and es.best_epoch == 1
    with pytest.raises(KeyError, match="val_loss"):
        fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=1, progress=False,
            early_stopping=EarlyStopping())


def test_callbacks_and_gradient_clipping():
    refdl.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    model = get_model("mlp", num_classes=2, input_shape=(3,), hidden=(4,))
    seen = []
    h = fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), loader,
            epochs=5, clip_grad_norm=1e-3, progress=False,
            callbacks=[lambda e, hist, m: seen.append(e) or e == 2])
    assert seen == [1, 2] and len(h["loss"]) == 2 and h["grad_norm"][0] > 0
    p = nn.Linear(2, 2).weight
    p.grad[...] = 3.0
    n = clip_grad_norm_([p], 1.0)
    assert n == pytest.approx(6.0) and np.linalg.norm(p.grad) == pytest.approx(1.0, rel=1e-5)


def test_metrics_against_hand_counts():
    t = np.array([0, 0, 1, 1, 2, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0, 2])
    cm = metrics.confusion_matrix(t, p)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert metrics.accuracy(t, p) == pytest.approx(5 / 7)
    prec = metrics.precision(t, p, average=None)
    rec = metrics.recall(t, p, average=None)
    assert prec.tolist() == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert rec.tolist() == pytest.approx([1 / 2, 1.0, 2 / 3])
    f1 = metrics.f1_score(t, p, average=None)
    assert f1.tolist() == pytest.approx([0.5, 0.8, 0.8])
    assert metrics.f1_score(t, p) == pytest.approx(0.7)
    assert metrics.precision(t, p, average="micro") == pytest.approx(5 / 7)
    logits = np.eye(3)[p] * 5.0
    assert metrics.accuracy(t, logits) == pytest.approx(5 / 7)
    assert metrics.precision([0, 0], [0, 0], num_classes=2, average=None).tolist() == [1.0, 0.0]
    assert "macro" in metrics.classification_report(t, p)
    with pytest.raises(ValueError, match="shape"):
        metrics.accuracy(t, p[:3])
    with pytest.raises(ValueError, match="out of range"):
        metrics.confusion_matrix([0, 3], [0, 1], num_classes=3)
