r"""The bridge: refdl.nn modules called on autograd Tensors record ONE node on the tape.

``module(x)`` with ``x`` a :class:`~refdl.autograd.Tensor` (see ``Module.__call__``) runs
the module's own forward on the arrays and records one :class:`ModuleCall` node whose
vector-Jacobian product is the module's **hand-derived backward** with **that call's**
per-call caches. Nothing is differentiated twice and no formula is repeated: the tape only
decides *when* each layer's backward runs and with which upstream gradient.

What a node records (docs/autograd-modules.md):

* ``inputs``: the floating-point positional inputs (tuples such as LSTM's ``(h0, c0)``
  flattened in order), then one leaf per trainable Parameter of the module and its
  descendants (:func:`~refdl.autograd.tensor.param_tensor`, or the Tensor a functional op
  was given as its weight). So ``loss.backward()`` adds dL/dW into ``Parameter.grad``
  and ``autograd.grad(loss, [p])`` works for a Parameter p too.
* the ``(module, cache)`` pairs every ``save_for_backward`` pushed during this call
  (children of a composite module included), collected through ``grad_mode.state.collector``.

The VJP, given g = dL/d(outputs):

1. move exactly this call's caches (by identity) to the top of their modules' stacks, in
   their original order: a tape's reverse topological order need not be the reverse of the
   call order (one module used on two independent branches), but the module's backward
   always takes its newest caches;
2. set every Parameter.grad of the module to zeros, call ``module.backward(*g)`` (one
   upstream gradient per output, in order: ``out, (h_n, c_n) = lstm(x, (h0, c0))`` gives
   ``lstm.backward(d_out, d_h_n, d_c_n)``), read dL/dW off the Parameters and put the
   accumulated gradients back: dL/dW reaches ``p.grad`` through the tape, exactly once;
3. hand dL/d(input) (backward's return, one per floating positional input) and dL/dW to
   the node's inputs.

A module whose class does not define ``backward`` (a user's free-form Module) is not a node:
its forward runs on the Tensors and records the ops it uses. The caches of a graph that is
dropped without a backward are discarded with it, as PyTorch frees a graph's saved tensors.
"""
import weakref
from collections import OrderedDict

import numpy as np

from .. import grad_mode as _gm
from ..nn import module as _nnm
from ..nn.module import CacheError, Module, Parameter
from .tensor import Op, Tensor, _Backprop, as_tensor, grad, param_tensor

__all__ = ["ModuleCall", "call_module", "register_engine_formula", "is_bridged"]


# -- structure helpers ----------------------------------------------------------------------
def _flatten(obj, out):
    """Leaves of nested tuples/lists, depth first."""
    if isinstance(obj, (tuple, list)):
        for o in obj:
            _flatten(obj=o, out=out)
    else:
        out.append(obj)
    return out


def _rebuild(obj, leaves):
    """``obj``'s nesting with its leaves replaced, in order, from the iterator ``leaves``."""
    if isinstance(obj, (tuple, list)):
        return type(obj)(_rebuild(o, leaves) for o in obj)
    return next(leaves)


def _is_float(a):
    return isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating)


def _unwrap(obj):
    """Tensors and Parameters -> their arrays, through tuples/lists."""
    if isinstance(obj, (tuple, list)):
        return type(obj)(_unwrap(o) for o in obj)
    if isinstance(obj, (Tensor, Parameter)):
        return obj.data
    return obj


def _has_own_backward(m):
    return type(m).backward is not Module.backward


def is_bridged(module):
    """True if ``module`` and every descendant define ``backward`` (then a call on Tensors
    records one node); False for a free-form Module, whose forward runs on the Tensors."""
    return all(_has_own_backward(m) for m in module.modules())


def _trainable(module):
    return list(module.parameters())


_MISSING = object()
_NOT_CACHES = frozenset(("_saved", "_saved_stale", "training", "_buffer_names"))


def _snapshot(module):
    return [(m, dict(m.__dict__)) for m in module.modules()]


def _single_caches(snapshot, collected):
    """Modules that recorded no per-call cache but set attributes in this forward: layers
    still on one cache per module. Returns [(module, {attr: value after the forward})]."""
    recorded = {id(m) for m, _ in collected}
    out = []
    for m, before in snapshot:
        if id(m) in recorded:
            continue
        skip = _NOT_CACHES.union(m._buffers, m._parameters, m._modules)
        changed = {k: v for k, v in m.__dict__.items()
                   if k not in skip and before.get(k, _MISSING) is not v}
        if changed:
            out.append((m, changed))
    return out


