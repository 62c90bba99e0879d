"""Checkpoints: model, optimiser, scheduler, epoch and random-generator state in one .npz.

``save_checkpoint`` writes to a temporary file in the same folder, flushes and fsyncs it,
then renames it over the target with ``os.replace`` (atomic on POSIX and Windows): a crash
mid-write leaves the previous checkpoint intact. Arrays are stored exactly (loading gives
the same bits); nested state (an optimiser's ``state_dict()``, the generators' states,
the training history) is stored as JSON with its arrays alongside, never pickled.

``load_checkpoint`` refuses, with a :class:`CheckpointError` naming the file:

* a file that is not a refdl checkpoint (an .npy, random bytes), or is corrupt or
  truncated;
* malformed contents behind a valid container: metadata that is not the expected JSON
  structure (array references out of range or of the wrong type, nesting deeper than
  MAX_DEPTH), arrays whose shape or dtype do not match the saved signature, a
  non-integer epoch, a non-numeric learning rate;
* a checkpoint from a different model (other class, missing/extra keys or other shapes).

Loading is transactional: everything is validated first; then the model, optimiser,
scheduler and loaders are restored, and if any of them still refuses the state, the ones
already touched are put back as they were before the call.

A save interrupted by a crash leaves its temporary file (``.NAME.*.tmp``) behind; the next
save of the same checkpoint removes it.

Resuming: restore the model, optimiser, scheduler, refdl's default generator
(``refdl.random.set_rng_state``) and every DataLoader's own generator; the next epoch then
draws the same shuffles and dropout masks as an uninterrupted run, so its losses are the
same bit for bit (tests/test_checkpoint.py).
"""
import copy
import json
import numbers
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from . import random as _random

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_checkpoint",
           "save", "load"]

FORMAT = "refdl-checkpoint"
SAVE_FORMAT = "refdl-save"
VERSION = 2            # 2: arrays stored under their names (model/0.weight); 1: a0, a1, ...
READS = (1, 2)


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""


MAX_DEPTH = 64          # nesting of the metadata; refdl's own checkpoints use < 10


class _Malformed(Exception):
    """Raised inside the decoder; read_checkpoint turns it into a CheckpointError."""


def _depth_ok(text, limit=MAX_DEPTH):
    """True when the JSON text nests at most ``limit`` levels (checked before parsing, so
    a crafted file cannot exhaust the recursion of json.loads)."""
    depth = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


# -- nested state <-> (JSON skeleton, named arrays) -------------------------------------------
def _name(path, arrays):
    """A unique member name for the array at ``path`` (its keys joined by '/')."""
    name = "/".join(str(p).replace("/", "_") for p in path) or "array"
    base, i = name, 1
    while name in arrays or name == "__meta__":
        i += 1
        name = f"{base}#{i}"
    return name


def _encode(obj, arrays, path=()):
    """The JSON skeleton of ``obj``; its arrays go into the dict ``arrays`` under names
    that say where they sit (``model/0.weight``, ``optimizer/state/0/exp_avg``)."""
    if isinstance(obj, np.ndarray):
        name = _name(path, arrays)
        arrays[name] = obj
        return {"__array__": name}
    if isinstance(obj, np.generic):
        if isinstance(obj, (np.floating, np.complexfloating)):
            name = _name(path, arrays)
            arrays[name] = np.asarray(obj)      # keep the exact dtype (float32 lr etc.)
            return {"__scalar__": name}
        return obj.item()
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, arrays, path + ("key",)),
                              _encode(v, arrays, path + (k,))] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays, path + (i,)) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, arrays, path + (i,)) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        if isinstance(obj, float) and not np.isfinite(obj):
            return {"__float__": repr(obj)}
        return obj
    raise TypeError(f"refdl.save: cannot store a {type(obj).__name__} ({obj!r:.60}) at "
                    f"{'/'.join(map(str, path)) or 'the top'}; store arrays, numbers, "
                    "strings and dicts/lists/tuples of them")


