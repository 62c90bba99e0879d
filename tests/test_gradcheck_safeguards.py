"""The gradient checker itself (refdl/gradcheck.py), tested with deliberately wrong
backwards: one for each safeguard the checker has, each passing a checker that lacks it.

| safeguard                              | the wrong backward it must catch              |
|----------------------------------------|-----------------------------------------------|
| zero upstream -> zero gradient         | an "epsilon guard" added to dx (1e-10)        |
| random projection from its own stream  | a bug invisible when dL/dy equals the input   |
| small-entry floor tiny = 1e-3 * scale  | a 1e-6 relative error on a 1e-3-scale entry   |
|   (and not lower)                      | a correct tiny entry must not fail            |
| kink excuse only at real kinks         | exp(20 x) with dx off by 3e-6 (smooth, curved)|
|   (but at real kinks)                  | ReLU exactly at 0: any subgradient passes     |
| repeatability, accumulation            | a backward that overwrites .grad              |
"""
import numpy as np
import pytest

from refdl import nn
from refdl.gradcheck import (GradcheckError, check_function, check_module, numeric_gradient,
                             relative_error)
from refdl.nn.module import Module, Parameter


class Scale(Module):
    """y = c * x elementwise with a fixed vector c, and a configurable wrong backward."""

    def __init__(self, c, bug=None):
        super().__init__()
        self.c = np.asarray(c, dtype=np.float64)
        self.bug = bug
        self._x = None

    def forward(self, x):
        self._x = x
        return self.c * x

    def backward(self, g):
        dx = self.c * g
        if self.bug == "epsilon guard":
            dx = dx + 1e-10                      # e.g. g / (norm + eps) written carelessly
        elif self.bug == "only right when g == x":
            dx = dx + 0.5 * (g - self._x)        # vanishes for the upstream g = x
        elif self.bug == "small entry":
            dx = dx.copy()
            dx.reshape(-1)[0] *= 1 + 1e-6        # entry 0 has c = 1e-3: a 1e-9 absolute error
        return dx


def test_zero_upstream_check_catches_an_upstream_independent_term():
    x = np.random.default_rng(3).standard_normal(6)
    m = Scale(np.linspace(1, 2, 6), bug="epsilon guard")
    # the term is far below rtol on this scale: the numeric comparison alone passes ...
    r = check_module(m, x, check_consistency=False, raise_exception=False)
    assert r.passed
    # ... the zero-upstream consistency check does not
    r = check_module(m, x, raise_exception=False)
    assert not r.passed
    assert any("zero upstream" in p for p in r.problems)
    assert check_module(Scale(np.linspace(1, 2, 6)), x).passed


def test_projection_is_not_the_callers_default_stream():
    """An input drawn from default_rng(seed) with the output's shape must not coincide
    with the checker's projection R (drawn from its own stream): a backward wrong by a
    term proportional to (g - x) would be invisible."""
    for seed in (0, 1, 7):
        x = np.random.default_rng(seed).standard_normal((4, 5))
        m = Scale(np.full((4, 5), 1.5), bug="only right when g == x")
        # (consistency checks off: the zero-upstream check would also see this bug)
        with pytest.raises(GradcheckError):
            check_module(m, x, seed=seed, check_consistency=False)
        # the same bug with g = x is indeed invisible: the check needs a different g
        m(x)
        np.testing.assert_allclose(m.backward(x), 1.5 * x)


def test_small_entry_floor_judges_entries_on_the_tensor_scale():
    x = np.random.default_rng(4).uniform(0.5, 1.5, 5)
    c = np.array([1e-3, 1.0, -1.0, 0.7, 1.2])
    # a 1e-6 relative error on an entry 1e3 times smaller than the largest: judged on the
    # floor 1e-3 * scale it is err ~ 5e-7 > rtol; a higher floor would hide it
    with pytest.raises(GradcheckError) as e:
        check_module(Scale(c, bug="small entry"), x)
    assert e.value.result.tensors[0].worst_index == (0,)
    assert 1e-7 < e.value.result.max_rel_error < 1e-6
    # the formula: err = |a - n| / max(|a| + |n|, 1e-3 * scale)
    a, n = np.array([1e-3 * (1 + 1e-6), 1.0]), np.array([1e-3, 1.0])
    np.testing.assert_allclose(relative_error(a, n)[0], 1e-9 / (2e-3 + 1e-9), rtol=1e-6)
    # and a correct entry 1e9 times smaller than the largest passes (numeric noise in it
    # is judged on the tensor's scale, not its own)
    tiny = np.array([1e-9, 1.0, 2.0, -3.0, 0.5])
    assert check_module(Scale(tiny), x).passed


def test_kink_excuse_is_not_given_to_smooth_curved_functions():
    """exp(20 x): the one-sided slopes over [t - 2h, t] and [t, t + 2h] differ by 2h f'' =
    4e-3 f', as at a kink; a backward off by 3e-6 must still fail."""
    f = lambda x: np.exp(20 * x)                       # noqa: E731
    for x in (np.array([0.3]), np.array([0.3, 0.25, -0.1])):
        for fac in (1 + 3e-6, 1 + 3e-7):
            r = check_function(f, x, lambda g, x: g * 20 * np.exp(20 * x) * fac,
                               raise_exception=False)
            assert not r.passed and not r.tensors[0].kinks
        assert check_function(f, x, lambda g, x: g * 20 * np.exp(20 * x)).passed


def test_kink_excuse_is_given_at_real_kinks():
    """ReLU with inputs exactly at 0 and within the difference step: the analytic
    subgradient 0 passes and the entries are reported as kinks; a wrong slope does not."""
    x = np.array([0.0, 5e-5, -5e-5, 0.7, -0.4])
    r = check_module(nn.ReLU(), x, raise_exception=False)
    assert r.passed and {k[0] for k in r.tensors[0].kinks} >= {(0,), (1,), (2,)}
    wrong = lambda g, x: g * (x > 0) * 1.001            # noqa: E731
    r = check_function(lambda x: np.maximum(x, 0), x, wrong, raise_exception=False)
    assert not r.passed


def test_accumulation_and_repeatability_checks():
    x = np.random.default_rng(5).standard_normal((3, 4))

    class Overwrite(Module):
        def __init__(self):
            super().__init__()
            self.weight = Parameter(np.random.default_rng(6).standard_normal((2, 4)))

        def forward(self, x):
            self._x = x
            return x @ self.weight.data.T

        def backward(self, g):
            self.weight.grad = g.T @ self._x            # assigns: no accumulation
            return g @ self.weight.data
    r = check_module(Overwrite(), x, raise_exception=False)
    assert any("accumulate" in p for p in r.problems)

    class Drifting(Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            return 2 * x

        def backward(self, g):
            self.calls += 1
            return 2 * g * (1 + 1e-9 * self.calls)     # differs from call to call
    r = check_module(Drifting(), x, raise_exception=False)
    assert any("repeatable" in p for p in r.problems)


def test_numeric_gradient_is_fourth_order():
    """The central difference's error falls like h^4 (h = 1e-2, 1e-3 on sin)."""
    x = np.array([0.7])
    errs = []
    for h in (2e-2, 1e-2):
        g = numeric_gradient(lambda: np.sin(x[0]), x, eps=h)
        errs.append(abs(g[0] - np.cos(0.7)))
    assert 12 < errs[0] / errs[1] < 20                  # 2^4 = 16
