#!/usr/bin/env python
"""Quote each exam question in docs/exam.md, so the project carries what it cites.

Reads the papers (default ../shared/exam/*.txt, or --papers DIR) and writes, under each
'### <id>' heading of docs/exam.md, a block quote of the paper's own lines for that item
between <!-- quote --> markers (re-running replaces the block). The line ranges below
were chosen by reading the papers: question text and options, never the answer key,
except for paper 003, which prints only answers (the quote then says so).

    python scripts/exam_quotes.py [--papers ../shared/exam] [--check]

--check exits 1 when docs/exam.md's quotes differ from what the papers give.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
P = {"000": "000_137aa34ba5b602fa.txt", "001": "001_caecbbd6c9b42701.txt",
     "002": "002_1dd97005a3e8f371.txt", "003": "003_b1af32c6cf1aee22.txt",
     "004": "004_b744891074ae042b.txt"}
ANSWERS_ONLY = {"003"}

# id: (paper, where, [(first line, last line), ...])   1-based, inclusive
QUOTES = {
    "graph-1": ("001", "Q5(a)-(e)", [(127, 136), (143, 143), (150, 150), (157, 157), (164, 164)]),
    "graph-2": ("001", "Q5(f)", [(183, 213)]),
    "graph-3": ("001", "Q5(g)", [(231, 247)]),
    "graph-4": ("001", "Q5(g), the given facts", [(249, 261)]),
    "frame-1": ("000", "Beginner Q6", [(37, 43)]),
    "frame-2": ("001", "Q12(a)", [(643, 648)]),
    "frame-3": ("001", "Q12(b)", [(652, 687)]),
    "frame-4": ("001", "Q12(c)", [(697, 704)]),
    "frame-5": ("003", "Question 4(a)", [(21, 21)]),
    "mlp-1": ("000", "Beginner Q2", [(21, 23)]),
    "mlp-2": ("000", "Beginner Q8", [(53, 53)]),
    "mlp-3": ("000", "Beginner Q9", [(57, 57)]),
    "mlp-4": ("001", "Q3(d)", [(49, 52)]),
    "mlp-5": ("001", "Q4(a)", [(71, 88)]),
    "mlp-6": ("001", "Q4(b)", [(102, 114)]),
    "mlp-7": ("003", "Question 1(a)", [(7, 7)]),
    "mlp-8": ("003", "Question 1(b)", [(8, 8)]),
    "act-1": ("001", "Q3(a)", [(9, 14)]),
    "act-2": ("001", "Q3(e)", [(56, 66)]),
    "act-3": ("003", "Question 10(a)-(b)", [(57, 61)]),
    "act-4": ("003", "Question 10(c), MLP", [(63, 65)]),
    "loss-1": ("001", "Q3(b)", [(18, 29)]),
    "loss-2": ("001", "Q3(c)", [(33, 42)]),
    "loss-3": ("002", "Q4", [(8, 8)]),
    "loss-4": ("004", "Q3 and Q3(e)", [(38, 38), (44, 44)]),
    "init-1": ("000", "Beginner Q7", [(47, 47)]),
    "init-2": ("001", "Q7(a)", [(317, 326)]),
    "init-3": ("001", "Q7(b)", [(331, 341)]),
    "init-4": ("001", "Q7(c)", [(359, 371)]),
    "init-5": ("001", "Q7(d)", [(376, 384)]),
    "opt-1": ("001", "Q6(a)", [(293, 310)]),
    "opt-2": ("000", "Advanced Q1", [(91, 93)]),
    "opt-3": ("003", "Question 3(a)", [(17, 17)]),
    "opt-4": ("003", "Question 10(c), RNN", [(63, 63), (67, 67)]),
    "norm-1": ("001", "Q8 and Q8(a)", [(391, 399)]),
    "norm-2": ("001", "Q8(b)", [(405, 407)]),
    "norm-3": ("001", "Q8(c)", [(415, 423)]),
    "reg-1": ("000", "Intermediate Q2", [(87, 87)]),
    "reg-2": ("001", "Q9(a)", [(428, 453)]),
    "reg-3": ("001", "Q9(b)", [(458, 464)]),
    "reg-4": ("001", "Q9(c)", [(469, 473)]),
    "conv-1": ("001", "Q10(a)", [(481, 488)]),
    "conv-2": ("001", "Q10(b)", [(495, 510)]),
    "conv-3": ("002", "Q1", [(5, 5)]),
    "conv-4": ("002", "Q2", [(6, 6)]),
    "conv-5": ("003", "Question 5(a)", [(26, 28)]),
    "conv-6": ("003", "Question 2(b)", [(13, 13)]),
    "conv-7": ("001", "Q11(f)", [(630, 635)]),
    "pool-1": ("001", "Q10(c)", [(518, 527)]),
    "pool-2": ("002", "Q3", [(7, 7)]),
    "tconv-1": ("000", "Beginner Q1", [(17, 19)]),
    "tconv-2": ("004", "Q3 and Q3(c)", [(38, 38), (42, 42)]),
    "cnn-1": ("001", "Q11(a)", [(534, 555)]),
    "cnn-2": ("001", "Q11(b)", [(569, 581)]),
    "cnn-3": ("001", "Q11(c)", [(597, 608)]),
    "cnn-4": ("001", "Q11(d)-(e)", [(612, 615), (619, 624)]),
    "cnn-5": ("003", "Question 2(a)", [(12, 12)]),
    "cnn-6": ("004", "Q3 and Q3(a)", [(38, 39)]),
    "cnn-7": ("004", "Q3(b)", [(41, 41)]),
    "cnn-8": ("004", "Q3(d)", [(43, 43)]),
    "cnn-9": ("003", "Question 10(c), CNN", [(63, 63), (66, 66)]),
    "rnn-1": ("002", "Q9", [(37, 45)]),
    "rnn-2": ("002", "Q10", [(47, 53)]),
    "rnn-3": ("003", "Question 6(a)-(b)", [(32, 33)]),
    "attn-1": ("002", "Q11", [(57, 57)]),
    "attn-2": ("002", "Q12, statement 1", [(59, 59), (61, 61)]),
    "attn-3": ("002", "Q12, statements 2 and 5", [(59, 59), (62, 62), (65, 65)]),
    "attn-4": ("002", "Q12, statement 3", [(59, 59), (63, 63)]),
    "attn-5": ("002", "Q12, statement 4", [(59, 59), (64, 64)]),
    "attn-6": ("003", "Question 7(a)-(d)", [(37, 41)]),
    "attn-7": ("004", "Q4", [(45, 45)]),
    "vae-1": ("000", "Beginner Q3", [(25, 27)]),
    "vae-2": ("000", "Beginner Q4", [(29, 31)]),
    "vae-3": ("002", "Q5", [(12, 16)]),
    "vae-4": ("002", "Q6", [(18, 23)]),
    "vae-5": ("004", "Q2 and Q2(a)", [(30, 36)]),
    "vae-6": ("004", "Q2(b) (setting: vae-5)", [(37, 37)]),
    "gan-1": ("000", "Beginner Q5", [(33, 35)]),
    "gan-2": ("000", "Advanced Q2", [(108, 108)]),
    "gan-3": ("002", "Q7", [(27, 27)]),
    "gan-4": ("002", "Q8", [(28, 33)]),
    "gan-5": ("003", "Question 8(a)", [(45, 45)]),
    "gan-6": ("004", "Q1 and Q1(a)", [(19, 25)]),
    "gan-7": ("004", "Q1(b) (setting: gan-6)", [(27, 27)]),
    "gan-8": ("004", "Q1(c)", [(28, 28)]),
    "gan-9": ("004", "Q1(d)", [(29, 29)]),
    "diff-1": ("003", "Question 9(a)", [(49, 49)]),
    "diff-2": ("003", "Question 9(b)", [(50, 50)]),
    "diff-3": ("003", "Question 9(c)", [(51, 53)]),
    "viz-1": ("000", "Intermediate Q1", [(63, 67)]),
    "viz-2": ("000", "Intermediate Q1, first bullet", [(69, 71)]),
    "viz-3": ("000", "Intermediate Q1, second bullet", [(72, 72)]),
    "viz-4": ("000", "Intermediate Q1, third bullet", [(73, 73)]),
    "viz-5": ("000", "Intermediate Q1, fourth bullet", [(74, 74)]),
}


def quote(papers, item):
    paper, where, ranges = QUOTES[item]
    lines = (papers / P[paper]).read_text(encoding="utf-8").splitlines()
    body = []
    for a, b in ranges:
        if body:
            body.append("[…]")
        body += [ln.rstrip() for ln in lines[a - 1:b] if ln.strip()]
    head = f"Paper {paper}, {where}"
    if paper in ANSWERS_ONLY:
        head += " (the paper prints answers only; quoted is its answer, the claim judged)"
    out = ["<!-- quote -->", f"> **{head}:**", ">"]
    out += ["> " + ln.replace("\t", " ") for ln in body]
    out.append("<!-- /quote -->")
    return "\n".join(out)


def rewrite(text, papers):
    text = re.sub(r"\n<!-- quote -->.*?<!-- /quote -->\n", "\n", text, flags=re.S)
    out, seen = [], set()
    for line in text.split("\n"):
        out.append(line)
        m = re.match(r"^###\s+([a-z]+-\d+)\s*$", line)
        if m and m.group(1) in QUOTES:
            seen.add(m.group(1))
            out += ["", quote(papers, m.group(1))]
    missing = set(QUOTES) - seen
    if missing:
        raise SystemExit(f"no '### id' heading for {sorted(missing)}")
    return "\n".join(out)


def main(argv):
    papers = ROOT.parent / "shared" / "exam"
    if "--papers" in argv:
        papers = Path(argv[argv.index("--papers") + 1])
    if not papers.is_dir():
        papers = Path("/work/shared/exam")
    doc = ROOT / "docs" / "exam.md"
    old = doc.read_text(encoding="utf-8")
    new = rewrite(old, papers)
    if "--check" in argv:
        return int(new != old)
    doc.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
