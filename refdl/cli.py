"""The ``refdl`` command (also ``python -m refdl``).

    refdl train      train a model on a data set, print progress, write plots + a checkpoint
    refdl sample     generate text from a trained character-level GPT
    refdl gradcheck  check every layer's backward numerically; a table of relative errors
    refdl summary    layer-by-layer output shapes and parameter counts of a model
    refdl exam       the exam items: the paper's claim, refdl's result, the verdict
    refdl bench      run the benchmark scripts in benchmarks/
    refdl explain    a layer's formulas, its derivation page, where its forward/backward live

A user's mistake (an unknown name, a missing folder, a corrupt file, a checkpoint from
another model) gives a one-line message on stderr and exit status 2, never a traceback.
"""
import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import textwrap
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser", "GRADCHECK_TABLE"]

DEFAULT_MODEL = "lenet5"          # for image data sets; 2-D point sets default to "mlp"
POINT_DATASETS = ("spirals", "moons")
DATASETS = ("digits", "mnist", "fashion-mnist", "spirals", "moons")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
DEFAULT_LR = {"sgd": 0.05, "adam": 3e-3, "adamw": 3e-3, "rmsprop": 1e-3}
REPO = Path(__file__).resolve().parent.parent
# an installed wheel carries docs/exam.md, docs/derivations/ and benchmarks/ here (setup.py)
SHIPPED = Path(__file__).resolve().parent / "_shipped"
TEXT_MODELS = ("gpt",)            # trained by cmd_train_text on characters of a text


class UserError(Exception):
    """A mistake in the command line or the files it names: message, exit status 2."""


# ----------------------------------------------------------------------------------- train
def _load_dataset(name, layout, data_dir, seed):
    """(x_train, y_train, x_test, y_test, num_classes, image_shape or None)."""
    from . import data

    if name == "digits":
        xtr, ytr, xte, yte = data.load_digits(layout="image")
        img = (1, 8, 8)
    elif name in ("mnist", "fashion-mnist"):
        if data_dir is None:
            raise UserError(f"--dataset {name} needs --data-dir DIR, a folder with the four "
                            "IDX files (train-images-idx3-ubyte[.gz], ...)")
        if not Path(data_dir).is_dir():
            raise UserError(f"--data-dir {data_dir}: no such folder")
        load = data.load_mnist if name == "mnist" else data.load_fashion_mnist
        xtr, ytr = load(data_dir, train=True)
        xte, yte = load(data_dir, train=False)
        img = xtr.shape[1:]
    else:
        if layout != "flat":
            raise UserError(f"--dataset {name} gives 2-D points; the model needs "
                            f"{layout!r} input (choose a model with 'flat' input, e.g. mlp)")
        g = np.random.default_rng(seed)
        x, y = (data.make_spirals(1000, 3, generator=g) if name == "spirals"
                else data.make_moons(1000, noise=0.15, generator=g))
        perm = g.permutation(len(y))
        te, tr = perm[:200], perm[200:]
        return x[tr], y[tr], x[te], y[te], int(y.max()) + 1, None
    n_classes = 10
    if layout == "flat":
        xtr, xte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    elif layout == "sequence":
        xtr, xte = xtr[:, 0], xte[:, 0]          # rows as time steps
    return xtr, ytr, xte, yte, n_classes, img


def _make_optimizer(name, params, lr, momentum, weight_decay):
    from . import optim

    cls = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}[name]
    if not hasattr(optim, cls):
        raise UserError(f"optimiser {name!r} is not available in this refdl")
    kw = {"lr": lr}
    if weight_decay:
        kw["weight_decay"] = weight_decay
    if name in ("sgd", "rmsprop") and momentum:
        kw["momentum"] = momentum
    return getattr(optim, cls)(params, **kw)


def _pick_out(args):
    if args.out is not None:
        return Path(args.out), True
    base = Path("runs") / f"{args.model}-{args.dataset}"
    if args.resume:
        return base, False
    out, i = base, 2
    while (out / "checkpoint.npz").exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out, False


# options that define a run: --resume takes them from the run's config.json
RUN_OPTIONS = ("model", "dataset", "data_dir", "batch_size", "optimizer", "lr", "momentum",
               "weight_decay", "scheduler", "clip_grad_norm", "seed")


def _check_train_values(args):
    """Refuse numeric options no training can use, before anything runs."""
    import math

    def bad(v):
        return v is not None and (not math.isfinite(v) or v < 0)
    for opt, v, rule in (("--lr", args.lr, "a non-negative number"),
                         ("--momentum", args.momentum, "a non-negative number"),
                         ("--weight-decay", args.weight_decay, "a non-negative number"),
                         ("--clip-grad-norm", args.clip_grad_norm,
                          "a non-negative number (a negative norm would reverse the "
                          "gradients)")):
        if bad(v):
            raise UserError(f"{opt} must be {rule}, got {v:g}")
    if args.seed < 0 or args.seed >= 2 ** 63:
        raise UserError(f"--seed must be an integer in [0, 2**63), got {args.seed}")
    if not (0 <= args.val_split < 1):
        raise UserError(f"--val-split must be a fraction in [0, 1), got {args.val_split:g}")


def _check_out_writable(out):
    """--out must be a folder refdl can create and write, checked before any training."""
    import tempfile
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder (a file or device); "
                        "choose a folder for the run's checkpoint and plots")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there "
                        f"({e.strerror or type(e).__name__})") from None


def _explicit_options(argv):
    """The dests of the options typed on the command line (defaults not counted)."""
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    for sp in sub.choices.values():
        for a in sp._actions:
            a.default = argparse.SUPPRESS
    try:
        ns = p.parse_args(argv)
    except SystemExit:
        return set()
    return {k for k in vars(ns) if k not in ("func", "command")}


def _apply_run_config(args, out):
    """--resume: take the run's options from out/config.json; an explicit option that
    differs from the run is refused with the reason."""
    cfg_path = out / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--resume: cannot read {cfg_path} ({e})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"--resume: {cfg_path} is not a refdl run configuration")
    explicit = getattr(args, "_explicit", None) or set()
    for key in RUN_OPTIONS:
        if key not in cfg:
            continue
        mine, theirs = getattr(args, key), cfg[key]
        if key in explicit and mine != theirs:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"--resume: {flag} {mine} conflicts with the run in {out}, "
                            f"which was trained with {flag} {theirs}; a resumed run keeps "
                            f"its options (start a new run with another --out to change it)")
        setattr(args, key, theirs)
    return cfg


def _schedule_extension(args, state, steps_per_epoch):
    """--resume with more --epochs than the run was planned for: 'cosine' means re-plan
    the cosine for the new total; a one-cycle schedule cannot be extended (refused)."""
    sched = (state or {}).get("scheduler") or {}
    if args.scheduler == "cosine" and isinstance(sched.get("T_max"), int) and \
            sched["T_max"] != args.epochs:
        return "cosine", sched["T_max"]
    if args.scheduler == "onecycle" and isinstance(sched.get("total_steps"), int):
        planned = sched["total_steps"]
        if args.epochs * steps_per_epoch != planned:
            raise UserError(
                f"--resume: the run's one-cycle schedule was planned for {planned} steps "
                f"({planned // max(steps_per_epoch, 1)} epochs) and cannot be stretched to "
                f"{args.epochs} epochs (its learning rate would restart mid-annealing); "
                f"resume with --epochs {planned // max(steps_per_epoch, 1)}, or start a new "
                f"run with another --out")
    return None


