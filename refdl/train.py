"""The training loop: ``fit`` (epochs, validation, metrics, progress, history, early
stopping, schedules, gradient clipping, checkpoints, a non-finite-loss guard) and ``evaluate``.

One training step is the lecture's loop written out::

    out  = model(x)                     # forward, caches what backward needs
    loss = loss_fn(out, y)              # a 0-d array
    optimizer.zero_grad()
    model.backward(loss_fn.backward())  # dL/dout, then the chain rule through the model
    clip_grad_norm_(params, max_norm)   # optional
    optimizer.step()

History is a dict of lists, one entry per epoch: ``epoch``, ``loss``, ``accuracy``,
``val_loss``, ``val_accuracy`` (with a validation loader), ``lr``, ``grad_norm`` (mean total
gradient norm before clipping), ``seconds``, ``samples_per_s``.
"""
import copy
import math
import os
import sys
import time

import numpy as np

from .memory import keep_freed_memory
from . import metrics as _metrics
from .checkpoint import load_checkpoint, save_checkpoint
from .grad_mode import no_grad
from .nn.utils import clip_grad_norm_, grad_norm

__all__ = ["fit", "run_steps", "check_finite", "evaluate", "EarlyStopping",
           "NonFiniteLossError", "clip_grad_norm_"]


class NonFiniteLossError(FloatingPointError):
    """Training stopped because the loss became NaN or infinite (the one error every
    training loop of refdl raises for a diverging loss).

    Attributes: ``epoch`` (None for loops counted in steps only) and ``step`` (1-based)
    where it happened, ``value``, ``history`` (what was completed) and ``checkpoint_path``
    (still holding the last good epoch). ``message`` replaces the default text.
    """

    def __init__(self, epoch, step, value, history=None, checkpoint_path=None,
                 last_good_epoch=None, message=None):
        self.epoch, self.step, self.value = epoch, step, value
        self.history, self.checkpoint_path = history, checkpoint_path
        self.last_good_epoch = last_good_epoch
        if message is None:
            where = f"step {step}" if epoch is None else f"epoch {epoch}, step {step}"
            message = f"the loss became {value} at {where}; training stopped"
            if checkpoint_path is not None and last_good_epoch:
                message += (f" (the checkpoint {checkpoint_path} still holds epoch "
                            f"{last_good_epoch})")
            message += ". Try a smaller learning rate or gradient clipping."
        super().__init__(message)


def check_finite(value, step, epoch=None, history=None, message=None, **kwargs):
    """Return ``float(value)``, or raise :class:`NonFiniteLossError` when it is NaN or
    infinite (``message`` then replaces the default text; other keywords go to the error)."""
    value = float(value)
    if not math.isfinite(value):
        raise NonFiniteLossError(epoch, step, value, history, message=message, **kwargs)
    return value


def run_steps(step_fn, steps, callback=None, log_every=0, log=None, until=None,
              progress=False, desc="training"):
    """The training loop every other one is built on: ``step_fn(step, item)`` for
    step = 1, 2, ... over ``steps`` (an int: item is None; or an iterable of batches).

    ``step_fn`` does one step (forward, :func:`check_finite`, backward, update) and returns
    its losses, a dict {name: float} (or a float, recorded as 'loss'). Returns the history
    {name: [one value per step]}. ``callback(step, losses)`` runs after every step;
    ``log(step, history)`` every ``log_every`` steps; the loop stops early after a step
    where ``until(step, history)`` is true. ``progress``: a bar over the steps, titled
    ``desc`` (refdl.progress: tqdm.auto in a terminal or notebook, one summary line in a
    pipe).

    It calls :func:`refdl.keep_freed_memory` first (on glibc): the steps' temporaries are
    then reused instead of faulting on fresh pages (a LeNet-5 step on 64 MNIST-sized
    images: ~1,100 page faults to 0.1, 15-19% faster); the process keeps its peak memory.
    """
    from .progress import progress as _bar

    keep_freed_memory()
    history = {}
    counted = isinstance(steps, (int, np.integer))
    items = ((s, None) for s in range(1, int(steps) + 1)) if counted else enumerate(steps, 1)
    total = int(steps) if counted else (len(steps) if hasattr(steps, "__len__") else None)
    with _bar(total=total, desc=desc, enabled=progress, unit="step") as bar:
        for step, item in items:
            losses = step_fn(step, item)
            if not isinstance(losses, dict):
                losses = {"loss": losses}
            for k, v in losses.items():
                history.setdefault(k, []).append(v)
            bar.update()
            bar.set_postfix({k: f"{float(v):.4g}" for k, v in losses.items()}, refresh=False)
            if callback is not None:
                callback(step, losses["loss"] if set(losses) == {"loss"} else losses)
            if log_every and log is not None and step % log_every == 0:
                log(step, history)
            if until is not None and until(step, history):
                break
    return history


