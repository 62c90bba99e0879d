"""The refdl command, run in-process: exit codes, messages, files written."""
import json

import numpy as np
import pytest

from refdl import nn
from refdl.cli import common, exam, main
from refdl.data import write_idx

def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_default_train_reaches_95_percent(tmp_path, capsys, monkeypatch):
    """`refdl train` alone: LeNet-5 on the digits (Adam 3e-3, cosine schedule, 15 epochs)."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "train")
    assert rc == 0, err
    acc = float(out.split("test accuracy: ")[1].split("%")[0])
    assert acc > 95.0
    assert "lenet5" in out and "epoch 15/15" in out and "samples/s" in out
    run_dir = tmp_path / "runs" / "lenet5-digits"
    for f in ("checkpoint.npz", "history.json", "history.png", "confusion.png",
              "samples.png", "filters.png", "config.json"):
        assert (run_dir / f).is_file(), f
    # a second default run never overwrites the first
    rc, out, _ = run(capsys, "train", "--epochs", "1", "--no-plots", "--quiet")
    assert rc == 0 and (tmp_path / "runs" / "lenet5-digits-2" / "checkpoint.npz").is_file()


def test_mlp_train_reaches_95_percent(tmp_path, capsys):
    """The foundation's first run: an MLP on the digits, in seconds."""
    rc, out, err = run(capsys, "train", "--model", "mlp", "--out", str(tmp_path / "m"),
                       "--no-plots")
    assert rc == 0, err
    assert float(out.split("test accuracy: ")[1].split("%")[0]) > 95.0


def test_resume_and_overwrite_protection(tmp_path, capsys):
    d = str(tmp_path / "r")
    assert run(capsys, "train", "--epochs", "2", "--out", d, "--no-plots")[0] == 0
    ck = tmp_path / "r" / "checkpoint.npz"
    before = ck.read_bytes()
    rc, out, err = run(capsys, "train", "--epochs", "3", "--out", d)
    assert rc == 2 and "already holds a checkpoint" in err and "Traceback" not in err
    assert ck.read_bytes() == before
    rc, out, err = run(capsys, "train", "--epochs", "3", "--out", d, "--resume", "--no-plots")
    assert rc == 0, err
    assert "epoch 3/3" in out and "epoch 1/3" not in out
    assert json.loads((tmp_path / "r" / "history.json").read_text())["epoch"] == [1, 2, 3]
    rc, _, err = run(capsys, "train", "--epochs", "4", "--out", d, "--resume", "--optimizer",
                     "sgd")
    assert rc == 2 and "--optimizer sgd conflicts with the run" in err and "adam" in err
    ck.write_bytes(before[:100])
    rc, _, err = run(capsys, "train", "--epochs", "4", "--out", d, "--resume")
    assert rc == 2 and "corrupt or truncated" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run(capsys, "train", "--out", str(tmp_path / "empty"), "--resume")
    assert rc == 2 and "no checkpoint" in err


def test_resume_with_another_model_is_refused(tmp_path, capsys, monkeypatch):
    d = str(tmp_path / "r")
    assert run(capsys, "train", "--model", "mlp", "--epochs", "1", "--out", d, "--no-plots",
               "--quiet")[0] == 0
    from refdl import models
    monkeypatch.setitem(models._REGISTRY, "tiny", ("_test_models", "WideMLP", "flat", "x"))
    files = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    rc, _, err = run(capsys, "train", "--model", "tiny", "--out", d, "--resume")
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == files
    # the run's config.json says mlp: the explicit --model is refused with the reason
    assert rc == 2 and "--model tiny conflicts with the run" in err and "mlp" in err
    # without config.json, the checkpoint itself refuses the other model
    (tmp_path / "r" / "config.json").unlink()
    files.pop("config.json")
    rc, _, err = run(capsys, "train", "--model", "tiny", "--out", d, "--resume")
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == files
    assert rc == 2 and "checkpoint is from a different MLP: unexpected keys ['5.weight'" in err


