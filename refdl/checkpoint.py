"""Checkpoints: model, optimiser, scheduler, epoch and random-generator state in one .npz.

``save_checkpoint`` writes to a temporary file in the same folder, flushes and fsyncs it,
then renames it over the target with ``os.replace`` (atomic on POSIX and Windows): a crash
mid-write leaves the previous checkpoint intact. Arrays are stored exactly (loading gives
the same bits); nested state (an optimiser's ``state_dict()``, the generators' states,
the training history) is stored as JSON with its arrays alongside, never pickled.

``load_checkpoint`` refuses, with a :class:`CheckpointError` naming the file:

* a file that is not a refdl checkpoint, or is corrupt or truncated;
* a checkpoint from a different model (other class, missing/extra keys or other shapes).

Resuming: restore the model, optimiser, scheduler, refdl's default generator
(``refdl.random.set_rng_state``) and every DataLoader's own generator; the next epoch then
draws the same shuffles and dropout masks as an uninterrupted run, so its losses are the
same bit for bit (tests/test_checkpoint.py).
"""
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from . import random as _random

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_checkpoint"]

FORMAT = "refdl-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""


# -- nested state <-> (JSON skeleton, arrays) ------------------------------------------------
def _encode(obj, arrays):
    if isinstance(obj, np.ndarray):
        arrays.append(obj)
        return {"__array__": len(arrays) - 1}
    if isinstance(obj, np.generic):
        if isinstance(obj, (np.floating, np.complexfloating)):
            arrays.append(np.asarray(obj))      # keep the exact dtype (float32 lr etc.)
            return {"__scalar__": len(arrays) - 1}
        return obj.item()
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, arrays) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        if isinstance(obj, float) and not np.isfinite(obj):
            return {"__float__": repr(obj)}
        return obj
    raise TypeError(f"save_checkpoint: cannot store a {type(obj).__name__} ({obj!r:.60})")


def _decode(obj, arrays):
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__array__" in obj:
            return arrays[obj["__array__"]]
        if "__scalar__" in obj:
            return arrays[obj["__scalar__"]][()]
        if "__tuple__" in obj:
            return tuple(_decode(v, arrays) for v in obj["__tuple__"])
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__dict__" in obj:
            return {_decode(k, arrays): _decode(v, arrays) for k, v in obj["__dict__"]}
    return obj


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
    arrays = []
    meta = json.dumps(_encode(state, arrays))
    payload = {f"a{i}": a for i, a in enumerate(arrays)}
    payload["__meta__"] = np.frombuffer(meta.encode("utf-8"), dtype=np.uint8)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
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
    return path


def read_checkpoint(path):
    """The checkpoint's contents as a dict (no model needed); CheckpointError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "__meta__" not in z.files:
                raise CheckpointError(f"{path}: not a refdl checkpoint (no __meta__ entry)")
            meta = json.loads(bytes(z["__meta__"]).decode("utf-8"))
            arrays = [z[f"a{i}"] for i in range(len(z.files) - 1)]
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError,
            UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint "
                              f"({type(e).__name__}: {e})") from None
    state = _decode(meta, arrays)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a refdl checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {state.get('version')}, "
                              f"this refdl reads version {VERSION}")
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
    model.load_state_dict(state["model"])
    if optimizer is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise CheckpointError(f"{path}: the optimiser state does not fit "
                                  f"{type(optimizer).__name__}: {e}") from None
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        _random.set_rng_state(state["rng"])
    for ld, st in zip(loaders, state["loaders"]):
        if st is not None and hasattr(ld, "load_state_dict"):
            ld.load_state_dict(st)
    return state
