"""docs/exam.md and `refdl exam`: every entry quotes its question, has a whole verdict,
names a test that exists, and the summary agrees with the entries."""
import re
from pathlib import Path

import pytest

from refdl import cli
from refdl.cli.exam import _exam_entries, _verdict

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "exam.md").read_text(encoding="utf-8")
ENTRIES = _exam_entries(DOC)
WORDS = ("partly agrees", "agrees", "disagrees", "ambiguous", "conceptual")
CONCEPTUAL_ONLY = {"cnn-4", "attn-6", "gan-6", "reg-4"}


def verdict_word(item):
    v = _verdict(ENTRIES[item])[len("Verdict: "):].lower()
    return next(w for w in WORDS if v.startswith(w))


def test_94_entries_each_with_a_quoted_question():
    assert len(ENTRIES) == 94
    for item, text in ENTRIES.items():
        assert "<!-- quote -->\n> **Paper 00" in text, item


@pytest.mark.parametrize("item", sorted(ENTRIES))
def test_every_verdict_is_whole(item):
    v = _verdict(ENTRIES[item])
    assert v.startswith("Verdict: ") and "(no verdict" not in v
    body = v[len("Verdict: "):]
    assert any(body.lower().startswith(w) for w in WORDS), v
    assert body.rstrip()[-1] in ".)`", f"{item}: verdict cut mid-sentence: {v!r}"


def test_named_tests_exist():
    names = set()
    for f in (ROOT / "tests").glob("test_*.py"):
        names |= set(re.findall(r"^def (test_\w+)", f.read_text(), re.M))
    for item, text in ENTRIES.items():
        stem = "test_" + item.replace("-", "_") + "_"
        if item in CONCEPTUAL_ONLY:
            continue
        assert any(n.startswith(stem) for n in names), f"no test named after {item}"
        for cited in re.findall(r"`(test_[a-z]+_\d+_\w*)", text):
            assert any(n.startswith(cited.rstrip("_.")) for n in names), (item, cited)


def summary():
    return DOC[DOC.index("## Summary"):DOC.index("## graph:")]


def test_summary_agrees_with_the_entries():
    s = summary()
    table = re.findall(r"^\| ([a-z]+-\d+) \|", s, re.M)
    assert table and all(verdict_word(i) == "disagrees" for i in table), \
        {i: verdict_word(i) for i in table}
    disagree = {i for i in ENTRIES if verdict_word(i) == "disagrees"}
    assert disagree == set(table)
    for word, label in (("partly agrees", "Partly agrees"), ("ambiguous", "Ambiguous"),
                        ("conceptual", "Conceptual")):
        seg = s[s.index(label + " ("):] if label == "Partly agrees" else s[s.index(label + ":"):]
        seg = seg[:seg.index(".")] if label != "Partly agrees" else seg[:seg.index("Ambiguous")]
        listed = set(re.findall(r"\b([a-z]+-\d+)\b", seg))
        assert listed == {i for i in ENTRIES if verdict_word(i) == word}, (word, listed)


def test_cli_lists_every_verdict(capsys):
    cli.main(["exam"])
    out = capsys.readouterr().out
    listed = re.findall(r"^  ([a-z]+-\d+)\s+Verdict: ", out, re.M)
    assert listed == list(ENTRIES)
    assert "(no verdict" not in out
