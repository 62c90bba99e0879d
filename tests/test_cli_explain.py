"""`refdl explain LAYER`, and `refdl exam`/`bench` reading the copies an installed wheel ships."""
import re
from pathlib import Path

import pytest

from refdl.cli import common, main, train

ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _def_line(path, cls, meth):
    """Line of `def meth` inside `class cls` by reading the file (not inspect)."""
    lines = Path(path).read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"class {cls}("))
    return next(i for i in range(start, len(lines))
                if lines[i].strip().startswith(f"def {meth}(")) + 1


def test_explain_linear_prints_formulas_page_and_source_lines(capsys):
    rc, out, _ = run(capsys, "explain", "linear")
    assert rc == 0
    assert "dL/dx = g W" in out and "dL/dW = g^T x" in out          # the docstring
    page = (ROOT / "docs" / "derivations" / "linear.md").read_text().rstrip()
    assert page in out                                              # the derivation page
    src = ROOT / "refdl" / "nn" / "linear.py"
    for meth in ("forward", "backward"):
        m = re.search(rf"^{meth}\s+(\S+):(\d+)$", out, re.M)
        assert m and Path(m.group(1)).resolve() == src.resolve()
        assert int(m.group(2)) == _def_line(src, "Linear", meth)


def test_explain_inherited_methods_and_page_by_source_file(capsys):
    rc, out, _ = run(capsys, "explain", "BatchNorm2d", "--no-page")
    assert rc == 0
    assert "inherited from _BatchNorm" in out
    assert re.search(r"derivation: .*derivations/batchnorm\.md", out)
    assert "Backward, with g = dL/dy" in out           # the module doc the class points to
    rc, out, _ = run(capsys, "explain", "lstm", "--no-page")
    assert rc == 0 and re.search(r"derivation: .*derivations/lstm\.md", out)


def test_explain_unknown_layer_is_a_one_line_error(capsys):
    rc, out, err = run(capsys, "explain", "Lenear")
    assert rc == 2 and "unknown layer 'Lenear'" in err and "Linear" in err
    assert "Traceback" not in err


def test_exam_and_explain_read_the_shipped_copies(tmp_path, capsys, monkeypatch):
    """After `pip install .` there is no source tree: the wheel's refdl/_shipped/ is read."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common, "REPO", tmp_path / "nowhere")
    shipped = tmp_path / "_shipped"
    monkeypatch.setattr(common, "SHIPPED", shipped)
    rc, _, err = run(capsys, "exam")
    assert rc == 2 and "not found" in err
    (shipped / "docs" / "derivations").mkdir(parents=True)
    (shipped / "docs" / "exam.md").write_text("## a\n\n### loss-3\n\n- Verdict: **agrees**\n")
    (shipped / "docs" / "derivations" / "linear.md").write_text("# the shipped page\n")
    rc, out, _ = run(capsys, "exam", "loss-3")
    assert rc == 0 and "Verdict: **agrees**" in out and "not recomputed" in out
    rc, out, _ = run(capsys, "explain", "Linear")
    assert rc == 0 and "# the shipped page" in out
    (shipped / "benchmarks").mkdir()
    (shipped / "benchmarks" / "b1.py").write_text("print('ratio 1.0')\n")
    assert main(["bench"]) == 0


def test_setup_ships_what_the_commands_read():
    """setup.py's SHIPPED patterns match the files exam/explain/bench read."""
    import ast
    tree = ast.parse((ROOT / "setup.py").read_text())
    shipped = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                   and getattr(n.targets[0], "id", "") == "SHIPPED")
    found = {folder: sorted((ROOT / folder).glob(pat)) for folder, pat in shipped}
    assert ROOT / "docs" / "exam.md" in found["docs"]
    assert len(found["docs/derivations"]) == len(list((ROOT / "docs/derivations").glob("*.md")))
    assert ROOT / "benchmarks" / "bench_conv.py" in found["benchmarks"]


def test_train_help_names_the_default_model(capsys):
    rc, out, _ = run(capsys, "train", "--help")
    assert rc == 0
    text = " ".join(out.split())
    assert f"options: {train.DEFAULT_MODEL} (LeNet-5)" in text and "the MLP" not in text