# -- caches owned by the tape -----------------------------------------------------------------
def _drop_caches(held):
    """Remove the caches in ``held`` (a list of (module, cache)) from their modules."""
    pairs, held[:] = list(held), []
    for m, c in pairs:
        _nnm._TAPE_OWNED.discard(id(c))
        saved = m._saved
        for i in range(len(saved) - 1, -1, -1):
            if saved[i] is c:
                del saved[i]
                break
        if not saved:
            object.__setattr__(m, "_saved_stale", False)
            _nnm._PENDING.discard(m)


# -- the node -----------------------------------------------------------------------------------
class ModuleCall(Op):
    """One call of a module on the tape; its VJP is the module's hand-derived backward."""

    def __init__(self, module, collected, n_in, out_specs, params, first_only, single=()):
        self.module = module
        self.single = single              # [(module, {attr: value})]: single-cache layers
        self.n_in = n_in                  # how many of node.inputs are module inputs
        self.out_specs = out_specs        # per flat output: (shape, dtype) or None (no grad)
        self.params = params              # Parameters whose leaves follow the inputs
        self.first_only = first_only      # a loss: backward returns dL/d(input 0) only
        self._held = list(collected)      # this call's (module, cache) pairs, oldest first
        for _, c in self._held:
            _nnm._TAPE_OWNED.add(id(c))
        # a graph dropped without backward takes its caches with it
        weakref.finalize(self, _drop_caches, self._held)

    def __repr__(self):
        return f"ModuleCall({type(self.module).__name__})"

    def compute(self, *arrays):           # the forward ran in call_module
        raise RuntimeError("ModuleCall nodes are made by call_module")

    def release(self):
        """The graph is freed: forget caches that no backward consumed."""
        _drop_caches(self._held)

    # -- layers that still keep one cache in attributes ----------------------------------
    def _check_single(self):
        for m, attrs in self.single:
            if any(m.__dict__.get(k, _MISSING) is not v for k, v in attrs.items()):
                raise CacheError(
                    f"{_nnm._name(m)} keeps a single cache (it does not use "
                    "save_for_backward yet), and it ran again before the backward of this "
                    f"call of {type(self.module).__name__}: its backward would use the other "
                    "call's values. Use a separate module object for each use (or call "
                    "backward before the next forward) until the layer has per-call caches.")

    # -- 1. this call's caches on top ---------------------------------------------------
    def _lift(self):
        by_module = OrderedDict()
        for m, c in self._held:
            by_module.setdefault(m, []).append(c)
        for m, caches in by_module.items():
            ids = {id(c) for c in caches}
            rest = [c for c in m._saved if id(c) not in ids]
            if len(rest) + len(caches) != len(m._saved):
                raise CacheError(
                    f"{_nnm._name(m)}: the caches recorded by this call of "
                    f"{type(self.module).__name__} are gone (discard_saved() or an explicit "
                    "backward consumed them); run the forward again before backward")
            m._saved[:] = rest + caches
            _nnm._PENDING.add(m)

    def _after_backward(self, retain):
        mods = OrderedDict((id(m), m) for m, _ in self._held)
        if retain:                        # retain_graph: the same caches serve again
            for m, c in self._held:
                if not any(x is c for x in m._saved):
                    m._saved.append(c)
                _nnm._PENDING.add(m)
        else:                             # consumed; drop any the backward left behind
            _drop_caches(self._held)
        for m in mods.values():           # tape-owned caches are never ambiguous
            stale = m._saved_stale and any(id(c) not in _nnm._TAPE_OWNED for c in m._saved)
            object.__setattr__(m, "_saved_stale", stale)
            if not m._saved:
                _nnm._PENDING.discard(m)

    def _split(self, g):
        """The upstream gradient of every flat output (None for non-float outputs)."""
        specs = self.out_specs
        if sum(s is not None for s in specs) == 1:
            return [g if s is not None else None for s in specs]
        outs, start = [], 0
        for spec in specs:
            if spec is None:
                outs.append(None)
                continue
            shape, _ = spec
            n = int(np.prod(shape, dtype=np.int64))
            outs.append(g[start:start + n].reshape(shape))
            start += n
        return outs

    def gradient(self, g, node):
        if _Backprop.create_graph:
            return self._gradient_graph(g, node)
        gouts = self._split(g.data)
        self._check_single()
        self._lift()
        all_params = list(self.module.parameters())
        saved = [(p, p.grad) for p in all_params]
        for p in all_params:
            p.grad = np.zeros_like(p.data) if p.grad is None else np.zeros_like(p.grad)
        try:
            res = self.module.backward(*gouts)
            dparams = [p.grad for p in self.params]
        finally:
            for p, old in saved:
                p.grad = old
        self._after_backward(_Backprop.retain_graph)
        return self._input_grads(res, node) + tuple(
            Tensor(d) if inp.requires_grad else None
            for d, inp in zip(dparams, node.inputs[self.n_in:]))

    def _input_grads(self, res, node):
        ins = node.inputs[:self.n_in]
        if self.first_only:
            flat = [res]
        elif isinstance(res, (tuple, list)):
            flat = _flatten(res, [])
        else:
            flat = [res]
        out = []
        for i, inp in enumerate(ins):
            d = flat[i] if i < len(flat) else None
            if d is None:
                if inp.requires_grad:
                    name = type(self.module).__name__
                    raise RuntimeError(
                        f"{name}.backward returned no gradient for its floating-point input "
                        f"{i} (shape {inp.shape}), which requires grad"
                        + (": a loss's backward differentiates its input only (detach the "
                           "target)" if self.first_only else ""))
                out.append(None)
                continue
            out.append(Tensor(np.asarray(d)) if inp.requires_grad else None)
        return tuple(out)

    # -- create_graph=True: the VJP as a graph ------------------------------------------
    def _gradient_graph(self, g, node):
        formula = _ENGINE_FORMULAS.get(type(self.module))
        name = type(self.module).__name__
        if formula is None or sum(s is not None for s in self.out_specs) != 1:
            raise RuntimeError(
                f"create_graph=True through {name}: its backward is hand-derived on arrays, "
                "so its vector-Jacobian product cannot be differentiated again. Second "
                "derivatives through modules are available for "
                f"{', '.join(sorted(c.__name__ for c in _ENGINE_FORMULAS))}; write the "
                "rest with refdl.autograd ops (refdl.autograd.functional)")
        ins = list(node.inputs)
        y = formula(self.module, ins[:self.n_in], dict(zip(map(id, self.params),
                                                           ins[self.n_in:])))
        wrt = [t for t in ins if t.requires_grad]
        gs = grad(y, wrt, grad_outputs=g, create_graph=True, allow_unused=True)
        by_id = {id(t): gi for t, gi in zip(wrt, gs)}
        if not _Backprop.retain_graph:     # this call's caches will not be used
            _drop_caches(self._held)
        return tuple(by_id.get(id(t)) for t in ins)