def _replanned_cosine(opt, total):
    """CosineAnnealingLR over ``total`` epochs that keeps that plan when a checkpoint's
    state (planned for fewer epochs) is loaded into it, using the closed form
    eta_t = eta_min + (eta_0 - eta_min)(1 + cos(pi t / total)) / 2 from then on."""
    from .optim import lr_scheduler as ls

    class CosineAnnealingLR(ls.CosineAnnealingLR):      # same name: the checkpoint fits
        def load_state_dict(self, state_dict):
            super().load_state_dict(state_dict)
            self.T_max = total
            # the restored optimiser holds the old plan's lr (0 at its end): re-plan it too
            for group, lr in zip(self.optimizer.param_groups, self._get_closed_form_lr()):
                group["lr"] = lr
            self._last_lr = self._lrs()

        def get_lr(self):
            if self.last_epoch == 0:
                return self._lrs()
            return self._get_closed_form_lr()
    return CosineAnnealingLR(opt, T_max=total)


def _first_feature_maps(model, x):
    """The first (1, C, H, W) output (C > 1) of a leaf module on input ``x``, or None."""
    found = []
    leaves = [m for m in model.modules() if not list(m.children())]
    saved = []
    for m in leaves:
        fwd = m.forward

        def wrapped(*a, _fwd=fwd, **k):
            out = _fwd(*a, **k)
            if not found and isinstance(out, np.ndarray) and out.ndim == 4 and out.shape[1] > 1:
                found.append(out.copy())
            return out
        saved.append((m, "forward" in m.__dict__, fwd))
        object.__setattr__(m, "forward", wrapped)
    was = model.training
    try:
        model.eval()
        model(x)
    finally:
        model.train(was)
        for m, had, fwd in saved:
            if had:
                object.__setattr__(m, "forward", fwd)
            else:
                del m.__dict__["forward"]
    return found[0] if found else None


def _apply_threads(args):
    """--threads N (or, without it, the cores nobody else is using): refdl.set_num_threads.
    Returns a short description for the header."""
    from .threads import auto_num_threads, set_num_threads
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be a positive integer, got {args.threads}")
        set_num_threads(args.threads)
        return f"{args.threads} thread{'s' * (args.threads > 1)}"
    n, why = auto_num_threads()
    set_num_threads(n)
    return f"{n} thread{'s' * (n > 1)} ({why}; --threads to choose)"


