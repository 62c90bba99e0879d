"""The Optimizer base class: param groups, per-parameter state, zero_grad, state_dict.

The update rules (SGD, Adam, ...) subclass it in refdl/optim/__init__.py; the learning-rate
schedules (refdl/optim/lr_scheduler.py) check their argument against it. Both import this
module, so neither imports the other.
"""
import copy

import numpy as np

from ..nn.module import Parameter, _zero_grad, check_caches_consumed

__all__ = ["Optimizer", "required"]


class _Required:
    def __repr__(self):
        return "<required parameter>"


required = _Required()


def _check_nonneg(name, value, cls):
    if not (isinstance(value, (int, float, np.floating, np.integer))
            and not isinstance(value, bool)):
        raise TypeError(f"{cls}: {name} must be a number, got {value!r}")
    if value < 0:
        raise ValueError(f"{cls}: invalid {name} {value!r} (must be >= 0)")


class Optimizer:
    """Base class: param groups, per-parameter state, zero_grad, state_dict.

    Subclasses implement ``_update(p, grad, state, group)`` for one parameter; ``step``
    loops over groups and parameters, skips frozen ones, and hands over the gradient cast
    to the parameter's dtype.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}             # Parameter -> dict (PyTorch: defaultdict keyed by tensor)
        self.param_groups = []
        if isinstance(params, Parameter):
            raise TypeError(f"{type(self).__name__}: params should be an iterable of "
                            "Parameters or dicts, got a single Parameter")
        groups = list(params)
        if len(groups) == 0:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    # -- groups -------------------------------------------------------------------------
    def add_param_group(self, param_group):
        """Add a dict ``{"params": [...], <hyper-parameters>}``; defaults fill the rest."""
        if not isinstance(param_group, dict):
            raise TypeError(f"{type(self).__name__}.add_param_group: expected a dict, got "
                            f"{type(param_group).__name__}")
        group = dict(param_group)
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"{type(self).__name__} can only optimize Parameters, got "
                                f"{type(p).__name__}")
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{type(self).__name__}: a parameter group contains a "
                             "parameter twice")
        group["params"] = params
        for key, value in self.defaults.items():
            if value is required and key not in group:
                raise ValueError(f"{type(self).__name__}: parameter group didn't specify "
                                 f"a value of required optimization parameter {key}")
            group.setdefault(key, value)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError(f"{type(self).__name__}: some parameters appear in more than "
                             "one parameter group")
        self.param_groups.append(group)

    def _all_params(self):
        return [p for g in self.param_groups for p in g["params"]]

    # -- the step -------------------------------------------------------------------------
    def zero_grad(self, set_to_none=True):
        """Set every parameter's gradient to zero.

        (refdl's backward accumulates with ``+=`` into an array, so grads are zeroed in
        place rather than set to None; ``set_to_none`` is accepted for compatibility.)
        """
        for p in self._all_params():
            _zero_grad(p)

    def step(self, closure=None):
        """One update of every trainable parameter; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            loss = closure()
        check_caches_consumed(self._all_params(), type(self).__name__)
        for group in self.param_groups:
            self._prepare_group(group)
            for p in group["params"]:
                if not p.requires_grad or p.grad is None:
                    continue
                grad = np.asarray(p.grad)
                if grad.shape != p.data.shape:
                    raise ValueError(f"{type(self).__name__}.step: gradient of shape "
                                     f"{grad.shape} for a parameter of shape {p.data.shape}")
                grad = grad.astype(p.data.dtype, copy=False)
                state = self.state.setdefault(p, {})
                self._update(p, grad, state, group)
        return loss

    def _prepare_group(self, group):
        pass

    def _update(self, p, grad, state, group):
        raise NotImplementedError

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self):
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}``.

        Parameters are numbered across groups in order (PyTorch's convention); arrays in
        the state are copies, so later steps do not change a saved dict.
        """
        index = {}
        groups = []
        for g in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
            ids = []
            for p in g["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            packed["params"] = ids
            groups.append(packed)
        state = {}
        for p in self._all_params():
            if p in self.state:
                state[index[id(p)]] = {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                       for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and state saved by :meth:`state_dict`.

        The groups must have the same sizes as this optimiser's. Floating state arrays are
        copied and cast to their parameter's dtype.
        """
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{type(self).__name__}.load_state_dict: loaded state dict has "
                             f"{len(saved_groups)} parameter groups, the optimizer has "
                             f"{len(self.param_groups)}")
        id_map = {}
        for mine, saved in zip(self.param_groups, saved_groups):
            if len(mine["params"]) != len(saved["params"]):
                raise ValueError(f"{type(self).__name__}.load_state_dict: loaded state dict "
                                 "contains a parameter group that doesn't match the size of "
                                 f"the optimizer's group ({len(saved['params'])} vs "
                                 f"{len(mine['params'])})")
            for idx, p in zip(saved["params"], mine["params"]):
                id_map[idx] = p
        new_state = {}
        for idx, st in state_dict["state"].items():
            p = id_map.get(int(idx))
            if p is None:
                continue
            out = {}
            for k, v in st.items():
                if isinstance(v, np.ndarray):
                    if np.issubdtype(v.dtype, np.floating):
                        v = v.astype(p.data.dtype, copy=True)
                    else:
                        v = v.copy()
                    if v.shape != p.data.shape:
                        raise ValueError(f"{type(self).__name__}.load_state_dict: state "
                                         f"{k!r} of parameter {idx} has shape {v.shape}, "
                                         f"the parameter has shape {p.data.shape}")
                out[k] = v
            new_state[p] = out
        self.state = new_state
        for mine, saved in zip(self.param_groups, saved_groups):
            for k, v in saved.items():
                if k != "params":
                    mine[k] = copy.deepcopy(v)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"
