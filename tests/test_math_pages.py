"""The derivation pages' math is LaTeX that the site renders (issue 17).

Each page of docs/derivations/ is converted with the same Markdown extensions as the site
(mkdocs.yml: pymdownx.arithmatex in generic mode, which hands ``\\(..\\)`` and ``\\[..\\]``
spans to MathJax). The test fails when

* a ``$`` survives the conversion: a formula arithmatex did not recognise (an unclosed
  ``$``, a ``$$`` block inside a list item on one line, a space after an opening ``$``),
  so the reader sees dollar signs instead of math;
* math is written in Unicode instead of LaTeX (Σ, ∂, ᵀ, ⊙, Greek letters...) in the prose
  or in an un-highlighted code block (the old pages' indented pseudo-math): MathJax never
  sees it. Highlighted code (```python) may say what it likes in its comments;
* a formula would not typeset: unbalanced braces, ``\\begin``/``\\end`` or
  ``\\left``/``\\right`` that do not pair, a macro outside the TeX/AMS set MathJax's
  default ``tex-mml-chtml`` bundle knows (KNOWN below, plus the page's own ``\\newcommand``
  definitions if any; ``\\argmax`` and ``\\bm`` are not in it), or ``\\_`` inside
  ``\\text{}``, which MathJax prints with its backslash.

The rules were checked against MathJax 3.2.2 itself: every formula of these pages (1,900)
typeset with its TeX input in node without an error when they were converted.
"""
import html
import pathlib
import re

import pytest

import markdown    # the test extra installs it (and pymdown-extensions)

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs" / "derivations").glob("*.md"))

EXTENSIONS = ["admonition", "attr_list", "tables", "toc", "pymdownx.arithmatex",
              "pymdownx.superfences", "pymdownx.highlight", "pymdownx.inlinehilite"]

# Unicode that means the page wrote math outside LaTeX.
GREEK = "αβγδεζηθικλμνξπρστυφχψωΓΔΘΛΞΠΣΦΨΩϵϑϕ"
MATH_CHARS = set(GREEK + "∑∂∇⊙⊗ᵀ≤≥≈≠√∈∉∏⌊⌋⌈⌉∞±·×÷∘∝⟨⟩‖ᵢⱼₙₖₜ₀₁₂₃²³⁻¹")

KNOWN = set("""
alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu
xi pi varpi rho varrho sigma varsigma tau upsilon phi varphi chi psi omega Gamma Delta
Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega
frac dfrac tfrac sqrt sum prod int oint lim limsup liminf max min sup inf arg log ln exp sin cos tan tanh sinh cosh det dim ker Pr operatorname mathrm mathbf
mathit mathcal mathbb mathsf mathtt boldsymbol text textbf textit textrm texttt
left right big Big bigg Bigg bigl bigr Bigl Bigr biggl biggr middle
partial nabla infty cdot cdots ldots dots vdots ddots times div pm mp circ odot otimes
oplus ast star bullet le leq ge geq ne neq approx equiv sim simeq propto ll gg in notin ni
subset subseteq supset cup cap setminus emptyset forall exists neg land lor to
rightarrow leftarrow Rightarrow Leftarrow leftrightarrow Leftrightarrow mapsto implies
iff gets uparrow downarrow longrightarrow
langle rangle lfloor rfloor lceil rceil lvert rvert lVert rVert vert Vert mid
hat widehat tilde widetilde bar overline underline vec dot ddot check breve acute grave
overbrace underbrace overset underset stackrel
top intercal prime ell hbar Re Im
quad qquad , ; : ! enspace thinspace space
begin end cases aligned align pmatrix bmatrix vmatrix matrix array split gathered
displaystyle textstyle scriptstyle limits nolimits
boxed color tag label nonumber notag newcommand def
mathop mathbin mathrel substack phantom hphantom vphantom
""".split())
KNOWN |= {"{", "}", "|", "_", "%", "#", "&", " ", "\\", "$", ","}

MATH = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.S)
HIGHLIGHT = re.compile(r'<div class="highlight">(.*?)</div>', re.S)
CODE = re.compile(r"<code>(.*?)</code>", re.S)
TAG = re.compile(r"<[^>]+>")


def convert(text):
    md = markdown.Markdown(extensions=EXTENSIONS,
                           extension_configs={"pymdownx.arithmatex": {"generic": True}})
    return md.convert(text)