class EarlyStopping:
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    ``mode``: 'min' (losses) or 'max' (accuracies); 'auto' picks 'max' when the name
    contains 'acc'. With ``restore_best_weights`` the model gets the best epoch's weights
    back when training stops. Use as ``fit(..., early_stopping=EarlyStopping(...))``.
    """

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, mode="auto",
                 restore_best_weights=True):
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min', 'max' or 'auto', got {mode!r}")
        self.mode = mode
        self.restore_best_weights = restore_best_weights
        self.best, self.best_epoch, self.wait, self.stopped_epoch = None, None, 0, None
        self._best_state = None

    def __call__(self, epoch, history, model):
        if self.monitor not in history or not history[self.monitor]:
            raise KeyError(f"EarlyStopping: history has no {self.monitor!r}; it has "
                           f"{sorted(history)} (val_* needs a val_loader)")
        value = history[self.monitor][-1]
        better = (self.best is None or
                  (value < self.best - self.min_delta if self.mode == "min"
                   else value > self.best + self.min_delta))
        if better:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self._best_state = copy.deepcopy(model.state_dict())
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            if self.restore_best_weights and self._best_state is not None:
                model.load_state_dict(self._best_state)
            return True
        return False


def _split_batch(batch):
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError("fit: each batch must be a tuple (inputs, targets)")


def _correct(out, y):
    out = np.asarray(out)
    y = np.asarray(y)
    if out.ndim >= 2 and np.issubdtype(y.dtype, np.integer) and y.shape == out.shape[:1] + out.shape[2:]:
        return int(np.sum(out.argmax(axis=1) == y))
    return None


@no_grad()
def evaluate(model, loader, loss_fn=None, num_classes=None):
    """Run ``model`` in eval mode, under ``refdl.no_grad()`` (neither the model nor
    ``loss_fn`` records a cache), over ``loader``; return a dict of metrics.

    Keys: ``loss`` (mean over examples, when ``loss_fn`` is given), ``accuracy``,
    ``precision``, ``recall``, ``f1`` (macro), ``confusion`` (K x K), ``y_true``,
    ``y_pred``. The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    total, loss_sum, ys, ps = 0, 0.0, [], []
    try:
        for batch in loader:
            x, y = _split_batch(batch)
            out = model(x)
            n = len(y)
            if loss_fn is not None:
                loss_sum += float(loss_fn(out, y)) * n
            total += n
            if _correct(out, y) is not None:
                ys.append(np.asarray(y).ravel())
                ps.append(np.asarray(out).argmax(axis=1).ravel())
    finally:
        model.train(was_training)
    res = {}
    if loss_fn is not None:
        res["loss"] = loss_sum / max(total, 1)
    if ys:
        y_true, y_pred = np.concatenate(ys), np.concatenate(ps)
        cm = _metrics.confusion_matrix(y_true, y_pred, num_classes)
        p, r, f = _metrics.precision_recall_f1(cm=cm)
        res.update(accuracy=float(np.trace(cm) / max(cm.sum(), 1)), precision=p, recall=r,
                   f1=f, confusion=cm, y_true=y_true, y_pred=y_pred)
    return res


