"""``refdl gradcheck [LAYER ...]``: check every layer's backward numerically (the rows of
gradcheck_table.py) and print a table of relative errors; or check the user's own layer
(``FILE.py:ClassName`` or ``package.module:ClassName``)."""
import ast
import importlib
import importlib.util
import os
import re
import sys

import numpy as np

from .. import nn
from ..gradcheck import check_loss, check_module
from ..nn.module import Module
from ..random import fork_rng
from .common import UserError, parse_shape
from .gradcheck_table import GRADCHECK_TABLE


def cmd_gradcheck(args):
    """``refdl gradcheck``: the table; exit status 1 if any check fails."""
    user = [n for n in (args.only or []) if ":" in n]
    if user:
        if len(user) != len(args.only):
            raise UserError("check either refdl's layers or your own FILE.py:Class, not both")
        return max(_gradcheck_user_layer(spec, args) for spec in user)
    labels = {r[0] for r in GRADCHECK_TABLE} | {r[1] for r in GRADCHECK_TABLE
                                                 if isinstance(r[1], str)}
    unknown = [n for n in (args.only or []) if n not in labels]
    if unknown:
        raise UserError(f"unknown layer(s) {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(labels))}")
    rows = _run_gradchecks(args.only)
    results = _print_table(rows, args.verbose)
    n_ok = sum(s == "ok" for _, s, _ in rows)
    bad = [lab for lab, s, _ in rows if s in ("FAIL", "ERROR")]
    skipped = [lab for lab, s, _ in rows if s == "skip"]
    print("-" * 82)
    print(f"{n_ok} passed, {len(bad)} failed, {len(skipped)} not available"
          + (f" ({', '.join(skipped)})" if skipped and not args.verbose else "")
          + f"; rtol = 1e-7")
    if not args.only:
        _print_uncovered_layers()
    if args.plot and results:
        from ..plot import plot_gradcheck
        print(f"wrote {plot_gradcheck(results, args.plot)}")
    return 1 if bad else 0


def _run_gradchecks(only=None):
    """[(label, status, result or message)] for every row; status ok/FAIL/ERROR/skip."""
    rows = []
    for label, cls, (a, kw), make_inputs, opts in GRADCHECK_TABLE:
        if only and label not in only and cls not in only and \
                getattr(cls, "__name__", None) not in only:
            continue
        try:
            with fork_rng(0):
                layer = cls(nn) if callable(cls) else getattr(nn, cls)(*a, **kw)
        except (TypeError, ValueError, NotImplementedError, AttributeError, ImportError) as e:
            rows.append((label, "skip", f"cannot construct it here: {e}"))
            continue
        # not seed 0: check_module draws its projection R from default_rng(0), and inputs
        # equal to R make e.g. the input gradient of a normalisation exactly zero
        inputs = make_inputs(np.random.default_rng(2024))
        try:
            if opts.get("loss"):
                res = check_loss(layer, *inputs, raise_exception=False)
            else:
                res = check_module(layer, *inputs, wrt=opts.get("wrt"), raise_exception=False)
        except Exception as e:  # a layer raising is a failure to report, not to hide
            rows.append((label, "ERROR", f"{type(e).__name__}: {e}"))
            continue
        rows.append((label, "ok" if res.passed else "FAIL", res))
    return rows


def _print_table(rows, verbose):
    """One line per row (the full report under a failure, or with -v); returns
    {label: result} of the rows that ran."""
    print(f"{'layer':<30}{'status':<8}{'max rel err':>12}  {'tensors':<8} worst tensor")
    print("-" * 82)
    results = {}
    for label, status, res in rows:
        if isinstance(res, str):
            if status != "skip" or verbose:
                print(f"{label:<30}{status:<8}{'':>12}  {'':<8} {res}")
            continue
        results[label] = res
        worst = max(res.tensors, key=lambda t: t.max_rel_error) if res.tensors else None
        print(f"{label:<30}{status:<8}{res.max_rel_error:>12.2e}  {len(res.tensors):<8} "
              f"{worst.name if worst else ''}")
        if status == "FAIL" or verbose:
            print("    " + str(res).replace("\n", "\n    "))
    return results


def _print_uncovered_layers():
    """Name refdl.nn's layers with a backward that the table leaves out."""
    covered = {r[1] if isinstance(r[1], str) else r[0] for r in GRADCHECK_TABLE}
    others = sorted(n for n in getattr(nn, "__all__", dir(nn))
                    if isinstance(getattr(nn, n, None), type)
                    and issubclass(getattr(nn, n), Module)
                    and "backward" in vars(getattr(nn, n)) and n not in covered
                    and n not in ("Module", "Sequential", "ModuleList"))
    if others:
        print(f"not in this command's table (see their tests): {', '.join(others)}")


# ------------------------------------------------------------------- the user's own layer
def _gradcheck_user_layer(spec, args):
    """Check a user's layer: ``refdl gradcheck my_layer.py:MyLayer --input-shape 4,3``."""
    cls = _load_user_layer(spec)
    if not args.input_shape:
        raise UserError(f"{spec}: give the input's shape with --input-shape, e.g. 4,3 "
                        "(repeat it for a layer with several inputs)")
    shapes = [parse_shape(t) for t in args.input_shape]
    ctor_args, ctor_kwargs = _parse_call_args(args.args)
    try:
        layer = cls(*ctor_args, **ctor_kwargs)
    except Exception as e:
        raise UserError(f"{spec}: {cls.__name__}({args.args or ''}) failed: "
                        f"{type(e).__name__}: {e}") from None
    rng = np.random.default_rng(args.seed)
    inputs = [rng.standard_normal(s) for s in shapes]
    try:
        res = check_module(layer, *inputs, raise_exception=False, seed=args.seed)
    except Exception as e:
        print(f"{cls.__name__}: ERROR  {type(e).__name__}: {e}")
        return 1
    print(res)
    return 0 if res.passed else 1


def _load_user_layer(spec):
    """The class named by ``path/to/file.py:Name`` or ``package.module:Name``."""
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise UserError(f"{spec!r}: expected FILE.py:ClassName or module.path:ClassName")
    if where.endswith(".py") or os.sep in where or "/" in where:
        module = _import_file(spec, where)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise UserError(f"{spec!r}: cannot import {where} ({e})") from None
    cls = getattr(module, name, None)
    if cls is None:
        raise UserError(f"{spec!r}: {where} has no {name}")
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise UserError(f"{spec!r}: {name} is not a refdl.nn.Module subclass")
    return cls


def _import_file(spec, where):
    """Import the Python file ``where`` as a module (its folder on sys.path meanwhile)."""
    path = os.path.abspath(where)
    if not os.path.isfile(path):
        raise UserError(f"{spec!r}: no such file {where}")
    mod_name = "refdl_user_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    loader = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(loader)
    sys.modules[mod_name] = module
    sys.path.insert(0, os.path.dirname(path))
    try:
        loader.loader.exec_module(module)
    except Exception as e:
        raise UserError(f"{spec!r}: importing {where} failed: {type(e).__name__}: {e}") \
            from None
    finally:
        sys.path.remove(os.path.dirname(path))
    return module


def _parse_call_args(text):
    """``"4, 3, bias=False"`` -> ((4, 3), {'bias': False}), literals only."""
    try:
        call = ast.parse(f"f({text or ''})", mode="eval").body
        return (tuple(ast.literal_eval(a) for a in call.args),
                {k.arg: ast.literal_eval(k.value) for k in call.keywords})
    except (SyntaxError, ValueError) as e:
        raise UserError(f"--args {text!r}: expected Python literals such as '4, 3, "
                        f"bias=False' ({e})") from None
