"""refdl.checkpoint: atomic save, bit-for-bit load, clear errors, exact resumption."""
import os

import numpy as np
import pytest

import refdl
from refdl import nn, optim
from refdl.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from refdl.data import DataLoader, TensorDataset
from refdl.models import get_model
from refdl.train import fit

def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
    return x, y


def setup(seed=0, own_generator=False):
    refdl.manual_seed(seed)
    x, y = data()
    gen = np.random.default_rng(99) if own_generator else None
    train = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=gen)
    val = DataLoader(TensorDataset(x[:20], y[:20]), batch_size=20)
    model = get_model("mlp", num_classes=3, input_shape=(6,), hidden=(12,), dropout=0.3)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    return model, opt, train, val


def test_round_trip_bit_for_bit(tmp_path):
    model, opt, train, val = setup()
    fit(model, nn.CrossEntropyLoss(), opt, train, epochs=1, progress=False)
    path = save_checkpoint(tmp_path / "a.npz", model, opt, epoch=1,
                           history={"loss": [0.5, float("nan")]}, extra={"note": "hi", "t": (1, 2)})
    st = read_checkpoint(path)
    assert st["epoch"] == 1 and st["extra"] == {"note": "hi", "t": (1, 2)}
    assert st["history"]["loss"][0] == 0.5 and np.isnan(st["history"]["loss"][1])
    m2, o2, _, _ = setup(seed=5)
    load_checkpoint(path, m2, o2)
    for (k, a), (_, b) in zip(model.state_dict().items(), m2.state_dict().items()):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), k
    s1, s2 = opt.state_dict(), o2.state_dict()
    for i in s1["state"]:
        for k, v in s1["state"][i].items():
            assert np.asarray(v).tobytes() == np.asarray(s2["state"][i][k]).tobytes()
    assert refdl.random.get_rng_state() == st["rng"]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


@pytest.mark.parametrize("own_generator", [False, True])
def test_resume_gives_the_same_losses_bit_for_bit(tmp_path, own_generator):
    loss = nn.CrossEntropyLoss()
    model, opt, train, val = setup(own_generator=own_generator)
    full = fit(model, loss, opt, train, val, epochs=4, progress=False)

    ck = tmp_path / "ck.npz"
    model, opt, train, val = setup(own_generator=own_generator)
    fit(model, loss, opt, train, val, epochs=2, checkpoint_path=ck, progress=False)
    # a fresh process: other seeds, other weights, then resume from the checkpoint
    model, opt, train, val = setup(seed=123, own_generator=own_generator)
    if own_generator:
        train.generator = np.random.default_rng(5)
    resumed = fit(model, loss, opt, train, val, epochs=4, checkpoint_path=ck, resume=True,
                  progress=False)
    assert resumed["epoch"] == [1, 2, 3, 4]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "grad_norm"):
        assert resumed[key] == full[key], key


def test_resume_with_scheduler(tmp_path):
    loss = nn.CrossEntropyLoss()

    def run(epochs, ck=None, resume=False, seed=0):
        model, opt, train, val = setup(seed)
        sch = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return fit(model, loss, opt, train, epochs=epochs, scheduler=sch, checkpoint_path=ck,
                   resume=resume, progress=False)
    full = run(3)
    run(1, tmp_path / "s.npz")
    res = run(3, tmp_path / "s.npz", resume=True, seed=9)
    assert res["loss"] == full["loss"] and res["lr"] == full["lr"]


def test_wrong_model_is_refused_and_nothing_changes(tmp_path):
    model, opt, _, _ = setup()
    path = save_checkpoint(tmp_path / "a.npz", model, opt, epoch=1)
    other = get_model("mlp", num_classes=3, input_shape=(6,), hidden=(13,), dropout=0.3)
    before = other.state_dict()
    with pytest.raises(CheckpointError, match=r"'1.weight' has shape \(12, 6\) in the checkpoint, \(13, 6\)"):
        load_checkpoint(path, other)
    assert all(np.array_equal(before[k], v) for k, v in other.state_dict().items())
    deeper = get_model("mlp", num_classes=3, input_shape=(6,), hidden=(12, 4))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(path, deeper)
    with pytest.raises(CheckpointError, match="from a MLP model, not a Sequential"):
        load_checkpoint(path, nn.Sequential(nn.Linear(6, 3)))


def test_corrupt_and_truncated_files(tmp_path):
    model, opt, _, _ = setup()
    path = save_checkpoint(tmp_path / "a.npz", model, opt, epoch=1)
    raw = path.read_bytes()
    for name, data in {"trunc.npz": raw[: len(raw) // 2], "empty.npz": b"",
                       "junk.npz": b"hello world" * 10,
                       "flip.npz": raw[:200] + bytes([raw[200] ^ 0xFF]) + raw[201:]}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=name):
            load_checkpoint(tmp_path / name, model)
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a refdl checkpoint"):
        load_checkpoint(tmp_path / "plain.npz", model)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "none.npz", model)


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model, opt, _, _ = setup()
    path = save_checkpoint(tmp_path / "a.npz", model, opt, epoch=1)
    old = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, opt, epoch=2)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["a.npz"]


# -- refdl.save / refdl.load and named arrays ---------------------------------------------------

def test_save_load_state_dict_with_named_arrays(tmp_path):
    import refdl
    from refdl import nn
    refdl.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    sd = model.state_dict()
    path = refdl.save(sd, tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as z:     # readable with NumPy alone, by name
        np.testing.assert_array_equal(z["0.weight"], sd["0.weight"])
        assert "1.running_var" in z.files
    back = refdl.load(path)
    assert list(back) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
        assert back[k].dtype == sd[k].dtype
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    other.load_state_dict(refdl.load(path))
    np.testing.assert_array_equal(other[2].bias.data, model[2].bias.data)
    nested = {"model": sd, "step": 7, "lr": np.float32(0.1), "names": ("a", "b")}
    got = refdl.load(refdl.save(nested, tmp_path / "n.npz"))
    assert got["step"] == 7 and got["lr"].dtype == np.float32 and got["names"] == ("a", "b")
    with pytest.raises(TypeError, match="cannot store a object .* at model/x"):
        refdl.save({"model": {"x": object()}}, tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(refdl.checkpoint.CheckpointError, match="junk.npz: not a refdl file"):
        refdl.load(tmp_path / "junk.npz")


def test_checkpoint_arrays_are_named_after_their_place(tmp_path):
    import refdl
    from refdl import nn, optim
    refdl.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = optim.Adam(model.parameters())
    model(np.ones((1, 3), np.float32))
    model.backward(np.ones((1, 2), np.float32))
    opt.step()
    path = save_checkpoint(tmp_path / "ck.npz", model, opt, epoch=1)
    with np.load(path, allow_pickle=False) as z:
        names = set(z.files)
    assert {"model/weight", "model/bias"} <= names
    assert any(n.startswith("optimizer/state/") and n.endswith("exp_avg") for n in names)
    assert not any(n.startswith("a") and n[1:].isdigit() for n in names)