class _Progress:
    """One tqdm.auto bar per epoch (a widget in a notebook, a text bar on a terminal, nothing
    in a pipe: refdl.progress decides) and the per-epoch lines, which are always printed."""

    def __init__(self, enabled, stream):
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.bar = None

    def step(self, epoch, epochs, i, n, loss, acc, rate):
        if not self.enabled:
            return
        if self.bar is None:
            from .progress import progress
            self.bar = progress(total=n or None, desc=f"epoch {epoch}/{epochs}",
                                stream=self.stream, leave=False, unit="batch", summary=False)
        self.bar.update(i - self.bar.n)
        post = {"loss": f"{loss:.4f}"}
        if acc is not None:
            post["acc"] = f"{100 * acc:.1f}%"
        post["samples/s"] = f"{rate:,.0f}"
        self.bar.set_postfix(post, refresh=False)

    def line(self, text):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.stream.write(text + "\n")
        self.stream.flush()


def fit(model, loss_fn, optimizer, train_loader, val_loader=None, epochs=10, scheduler=None,
        clip_grad_norm=None, callbacks=(), early_stopping=None, checkpoint_path=None,
        resume=False, progress=True, stream=None, scheduler_interval="epoch",
        num_classes=None):
    """Train ``model`` for ``epochs`` epochs (in total, counting resumed ones); return the history.

    ``loss_fn``: a refdl loss (``loss_fn(out, y)`` then ``loss_fn.backward()``).
    ``scheduler``: stepped after every epoch (or every step with
    ``scheduler_interval='step'``, for OneCycleLR). ``clip_grad_norm``: max total gradient
    norm. ``callbacks``: callables ``cb(epoch, history, model)``; one returning True stops
    training. ``early_stopping``: an :class:`EarlyStopping`. ``checkpoint_path``: saved
    atomically after every epoch (model, optimiser, scheduler, epoch, RNG and loader
    states, history). ``resume=True`` continues from that checkpoint when it exists,
    giving the same losses bit for bit as a run that never stopped.

    A NaN or infinite loss raises :class:`NonFiniteLossError` saying at which epoch and
    step; the checkpoint keeps the last good epoch.

    Like every loop built on :func:`run_steps`, it calls :func:`refdl.keep_freed_memory`.
    """
    if scheduler_interval not in ("epoch", "step"):
        raise ValueError(f"fit: scheduler_interval must be 'epoch' or 'step', got "
                         f"{scheduler_interval!r}")
    loaders = [ld for ld in (train_loader, val_loader) if ld is not None]
    history, start = _start(model, optimizer, scheduler, loaders, checkpoint_path, resume,
                            val_loader is not None)
    params = [p for p in model.parameters() if p.requires_grad]
    bar = _Progress(progress, stream)
    callbacks = list(callbacks) + ([early_stopping] if early_stopping is not None else [])
    step_scheduler = scheduler if scheduler_interval == "step" else None
    last_good = start - 1

    for epoch in range(start, epochs + 1):
        t0 = time.perf_counter()
        try:
            stats = _train_epoch(model, loss_fn, optimizer, train_loader, params,
                                 clip_grad_norm, step_scheduler, bar, epoch, epochs, t0)
        except NonFiniteLossError as e:
            bar.line("")
            raise NonFiniteLossError(epoch, e.step, e.value, history, checkpoint_path,
                                     last_good) from None
        text = _record_epoch(history, epoch, epochs, stats, optimizer,
                             time.perf_counter() - t0)
        if val_loader is not None:
            text += _validate(history, model, val_loader, loss_fn, num_classes)
        text += f"  lr {history['lr'][-1]:.3g}  {history['samples_per_s'][-1]:,.0f} samples/s"
        bar.line(text)
        if scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, model, optimizer, scheduler, epoch, loaders,
                            history=history)
            last_good = epoch
        if any(bool(cb(epoch, history, model)) for cb in callbacks):
            bar.line(f"stopped early after epoch {epoch}")
            break
    return history


