"""Honest training from the command line: choices on a validation split of the training
data, the test split evaluated once, a diverged run reported with a non-zero exit, the
header saying which learning rate was asked for and which path runs the kernels."""
import json
import math
import re

import numpy as np
import pytest

import refdl
from refdl.cli import main
from refdl.cli.train_run import validation_split


def run(tmp_path, capsys, *extra, name="run"):
    rc = main(["train", "--model", "mlp", "--epochs", "2", "--no-plots",
               "--out", str(tmp_path / name), *extra])
    return rc, capsys.readouterr()


def test_validation_split_is_held_out_and_the_test_split_reported_once(tmp_path, capsys):
    rc, out = run(tmp_path, capsys)
    assert rc == 0
    assert "(1293 train / 144 validation / 360 test" in out.out     # round(0.1 * 1437)
    assert out.out.count("test accuracy") == 1 and "evaluated once after training" in out.out
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(hist["val_loss"]) == 2 and len(hist["val_accuracy"]) == 2
    # the validation accuracy is measured on 144 examples: a multiple of 1/144
    assert all(abs(a * 144 - round(a * 144)) < 1e-9 for a in hist["val_accuracy"])


def test_no_validation_split_on_request(tmp_path, capsys):
    rc, out = run(tmp_path, capsys, "--val-split", "0")
    assert rc == 0 and "(1437 train / 0 validation / 360 test" in out.out
    assert "val_loss" not in json.loads((tmp_path / "run" / "history.json").read_text())


def test_split_is_seeded_disjoint_and_complete():
    x = np.arange(100.0)[:, None]
    y = np.arange(100) % 10
    (xt, yt), (xv, yv) = validation_split(x, y, 0.2, seed=3)
    assert len(xv) == 20 and len(xt) == 80
    assert sorted(np.concatenate([xt[:, 0], xv[:, 0]]).tolist()) == list(range(100))
    (_, _), (xv2, _) = validation_split(x, y, 0.2, seed=3)
    np.testing.assert_array_equal(xv, xv2)
    (_, _), (xv3, _) = validation_split(x, y, 0.2, seed=4)
    assert not np.array_equal(xv, xv3)


@pytest.mark.parametrize("value", ["1", "-0.1", "1.5"])
def test_bad_val_split_is_refused(tmp_path, capsys, value):
    rc, out = run(tmp_path, capsys, "--val-split", value)
    assert rc == 2 and "--val-split must be a fraction in [0, 1)" in out.err


def test_a_diverged_run_warns_and_exits_non_zero(tmp_path, capsys):
    rc, out = run(tmp_path, capsys, "--optimizer", "sgd", "--lr", "50")
    assert rc == 3
    assert "training diverged" in out.err and "log 10 = 2.303" in out.err
    rc, out = run(tmp_path, capsys, "--optimizer", "sgd", "--lr", "0.05", name="ok")
    assert rc == 0 and "diverged" not in out.err


def test_header_reports_the_lr_asked_for_and_the_kernel_path(tmp_path, capsys):
    rc, out = run(tmp_path, capsys, "--scheduler", "onecycle", "--lr", "0.2",
                  "--optimizer", "sgd")
    assert rc == 0
    assert "sgd lr=0.2 (onecycle peak; it starts at 0.008" in out.out
    path = "compiled kernels" if refdl.ext.available() else "NumPy reference path"
    assert path in out.out.splitlines()[0]


def test_onecycle_is_planned_for_the_steps_the_run_takes(tmp_path, capsys):
    """The one-cycle schedule is planned on the training part left after the validation
    split, so the run uses up exactly its plan and ends where the header says (near 0)."""
    from refdl.checkpoint import read_checkpoint

    rc, out = run(tmp_path, capsys, "--scheduler", "onecycle", "--val-split", "0.2")
    assert rc == 0, out.err
    n_train = int(re.search(r"\((\d+) train / \d+ validation", out.out).group(1))
    assert n_train == 1437 - round(0.2 * 1437)
    steps = 2 * math.ceil(n_train / 32)                 # 2 epochs of batch 32
    sched = read_checkpoint(tmp_path / "run" / "checkpoint.npz")["scheduler"]
    assert sched["total_steps"] == steps
    assert sched["last_epoch"] == steps
