"""``refdl.summary(model, input_size)``: output shape and trainable parameters per layer."""
import numpy as np

from .grad_mode import no_grad
from .random import fork_rng

__all__ = ["summary", "ModelSummary"]


def _shapes(out):
    if isinstance(out, (tuple, list)):
        return [tuple(np.shape(o)) for o in out]
    return tuple(np.shape(out))


class ModelSummary(dict):
    """The result of :func:`summary`: ``str()`` is the table, ``repr()`` one line.

    It is a dict too: ``rows`` (one dict per call: name, type, depth, output_shape,
    params = the module's own trainable parameters), ``total_params``,
    ``trainable_params`` and ``input_shape``.
    """

    def __str__(self):
        return "\n".join(self["table"])

    def __repr__(self):
        return (f"ModelSummary({len(self['rows'])} calls, total_params="
                f"{self['total_params']:,}, trainable_params={self['trainable_params']:,})")


def summary(model, input_size=None, dtype=np.float32, print_fn=print, depth=None, *,
            input_data=None, input_shape=None):
    """Run one forward pass and tabulate every module it called (torchinfo's spelling).

    ``input_size`` is the full input shape including the batch, as in torchinfo, e.g.
    ``summary(model, input_size=(16, 1, 28, 28))`` (a list of shapes for a module with
    several inputs); ``input_data`` gives the input arrays themselves instead;
    ``input_shape`` is an older name of ``input_size``. The forward runs under
    ``refdl.no_grad()``: the model's caches, mode and parameters are unchanged.
    Prints the table (unless ``print_fn`` is None) and returns a :class:`ModelSummary`.
    """
    xs, shapes = _inputs(input_size if input_size is not None else input_shape,
                         input_data, dtype)
    rows = _record_calls(model, xs, depth)
    total = sum(p.data.size for p in model.parameters())
    trainable = sum(p.data.size for p in model.parameters() if p.requires_grad)
    table = _table(rows, total, trainable)
    result = ModelSummary(rows=rows, total_params=int(total), trainable_params=int(trainable),
                          input_shape=[tuple(s) for s in shapes], table=table)
    if print_fn is not None:
        for t in table:
            print_fn(t)
    return result


def _inputs(input_size, input_data, dtype):
    """(the input arrays, their shapes): ``input_data`` itself, or standard normal arrays
    of ``input_size`` (one shape, or a list of shapes), drawn from a fixed seed."""
    if input_data is not None:
        xs = list(input_data) if isinstance(input_data, (list, tuple)) else [input_data]
        xs = [np.asarray(x) for x in xs]
        return xs, [x.shape for x in xs]
    if input_size is None:
        raise TypeError("summary: give input_size (the input's shape with the batch) or "
                        "input_data")
    shapes = input_size if (isinstance(input_size, list)
                            and isinstance(input_size[0], (tuple, list))) else [input_size]
    with fork_rng(0) as g:
        xs = [g.standard_normal(tuple(s)).astype(dtype) for s in shapes]
    return xs, shapes


def _record_calls(model, xs, depth):
    """Run ``model(*xs)`` under no_grad with every module's forward wrapped to record one
    row per call (name, type, depth, own trainable parameters, output shape); the
    forwards are restored afterwards, even on an error."""
    rows = []
    originals = []
    for name, m in model.named_modules():
        d = name.count(".") + 1 if name else 0
        if depth is not None and d > depth:
            continue
        fwd = m.forward

        def wrapped(*a, _m=m, _name=name, _fwd=fwd, _d=d, **k):
            row = {"name": _name or "(model)", "type": type(_m).__name__, "depth": _d,
                   "params": sum(p.data.size for p in _m.parameters(recurse=False)
                                 if p.requires_grad)}
            rows.append(row)
            out = _fwd(*a, **k)
            row["output_shape"] = _shapes(out)
            return out

        originals.append((m, "forward" in m.__dict__, fwd))
        object.__setattr__(m, "forward", wrapped)
    try:
        with no_grad():
            model(*xs)
    finally:
        for m, had, fwd in originals:
            if had:
                object.__setattr__(m, "forward", fwd)
            else:
                del m.__dict__["forward"]
    return rows


def _table(rows, total, trainable):
    """The printed table, one string per line."""
    table = []
    w = max([len("  " * r["depth"] + f"{r['name']} ({r['type']})") for r in rows] + [20])
    line = "-" * (w + 40)
    table.append(line)
    table.append(f"{'Layer (type)':<{w}}  {'Output shape':<26}{'Params':>12}")
    table.append("=" * (w + 40))
    for r in rows:
        label = "  " * r["depth"] + f"{r['name']} ({r['type']})"
        table.append(f"{label:<{w}}  {str(r.get('output_shape', '?')):<26}{r['params']:>12,}")
    table.append("=" * (w + 40))
    table.append(f"Total params: {total:,}")
    table.append(f"Trainable params: {trainable:,}")
    table.append(f"Non-trainable params: {total - trainable:,}")
    table.append(line)
    return table