def _start(model, optimizer, scheduler, loaders, checkpoint_path, resume, with_val):
    """(empty history, first epoch), or those of the checkpoint when resuming."""
    history = {"epoch": [], "loss": [], "accuracy": [], "lr": [], "grad_norm": [],
               "seconds": [], "samples_per_s": []}
    if with_val:
        history.update(val_loss=[], val_accuracy=[])
    start = 1
    if resume and checkpoint_path is not None and os.path.exists(checkpoint_path):
        state = load_checkpoint(checkpoint_path, model, optimizer, scheduler, loaders)
        start = int(state["epoch"]) + 1
        if state.get("history"):
            history = {k: list(v) for k, v in state["history"].items()}
    return history, start


def _train_epoch(model, loss_fn, optimizer, loader, params, clip, scheduler, bar, epoch,
                 epochs, t0):
    """One epoch of the lecture's step over ``loader`` (via :func:`run_steps`); returns
    {'seen', 'loss_sum', 'correct', 'counted', 'norms'}."""
    model.train()
    st = {"seen": 0, "loss_sum": 0.0, "correct": 0, "counted": 0, "norms": []}
    n_batches = len(loader) if hasattr(loader, "__len__") else 0

    def step(i, batch):
        x, y = _split_batch(batch)
        out = model(x)
        # the losses refuse NaN inputs with a ValueError; a diverged model is caught
        # here first, so the user hears where training broke down
        value = check_finite(loss_fn(out, y) if np.all(np.isfinite(out)) else np.nan, i, epoch)
        optimizer.zero_grad()
        g = loss_fn.backward()
        if getattr(model, "accepts_input_grad", False):
            model.backward(g, input_grad=False)    # x is data: no dL/dx, as in PyTorch
        else:
            model.backward(g)
        # the total gradient norm before clipping (clip_grad_norm_ returns it too)
        st["norms"].append(clip_grad_norm_(params, clip) if clip is not None
                           else grad_norm(params))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = len(y)
        st["seen"] += n
        st["loss_sum"] += value * n
        c = _correct(out, y)
        if c is not None:
            st["correct"] += c
            st["counted"] += n
        rate = st["seen"] / max(time.perf_counter() - t0, 1e-9)
        bar.step(epoch, epochs, i, n_batches, st["loss_sum"] / st["seen"],
                 st["correct"] / st["counted"] if st["counted"] else None, rate)
        return value

    run_steps(step, loader)
    return st


def _record_epoch(history, epoch, epochs, st, optimizer, secs):
    """Append the epoch's figures to ``history``; return the progress line's start."""
    seen, counted = st["seen"], st["counted"]
    history["epoch"].append(epoch)
    history["loss"].append(st["loss_sum"] / max(seen, 1))
    history["accuracy"].append(st["correct"] / counted if counted else float("nan"))
    history["lr"].append(float(optimizer.param_groups[0]["lr"])
                         if hasattr(optimizer, "param_groups") else float("nan"))
    history["grad_norm"].append(float(np.mean(st["norms"])) if st["norms"] else float("nan"))
    history["seconds"].append(secs)
    history["samples_per_s"].append(seen / max(secs, 1e-9))
    return (f"epoch {epoch}/{epochs}  loss {history['loss'][-1]:.4f}  "
            f"acc {100 * history['accuracy'][-1]:5.1f}%")


def _validate(history, model, val_loader, loss_fn, num_classes):
    ev = evaluate(model, val_loader, loss_fn, num_classes)
    history["val_loss"].append(ev["loss"])
    history["val_accuracy"].append(ev.get("accuracy", float("nan")))
    return (f"  val_loss {ev['loss']:.4f}  "
            f"val_acc {100 * history['val_accuracy'][-1]:5.1f}%")