def _ref(obj, key, arrays):
    i = obj[key]
    if isinstance(i, bool) or not isinstance(i, (int, str)) or i not in arrays:
        raise _Malformed(f"{key} reference {i!r} names none of the {len(arrays)} stored "
                         "arrays")
    return arrays[i]


def _decode(obj, arrays):
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__array__" in obj:
            return _ref(obj, "__array__", arrays)
        if "__scalar__" in obj:
            a = _ref(obj, "__scalar__", arrays)
            if a.shape != ():
                raise _Malformed(f"__scalar__ entry refers to an array of shape {a.shape}")
            return a[()]
        if "__tuple__" in obj:
            if not isinstance(obj["__tuple__"], list):
                raise _Malformed("__tuple__ entry is not a list")
            return tuple(_decode(v, arrays) for v in obj["__tuple__"])
        if "__float__" in obj:
            if obj["__float__"] not in ("inf", "-inf", "nan"):
                raise _Malformed(f"__float__ entry {obj['__float__']!r} is not inf or nan")
            return float(obj["__float__"])
        if "__dict__" in obj:
            items = obj["__dict__"]
            if not isinstance(items, list) or not all(
                    isinstance(kv, list) and len(kv) == 2 for kv in items):
                raise _Malformed("__dict__ entry is not a list of [key, value] pairs")
            out = {}
            for k, v in items:
                k = _decode(k, arrays)
                if not isinstance(k, (str, int, float, bool, type(None), tuple)):
                    raise _Malformed(f"dictionary key of type {type(k).__name__}")
                out[k] = _decode(v, arrays)
            return out
        raise _Malformed(f"unknown entry with keys {sorted(obj)[:5]}")
    return obj


def _is_real(v):
    return isinstance(v, (numbers.Real, np.floating, np.integer)) and \
        not isinstance(v, (bool, np.bool_))


def _validate(state):
    """Raise _Malformed unless ``state`` has the structure save_checkpoint writes."""
    if not isinstance(state, dict):
        raise _Malformed("the metadata is not a dictionary")
    epoch = state.get("epoch")
    if epoch is not None and (not isinstance(epoch, (int, np.integer))
                              or isinstance(epoch, bool) or epoch < 0):
        raise _Malformed(f"epoch must be a non-negative integer or null, got {epoch!r}")
    sig = state.get("signature")
    if not (isinstance(sig, dict) and isinstance(sig.get("class"), str)
            and isinstance(sig.get("shapes"), dict)
            and all(isinstance(k, str) and isinstance(v, list)
                    and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                            for d in v) for k, v in sig["shapes"].items())):
        raise _Malformed("the model signature is not {class: str, shapes: {name: [ints]}}")
    model = state.get("model")
    if not isinstance(model, dict) or set(model) != set(sig["shapes"]):
        raise _Malformed("the model state does not list exactly the signature's keys")
    for k, v in model.items():
        if not isinstance(v, np.ndarray) or list(v.shape) != sig["shapes"][k]:
            raise _Malformed(f"model entry {k!r} is "
                             f"{getattr(v, 'shape', type(v).__name__)}, the signature "
                             f"says shape {tuple(sig['shapes'][k])}")
        if v.dtype.kind not in "fiub":
            raise _Malformed(f"model entry {k!r} has dtype {v.dtype}")
    opt = state.get("optimizer")
    if opt is not None:
        groups = opt.get("param_groups") if isinstance(opt, dict) else None
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise _Malformed("the optimiser state has no list of param_groups")
        for i, g in enumerate(groups):
            for key in ("lr", "momentum", "weight_decay", "eps"):
                if key in g and not (_is_real(g[key]) and np.isfinite(g[key])):
                    raise _Malformed(f"optimiser param_groups[{i}][{key!r}] is {g[key]!r}, "
                                     "not a finite number")
    for key in ("optimizer_class", "scheduler_class"):
        if state.get(key) is not None and not isinstance(state[key], str):
            raise _Malformed(f"{key} is {state[key]!r}, not a name")
    sched = state.get("scheduler")
    if sched is not None and not isinstance(sched, dict):
        raise _Malformed("the scheduler state is not a dictionary")
    loaders = state.get("loaders", [])
    if not isinstance(loaders, list) or not all(v is None or isinstance(v, dict)
                                                for v in loaders):
        raise _Malformed("the loaders' states are not a list of dictionaries")


