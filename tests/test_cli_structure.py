"""The refdl command stays a house a newcomer can find their way in (docs/architecture.md):
refdl/cli/ is a package with one module per command, every function in it at most
MAX_FUNCTION_LINES lines from ``def`` to its last line (its docstring not counted) and
every module at most MAX_MODULE_LINES lines. Measured on the source with ast."""
import pathlib
import textwrap

from test_architecture import function_lengths    # the house's one measure of length

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLI = ROOT / "refdl" / "cli"
MAX_FUNCTION_LINES = 50
MAX_MODULE_LINES = 400


def cli_files():
    return sorted(CLI.rglob("*.py"))


def test_the_command_is_a_package_with_a_module_per_command():
    assert not (ROOT / "refdl" / "cli.py").exists(), "refdl/cli.py is back: the package is refdl/cli/"
    names = {p.stem for p in cli_files()}
    for module in ("__init__", "parser", "common", "train", "train_text", "sample", "gradcheck",
                   "summary", "exam", "bench", "explain"):
        assert module in names, f"refdl/cli/{module}.py is missing"


def test_every_function_fits_on_a_screen():
    long = [f"{p.relative_to(ROOT)}:{line} {name} has {n} lines"
            for p in cli_files()
            for name, line, n in function_lengths(p.read_text(encoding="utf-8"))
            if n > MAX_FUNCTION_LINES]
    assert not long, (f"functions over {MAX_FUNCTION_LINES} lines (docstring not counted); "
                      "split them into named steps:\n" + "\n".join(long))


def test_every_module_is_short():
    big = [f"{p.relative_to(ROOT)} has {n} lines" for p in cli_files()
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not big, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(big)


def test_function_lengths_counts_what_it_says():
    """On a source built with known sizes: a 3-line docstring is not counted, nested
    functions and methods are measured on their own, a one-line function is 1."""
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    source = textwrap.dedent('''\
        def documented():
            """Three
            docstring
            lines."""
        ''') + body + "\n" + textwrap.dedent('''\
        class K:
            def method(self):
                def inner():
                    return 1
                return inner()

        def one(): return 1
        ''')
    got = {name: n for name, _, n in function_lengths(source)}
    assert got == {"documented": 1 + 60, "K.method": 4, "K.method.inner": 2, "one": 1}