def cmd_train(args):
    from . import data, models, nn, plot
    from .checkpoint import read_checkpoint
    from .train import NonFiniteLossError, evaluate, fit
    import refdl

    threads_note = _apply_threads(args)

    if args.model is None:
        args.model = "mlp" if args.dataset in POINT_DATASETS else DEFAULT_MODEL
    if args.model in TEXT_MODELS:          # language models train on text: their own branch
        return cmd_train_text(args)
    avail = models.available_models()
    if args.model not in avail:
        raise UserError(f"unknown model {args.model!r}; available: {', '.join(sorted(avail))}")
    if args.epochs < 1 or args.batch_size < 1:
        raise UserError("--epochs and --batch-size must be positive")
    _check_train_values(args)
    out, explicit = _pick_out(args)
    ck = out / "checkpoint.npz"
    ck_state = None
    if args.resume:
        if not ck.exists():
            raise UserError(f"--resume: no checkpoint {ck} to continue from")
        _apply_run_config(args, out)
        ck_state = read_checkpoint(ck)              # a corrupt file is refused first
        done = ck_state["epoch"] or 0
        if done >= args.epochs:
            print(f"refdl train: {ck} is already at epoch {done}; pass --epochs N > {done} "
                  "to train further (evaluating it as it is)")
    elif ck.exists():
        raise UserError(f"{out} already holds a checkpoint; use --resume to continue it "
                        "or choose another --out (nothing was overwritten)")
    _check_out_writable(out)
    if not hasattr(nn, "CrossEntropyLoss"):
        raise UserError("nn.CrossEntropyLoss is not available in this refdl yet")

    layout = models.model_layout(args.model)
    xtr, ytr, xte, yte, k, img = _load_dataset(args.dataset, layout, args.data_dir, args.seed)
    refdl.manual_seed(args.seed)
    model = models.get_model(args.model, num_classes=k, input_shape=tuple(xtr.shape[1:]))
    opt = _make_optimizer(args.optimizer, list(model.parameters()),
                          args.lr if args.lr is not None else DEFAULT_LR[args.optimizer],
                          args.momentum, args.weight_decay)
    sched, interval = None, "epoch"
    extension = _schedule_extension(args, ck_state, -(-len(ytr) // args.batch_size)) \
        if args.resume else None
    if args.scheduler != "none":
        from .optim import lr_scheduler as ls
        if args.scheduler == "step":
            sched = ls.StepLR(opt, step_size=max(1, args.epochs // 3), gamma=0.1)
        elif extension is not None:
            sched = _replanned_cosine(opt, args.epochs)
            if not args.quiet:
                print(f"refdl train: re-planning the cosine schedule for {args.epochs} "
                      f"epochs (the run was planned for {extension[1]})")
        elif args.scheduler == "cosine":
            sched = ls.CosineAnnealingLR(opt, T_max=args.epochs)
        else:
            steps = -(-len(ytr) // args.batch_size)
            sched = ls.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], epochs=args.epochs,
                                  steps_per_epoch=steps)
            interval = "step"
    (xtr, ytr), val = _validation_split(xtr, ytr, args.val_split, args.seed)
    train = data.DataLoader(data.TensorDataset(xtr, ytr), args.batch_size, shuffle=True)
    val = None if val is None else data.DataLoader(data.TensorDataset(*val), 256)
    test = data.DataLoader(data.TensorDataset(xte, yte), 256)
    loss = nn.CrossEntropyLoss()
    say = (lambda *a: None) if args.quiet else print
    n_val = 0 if val is None else len(val.dataset)
    say(f"refdl train: {args.model} ({model.num_parameters():,} parameters) on {args.dataset} "
        f"({len(ytr)} train / {n_val} validation / {len(yte)} test, input "
        f"{tuple(xtr.shape[1:])}), {args.optimizer} {_lr_description(args, opt)}, "
        f"{args.epochs} epochs, batch {args.batch_size}, seed {args.seed}; "
        f"{kernels_description()}, {threads_note}")
    out.mkdir(parents=True, exist_ok=True)
    config = {k2: (str(v) if isinstance(v, Path) else v) for k2, v in vars(args).items()
              if k2 != "func" and not k2.startswith("_")}
    if not args.resume:            # a failed resume must not touch the run's files
        (out / "config.json").write_text(json.dumps(config, indent=1))
    t0 = time.perf_counter()
    try:
        # overflow on the way to a NaN loss is reported once, by fit's guard, not as a
        # stream of NumPy warnings
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            history = fit(model, loss, opt, train, val, epochs=args.epochs,
                          scheduler=sched, scheduler_interval=interval,
                          clip_grad_norm=args.clip_grad_norm, checkpoint_path=ck,
                          resume=args.resume, progress=not args.quiet, num_classes=k)
    except NonFiniteLossError as e:
        print(f"refdl train: {e}", file=sys.stderr)
        return 1
    secs = time.perf_counter() - t0
    if args.resume:
        (out / "config.json").write_text(json.dumps(config, indent=1))
    diverged = _diverged(history, k)
    ev = evaluate(model, test, loss, num_classes=k)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    files = [ck, out / "history.json"]
    if not args.no_plots:
        files.append(plot.plot_history(history, out / "history.png",
                                       title=f"{args.model} on {args.dataset} "
                                             "(validation split of the training data)"))
        files.append(plot.plot_confusion_matrix(ev["confusion"], out / "confusion.png"))
        if img is not None:
            n = min(36, len(yte))
            xs = xte[:n].reshape((n,) + tuple(img))
            files.append(plot.plot_samples(xs, out / "samples.png", labels=yte[:n],
                                           preds=ev["y_pred"][:n], title="test images"))
            if np.any(ev["y_pred"] != yte):      # the ones it got wrong, wherever they are
                files.append(plot.plot_misclassified(
                    xte.reshape((len(yte),) + tuple(img)), yte, ev["y_pred"],
                    out / "misclassified.png"))
        elif xte.ndim == 2 and xte.shape[1] == 2:    # 2-D points: the decision regions
            files.append(plot.plot_decision_boundary(model, xte, yte,
                                                     out / "decision_boundary.png",
                                                     title=f"{args.model} on {args.dataset} "
                                                     "(test points)"))
        maps = _first_feature_maps(model, xte[:1])
        if maps is not None:
            files.append(plot.plot_feature_maps(maps, out / "feature_maps.png",
                                                title="first feature maps (one test image)"))
        name0, first = next(iter(model.named_parameters()), (None, None))
        if name0 is not None and not name0.endswith("weight"):
            first = None
        # draw the first layer's weights only where they are pictures: a Linear that sees
        # the whole grey image, or a convolution's kernels
        if first is not None and img is not None and (
                first.data.ndim == 4 or (first.data.ndim == 2 and img[0] == 1
                                         and first.data.shape[1] == int(np.prod(img)))):
            shape = tuple(img[1:]) if first.data.ndim == 2 else None
            files.append(plot.plot_filters(first, out / "filters.png", image_shape=shape))
    correct = int(np.trace(ev["confusion"]))
    say(f"test accuracy: {100 * ev['accuracy']:.2f}% ({correct}/{len(yte)}), "
        f"macro F1 {ev['f1']:.3f}, {secs:.1f} s (the test split, evaluated once after "
        "training; nothing was chosen on it)")
    say("wrote " + ", ".join(str(f) for f in files))
    if diverged:
        print(f"refdl train: warning: training diverged: {diverged}; lower --lr (or use "
              "--clip-grad-norm)", file=sys.stderr)
        return 3
    return 0


# ------------------------------------------------------------------ train a text model
def _text_name(path):
    return "sklearn-descr" if path is None else (Path(path).stem or "text")


def _plot_lm_history(hist, baseline, path, title):
    """Training loss per step, train/validation loss at the evaluations, bigram baseline."""
    from .plot import _figure, _save

    fig = _figure(7, 4)
    ax = fig.subplots()
    loss = np.asarray(hist["loss"])
    if len(loss):
        steps = np.arange(1, len(loss) + 1)
        ax.plot(steps, loss, color="0.75", lw=0.8, label="training batch")
    ax.plot(hist["step"], hist["train_loss"], "o-", ms=3, label="train (fixed windows)")
    ax.plot(hist["step"], hist["val_loss"], "s-", ms=3, label="validation")
    ax.axhline(baseline, color="k", ls="--", lw=1,
               label=f"bigram baseline (validation) {baseline:.3f}")
    ax.set(xlabel="step", ylabel="cross-entropy (nats / character)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def cmd_train_text(args):
    """``refdl train --model gpt``: a character-level language model on a text."""
    from threadpoolctl import threadpool_limits

    from .checkpoint import save_checkpoint
    from .data.text import CharVocab, bigram_baseline, load_text, split_ids
    from .models.gpt import GPT, train_gpt
    import refdl

    if args.resume:
        raise UserError(f"--resume is not supported for --model {args.model}; train again "
                        "with more --steps")
    if min(args.steps, args.batch_size, args.block_size, args.eval_interval) < 1:
        raise UserError("--steps, --batch-size, --block-size and --eval-interval must be "
                        "positive")
    if args.lr is not None and not args.lr > 0:
        raise UserError(f"--lr must be positive, got {args.lr}")
    _check_train_values(args)
    try:
        text = load_text(args.text)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"--text: {e}") from None
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text)
    if len(ids) < 40:
        raise UserError(f"--text: the text has only {len(ids)} characters; a language model "
                        "needs a few hundred at least")
    train_ids, val_ids = split_ids(ids, 0.1)
    block = min(args.block_size, len(val_ids) - 1)
    baseline, alpha = bigram_baseline(train_ids, val_ids, len(vocab))
    name = _text_name(args.text)
    if args.out is not None:
        out = Path(args.out)
    else:
        base = Path("runs") / f"{args.model}-{name}"
        out, i = base, 2
        while (out / "checkpoint.npz").exists():
            out, i = Path(f"{base}-{i}"), i + 1
    ck = out / "checkpoint.npz"
    if ck.exists():
        raise UserError(f"{out} already holds a checkpoint; choose another --out (nothing "
                        "was overwritten)")
    _check_out_writable(out)
    refdl.manual_seed(args.seed)
    try:
        model = GPT(len(vocab), block_size=block, n_layer=args.n_layer, n_head=args.n_head,
                    n_embd=args.n_embd, dropout=args.dropout, tie_weights=not args.no_tie)
    except ValueError as e:
        raise UserError(str(e)) from None
    lr = args.lr if args.lr is not None else 3e-3
    say = (lambda *a: None) if args.quiet else print
    say(f"refdl train: {args.model} ({model.num_parameters():,} parameters: {args.n_layer} "
        f"layers, {args.n_head} heads, width {args.n_embd}, context {block}, "
        f"{'tied' if not args.no_tie else 'untied'} embedding/head) on "
        f"{args.text or 'the scikit-learn data-set descriptions'} ({len(text):,} characters, "
        f"{len(vocab)} distinct; {len(train_ids):,} train / {len(val_ids):,} validation), "
        f"AdamW lr={lr:g}, {args.steps} steps of batch {args.batch_size}, seed {args.seed}")
    say(f"bigram baseline (counts, add-{alpha:g} smoothing): validation loss {baseline:.4f} "
        "nats/char")
    # --threads N is obeyed; without it 1 BLAS thread: this model's matrices are small, and
    # on the shared 2-core machine a step took 0.23 s with 1 thread, 1.9 s with 2
    threads = getattr(args, "threads", None) or 1
    with threadpool_limits(threads), np.errstate(over="ignore"):
        try:
            hist = train_gpt(model, train_ids, val_ids, steps=args.steps,
                             batch_size=args.batch_size, lr=lr,
                             clip_grad_norm=args.clip_grad_norm or 1.0,
                             eval_interval=args.eval_interval, seed=args.seed,
                             time_limit=args.time_limit, log=None if args.quiet else say)
        except FloatingPointError as e:
            print(f"refdl train: {e}", file=sys.stderr)
            return 1
        sample = vocab.decode(model.generate(vocab.encode(text[:1]), 300, temperature=0.8,
                                             generator=np.random.default_rng(args.seed))[0])
    out.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k != "func" and not k.startswith("_")}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    save_checkpoint(ck, model, epoch=hist["steps_done"], history=hist, extra={
        "kind": "char-lm", "model": args.model, "gpt_config": model.config(),
        "vocab": "".join(vocab.itos), "text": name, "bigram_val_loss": baseline})
    (out / "history.json").write_text(json.dumps(
        dict(hist, bigram_val_loss=baseline, bigram_alpha=alpha), indent=1))
    (out / "sample.txt").write_text(sample, encoding="utf-8")
    files = [ck, out / "history.json", out / "sample.txt"]
    if not args.no_plots:
        files.append(_plot_lm_history(hist, baseline, out / "loss.png",
                                      f"{args.model} on {name}: {model.num_parameters():,} "
                                      f"parameters"))
    val = hist["val_loss"][-1]
    say(f"validation loss {val:.4f} nats/char after {hist['steps_done']} steps "
        f"({hist['seconds']:.0f} s); bigram baseline {baseline:.4f} "
        f"({'below' if val < baseline else 'NOT below'} it by {abs(baseline - val):.3f})")
    say("sample (temperature 0.8):\n" + sample)
    say("wrote " + ", ".join(str(f) for f in files))
    say(f"generate more: refdl sample {ck} --prompt \"The \" --chars 500")
    return 0


# ---------------------------------------------------------------------------------- sample
def cmd_sample(args):
    """``refdl sample CHECKPOINT``: characters from a trained text model."""
    from .checkpoint import load_checkpoint, read_checkpoint
    from .data.text import CharVocab
    from .models.gpt import GPT

    state = read_checkpoint(args.checkpoint)
    extra = state.get("extra") or {}
    if not isinstance(extra, dict) or extra.get("kind") != "char-lm":
        raise UserError(f"{args.checkpoint}: not a text model's checkpoint (train one with "
                        "refdl train --model gpt)")
    if args.chars < 0:
        raise UserError("--chars must be at least 0")
    if not args.temperature > 0:
        raise UserError(f"--temperature must be positive, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    vocab = CharVocab(extra["vocab"])
    prompt = args.prompt if args.prompt else "\n"
    bad = vocab.unknown(prompt)
    if bad:
        raise UserError(f"--prompt: characters not in the model's vocabulary: "
                        f"{''.join(bad)!r} (it knows {''.join(vocab.itos)!r})")
    model = GPT(**extra["gpt_config"])
    load_checkpoint(args.checkpoint, model, restore_rng=False)
    ids = model.generate(vocab.encode(prompt), args.chars, temperature=args.temperature,
                         top_k=args.top_k, generator=np.random.default_rng(args.seed))
    sys.stdout.write(vocab.decode(ids[0]) + "\n")
    return 0


def _validation_split(x, y, fraction, seed):
    """((x_train, y_train), (x_val, y_val) or None): a seeded random split of the
    training data; the validation part has round(fraction N) examples, at least one."""
    if fraction == 0:
        return (x, y), None
    n = len(y)
    n_val = max(1, int(round(fraction * n)))
    if n_val >= n:
        raise UserError(f"--val-split {fraction:g}: {n} training examples are too few to "
                        "hold out a validation split (use --val-split 0)")
    perm = np.random.default_rng([seed, 12345]).permutation(n)
    val_idx, keep = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return (x[keep], y[keep]), (x[val_idx], y[val_idx])


def _lr_description(args, opt):
    """The learning rate asked for, and what the schedule does with it."""
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    if args.scheduler == "onecycle":
        return (f"lr={lr:g} (onecycle peak; it starts at {opt.param_groups[0]['lr']:g} and "
                "ends near 0)")
    if args.scheduler == "cosine":
        return f"lr={lr:g} (cosine to 0)"
    if args.scheduler == "step":
        return f"lr={lr:g} (x0.1 every {max(1, args.epochs // 3)} epochs)"
    return f"lr={lr:g}"


def _diverged(history, num_classes):
    """Why the run counts as diverged (a string), or None. The cross-entropy of a uniform
    guess is log(num_classes): a final training loss above twice that, or ten times the
    first epoch's, is not a run that learnt."""
    losses = [v for v in history.get("loss", []) if v == v]
    if not losses:
        return None
    chance = float(np.log(num_classes))
    last = losses[-1]
    if last > 2 * chance:
        return (f"the final training loss {last:.4g} is above twice the loss of a uniform "
                f"guess (log {num_classes} = {chance:.3f})")
    if len(losses) > 1 and last > 10 * losses[0]:
        return f"the training loss rose from {losses[0]:.4g} to {last:.4g}"
    return None


# ------------------------------------------------------------------------------- gradcheck
def _away(r, shape, margin=0.1):
    u = r.standard_normal(shape)
    return np.sign(u) * (margin + np.abs(u))


def _n(shape):
    return lambda r: [r.standard_normal(shape)]


def _int_target(n, k):
    return lambda r: [r.standard_normal((n, k)), r.integers(0, k, n)]


def _table():
    """(label, class name, constructor kwargs/args, inputs(rng), options)."""
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    t = [
        ("Linear", "Linear", ((4, 3), {}), _n((2, 4)), {}),
        ("Identity", "Identity", ((), {}), _n((2, 3)), {}),
        ("Flatten", "Flatten", ((), {}), _n((2, 2, 3)), {}),
        ("Unflatten", "Unflatten", ((1, (2, 3)), {}), _n((2, 6)), {}),
        ("ReLU", "ReLU", ((), {}), lambda r: [_away(r, (3, 4))], {}),
        ("LeakyReLU", "LeakyReLU", ((0.1,), {}), lambda r: [_away(r, (3, 4))], {}),
        ("ELU", "ELU", ((), {}), lambda r: [_away(r, (3, 4))], {}),
        ("Sigmoid", "Sigmoid", ((), {}), _n((3, 4)), {}),
        ("Tanh", "Tanh", ((), {}), _n((3, 4)), {}),
        ("Softplus", "Softplus", ((), {}), _n((3, 4)), {}),
        ("GELU", "GELU", ((), {}), _n((3, 4)), {}),
        ("GELU(tanh)", "GELU", ((), {"approximate": "tanh"}), _n((3, 4)), {}),
        ("SiLU", "SiLU", ((), {}), _n((3, 4)), {}),
        ("Softmax", "Softmax", ((), {"dim": -1}), _n((3, 4)), {}),
        ("LogSoftmax", "LogSoftmax", ((), {"dim": -1}), _n((3, 4)), {}),
        ("LayerNorm", "LayerNorm", ((4,), {}), _n((2, 3, 4)), {}),
        ("Dropout", "Dropout", ((0.5,), {}), _n((3, 4)), {}),
        ("BatchNorm1d", "BatchNorm1d", ((3,), {}), _n((4, 3)), {}),
        ("BatchNorm2d", "BatchNorm2d", ((2,), {}), _n((3, 2, 3, 3)), {}),
        ("BatchNorm3d", "BatchNorm3d", ((2,), {}), _n((2, 2, 2, 2, 2)), {}),
        ("GroupNorm", "GroupNorm", ((2, 4), {}), _n((2, 4, 3)), {}),
        ("InstanceNorm1d", "InstanceNorm1d", ((2,), {"affine": True}), _n((2, 2, 5)), {}),
        ("InstanceNorm2d", "InstanceNorm2d", ((2,), {"affine": True}), _n((2, 2, 3, 3)), {}),
        ("Conv1d", "Conv1d", ((2, 3, 3), {"padding": 1}), _n((2, 2, 5)), {}),
        ("Conv2d", "Conv2d", ((2, 3, (3, 2)), {"padding": 1}), _n((2, 2, 4, 5)), {}),
        ("Conv2d(stride 2)", "Conv2d", ((2, 2, 3), {"stride": 2, "padding": 1}),
         _n((1, 2, 5, 5)), {}),
        ("Conv3d", "Conv3d", ((1, 2, 2), {}), _n((1, 1, 3, 3, 3)), {}),
        ("ConvTranspose1d", "ConvTranspose1d", ((2, 3, 3), {"stride": 2}), _n((2, 2, 4)), {}),
        ("ConvTranspose2d", "ConvTranspose2d", ((2, 3, 3), {"stride": 2}), _n((1, 2, 3, 3)), {}),
        ("ConvTranspose3d", "ConvTranspose3d", ((1, 2, 2), {"stride": 2}),
         _n((1, 1, 2, 2, 2)), {}),
        ("MaxPool1d", "MaxPool1d", ((2,), {}), _n((2, 2, 6)), {}),
        ("MaxPool2d", "MaxPool2d", ((2,), {}), _n((2, 2, 4, 4)), {}),
        ("MaxPool3d", "MaxPool3d", ((2,), {}), _n((1, 2, 4, 4, 2)), {}),
        ("AvgPool1d", "AvgPool1d", ((2,), {}), _n((2, 2, 6)), {}),
        ("AvgPool2d", "AvgPool2d", ((2,), {}), _n((2, 2, 4, 4)), {}),
        ("AvgPool3d", "AvgPool3d", ((2,), {}), _n((1, 2, 4, 4, 2)), {}),
        ("AdaptiveAvgPool2d", "AdaptiveAvgPool2d", ((1,), {}), _n((2, 3, 3, 3)), {}),
        ("Upsample(nearest)", "Upsample", ((), {"scale_factor": 2, "mode": "nearest"}),
         _n((1, 2, 3, 3)), {}),
        ("Upsample(bilinear)", "Upsample", ((), {"scale_factor": 2, "mode": "bilinear"}),
         _n((1, 2, 3, 3)), {}),
        ("RNN", "RNN", ((3, 4), {"batch_first": True}), _n((2, 3, 3)), {}),
        ("LSTM", "LSTM", ((3, 4), {"batch_first": True}), _n((2, 3, 3)), {}),
        ("GRU", "GRU", ((3, 4), {"batch_first": True}), _n((2, 3, 3)), {}),
        ("RNNCell", "RNNCell", ((3, 4), {}), _n((2, 3)), {}),
        ("LSTMCell", "LSTMCell", ((3, 4), {}), _n((2, 3)), {}),
        ("GRUCell", "GRUCell", ((3, 4), {}), _n((2, 3)), {}),
        ("Embedding", "Embedding", ((10, 3), {}), lambda r: [r.integers(0, 10, (2, 4))],
         {"wrt": []}),
        ("MultiheadAttention", "MultiheadAttention", ((4, 2), {"batch_first": True}),
         lambda r: [r.standard_normal((2, 3, 4)) for _ in range(3)], {}),
        ("TransformerEncoderLayer", "TransformerEncoderLayer",
         ((), {"d_model": 4, "nhead": 2, "dim_feedforward": 8, "dropout": 0.0,
               "batch_first": True}), _n((2, 3, 4)), {}),
        ("TransformerEncoder", lambda nn: nn.TransformerEncoder(nn.TransformerEncoderLayer(
            d_model=4, nhead=2, dim_feedforward=8, dropout=0.0, batch_first=True), 2),
         ((), {}), _n((2, 3, 4)), {}),
        ("TransformerDecoderLayer", "TransformerDecoderLayer",
         ((), {"d_model": 4, "nhead": 2, "dim_feedforward": 8, "dropout": 0.0,
               "batch_first": True}),
         lambda r: [r.standard_normal((2, 3, 4)), r.standard_normal((2, 4, 4))], {}),
        ("Transformer", "Transformer",
         ((), {"d_model": 4, "nhead": 2, "num_encoder_layers": 1, "num_decoder_layers": 1,
               "dim_feedforward": 8, "dropout": 0.0, "batch_first": True}),
         lambda r: [r.standard_normal((2, 4, 4)), r.standard_normal((2, 3, 4))], {}),
        ("ScaledDotProductAttention", "ScaledDotProductAttention", ((), {}),
         lambda r: [r.standard_normal((2, 3, 4)) for _ in range(3)], {}),
        ("SinusoidalPositionalEncoding", "SinusoidalPositionalEncoding", ((4,), {}),
         _n((2, 3, 4)), {}),
        ("LearnedPositionalEncoding", "LearnedPositionalEncoding", ((5, 4), {}),
         _n((2, 3, 4)), {}),
        ("PatchEmbed", "PatchEmbed", ((), {"patch_size": 2, "in_chans": 1, "embed_dim": 4}),
         _n((1, 1, 4, 4)), {}),
        ("PatchMerging", "PatchMerging", ((4,), {}), _n((1, 2, 2, 4)), {}),
        ("WindowedEncoderLayer", "WindowedEncoderLayer", ((4, 2), {"window_size": 2}),
         _n((1, 4, 4, 4)), {}),
        ("Add", "Add", ((), {}), lambda r: [r.standard_normal((2, 3)), r.standard_normal((2, 3))], {}),
        ("Concat", "Concat", ((), {"dim": 1}),
         lambda r: [r.standard_normal((2, 3)), r.standard_normal((2, 2))], {}),
        ("BasicBlock", "BasicBlock", ((2, 2), {}), _n((2, 2, 3, 3)), {}),
        ("Bottleneck", "Bottleneck", ((8, 2), {}), _n((1, 8, 3, 3)), {}),
        # losses: (input, target); only the input gradient is checked
        ("MSELoss", "MSELoss", ((), {}), lambda r: [r.standard_normal((3, 4)),
                                                    r.standard_normal((3, 4))], {"loss": True}),
        ("L1Loss", "L1Loss", ((), {}), lambda r: [r.standard_normal((3, 4)),
                                                  r.standard_normal((3, 4))], {"loss": True}),
        ("HuberLoss", "HuberLoss", ((), {}), lambda r: [3 * r.standard_normal((3, 4)),
                                                        r.standard_normal((3, 4))], {"loss": True}),
        ("CrossEntropyLoss", "CrossEntropyLoss", ((), {}), _int_target(4, 5), {"loss": True}),
        ("CrossEntropyLoss(smooth)", "CrossEntropyLoss", ((), {"label_smoothing": 0.1}),
         _int_target(4, 5), {"loss": True}),
        ("NLLLoss", "NLLLoss", ((), {}), _int_target(4, 5), {"loss": True}),
        ("BCELoss", "BCELoss", ((), {}),
         lambda r: [sig(r.standard_normal((3, 4))), r.integers(0, 2, (3, 4)).astype(float)],
         {"loss": True}),
        ("BCEWithLogitsLoss", "BCEWithLogitsLoss", ((), {}),
         lambda r: [r.standard_normal((3, 4)), r.integers(0, 2, (3, 4)).astype(float)],
         {"loss": True}),
    ]
    return t


GRADCHECK_TABLE = _table()


def _run_gradchecks(only=None):
    """[(label, status, result or message)] for every row; status ok/FAIL/ERROR/skip."""
    from . import nn
    from .gradcheck import check_loss, check_module
    from .random import fork_rng

    rows = []
    for label, cls, (a, kw), make_inputs, opts in GRADCHECK_TABLE:
        if only and label not in only and cls not in only and \
                getattr(cls, "__name__", None) not in only:
            continue
        if isinstance(cls, str) and not hasattr(nn, cls):
            rows.append((label, "skip", "not in refdl.nn yet"))
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


def _load_user_layer(spec):
    """The class named by ``path/to/file.py:Name`` or ``package.module:Name``."""
    import importlib
    import importlib.util
    from .nn.module import Module

    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise UserError(f"{spec!r}: expected FILE.py:ClassName or module.path:ClassName")
    if where.endswith(".py") or os.sep in where or "/" in where:
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


def _parse_call_args(text):
    """``"4, 3, bias=False"`` -> ((4, 3), {'bias': False}), literals only."""
    import ast
    try:
        call = ast.parse(f"f({text or ''})", mode="eval").body
        return (tuple(ast.literal_eval(a) for a in call.args),
                {k.arg: ast.literal_eval(k.value) for k in call.keywords})
    except (SyntaxError, ValueError) as e:
        raise UserError(f"--args {text!r}: expected Python literals such as '4, 3, "
                        f"bias=False' ({e})") from None


def _gradcheck_user_layer(spec, args):
    """Check a user's layer: ``refdl gradcheck my_layer.py:MyLayer --input-shape 4,3``."""
    from .gradcheck import check_module

    cls = _load_user_layer(spec)
    if not args.input_shape:
        raise UserError(f"{spec}: give the input's shape with --input-shape, e.g. 4,3 "
                        "(repeat it for a layer with several inputs)")
    shapes = [_parse_shape(t) for t in args.input_shape]
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


def cmd_gradcheck(args):
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
    print(f"{'layer':<30}{'status':<8}{'max rel err':>12}  {'tensors':<8} worst tensor")
    print("-" * 82)
    results = {}
    for label, status, res in rows:
        if isinstance(res, str):
            if status != "skip" or args.verbose:
                print(f"{label:<30}{status:<8}{'':>12}  {'':<8} {res}")
            continue
        results[label] = res
        worst = max(res.tensors, key=lambda t: t.max_rel_error) if res.tensors else None
        print(f"{label:<30}{status:<8}{res.max_rel_error:>12.2e}  {len(res.tensors):<8} "
              f"{worst.name if worst else ''}")
        if status == "FAIL" or args.verbose:
            print("    " + str(res).replace("\n", "\n    "))
    n_ok = sum(s == "ok" for _, s, _ in rows)
    bad = [lab for lab, s, _ in rows if s in ("FAIL", "ERROR")]
    skipped = [lab for lab, s, _ in rows if s == "skip"]
    print("-" * 82)
    print(f"{n_ok} passed, {len(bad)} failed, {len(skipped)} not available"
          + (f" ({', '.join(skipped)})" if skipped and not args.verbose else "")
          + f"; rtol = 1e-7")
    if not args.only:
        from . import nn
        from .nn.module import Module
        covered = {r[1] if isinstance(r[1], str) else r[0] for r in GRADCHECK_TABLE}
        others = sorted(n for n in getattr(nn, "__all__", dir(nn))
                        if isinstance(getattr(nn, n, None), type)
                        and issubclass(getattr(nn, n), Module)
                        and "backward" in vars(getattr(nn, n)) and n not in covered
                        and n not in ("Module", "Sequential", "ModuleList"))
        if others:
            print(f"not in this command's table (see their tests): {', '.join(others)}")
    if args.plot and results:
        from .plot import plot_gradcheck
        print(f"wrote {plot_gradcheck(results, args.plot)}")
    return 1 if bad else 0


# --------------------------------------------------------------------------------- summary
def _parse_shape(text):
    if not re.fullmatch(r"\d+([,x]\d+)*", text.strip()):
        raise UserError(f"--input-shape {text!r}: expected integers separated by commas, "
                        "e.g. 1,8,8")
    shape = tuple(int(s) for s in re.split(r"[,x]", text.strip()))
    if any(s <= 0 for s in shape):
        raise UserError(f"--input-shape {text!r}: sizes must be positive")
    return shape


def cmd_summary(args):
    from . import models
    from .summary import summary
    import refdl

    avail = models.available_models()
    if args.model not in avail:
        raise UserError(f"unknown model {args.model!r}; available: {', '.join(sorted(avail))}")
    if models.model_layout(args.model) == "text":      # token ids, not arrays of floats
        refdl.manual_seed(0)
        model = models.get_model(args.model, vocab_size=args.num_classes)
        print(f"{args.model} (vocab_size={args.num_classes}): input (N, T) integer ids, "
              f"output (N, T, {args.num_classes}) logits")
        for name, child in model.named_children():
            print(f"  {name:<10} {type(child).__name__:<28} "
                  f"{child.num_parameters():>10,} parameters")
        print(f"  total {model.num_parameters():,} trainable parameters (a tied weight "
              "counts once)")
        return 0
    default = {"flat": (64,), "image": (1, 8, 8), "sequence": (8, 8)}
    shape = _parse_shape(args.input_shape) if args.input_shape else \
        default.get(models.model_layout(args.model), (64,))
    refdl.manual_seed(0)
    try:
        model = models.get_model(args.model, num_classes=args.num_classes, input_shape=shape)
        print(f"{args.model}: input (N, {', '.join(map(str, shape))})")
        summary(model, (args.batch,) + shape)
    except (ValueError, TypeError) as e:
        raise UserError(f"{args.model} with input shape {shape}: {e}") from None
    return 0


# ------------------------------------------------------------------------------------ exam
def _find(rel):
    """``rel`` (e.g. docs/exam.md) in the current folder, the source tree, or the copy an
    installed wheel carries; None when none has it."""
    for base in (Path.cwd(), REPO, SHIPPED):
        p = base / rel
        if p.exists():
            return p
    return None


def _exam_entries(text):
    """{id: entry text} from docs/exam.md's '### topic-N' sections."""
    entries, cur, buf = {}, None, []
    for line in text.splitlines():
        m = re.match(r"^###\s+([a-z]+-\d+[a-z]?)\b", line)
        if m or line.startswith("## "):
            if cur:
                entries[cur] = "\n".join(buf).strip()
            cur, buf = (m.group(1), [line]) if m else (None, [])
        elif cur:
            buf.append(line)
    if cur:
        entries[cur] = "\n".join(buf).strip()
    return entries


_VERDICT = re.compile(r"\**\bverdicts?\b\**\s*:\s*", re.I)
_VERDICT_WORD = re.compile(r"\*\*((?:partly )?(?:agrees|disagrees|ambiguous|conceptual)\b[^*]*)\*\*",
                           re.I)


def _paragraphs(entry):
    """An entry's paragraphs (blank-line separated; each '- ' bullet its own), without
    the heading and the quoted question."""
    entry = re.sub(r"<!-- quote -->.*?<!-- /quote -->", "", entry, flags=re.S)
    paras, cur = [], []
    for line in entry.splitlines()[1:]:
        s = line.strip()
        if not s or re.match(r"^[-*] ", s) or s.startswith("#"):
            if cur:
                paras.append(" ".join(cur))
            cur = [s[2:]] if re.match(r"^[-*] ", s) else []
        else:
            cur.append(s)
    if cur:
        paras.append(" ".join(cur))
    return paras


def _verdict(entry):
    """The entry's verdict, whole: from 'Verdict:' to the end of its paragraph."""
    for para in _paragraphs(entry):
        m = _VERDICT.search(para)
        if m:
            text = para[m.end():]
            break
    else:
        for para in _paragraphs(entry):
            m = _VERDICT_WORD.search(para)
            if m:
                text = para[m.start():]
                break
        else:
            return "(no verdict in docs/exam.md)"
    text = " ".join(text.replace("**", "").split())
    return "Verdict: " + (text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text)


def cmd_exam(args):
    path = _find("docs/exam.md")
    if path is None:
        raise UserError("docs/exam.md not found (neither here, in the refdl source tree, nor "
                        "in the installed package)")
    entries = _exam_entries(path.read_text(encoding="utf-8"))
    ids = [i.lower() for i in args.ids]
    bad = [i for i in ids if not re.fullmatch(r"[a-z]+-\d+[a-z]?", i)]
    if bad:
        raise UserError(f"not an exam item ID: {', '.join(bad)} (IDs look like conv-3)")
    if not ids:
        print(f"{len(entries)} exam items in {path}:")
        for i, e in entries.items():
            print(textwrap.fill(_verdict(e), width=96, initial_indent=f"  {i:<10} ",
                                subsequent_indent=" " * 13, break_long_words=False,
                                break_on_hyphens=False))
        print("give IDs (e.g. refdl exam loss-3) to recompute them with their tests")
        if not args.all:
            return 0
        ids = list(entries)
    missing = [i for i in ids if i not in entries]
    for i in ids:
        if i in entries and not args.all:
            print(entries[i])
            print()
    if missing:
        print(f"not yet in {path.name}: {', '.join(missing)}")
    tests = _find("tests")
    if importlib.util.find_spec("pytest") is None or tests is None:
        print("pytest or the tests/ folder is not available: verdicts above are from "
              f"{path.name}, not recomputed")
        return 0
    expr = " or ".join(f"test_{i.replace('-', '_')}_" for i in ids)
    cmd = [sys.executable, "-m", "pytest", "-q", "-k", expr, str(tests)]
    print("recomputing: " + " ".join(cmd[1:]))
    sys.stdout.flush()
    rc = subprocess.call(cmd, cwd=str(tests.parent))   # the tree the tests belong to
    if rc == 5:
        print(f"no test named after {', '.join(ids)} exists yet")
        return 1
    print("exam tests " + ("passed" if rc == 0 else "FAILED"))
    return 0 if rc == 0 else 1


# ----------------------------------------------------------------------------------- bench
def cmd_bench(args):
    folder = _find("benchmarks")
    if folder is None or not folder.is_dir():
        raise UserError("no benchmarks/ folder (neither here, in the refdl source tree, nor in "
                        "the installed package)")
    scripts = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))
    if args.names:
        known = {p.stem: p for p in scripts}
        unknown = [n for n in args.names if Path(n).stem not in known]
        if unknown:
            raise UserError(f"unknown benchmark(s) {', '.join(unknown)}; available: "
                            f"{', '.join(sorted(known)) or 'none'}")
        scripts = [known[Path(n).stem] for n in args.names]
    if not scripts:
        print(f"no benchmark scripts in {folder}")
        return 0
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE",
                                                             "OPENBLAS_L2_SIZE")}
    # --quick runs only bench_threads.py's quick table (under a minute) unless names are
    # given; --threads/--quick are passed to the scripts that take them
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be a positive integer, got {args.threads}")
    if args.quick and not args.names:
        scripts = [p for p in scripts if p.stem == "bench_threads"]
    failed = []
    for s in scripts:
        need = [m for m in ("threadpoolctl",) if f"import {m}" in s.read_text(encoding="utf-8")
                or f"from {m} " in s.read_text(encoding="utf-8")]
        if any(importlib.util.find_spec(m) is None for m in need):
            print(f"== {s.name}: skipped, it needs {', '.join(need)} "
                  "(pip install \"refdl[bench]\")")
            continue
        print(f"== {s.name}")
        sys.stdout.flush()
        extra = _bench_flags(s, args)
        if subprocess.call([sys.executable, str(s)] + extra, env=env,
                           cwd=str(folder.parent)) != 0:
            failed.append(s.name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


def _bench_flags(script, args):
    """The --threads/--quick options for a benchmark script that declares them."""
    text = script.read_text(errors="replace")
    flags = []
    if args.threads is not None and '"--threads"' in text:
        flags += ["--threads", str(args.threads)]
    if args.quick and '"--quick"' in text:
        flags.append("--quick")
    return flags


# --------------------------------------------------------------------------------- explain
def _explain_lookup(name):
    """The class or function called ``name`` (case-insensitive) in refdl's public modules."""
    import difflib
    import inspect
    from . import models, nn, optim
    from .nn.module import Module

    spaces = [("nn", nn), ("optim", optim), ("optim.lr_scheduler", optim.lr_scheduler),
              ("models", models)]
    found, known = [], set()
    for label, mod in spaces:
        for attr in dir(mod):
            obj = getattr(mod, attr)
            if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not (getattr(obj, "__module__", "") or "").startswith("refdl."):
                continue
            if label == "nn" and not (inspect.isclass(obj) and issubclass(obj, Module)):
                continue
            known.add(attr)
            if attr.lower() == name.lower() and obj not in [o for _, o in found]:
                found.append((f"{label}.{attr}", obj))
    if not found:
        close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else \
            " (a class of refdl.nn, refdl.optim or refdl.models, e.g. Linear, LSTM, Adam)"
        raise UserError(f"unknown layer {name!r}{hint}")
    return found[0]


def _derivation_pages(obj):
    """Derivation pages for ``obj``: the one its docstring names, else the page named after
    it, else the pages that name its source file, else the pages that name it."""
    import inspect
    folder = _find("docs/derivations")
    if folder is None:
        return []
    pages = sorted(folder.glob("*.md"))
    doc = "\n".join(inspect.getdoc(c) or "" for c in getattr(obj, "__mro__", (obj,))
                    if (c.__module__ or "").startswith("refdl."))
    doc += "\n" + (inspect.getdoc(inspect.getmodule(obj)) or "")
    named = [folder / Path(m).name for m in re.findall(r"derivations/([\w\-]+\.md)", doc)]
    if named:
        return [p for p in dict.fromkeys(named) if p.exists()]
    src = Path(inspect.getsourcefile(obj)).resolve()
    for own in (folder / f"{obj.__name__.lower()}.md", folder / f"{src.stem}.md"):
        if own.exists():
            return [own]
    rel = "refdl/" + src.relative_to(Path(__file__).resolve().parent).as_posix()
    texts = {p: p.read_text(encoding="utf-8") for p in pages}
    by_file = [p for p, t in texts.items() if rel in t]
    if by_file:
        return by_file
    return [p for p, t in texts.items() if re.search(rf"`{obj.__name__}\b", t)]


def _where(func):
    import inspect
    func = inspect.unwrap(func)
    lines, start = inspect.getsourcelines(func)
    return f"{inspect.getsourcefile(func)}:{start}"


def cmd_explain(args):
    import inspect

    label, obj = _explain_lookup(args.layer)
    print(f"refdl.{label}" + (str(inspect.signature(obj)) if inspect.isfunction(obj) else ""))
    print()
    doc = inspect.getdoc(obj) or "(no docstring)"
    print(doc)
    mod_doc = inspect.getdoc(inspect.getmodule(obj))
    if "module doc" in doc and mod_doc:
        print(f"\n{inspect.getmodule(obj).__name__}:\n{mod_doc}")
    print()
    if inspect.isclass(obj):
        for meth in ("forward", "backward", "step", "double_backward"):
            f = getattr(obj, meth, None)
            if f is None or not callable(f):
                continue
            owner = next((c for c in obj.__mro__ if meth in vars(c)), obj)
            if owner.__module__ == "builtins":
                continue
            print(f"{meth:<9} {_where(f)}" + ("" if owner is obj else
                                             f"  (inherited from {owner.__name__})"))
    else:
        print(f"source    {_where(obj)}")
    pages = _derivation_pages(obj)
    if not pages:
        print("\nderivation: no page in docs/derivations/ names it")
        return 0
    for page in pages:
        print(f"\nderivation: {page}")
        if not args.no_page:
            print("-" * 80)
            print(page.read_text(encoding="utf-8").rstrip())
    return 0


# ---------------------------------------------------------------------------------- parser
def kernels_description():
    """Which path runs the convolution and pooling loops, and why (for headers)."""
    from . import ext
    if ext.available():
        return "compiled kernels" + (" with OpenMP" if ext.openmp() else " (serial)")
    if ext.compiled_module() is not None:
        return "NumPy reference path (compiled kernels built but switched off)"
    return ("NumPy reference path (the compiled kernels were not built: "
            f"{ext.import_error}; reinstall with a C compiler and Cython for speed)")


def build_parser():
    from . import __version__

    p = argparse.ArgumentParser(
        prog="refdl", description="refdl: a reference deep-learning library in NumPy. "
        "Train a network, check every backward, inspect models and the exam items.",
        epilog="Run 'refdl COMMAND --help' for a command's options.")
    p.add_argument("--version", action="version", version=f"refdl {__version__} "
                   f"({platform.python_implementation()} {platform.python_version()}, "
                   f"NumPy {np.__version__}): {kernels_description()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    try:
        from .models import available_models
        model_help = ", ".join(f"{k} ({v})" for k, v in sorted(available_models().items()))
    except Exception:  # pragma: no cover - the registry is part of refdl
        model_help = "see refdl.models.available_models()"

    t = sub.add_parser("train", help="train a model; print progress, write plots + checkpoint",
                       description="Train a model and report its test accuracy. With no "
                       f"options: {DEFAULT_MODEL} (LeNet-5) on scikit-learn's 8x8 digits (no "
                       "download) in a few seconds. Writes a checkpoint, history.json and PNG plots to --out.")
    t.add_argument("--model", default=None, help=f"model name: {model_help} "
                   f"(default {DEFAULT_MODEL}; mlp for {' and '.join(POINT_DATASETS)})")
    t.add_argument("--dataset", default="digits", choices=DATASETS,
                   help="data set (default digits; mnist/fashion-mnist read IDX files from "
                   "--data-dir; spirals/moons are generated 2-D points)")
    t.add_argument("--data-dir", help="folder with the MNIST/Fashion-MNIST IDX files")
    t.add_argument("--epochs", type=int, default=15, help="number of epochs (default 15)")
    t.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")
    t.add_argument("--optimizer", default="adam", choices=OPTIMIZERS,
                   help="optimiser (default adam)")
    t.add_argument("--lr", type=float, help="learning rate (default: sgd 0.05, adam/adamw 3e-3, rmsprop 1e-3)")
    t.add_argument("--momentum", type=float, default=0.9,
                   help="momentum for sgd/rmsprop (default 0.9)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default 0)")
    t.add_argument("--scheduler", default="cosine", choices=("none", "step", "cosine", "onecycle"),
                   help="learning-rate schedule: step (x0.1 every epochs/3), cosine "
                   "annealing to 0, or one-cycle (per step, peak = --lr) (default cosine)")
    t.add_argument("--clip-grad-norm", type=float, metavar="MAX",
                   help="clip the total gradient norm to MAX before each step")
    t.add_argument("--val-split", type=float, default=0.1, metavar="F",
                   help="fraction of the training data held out as the validation split "
                   "that every choice during training looks at (default 0.1; 0: none). "
                   "The test split is evaluated once, after training")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--out", help="output folder (default runs/MODEL-DATASET[-N], never "
                   "overwriting a previous run)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint up to --epochs")
    t.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    t.add_argument("--quiet", action="store_true", help="print nothing but errors")
    t.add_argument("--threads", type=int, metavar="N",
                   help="threads for BLAS and the compiled kernels (default: the cores "
                   "not busy with other processes, from the load average)")
    t.set_defaults(func=cmd_train)
    tx = t.add_argument_group(
        "text models (--model gpt)", "A character-level language model trains for --steps "
        "steps (not --epochs) with AdamW on --text FILE, or on the data-set descriptions "
        "bundled with scikit-learn (no download); 10% of the text is held out for "
        "validation and the bigram baseline's validation loss is printed for comparison.")
    tx.add_argument("--text", metavar="FILE", help="a UTF-8 text file (default: scikit-learn's "
                    "bundled data-set descriptions, about 47,000 characters)")
    tx.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    tx.add_argument("--block-size", type=int, default=64, help="context length (default 64)")
    tx.add_argument("--n-layer", type=int, default=2, help="Transformer blocks (default 2)")
    tx.add_argument("--n-head", type=int, default=4, help="attention heads (default 4)")
    tx.add_argument("--n-embd", type=int, default=64, help="model width (default 64)")
    tx.add_argument("--dropout", type=float, default=0.0, help="dropout (default 0)")
    tx.add_argument("--no-tie", action="store_true",
                    help="separate output head (default: tied to the token embedding)")
    tx.add_argument("--eval-interval", type=int, default=100,
                    help="steps between validation measurements (default 100)")
    tx.add_argument("--time-limit", type=float, metavar="SECONDS",
                    help="stop training after this many seconds")

    sm = sub.add_parser("sample", help="generate text from a trained text model (gpt)",
                        description="Continue a prompt with characters sampled from a "
                        "checkpoint written by 'refdl train --model gpt'.")
    sm.add_argument("checkpoint", help="checkpoint.npz of a text model")
    sm.add_argument("--prompt", default="", help="text to continue (default: a newline)")
    sm.add_argument("--chars", type=int, default=500,
                    help="number of characters to generate (default 500)")
    sm.add_argument("--temperature", type=float, default=1.0,
                    help="softmax temperature; lower is more conservative (default 1.0)")
    sm.add_argument("--top-k", type=int, default=None,
                    help="sample only among the k most likely characters (default: all)")
    sm.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sm.set_defaults(func=cmd_sample)

    g = sub.add_parser("gradcheck", help="check every layer's backward numerically",
                       description="Gradient-check every layer and loss refdl.nn has (float64 "
                       "central differences against a random projection of the output; "
                       "relative error < 1e-7 for the input and every parameter). Prints a "
                       "table; exit status 1 if any check fails.")
    g.add_argument("only", nargs="*", help="layer names to check (default: all), or your "
                   "own layer as FILE.py:ClassName or package.module:ClassName")
    g.add_argument("--input-shape", action="append",
                   help="for your own layer: the input's shape, e.g. 4,3 (repeat for "
                   "several inputs)")
    g.add_argument("--args", default="",
                   help="for your own layer: constructor arguments, e.g. '3, 4, bias=False'")
    g.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    g.add_argument("--plot", help="also write the report as a bar chart (PNG)")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="full per-tensor reports and skipped layers")
    g.set_defaults(func=cmd_gradcheck)

    s = sub.add_parser("summary", help="layer-by-layer output shapes and parameter counts",
                       description="Build a registered model and print, layer by layer, its "
                       "output shape and trainable parameter count.")
    s.add_argument("model", help=f"model name: {model_help}")
    s.add_argument("--input-shape", help="one example's shape without the batch, e.g. 1,8,8 "
                   "(default from the model's layout: 64 / 1,8,8 / 8,8)")
    s.add_argument("--num-classes", type=int, default=10, help="number of classes (default 10)")
    s.add_argument("--batch", type=int, default=1, help="batch size of the dummy input")
    s.set_defaults(func=cmd_summary)

    e = sub.add_parser("exam", help="the exam items: paper's claim, refdl's result, verdict",
                       description="Print exam items from docs/exam.md (the paper's claim, "
                       "what refdl computed, the verdict) and recompute them by running the "
                       "tests named after their IDs (pytest -k test_<topic>_<n>_).")
    e.add_argument("ids", nargs="*", help="item IDs such as loss-3 (default: list all)")
    e.add_argument("--all", action="store_true", help="recompute every item")
    e.set_defaults(func=cmd_exam)

    b = sub.add_parser("bench", help="run the benchmark scripts in benchmarks/",
                       description="Run benchmarks/*.py (or the named ones), each printing "
                       "its timings and ratios against a baseline measured in the same run.")
    b.add_argument("names", nargs="*", help="benchmark script names (default: all)")
    b.add_argument("--threads", type=int, metavar="N",
                   help="time at N threads only (default: each script's own, e.g. 1 and 2)")
    b.add_argument("--quick", action="store_true",
                   help="only the quick thread/PyTorch table (under a minute)")
    b.set_defaults(func=cmd_bench)

    x = sub.add_parser("explain", help="a layer's formulas, derivation page and source lines",
                       description="Print a layer's docstring (shapes, forward and backward "
                       "formulas), the file and line of its forward and backward, and its "
                       "derivation page from docs/derivations/.")
    x.add_argument("layer", help="a class of refdl.nn, refdl.optim or refdl.models, e.g. "
                   "Linear, Conv2d, LSTM, Adam (case-insensitive)")
    x.add_argument("--no-page", action="store_true",
                   help="name the derivation page without printing it")
    x.set_defaults(func=cmd_explain)
    return p


def main(argv=None):
    """Entry point of the ``refdl`` command; returns the exit status."""
    from .checkpoint import CheckpointError
    from .data import IDXError

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        argv = ["--help"]
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args._explicit = _explicit_options(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, CheckpointError, IDXError, FileNotFoundError) as e:
        print(f"refdl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"refdl {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:          # e.g. `refdl exam | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
