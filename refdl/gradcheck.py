r"""Numeric gradient checking: central differences in float64 against hand-derived backwards.

For a module y = f(x; W) the checker draws a fixed random projection R (one array per
output) and differentiates the scalar

    L(x, W) = <f(x; W), R> = sum_i f(x; W)_i R_i,

so dL/dy = R is a *random* upstream gradient. (A plain ``sum(y)`` hides bugs: the input
gradient of a normalised sum is zero, whatever the backward computes.)

Each entry of the input gradient and of every parameter gradient is estimated by the
fourth-order central difference

    dL/dt_k ~= [8 (L(t + h e_k) - L(t - h e_k)) - (L(t + 2h e_k) - L(t - 2h e_k))] / 12h,

h = 1e-4: truncation error h^4 L^(5) / 30 ~ 1e-17, rounding error ~ 1.5 eps |L| / h ~
3e-12 |L|. (The two-point formula (L(t+h) - L(t-h)) / 2h needs h ~ 1e-6 to keep its
h^2 L^(3) / 6 error small, and then rounding, eps |L| / h ~ 2e-10 |L|, swamps the small
entries of a gradient.) Each estimate n_k is compared with the analytic a_k by

    err_k = |a_k - n_k| / max(|a_k| + |n_k|, tiny),   tiny = 1e-3 * max_k(|a_k|, |n_k|),

so an entry a thousand times smaller than the tensor's largest is judged on the tensor's
scale rather than its own. A check passes when every err_k < rtol (default 1e-7).

When an entry fails, the checker asks whether a step crossed a kink (ReLU at 0, a tie in
a max) instead of blaming the derivation. It measures the one-sided slopes over [t-2h, t]
and [t, t+2h]; if they differ by more than 1e-3 of the gradient's scale, L bends there.
Then, at a step of 1e-7 (too small to reach the kink unless it sits at t itself), either
the one-sided small-step slopes still differ and the analytic value lies between them (a
kink at t: any subgradient is right), or they agree, and the analytic value must then
match the fourth-order difference at a step 100x smaller than h to the same rtol (the
kink was within the big step, the derivation is confirmed; a smooth but strongly curved
L, whose slopes also differ at the big step, gets no excuse this way). Such entries are
reported as kinks with both slopes and not counted as failures;
any other failing entry stays a failure.

It also checks that backward is repeatable (the same gradients twice), that parameter
gradients accumulate (a second backward without zero_grad doubles them), and that a zero
upstream gradient gives zero gradients.

Randomness inside forward (Dropout) is made repeatable by running every forward under
``refdl.random.fork_rng(seed)``; the caller's generator is left as it was.
"""
import copy
from dataclasses import dataclass, field

import numpy as np

from . import random as _random
from .grad_mode import enable_grad, no_grad

__all__ = ["numeric_gradient", "relative_error", "check_function", "check_module",
           "check_loss", "gradgradcheck", "GradcheckError", "GradcheckResult",
           "TensorReport"]

EPS = 1e-4
RTOL = 1e-7


class GradcheckError(AssertionError):
    """A gradient check failed; ``.result`` holds the full report."""

    def __init__(self, result):
        self.result = result
        super().__init__(str(result))


@dataclass
class TensorReport:
    """How one tensor's analytic gradient compares with its numeric estimate."""
    name: str
    shape: tuple
    max_rel_error: float
    worst_index: tuple
    analytic: float
    numeric: float
    rtol: float
    kinks: list = field(default_factory=list)   # [(index, left slope, right slope, analytic)]
    analytic_grad: np.ndarray = None
    numeric_grad: np.ndarray = None

    @property
    def passed(self):
        return self.max_rel_error < self.rtol

    def __str__(self):
        status = "ok  " if self.passed else "FAIL"
        s = (f"{status} {self.name:<22s} shape={str(self.shape):<16s} "
             f"max rel err={self.max_rel_error:.2e} at {self.worst_index} "
             f"(analytic {self.analytic:+.10e}, numeric {self.numeric:+.10e})")
        for idx, left, right, a in self.kinks[:3]:
            s += (f"\n     kink at {idx}: the step crossed a non-differentiable point "
                  f"(left slope {left:+.6e}, right slope {right:+.6e}, analytic {a:+.6e}); "
                  "not counted as a failure")
        if len(self.kinks) > 3:
            s += f"\n     ... and {len(self.kinks) - 3} more kinks"
        return s