# formulas written with the engine's ops, used only for create_graph=True (double backward)
_ENGINE_FORMULAS = {}


def register_engine_formula(cls, formula):
    """``formula(module, inputs, params_by_id) -> Tensor`` recomputes ``cls``'s forward
    with engine ops, so a node of ``cls`` can be differentiated twice."""
    _ENGINE_FORMULAS[cls] = formula


# -- the call -------------------------------------------------------------------------------------
def call_module(module, args, kwargs, sources=None):
    """Run ``module(*args, **kwargs)`` on arrays and record one node; see the module doc.

    ``sources`` maps ``id(Parameter)`` to the Tensor that Parameter stands for (a functional
    op's weight given as a Tensor), so its gradient flows into that Tensor's graph.
    """
    flat_in = _flatten(args, [])
    arrays = _unwrap(args)
    kw = _unwrap_kwargs(module, kwargs)
    diff_in = [as_tensor(a) for a, arr in zip(flat_in, _flatten(arrays, []))
               if _is_float(np.asarray(arr)) and isinstance(a, (Tensor, Parameter,
                                                                np.ndarray))]
    params = [p for p in _trainable(module)]
    sources = sources or {}
    param_in = [sources[id(p)] if id(p) in sources else param_tensor(p) for p in params]
    record = _gm.state.mode != _gm.OFF and (
        any(t.requires_grad for t in diff_in) or any(t.requires_grad for t in param_in))
    if not record:
        with _gm.no_grad():
            out = module(*arrays, **kw)
        return _constants(out)
    snapshot = _snapshot(module)
    out, collected = _run_collecting(module, arrays, kw)
    leaves = _flatten(out, [])
    specs = [(np.shape(o), np.asarray(o).dtype) if _is_float(np.asarray(o))
             and o is not None else None for o in leaves]
    from ..nn.loss import _Loss
    op = ModuleCall(module, collected, len(diff_in), specs, params, isinstance(module, _Loss),
                    _single_caches(snapshot, collected))
    return _node_outputs(out, leaves, specs, op, tuple(diff_in) + tuple(param_in))