def test_bad_names_and_folders(tmp_path, capsys):
    rc, _, err = run(capsys, "train", "--model", "nonet")
    assert rc == 2 and "unknown model 'nonet'; available: " in err
    rc, _, err = run(capsys, "train", "--dataset", "cifar")
    assert rc == 2 and "invalid choice" in err
    rc, _, err = run(capsys, "train", "--dataset", "mnist")
    assert rc == 2 and "--data-dir" in err
    rc, _, err = run(capsys, "train", "--dataset", "mnist", "--data-dir", str(tmp_path / "x"))
    assert rc == 2 and "no such folder" in err
    rc, _, err = run(capsys, "train", "--dataset", "mnist", "--data-dir", str(tmp_path))
    assert rc == 2 and "train-images-idx3-ubyte" in err
    for e in (err,):
        assert "Traceback" not in e


def _mnist(root, n=40):
    rng = np.random.default_rng(0)
    for split, m in (("train", n), ("t10k", 10)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (m, 28, 28), dtype=np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", (np.arange(m) % 10).astype(np.uint8))


def test_mnist_from_folder_and_corrupt_file(tmp_path, capsys):
    _mnist(tmp_path)
    rc, out, err = run(capsys, "train", "--dataset", "fashion-mnist", "--data-dir",
                       str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "o"))
    assert rc == 0, err
    assert "lenet5" in out and "input (1, 28, 28)" in out
    assert (tmp_path / "o" / "filters.png").is_file()
    p = tmp_path / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:20])
    rc, _, err = run(capsys, "train", "--dataset", "mnist", "--data-dir", str(tmp_path),
                     "--epochs", "1", "--out", str(tmp_path / "o2"))
    assert rc == 2 and "t10k-labels-idx1-ubyte.gz" in err and "corrupt" in err


def test_generated_sets_and_optimisers(tmp_path, capsys):
    for ds, opt, sch in (("spirals", "sgd", "cosine"), ("moons", "rmsprop", "onecycle"),
                         ("moons", "adamw", "step")):
        rc, out, err = run(capsys, "train", "--dataset", ds, "--optimizer", opt, "--epochs",
                           "3", "--scheduler", sch, "--clip-grad-norm", "1.0",
                           "--out", str(tmp_path / (ds + opt)))
        assert rc == 0, err
        assert "input (2,)" in out
        lrs = json.loads((tmp_path / (ds + opt) / "history.json").read_text())["lr"]
        assert len(set(lrs)) == 3          # the schedule changed the learning rate


def test_non_finite_loss_exits_1(tmp_path, capsys):
    rc, out, err = run(capsys, "train", "--lr", "1e30", "--optimizer", "sgd", "--epochs", "3",
                       "--out", str(tmp_path / "nan"), "--no-plots")
    assert rc == 1 and "the loss became" in err and "at epoch 1, step" in err
    assert "Traceback" not in err


def test_summary(capsys):
    rc, out, _ = run(capsys, "summary", "mlp", "--input-shape", "1,8,8")
    assert rc == 0 and "Total params: 17,226" in out and "(1, 10)" in out
    rc, out, _ = run(capsys, "summary", "mlp")
    assert rc == 0 and "Total params: 17,226" in out
    rc, _, err = run(capsys, "summary", "resnet999")
    assert rc == 2 and "unknown model" in err
    rc, _, err = run(capsys, "summary", "mlp", "--input-shape", "1,x")
    assert rc == 2 and "--input-shape" in err


def test_gradcheck_table_and_failure(tmp_path, capsys, monkeypatch):
    rc, out, _ = run(capsys, "gradcheck", "Linear", "Tanh", "--plot", str(tmp_path / "g.png"))
    assert rc == 0 and "Linear" in out and "2 passed, 0 failed" in out
    assert (tmp_path / "g.png").is_file()
    rc, _, err = run(capsys, "gradcheck", "Nonsense")
    assert rc == 2 and "unknown layer" in err

    class BadLinear(nn.Linear):
        def backward(self, g):
            return 2 * super().backward(g)
    monkeypatch.setattr(nn, "Linear", BadLinear)
    rc, out, _ = run(capsys, "gradcheck", "Linear")
    assert rc == 1 and "FAIL" in out and "1 failed" in out