@dataclass
class GradcheckResult:
    """The whole report: one TensorReport per checked tensor and the consistency checks."""
    name: str
    tensors: list
    problems: list   # failed consistency checks (repeatability, accumulation, zero upstream)

    @property
    def passed(self):
        return all(t.passed for t in self.tensors) and not self.problems

    @property
    def max_rel_error(self):
        return max((t.max_rel_error for t in self.tensors), default=0.0)

    def __getitem__(self, name):
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def __str__(self):
        head = f"gradcheck {self.name}: {'passed' if self.passed else 'FAILED'}"
        lines = [head] + ["  " + str(t) for t in self.tensors]
        lines += ["  FAIL " + p for p in self.problems]
        return "\n".join(lines)


def relative_error(analytic, numeric):
    """Elementwise |a - n| / max(|a| + |n|, tiny) with tiny = 1e-3 * the tensor's scale."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(n), initial=0.0)))
    tiny = max(1e-3 * scale, 1e-12)
    return np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), tiny)


def numeric_gradient(f, x, eps=EPS):
    """Central-difference gradient of the scalar ``f()`` with respect to the array ``x``.

    ``x`` is perturbed in place (and restored); ``f`` must read it. Returns an array of
    x's shape: the fourth-order central difference
    (8 (f(x + h e_k) - f(x - h e_k)) - (f(x + 2h e_k) - f(x - 2h e_k))) / 12h for every k.
    """
    if x.dtype != np.float64:
        raise TypeError(f"numeric_gradient needs a float64 array, got {x.dtype}")
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("numeric_gradient needs a contiguous array it can perturb in place")
    with no_grad():         # f's forwards are evaluations: they record no caches
        return _central_differences(f, flat, grad, gflat, eps)


def _central_differences(f, flat, grad, gflat, eps):
    for k in range(flat.size):
        old = flat[k]
        vals = []
        for step in (eps, -eps, 2 * eps, -2 * eps):
            flat[k] = old + step
            vals.append(float(f()))
        flat[k] = old
        gflat[k] = (8 * (vals[0] - vals[1]) - (vals[2] - vals[3])) / (12 * eps)
    return grad


def _one_sided(f, x, k, eps):
    flat = x.reshape(-1)
    old = flat[k]
    f0 = float(f())
    flat[k] = old + eps
    fp = float(f())
    flat[k] = old - eps
    fm = float(f())
    flat[k] = old
    return (f0 - fm) / eps, (fp - f0) / eps


def _central4(f, x, k, eps):
    """The fourth-order central difference of ``numeric_gradient`` for one entry k."""
    flat = x.reshape(-1)
    old = flat[k]
    vals = []
    for step in (eps, -eps, 2 * eps, -2 * eps):
        flat[k] = old + step
        vals.append(float(f()))
    flat[k] = old
    return (8 * (vals[0] - vals[1]) - (vals[2] - vals[3])) / (12 * eps)


def _compare(name, f, x, analytic, numeric, eps, rtol, max_kink_probes=2000):
    analytic = np.asarray(analytic, dtype=np.float64)
    if analytic.shape != x.shape:
        raise ValueError(f"gradcheck: the analytic gradient of {name} has shape "
                         f"{analytic.shape}, expected {x.shape}")
    err = relative_error(analytic, numeric)
    kinks = []
    scale = max(float(np.max(np.abs(analytic), initial=0.0)),
                float(np.max(np.abs(numeric), initial=0.0)), 1e-12)
    bad = np.flatnonzero(err.reshape(-1) >= rtol)
    for k in bad[:max_kink_probes]:
        a_k = float(analytic.reshape(-1)[k])
        left, right = _one_sided(f, x, k, 2 * eps)
        if abs(right - left) <= 1e-3 * max(scale, abs(left), abs(right)):
            continue                                   # L is smooth here: a real failure
        l_s, r_s = _one_sided(f, x, k, 1e-7)
        at_point = abs(r_s - l_s) > 1e-3 * max(scale, abs(l_s), abs(r_s))
        if at_point:
            tol = 1e-5 * max(abs(a_k), abs(0.5 * (l_s + r_s)), 1e-3 * scale)
            ok = min(l_s, r_s) - tol <= a_k <= max(l_s, r_s) + tol
        else:
            # no kink at t: it was within the big step, or L is smooth and merely curved.
            # Re-estimate with the same fourth-order formula at a step 100x smaller, which
            # no longer reaches a kink that far away, and hold it to the same rtol (a
            # looser tolerance here would excuse a wrong backward on any curved function)
            c_s = _central4(f, x, k, eps / 100)
            ok = abs(a_k - c_s) < rtol * max(abs(a_k) + abs(c_s), 1e-3 * scale)
        if ok:
            idx = np.unravel_index(k, x.shape)
            kinks.append((tuple(int(i) for i in idx), left, right, a_k))
            err.reshape(-1)[k] = 0.0
    if err.size:
        k = int(np.argmax(err))
        idx = tuple(int(i) for i in np.unravel_index(k, x.shape))
        worst = float(err.reshape(-1)[k])
        a, n = float(analytic.reshape(-1)[k]), float(numeric.reshape(-1)[k])
    else:
        idx, worst, a, n = (), 0.0, 0.0, 0.0
    return TensorReport(name, tuple(x.shape), worst, idx, a, n, rtol, kinks,
                        analytic, numeric)


def _stream(seed, purpose):
    """A generator for the checker's own draws, independent of ``default_rng(seed)``.

    (Were R drawn from default_rng(seed), a test input drawn from default_rng(seed) with
    the output's shape would equal R, and for a normalisation layer the input gradient of
    <y, R> would vanish identically.)
    """
    return np.random.default_rng([int(seed), {"projection": 1, "forward": 2}[purpose], 0x9E37])


def _as_tuple(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def _float64(v):
    if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating):
        return np.array(v, dtype=np.float64, copy=True, order="C")
    return v


def check_function(f, inputs, vjp, eps=EPS, rtol=RTOL, seed=0, names=None,
                   raise_exception=True):
    """Check a plain function against its vector-Jacobian product.

    ``f(*inputs)`` returns an array (or a tuple of arrays); ``vjp(grad_out, *inputs)``
    returns dL/d(input) for every input (a tuple, or one array for one input), where
    grad_out is dL/d(output) (a tuple when f has several outputs).
    """
    inputs = [_float64(x) for x in _as_tuple(inputs)]
    rng = _stream(seed, "projection")
    outs = _as_tuple(f(*inputs))
    R = [rng.standard_normal(np.shape(o)) for o in outs]

    def loss():
        return sum(float(np.sum(np.asarray(o) * r)) for o, r in zip(_as_tuple(f(*inputs)), R))

    g = R if len(R) > 1 else R[0]
    analytic = _as_tuple(vjp(g, *inputs))
    names = names or [f"input {i}" for i in range(len(inputs))]
    reports = []
    for i, (x, a) in enumerate(zip(inputs, analytic)):
        num = numeric_gradient(loss, x, eps)
        reports.append(_compare(names[i], loss, x, a, num, eps, rtol))
    fname = getattr(f, "__name__", type(f).__name__)
    result = GradcheckResult(fname, reports, [])
    if raise_exception and not result.passed:
        raise GradcheckError(result)
    return result


def check_module(module, *inputs, wrt=None, params=True, eps=EPS, rtol=RTOL, seed=0,
                 forward_kwargs=None, check_consistency=True, raise_exception=True):
    """Check ``module.backward`` for the inputs and every trainable parameter.

    The module is deep-copied and cast to float64 (the caller's module is untouched);
    floating inputs are copied to float64. ``wrt`` lists the positional inputs whose
    gradients ``backward`` returns (default: every floating-point one), in order; its
    return value is one array when there is one such input, else a tuple.
    Returns a :class:`GradcheckResult`; raises :class:`GradcheckError` on failure unless
    ``raise_exception=False``.
    """
    probe = _ModuleProbe(module, inputs, wrt, forward_kwargs, seed)
    gin, gp = probe.analytic(probe.R)
    reports = []
    for j, i in enumerate(probe.wrt):
        x = probe.inputs[i]
        num = numeric_gradient(probe.loss, x, eps)
        reports.append(_compare(f"input {i}", probe.loss, x, gin[j], num, eps, rtol))
    if params:
        for n, p in probe.module.named_parameters():
            if not p.requires_grad:
                continue
            num = numeric_gradient(probe.loss, p.data, eps)
            reports.append(_compare(n, probe.loss, p.data, gp[n], num, eps, rtol))
    if check_consistency:
        _check_consistency(probe, gin, gp)
    result = GradcheckResult(type(probe.module).__name__, reports, probe.problems)
    if raise_exception and not result.passed:
        raise GradcheckError(result)
    return result


class _ModuleProbe:
    """A float64 copy of a module with its inputs, the loss <module(inputs), R> and its
    gradients by backward; ``problems`` collects what is wrong besides the numbers."""

    def __init__(self, module, inputs, wrt, forward_kwargs, seed):
        self.module = copy.deepcopy(module).to(np.float64).discard_saved()
        self.kw = dict(forward_kwargs or {})
        self.inputs = [_float64(x) for x in inputs]
        if wrt is None:
            wrt = [i for i, x in enumerate(self.inputs)
                   if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating)]
        self.wrt = list(wrt)
        self.fwd_seed = int(_stream(seed, "forward").integers(2 ** 31))
        self.problems = []
        self.outs = self.run_no_grad()
        rng = _stream(seed, "projection")
        self.R = [rng.standard_normal(np.shape(o))
                  if np.issubdtype(np.asarray(o).dtype, np.floating) else None
                  for o in self.outs]

    def run(self):
        with _random.fork_rng(self.fwd_seed):
            return _as_tuple(self.module(*self.inputs, **self.kw))

    def run_no_grad(self):      # the forwards of the finite differences record nothing
        with no_grad():
            return self.run()

    def loss(self):
        return sum(float(np.sum(o * r)) for o, r in zip(self.run_no_grad(), self.R)
                   if r is not None)

    def upstream(self, grads):
        """The output gradients for backward (zeros for a non-float output)."""
        return [u if u is not None else np.zeros(np.shape(o)) for u, o in zip(grads, self.outs)]

    def analytic(self, upstream):
        """(input gradients, {parameter name: gradient}) by one forward and backward."""
        self.module.zero_grad()
        with enable_grad():     # records in eval() mode too: eval-mode models are checked
            self.run()
        gin = self.module.backward(*self.upstream(upstream))
        gin = () if not self.wrt else (_as_tuple(gin) if len(self.wrt) > 1 else (gin,))
        if len(gin) != len(self.wrt):
            raise ValueError(f"gradcheck: {type(self.module).__name__}.backward returned "
                             f"{len(gin)} input gradients, expected {len(self.wrt)}")
        gin = [np.array(g, dtype=np.float64, copy=True) for g in gin]
        gp = {n: _param_grad(n, p, self.problems) for n, p in self.module.named_parameters()
              if p.requires_grad}
        return gin, gp


def _check_consistency(probe, gin, gp):
    """Backward is repeatable, accumulates into .grad, and is linear (zero in, zero out)."""
    problems = probe.problems
    gin2, gp2 = probe.analytic(probe.R)
    same = all(np.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(gin, gin2)) and \
        all(np.allclose(gp[n], gp2[n], rtol=1e-12, atol=0) for n in gp)
    if not same:
        problems.append("backward is not repeatable: two identical passes gave "
                        "different gradients")
    with enable_grad():
        probe.run()
    probe.module.backward(*probe.upstream(probe.R))  # no zero_grad: gradients must accumulate
    for n, p in probe.module.named_parameters():
        if p.requires_grad and not np.allclose(p.grad, 2 * gp[n], rtol=1e-10, atol=1e-300):
            problems.append(f"gradient of {n} does not accumulate: a second backward "
                            "without zero_grad should double it")
    zero = [None if r is None else np.zeros_like(r) for r in probe.R]
    gz, gpz = probe.analytic(zero)
    if any(np.any(g != 0) for g in gz) or any(np.any(g != 0) for g in gpz.values()):
        problems.append("a zero upstream gradient gave a non-zero gradient")


def _param_grad(name, p, problems):
    """A copy of ``p.grad``; a grad a backward replaced (``=`` instead of ``+=``) by a
    non-array or an array of the wrong shape is reported in ``problems``, naming it."""
    g = p.grad
    if isinstance(g, np.ndarray) and g.shape == p.data.shape:
        return np.array(g, dtype=np.float64, copy=True)
    msg = (f"gradient of {name} was replaced by a {type(g).__name__}"
           f"{' of shape ' + str(np.shape(g)) if np.ndim(g) else ''} instead of accumulated "
           f"into an array of shape {p.data.shape}: write {name.split('.')[-1]}.grad += ..., "
           "not = ...")
    if msg not in problems:
        problems.append(msg)
    try:
        return np.broadcast_to(np.asarray(g, dtype=np.float64), p.data.shape).copy()
    except (TypeError, ValueError):
        return np.full(p.data.shape, np.nan)


def check_loss(criterion, input, target, **kwargs):
    """Check a loss's ``backward`` (dL/dinput) with a random upstream scalar or array."""
    return check_module(criterion, input, target, wrt=[0], **kwargs)


def _hessian_vector(gs, V, ts):
    """dG/dx_j for G = sum_i <g_i, V_i>, by the engine's backward through the gradient
    graph ``gs`` (arrays; zeros where G does not depend on x: second derivatives 0)."""
    from .autograd import Tensor, grad

    G = sum((g * Tensor(v)).sum() for g, v in zip(gs, V))
    if not G.requires_grad:
        return [np.zeros_like(t.data) for t in ts]
    hv = grad(G, ts, allow_unused=True)
    return [h.data if h is not None else np.zeros_like(t.data) for h, t in zip(hv, ts)]


def gradgradcheck(func, inputs, grad_outputs=None, eps=EPS, rtol=RTOL, seed=0,
                  check_first_order=True, raise_exception=True):
    r"""Check second derivatives computed by refdl.autograd (double backward) numerically.

    ``func(*tensors)`` maps refdl.autograd Tensors to a Tensor (or a tuple of Tensors).
    With random projections R (of the outputs; ``grad_outputs`` if given) and V (of the
    first derivatives), float64 throughout:

        F(x) = <func(x), R>            g_i(x) = dF/dx_i  (engine, create_graph=True)
        G(x) = sum_i <g_i(x), V_i>     dG/dx_j = sum_i H_ji V_i   (a Hessian-vector product)

    The engine's dG/dx_j (a backward through the gradient graph) is compared with central
    differences of G, where G is evaluated from the engine's first derivatives alone. With
    ``check_first_order`` the g_i are also compared with differences of F. Returns a
    :class:`GradcheckResult` (tensors named ``grad input i`` and ``gradgrad input i``).

    A hand-derived double backward (no engine) is checked with :func:`check_function`
    instead: pass the first-derivative function as ``f`` and its VJP as ``vjp``.
    """
    from .autograd import Tensor, grad

    arrays = [_float64(np.asarray(x)) for x in _as_tuple(inputs)]
    rng = _stream(seed, "projection")

    def outs_of(ts):
        return _as_tuple(func(*ts))

    outs = outs_of([Tensor(a) for a in arrays])
    if grad_outputs is None:
        R = [rng.standard_normal(o.shape) for o in outs]
    else:
        R = [np.asarray(r, dtype=np.float64) for r in _as_tuple(grad_outputs)]
    V = [rng.standard_normal(a.shape) for a in arrays]

    def first(create_graph):
        ts = [Tensor(a, requires_grad=True) for a in arrays]
        os_ = outs_of(ts)
        F = sum((o * Tensor(r)).sum() for o, r in zip(os_, R))
        gs = grad(F, ts, create_graph=create_graph, allow_unused=True)
        gs = [g if g is not None else Tensor(np.zeros_like(a)) for g, a in zip(gs, arrays)]
        return ts, F, gs

    def F_value():
        with_ts = [Tensor(a) for a in arrays]
        return sum(float(np.sum(o.data * r)) for o, r in zip(outs_of(with_ts), R))

    def G_value():
        with enable_grad():     # G is made of first derivatives: the engine must record
            _, _, gs = first(False)
        return sum(float(np.sum(g.data * v)) for g, v in zip(gs, V))

    ts, F, gs = first(True)
    hv = _hessian_vector(gs, V, ts)
    reports = []
    for i, a in enumerate(arrays):
        if check_first_order:
            num = numeric_gradient(F_value, a, eps)
            reports.append(_compare(f"grad input {i}", F_value, a, gs[i].data, num, eps, rtol))
        num2 = numeric_gradient(G_value, a, eps)
        reports.append(_compare(f"gradgrad input {i}", G_value, a, hv[i], num2, eps, rtol))
    fname = getattr(func, "__name__", type(func).__name__)
    result = GradcheckResult(fname, reports, [])
    if raise_exception and not result.passed:
        raise GradcheckError(result)
    return result