def _unwrap_kwargs(module, kwargs):
    """The keyword arguments as arrays; one that requires grad is an error (not differentiated)."""
    kw = {}
    for k, v in kwargs.items():
        for leaf in _flatten(v, []):
            if isinstance(leaf, Tensor) and leaf.requires_grad and \
                    np.issubdtype(leaf.dtype, np.floating):
                raise TypeError(
                    f"{type(module).__name__}: keyword argument {k!r} requires grad, but "
                    "only positional inputs are differentiated by a module's backward; pass "
                    "it positionally or detach() it")
        kw[k] = _unwrap(v)
    return kw


def _run_collecting(module, arrays, kw):
    """Run the module in recording mode (even in eval()), collecting the caches it saves.

    Returns (output, the modules' caches recorded by this call); an enclosing call's
    collector also receives them. On an error the call's caches are dropped.
    """
    collected = []
    state = _gm.state
    prev_collector, prev_mode = state.collector, state.mode
    state.collector, state.mode = collected, _gm.ON     # record even in eval() mode
    try:
        out = module(*arrays, **kw)
    except BaseException:
        state.collector, state.mode = prev_collector, prev_mode
        _drop_caches(collected)
        raise
    state.collector, state.mode = prev_collector, prev_mode
    if prev_collector is not None:
        prev_collector.extend(collected)
    return out, collected


def _node_outputs(out, leaves, specs, op, inputs):
    """The call's outputs as Tensors: one node of ``op``; each float output is the node
    itself (one output) or a slice of it (several, stored flattened one after another)."""
    floats = [np.asarray(o) for o, s in zip(leaves, specs) if s is not None]
    node = Tensor.__new__(Tensor)
    node.grad, node._freed, node.requires_grad = None, False, True
    node.op, node.inputs = op, inputs
    if not floats:
        return _constants(out)
    if len(floats) == 1:                  # one differentiable output: the node itself
        node.data = floats[0]
        return _rebuild(out, iter([node if s is not None else _constant(o)
                                   for o, s in zip(leaves, specs)]))
    # several outputs: the node holds them all, flattened; each output is a slice of it
    node.data = np.concatenate([f.reshape(-1) for f in floats])
    outs, start = [], 0
    for o, spec in zip(leaves, specs):
        if spec is None:
            outs.append(None if o is None else _constant(o))
            continue
        n = int(np.prod(spec[0], dtype=np.int64))
        outs.append(node[start:start + n].reshape(spec[0]))
        start += n
    return _rebuild(out, iter(outs))


def _constant(o):
    if o is None or not isinstance(o, np.ndarray):
        return o
    return Tensor(o, dtype=o.dtype)


def _constants(out):
    leaves = _flatten(out, [])
    return _rebuild(out, iter([_constant(o) for o in leaves]))


def _hook(module, args, kwargs):
    """Module.__call__'s hook: a node for a module with its own backward, else None."""
    if not is_bridged(module):
        return NotImplemented              # free-form: its forward runs on the Tensors
    return call_module(module, args, kwargs)


# -- engine formulas (double backward through module nodes) ----------------------------------
def _register_formulas():
    from ..nn import activation as A, linear as Lin
    from ..nn.container import Sequential
    from . import functional as EF

    def one(f):
        return lambda m, ins, ps: f(m, ins[0], ps)

    def linear(m, x, ps):
        b = None if m.bias is None else ps[id(m.bias)]
        return EF.linear(x, ps[id(m.weight)], b)

    def sequential(m, ins, ps):
        x = ins[0]
        for child in m:
            f = _ENGINE_FORMULAS.get(type(child))
            if f is None:
                raise RuntimeError(f"create_graph=True through Sequential: its child "
                                   f"{type(child).__name__} has no engine formula")
            x = f(child, [x], ps)
        return x

    table = {
        Lin.Linear: one(linear),
        Lin.Identity: one(lambda m, x, ps: x),
        A.ReLU: one(lambda m, x, ps: EF.relu(x)),
        A.LeakyReLU: one(lambda m, x, ps: EF.leaky_relu(x, m.negative_slope)),
        A.ELU: one(lambda m, x, ps: EF.elu(x, m.alpha)),
        A.Sigmoid: one(lambda m, x, ps: EF.sigmoid(x)),
        A.Tanh: one(lambda m, x, ps: EF.tanh(x)),
        A.SiLU: one(lambda m, x, ps: EF.silu(x)),
        A.GELU: one(lambda m, x, ps: EF.gelu(x, m.approximate)),
        A.Softmax: one(lambda m, x, ps: EF.softmax(x, m.dim)),
        A.LogSoftmax: one(lambda m, x, ps: EF.log_softmax(x, m.dim)),
        Sequential: sequential,
    }
    for cls, f in table.items():
        register_engine_formula(cls, f)


_register_formulas()
