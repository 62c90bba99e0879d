"""``refdl exam [ID ...]``: the exam items of docs/exam.md (the paper's claim, what refdl
computed, the verdict), recomputed by running the tests named after their IDs."""
import importlib.util
import re
import subprocess
import sys
import textwrap

from .common import UserError, find

_VERDICT = re.compile(r"\**\bverdicts?\b\**\s*:\s*", re.I)
_VERDICT_WORD = re.compile(
    r"\*\*((?:partly )?(?:agrees|disagrees|ambiguous|conceptual)\b[^*]*)\*\*", re.I)


def cmd_exam(args):
    """``refdl exam``: list the items (no IDs), or print the named ones and run their
    tests; exit status 1 when a test fails or none exists."""
    path = find("docs/exam.md")
    if path is None:
        raise UserError("docs/exam.md not found (neither here, in the refdl source tree, nor "
                        "in the installed package)")
    entries = _exam_entries(path.read_text(encoding="utf-8"))
    ids = [i.lower() for i in args.ids]
    bad = [i for i in ids if not re.fullmatch(r"[a-z]+-\d+[a-z]?", i)]
    if bad:
        raise UserError(f"not an exam item ID: {', '.join(bad)} (IDs look like conv-3)")
    if not ids:
        _list_items(entries, path)
        if not args.all:
            return 0
        ids = list(entries)
    missing = [i for i in ids if i not in entries]
    for i in ids:
        if i in entries and not args.all:
            print(entries[i])
            print()
    if missing:
        print(f"not yet in {path.name}: {', '.join(missing)}")
    return _recompute(ids, path)


def _list_items(entries, path):
    """One line per item: its ID and its verdict."""
    print(f"{len(entries)} exam items in {path}:")
    for i, e in entries.items():
        print(textwrap.fill(_verdict(e), width=96, initial_indent=f"  {i:<10} ",
                            subsequent_indent=" " * 13, break_long_words=False,
                            break_on_hyphens=False))
    print("give IDs (e.g. refdl exam loss-3) to recompute them with their tests")


def _recompute(ids, path):
    """Run the tests named after ``ids`` (pytest -k test_<topic>_<n>_) in the tree the
    tests belong to; the exit status."""
    tests = find("tests")
    if importlib.util.find_spec("pytest") is None or tests is None:
        print("pytest or the tests/ folder is not available: verdicts above are from "
              f"{path.name}, not recomputed")
        return 0
    expr = " or ".join(f"test_{i.replace('-', '_')}_" for i in ids)
    cmd = [sys.executable, "-m", "pytest", "-q", "-k", expr, str(tests)]
    print("recomputing: " + " ".join(cmd[1:]))
    sys.stdout.flush()
    rc = subprocess.call(cmd, cwd=str(tests.parent))   # the tree the tests belong to
    if rc == 5:
        print(f"no test named after {', '.join(ids)} exists yet")
        return 1
    print("exam tests " + ("passed" if rc == 0 else "FAILED"))
    return 0 if rc == 0 else 1


def _exam_entries(text):
    """{id: entry text} from docs/exam.md's '### topic-N' sections."""
    entries, cur, buf = {}, None, []
    for line in text.splitlines():
        m = re.match(r"^###\s+([a-z]+-\d+[a-z]?)\b", line)
        if m or line.startswith("## "):
            if cur:
                entries[cur] = "\n".join(buf).strip()
            cur, buf = (m.group(1), [line]) if m else (None, [])
        elif cur:
            buf.append(line)
    if cur:
        entries[cur] = "\n".join(buf).strip()
    return entries


def _paragraphs(entry):
    """An entry's paragraphs (blank-line separated; each '- ' bullet its own), without
    the heading and the quoted question."""
    entry = re.sub(r"<!-- quote -->.*?<!-- /quote -->", "", entry, flags=re.S)
    paras, cur = [], []
    for line in entry.splitlines()[1:]:
        s = line.strip()
        if not s or re.match(r"^[-*] ", s) or s.startswith("#"):
            if cur:
                paras.append(" ".join(cur))
            cur = [s[2:]] if re.match(r"^[-*] ", s) else []
        else:
            cur.append(s)
    if cur:
        paras.append(" ".join(cur))
    return paras


def _verdict(entry):
    """The entry's verdict, whole: from 'Verdict:' to the end of its paragraph."""
    for para in _paragraphs(entry):
        m = _VERDICT.search(para)
        if m:
            text = para[m.end():]
            break
    else:
        for para in _paragraphs(entry):
            m = _VERDICT_WORD.search(para)
            if m:
                text = para[m.start():]
                break
        else:
            return "(no verdict in docs/exam.md)"
    text = " ".join(text.replace("**", "").split())
    return "Verdict: " + (text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text)