def test_exam_and_bench(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common, "REPO", tmp_path)
    rc, _, err = run(capsys, "exam")
    assert rc == 2 and "docs/exam.md not found" in err
    rc, _, err = run(capsys, "bench")
    assert rc == 2 and "benchmarks" in err
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "exam.md").write_text(
        "## loss\n\n### loss-3\n\n- Paper: TP/(TP+FP).\n- refdl: 0.5\n- Verdict: **agrees**\n"
        "\n## next\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_exam_x.py").write_text(
        "def test_loss_3_demo():\n    assert 1 + 1 == 2\n")
    rc, out, _ = run(capsys, "exam")
    assert rc == 0 and "loss-3" in out and "Verdict: agrees" in out
    rc = main(["exam", "loss-3"])
    out = capsys.readouterr().out
    assert rc == 0 and "refdl: 0.5" in out and "exam tests passed" in out
    with monkeypatch.context() as m:
        m.setattr(exam.subprocess, "call", lambda cmd, **k: 5)   # pytest: none collected
        assert main(["exam", "loss-9"]) == 1           # no such test
    capsys.readouterr()
    rc, _, err = run(capsys, "exam", "bogus")
    assert rc == 2 and "not an exam item ID" in err
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "b1.py").write_text("print('ratio 1.0')\n")
    assert main(["bench"]) == 0
    rc, _, err = run(capsys, "bench", "nope")
    assert rc == 2 and "unknown benchmark" in err


@pytest.mark.parametrize("cmd", [[], ["train"], ["gradcheck"], ["summary"], ["exam"], ["bench"]])
def test_help(capsys, cmd):
    rc = main(cmd + ["--help"])
    out = capsys.readouterr().out
    assert rc == 0 and "usage: refdl" in out


@pytest.mark.parametrize("layout,shape", [("image", "(1, 8, 8)"), ("sequence", "(8, 8)"),
                                          ("flat", "(64,)")])
def test_model_layout_decides_the_data_shape(tmp_path, capsys, monkeypatch, layout, shape):
    from refdl import models
    monkeypatch.setitem(models._REGISTRY, "m", ("refdl.models.mlp", "MLP", layout, "x"))
    rc, out, err = run(capsys, "train", "--model", "m", "--epochs", "1", "--no-plots",
                       "--out", str(tmp_path / layout))
    assert rc == 0, err
    assert f"input {shape}" in out
    if layout != "flat":
        rc, _, err = run(capsys, "train", "--model", "m", "--dataset", "moons")
        assert rc == 2 and f"the model needs '{layout}' input" in err


def test_image_model_writes_feature_maps(tmp_path, capsys):
    rc, out, err = run(capsys, "train", "--model", "lenet5", "--epochs", "1",
                       "--out", str(tmp_path / "t"))
    assert rc == 0, err
    assert (tmp_path / "t" / "feature_maps.png").is_file()


def test_python_dash_m_refdl():
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "refdl", "summary", "nonet"], cwd=root,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("refdl summary: error: unknown model")
    assert "Traceback" not in r.stderr


def test_exam_verdict_parsing():
    entries = exam._exam_entries("## a\n### conv-3\nClaim ... **Agrees.** (`t`)\n### x-1\n"
                                "- **Verdict: disagrees** (3 != 4)\n## b\ntext\n")
    assert list(entries) == ["conv-3", "x-1"]
    # the whole verdict, from the verdict word to the end of its paragraph (never cut)
    assert exam._verdict(entries["conv-3"]) == "Verdict: agrees. (`t`)"
    assert exam._verdict(entries["x-1"]) == "Verdict: disagrees (3 != 4)"
    long = exam._exam_entries("### y-2\n\n<!-- quote -->\n> Q?\n<!-- /quote -->\n\nSome text.\n"
                             "Verdict: **partly agrees**: the answer\nis right, the reason\n"
                             "is not.\n\nA later paragraph.\n")
    assert exam._verdict(long["y-2"]) == ("Verdict: partly agrees: the answer is right, the "
                                         "reason is not.")
    assert exam._verdict("### z-1\nno verdict here\n") == "(no verdict in docs/exam.md)"
