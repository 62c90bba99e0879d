"""``refdl.summary(model, input_shape)``: output shape and trainable parameters per layer."""
import numpy as np

from .random import fork_rng

__all__ = ["summary"]


def _shapes(out):
    if isinstance(out, (tuple, list)):
        return [tuple(np.shape(o)) for o in out]
    return tuple(np.shape(out))


def summary(model, input_shape, dtype=np.float32, print_fn=print, depth=None):
    """Run one forward pass on random input and tabulate every module it called.

    ``input_shape`` is the full input shape including the batch, e.g. ``(1, 1, 28, 28)``
    (a list of shapes for a module with several inputs). Returns a dict with ``rows`` (one
    dict per call: name, type, depth, output_shape, params = the module's own trainable
    parameters), ``total_params`` and ``trainable_params``; prints the table unless
    ``print_fn`` is None. The model's mode and parameters are unchanged; its caches hold
    the summary's forward pass afterwards.
    """
    shapes = input_shape if (isinstance(input_shape, list)
                             and isinstance(input_shape[0], (tuple, list))) else [input_shape]
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
        with fork_rng(0) as g:
            xs = [g.standard_normal(tuple(s)).astype(dtype) for s in shapes]
        model(*xs)
    finally:
        for m, had, fwd in originals:
            if had:
                object.__setattr__(m, "forward", fwd)
            else:
                del m.__dict__["forward"]
    total = sum(p.data.size for p in model.parameters())
    trainable = sum(p.data.size for p in model.parameters() if p.requires_grad)
    result = {"rows": rows, "total_params": int(total), "trainable_params": int(trainable),
              "input_shape": [tuple(s) for s in shapes]}
    if print_fn is not None:
        w = max([len("  " * r["depth"] + f"{r['name']} ({r['type']})") for r in rows] + [20])
        line = "-" * (w + 40)
        print_fn(line)
        print_fn(f"{'Layer (type)':<{w}}  {'Output shape':<26}{'Params':>12}")
        print_fn("=" * (w + 40))
        for r in rows:
            label = "  " * r["depth"] + f"{r['name']} ({r['type']})"
            print_fn(f"{label:<{w}}  {str(r['output_shape']):<26}{r['params']:>12,}")
        print_fn("=" * (w + 40))
        print_fn(f"Total params: {total:,}")
        print_fn(f"Trainable params: {trainable:,}")
        print_fn(f"Non-trainable params: {total - trainable:,}")
        print_fn(line)
    return result