def _signature(model):
    return {"class": type(model).__name__,
            "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}}


def _fsync_dir(path):
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path, model, optimizer=None, scheduler=None, epoch=None, loaders=(),
                    history=None, extra=None):
    """Write everything needed to resume training to ``path`` (atomically).

    ``loaders``: DataLoaders whose own generators should be saved (those using refdl's
    default generator are covered by its saved state). ``history``/``extra``: any nested
    dicts/lists of numbers, strings and arrays. Returns the path.
    """
    path = Path(path)
    state = {
        "format": FORMAT, "version": VERSION, "epoch": epoch,
        "signature": _signature(model),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "optimizer_class": type(optimizer).__name__ if optimizer is not None else None,
        "scheduler_class": type(scheduler).__name__ if scheduler is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None
        and hasattr(scheduler, "state_dict") else None,
        "rng": _random.get_rng_state(),
        "loaders": [ld.state_dict() if hasattr(ld, "state_dict") else None for ld in loaders],
        "history": history, "extra": extra,
    }
    _write_npz(path, state)
    return path


def _write_npz(path, state, arrays=None):
    """Write ``state`` atomically to ``path``: its JSON skeleton and its arrays by name.
    (``arrays`` given: ``state`` is a skeleton already encoded into them.)"""
    if arrays is None:
        arrays = {}
        state = _encode(state, arrays)
    meta = json.dumps(state)
    payload = dict(arrays)
    payload["__meta__"] = np.frombuffer(meta.encode("utf-8"), dtype=np.uint8)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("." + path.name + ".*.tmp"):   # left by an interrupted save
        try:
            stale.unlink()
        except OSError:
            pass
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def _read_npz(path, what="checkpoint"):
    """The decoded contents of a file written by _write_npz; CheckpointError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what} file")
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the {what} ({e})") from None
    if not is_zip:
        with open(path, "rb") as f:
            head = f.read(6)
        if head.startswith(b"PK"):
            raise CheckpointError(f"{path}: corrupt or truncated {what} (the .npz "
                                  f"archive is incomplete)")
        kind = "an .npy array" if head == b"\x93NUMPY" else "another format or random bytes"
        raise CheckpointError(f"{path}: not a refdl {what} (not an .npz archive but "
                              f"{kind})")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "__meta__" not in z.files:
                raise CheckpointError(f"{path}: not a refdl {what} (no __meta__ entry)")
            text = bytes(z["__meta__"]).decode("utf-8")
            if not _depth_ok(text):
                raise CheckpointError(f"{path}: malformed {what} metadata (nested more "
                                      f"than {MAX_DEPTH} levels deep)")
            meta = json.loads(text)
            arrays = {n: z[n] for n in z.files if n != "__meta__"}
            # version 1 named its arrays a0, a1, ... and referred to them by index
            arrays.update({i: arrays[f"a{i}"] for i in range(len(arrays))
                           if f"a{i}" in arrays})
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, RecursionError,
            UnicodeDecodeError, json.JSONDecodeError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated {what} "
                              f"({type(e).__name__}: {e})") from None
    try:
        return _decode(meta, arrays)
    except (_Malformed, RecursionError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: malformed {what} metadata ({e})") from None


def read_checkpoint(path):
    """The checkpoint's contents as a dict (no model needed); CheckpointError if unreadable."""
    path = Path(path)
    state = _read_npz(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a refdl checkpoint")
    if state.get("version") not in READS:
        raise CheckpointError(f"{path}: checkpoint format version {state.get('version')}, "
                              f"this refdl reads versions {', '.join(map(str, READS))}")
    try:
        _validate(state)
    except _Malformed as e:
        raise CheckpointError(f"{path}: malformed checkpoint ({e})") from None
    return state


def _check_fits(path, state, model):
    saved, here = state["signature"], _signature(model)
    if saved["class"] != here["class"]:
        raise CheckpointError(f"{path}: checkpoint is from a {saved['class']} model, not a "
                              f"{here['class']}")
    s, h = saved["shapes"], here["shapes"]
    missing = [k for k in h if k not in s]
    extra = [k for k in s if k not in h]
    if missing or extra:
        parts = ([f"missing keys {missing}"] if missing else []) + \
            ([f"unexpected keys {extra}"] if extra else [])
        raise CheckpointError(f"{path}: checkpoint is from a different {here['class']}: "
                              + ", ".join(parts))
    for k in h:
        if list(s[k]) != list(h[k]):
            raise CheckpointError(f"{path}: checkpoint is from a different {here['class']}: "
                                  f"{k!r} has shape {tuple(s[k])} in the checkpoint, "
                                  f"{tuple(h[k])} in this model")


def load_checkpoint(path, model, optimizer=None, scheduler=None, loaders=(), restore_rng=True):
    """Restore what :func:`save_checkpoint` wrote into the given objects.

    Returns the checkpoint dict (``epoch``, ``history``, ``extra``, ...). Checks that the
    checkpoint fits ``model`` before touching anything.
    """
    state = read_checkpoint(path)
    _check_fits(path, state, model)
    if optimizer is not None and state["optimizer"] is None:
        raise CheckpointError(f"{path}: checkpoint has no optimiser state")
    for what, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        saved = state.get(what + "_class")
        if obj is not None and saved is not None and saved != type(obj).__name__:
            raise CheckpointError(f"{path}: the {what} state is from {saved}, not "
                                  f"{type(obj).__name__}")
    if optimizer is not None:
        saved_groups = len(state["optimizer"]["param_groups"])
        here_groups = len(optimizer.param_groups)
        if saved_groups != here_groups:
            raise CheckpointError(f"{path}: the optimiser state has {saved_groups} parameter "
                                  f"groups, {type(optimizer).__name__} has {here_groups}")
    # everything is validated; restore, and undo on a late refusal (all or nothing)
    before = [(obj, copy.deepcopy(obj.state_dict())) for obj in
              [model, optimizer, scheduler, *loaders]
              if obj is not None and hasattr(obj, "state_dict")
              and hasattr(obj, "load_state_dict")]
    rng_before = _random.get_rng_state()
    try:
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if restore_rng:
            _random.set_rng_state(state["rng"])
        for ld, st in zip(loaders, state["loaders"]):
            if st is not None and hasattr(ld, "load_state_dict"):
                ld.load_state_dict(st)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        for obj, st in before:
            obj.load_state_dict(st)
        _random.set_rng_state(rng_before)
        raise CheckpointError(f"{path}: the checkpoint does not fit "
                              f"({type(e).__name__}: {e}); nothing was changed") from None
    return state


# -- refdl.save / refdl.load -----------------------------------------------------------------
def save(obj, f):
    """Save ``obj`` (a ``state_dict()``, or any dict/list/tuple of arrays, numbers and
    strings) to the file ``f`` atomically, as ``torch.save`` does for state dicts.

    The file is an .npz archive: each array is a member named after its place
    (``0.weight``, ``encoder.1.bias``, ``optimizer/state/0/exp_avg``), readable with
    ``numpy.load`` alone; the structure is JSON beside it. Nothing is pickled. Returns
    the path.
    """
    path = Path(f)
    arrays = {}
    body = _encode(obj, arrays)          # names relative to obj: 0.weight, not object/...
    _write_npz(path, {"__dict__": [["format", SAVE_FORMAT], ["version", VERSION],
                                   ["object", body]]}, arrays)
    return path


def load(f):
    """The object :func:`save` wrote to ``f`` (dicts keep their order: a state dict loads
    straight into ``model.load_state_dict``). A refdl checkpoint loads as its dict.
    Raises :class:`CheckpointError` naming the file for anything else."""
    path = Path(f)
    state = _read_npz(path, what="file")
    if isinstance(state, dict) and state.get("format") == SAVE_FORMAT:
        return state["object"]
    if isinstance(state, dict) and state.get("format") == FORMAT:
        return read_checkpoint(path)
    raise CheckpointError(f"{path}: not a file written by refdl.save")