def parts(page_html):
    """(the math spans, the text of plain code blocks, the prose) of a converted page."""
    maths = [html.unescape(m.group(2)) for m in MATH.finditer(page_html)]
    rest = MATH.sub(" ", page_html)
    plain_code = []
    for block in HIGHLIGHT.findall(rest):
        if re.search(r'<span class="[^"]+"', block) is None:   # no lexer ran: plain text
            plain_code.append(html.unescape(TAG.sub("", block)))
    rest = HIGHLIGHT.sub(" ", rest)
    rest = CODE.sub(" ", rest)                                  # inline `code`
    return maths, plain_code, html.unescape(TAG.sub(" ", rest))


def latex_problems(tex):
    """Why a formula would not typeset (an empty list when it would)."""
    body = tex.strip()
    for opener, closer in (("\\(", "\\)"), ("\\[", "\\]")):
        if body.startswith(opener) and body.endswith(closer):
            body = body[2:-2]
    problems = []
    depth = 0
    for ch, prev in zip(body, " " + body):
        if prev == "\\":
            continue
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            problems.append("a '}' closes nothing")
            depth = 0
    if depth:
        problems.append(f"{depth} unclosed '{{'")
    begins = re.findall(r"\\begin\{(\w+\*?)\}", body)
    ends = re.findall(r"\\end\{(\w+\*?)\}", body)
    if begins != ends[::-1] and sorted(begins) != sorted(ends):
        problems.append(f"\\begin {begins} against \\end {ends}")
    if len(re.findall(r"\\left\b", body)) != len(re.findall(r"\\right\b", body)):
        problems.append("\\left and \\right do not pair")
    defined = set(re.findall(r"\\(?:newcommand|def)\{?\\(\w+)", body))
    for macro in re.findall(r"\\([A-Za-z]+|.)", body):
        if macro not in KNOWN and macro not in defined:
            problems.append(f"unknown macro \\{macro}")
    # MathJax's text mode prints "\_" with its backslash (\mathrm{running\_mean} is fine)
    for text in re.findall(r"\\text(?:bf|it|rm|tt)?\{([^{}]*)\}", body):
        if "\\_" in text:
            problems.append(f"'\\_' inside \\text{{{text}}} shows its backslash (use \\mathrm)")
    unicode = sorted(set(body) & MATH_CHARS)
    if unicode:
        problems.append(f"Unicode math {''.join(unicode)} (write it in LaTeX)")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_derivation_page_math_renders(page):
    maths, plain_code, prose = parts(convert(page.read_text(encoding="utf-8")))
    errors = []
    if "$" in prose:
        where = [ln.strip()[:80] for ln in prose.splitlines() if "$" in ln]
        errors.append(f"'$' that arithmatex did not take as math: {where[:3]}")
    stray = sorted(set(prose) & MATH_CHARS)
    if stray:
        lines = [ln.strip()[:80] for ln in prose.splitlines() if set(ln) & MATH_CHARS]
        errors.append(f"Unicode math in the prose {''.join(stray)}: {lines[:3]}")
    for block in plain_code:
        if set(block) & MATH_CHARS:
            errors.append(f"pseudo-math in a plain code block: {block.strip()[:80]!r}")
    for tex in maths:
        for problem in latex_problems(tex):
            errors.append(f"{problem}: {tex.strip()[:80]!r}")
    assert not errors, f"{page.name}:\n" + "\n".join(errors)
    if page.stem != "index":
        assert maths, f"{page.name} has no LaTeX formula at all"


def test_the_checker_catches_each_kind_of_break():
    """Every rule above fails on a page that breaks it, and passes the LaTeX it allows."""
    good = "A $y = \\sum_i x_i W^\\top$ and\n\n$$\n\\frac{\\partial L}{\\partial x} = g W\n$$\n"
    maths, code, prose = parts(convert(good))
    assert len(maths) == 2 and "$" not in prose
    assert [p for t in maths for p in latex_problems(t)] == []
    _, _, prose = parts(convert("cost $ 5 and $x\n"))
    assert "$" in prose
    _, code, _ = parts(convert("text\n\n    y = Σ_i x_i\n"))
    assert set(code[0]) & MATH_CHARS
    _, _, prose = parts(convert("the gradient ∂L/∂x\n"))
    assert set(prose) & MATH_CHARS
    _, code, _ = parts(convert("```python\nx = 1  # σ is fine in a comment\n```\n"))
    assert code == []
    assert latex_problems("\\(\\frac{a}{b\\)")
    assert latex_problems("\\(\\left( x \\)")
    assert latex_problems("\\(\\begin{aligned} x \\end{cases}\\)")
    assert latex_problems("\\(\\fraq{a}{b}\\)")
    assert latex_problems("\\(Σ_i x_i\\)")
    assert latex_problems("\\(\\text{running\\_mean}\\)")
    assert latex_problems("\\(\\argmax_i x_i\\)")      # not in MathJax's default bundle
    assert latex_problems("\\(\\mathrm{running\\_mean}\\)") == []
