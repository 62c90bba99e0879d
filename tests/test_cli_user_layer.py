"""`refdl gradcheck FILE.py:Class` checks a user's own layer without editing refdl."""
import textwrap

import pytest

from refdl.cli import main

LAYER = textwrap.dedent('''
    from typing import NamedTuple
    import numpy as np
    from refdl import nn

    class ScaleCache(NamedTuple):
        x: np.ndarray

    class Scale(nn.Module):
        """y = x * w, one weight per feature."""
        def __init__(self, d, factor=1):
            super().__init__()
            self.w = nn.Parameter(np.linspace(0.5, 1.5, d))
            self.factor = factor            # 2: a deliberately wrong weight gradient

        def forward(self, x):
            self.save_for_backward(ScaleCache(x))
            return x * self.w.data

        def backward(self, g):
            x = self.pop_saved().x
            self.w.grad += self.factor * (g * x).sum(0)
            return g * self.w.data

    class NotALayer:
        pass
''')


@pytest.fixture
def layer_file(tmp_path):
    path = tmp_path / "mylayer.py"
    path.write_text(LAYER)
    return str(path)


def test_a_correct_user_layer_passes(layer_file, capsys):
    assert main(["gradcheck", f"{layer_file}:Scale", "--input-shape", "4,3", "--args", "3"]) == 0
    out = capsys.readouterr().out
    assert "gradcheck Scale: passed" in out and "ok   w" in out


def test_a_wrong_backward_fails_naming_the_parameter(layer_file, capsys):
    assert main(["gradcheck", f"{layer_file}:Scale", "--input-shape", "4,3",
                 "--args", "3, factor=2"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "FAIL w" in out and "ok   input 0" in out


@pytest.mark.parametrize("argv,message", [
    (["{f}:Nope", "--input-shape", "2"], "has no Nope"),
    (["{f}:NotALayer", "--input-shape", "2"], "is not a refdl.nn.Module subclass"),
    (["{f}:Scale", "--input-shape", "4,3"], "missing 1 required positional argument"),
    (["{f}:Scale", "--args", "3"], "--input-shape"),
    (["{f}:Scale", "--input-shape", "4,3", "--args", "open('x')"], "Python literals"),
    (["/no/such/file.py:Scale", "--input-shape", "2"], "no such file"),
    (["no_such_package_xyz:Scale", "--input-shape", "2"], "cannot import"),
])
def test_user_mistakes_get_a_message_not_a_traceback(layer_file, capsys, argv, message):
    argv = [a.replace("{f}", layer_file) for a in argv]
    assert main(["gradcheck"] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_module_path_works_too(capsys):
    assert main(["gradcheck", "refdl.nn:Linear", "--input-shape", "2,4", "--args", "4, 3"]) == 0
    assert "gradcheck Linear: passed" in capsys.readouterr().out
