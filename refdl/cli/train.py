"""``refdl train``: train a classifier on a data set, print progress, write plots and a
checkpoint. The steps, in order: check the options, prepare the run's folder (or resume
it), load the data, build the model and its optimiser and schedule, train with
``refdl.train.fit``, evaluate once on the test split, report. ``--model gpt`` hands over
to train_text.py."""
import json
import sys
import time
from pathlib import Path

import numpy as np

from .. import data, models, nn, optim
from ..checkpoint import read_checkpoint
from ..optim import lr_scheduler
from ..random import manual_seed
from ..train import NonFiniteLossError, evaluate, fit
from .common import UserError, check_out_writable, kernels_description, run_config
from .train_plots import write_classifier_plots
from .train_run import (apply_run_config, apply_threads, check_train_values, pick_out,
                        replanned_cosine, schedule_extension, validation_split)
from .train_text import TEXT_MODELS, cmd_train_text

DEFAULT_MODEL = "lenet5"          # for image data sets; 2-D point sets default to "mlp"
POINT_DATASETS = ("spirals", "moons")
DATASETS = ("digits", "mnist", "fashion-mnist", "spirals", "moons")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
DEFAULT_LR = {"sgd": 0.05, "adam": 3e-3, "adamw": 3e-3, "rmsprop": 1e-3}
OPTIMIZER_CLASSES = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW,
                     "rmsprop": optim.RMSprop}


def cmd_train(args):
    """``refdl train``: the steps in order; exit status 0, 1 (non-finite loss) or 3
    (diverged)."""
    threads_note = apply_threads(args)
    if args.model is None:
        args.model = "mlp" if args.dataset in POINT_DATASETS else DEFAULT_MODEL
    if args.model in TEXT_MODELS:          # language models train on text: their own branch
        return cmd_train_text(args)
    _check_options(args)
    out, ck_state = _prepare_run_folder(args)
    xtr, ytr, xte, yte, k, img = _load_dataset(args.dataset, models.model_layout(args.model),
                                               args.data_dir, args.seed)
    model, opt = _build_model(args, tuple(xtr.shape[1:]), k)
    (xtr, ytr), val = validation_split(xtr, ytr, args.val_split, args.seed)
    # planned on the examples it trains on (a one-cycle plan ends where the run ends)
    sched, interval = _make_scheduler(args, opt, ck_state, -(-len(ytr) // args.batch_size))
    train = data.DataLoader(data.TensorDataset(xtr, ytr), args.batch_size, shuffle=True)
    val = None if val is None else data.DataLoader(data.TensorDataset(*val), 256)
    test = data.DataLoader(data.TensorDataset(xte, yte), 256)
    loss = nn.CrossEntropyLoss()
    say = (lambda *a: None) if args.quiet else print
    say(_header(args, model, opt, (len(ytr), 0 if val is None else len(val.dataset), len(yte)),
                tuple(xtr.shape[1:]), threads_note))
    out.mkdir(parents=True, exist_ok=True)
    config = run_config(args)
    if not args.resume:            # a failed resume must not touch the run's files
        (out / "config.json").write_text(json.dumps(config, indent=1))
    t0 = time.perf_counter()
    try:
        history = _fit(args, model, loss, opt, (sched, interval), train, val, out, k)
    except NonFiniteLossError as e:
        print(f"refdl train: {e}", file=sys.stderr)
        return 1
    secs = time.perf_counter() - t0
    if args.resume:
        (out / "config.json").write_text(json.dumps(config, indent=1))
    ev = evaluate(model, test, loss, num_classes=k)
    return _report(args, model, history, ev, out, (xte, yte, img, k), secs)


def _check_options(args):
    """Refuse an unknown model and impossible numbers before anything runs."""
    avail = models.available_models()
    if args.model not in avail:
        raise UserError(f"unknown model {args.model!r}; available: {', '.join(sorted(avail))}")
    if args.epochs < 1 or args.batch_size < 1:
        raise UserError("--epochs and --batch-size must be positive")
    check_train_values(args)


def _prepare_run_folder(args):
    """(the run's folder, the checkpoint's state when resuming else None): --resume takes
    the run's options from its config.json; a new run never overwrites a checkpoint."""
    out, _ = pick_out(args)
    ck = out / "checkpoint.npz"
    ck_state = None
    if args.resume:
        if not ck.exists():
            raise UserError(f"--resume: no checkpoint {ck} to continue from")
        apply_run_config(args, out)
        ck_state = read_checkpoint(ck)              # a corrupt file is refused first
        done = ck_state["epoch"] or 0
        if done >= args.epochs:
            print(f"refdl train: {ck} is already at epoch {done}; pass --epochs N > {done} "
                  "to train further (evaluating it as it is)")
    elif ck.exists():
        raise UserError(f"{out} already holds a checkpoint; use --resume to continue it "
                        "or choose another --out (nothing was overwritten)")
    check_out_writable(out)
    return out, ck_state


def _load_dataset(name, layout, data_dir, seed):
    """(x_train, y_train, x_test, y_test, num_classes, image_shape or None)."""
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
        return _load_points(name, layout, seed)
    if layout == "flat":
        xtr, xte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    elif layout == "sequence":
        xtr, xte = xtr[:, 0], xte[:, 0]          # rows as time steps
    return xtr, ytr, xte, yte, 10, img


def _load_points(name, layout, seed):
    """The generated 2-D point sets (spirals, else moons): 800 training and 200 test
    points."""
    if layout != "flat":
        raise UserError(f"--dataset {name} gives 2-D points; the model needs "
                        f"{layout!r} input (choose a model with 'flat' input, e.g. mlp)")
    g = np.random.default_rng(seed)
    x, y = (data.make_spirals(1000, 3, generator=g) if name == "spirals"
            else data.make_moons(1000, noise=0.15, generator=g))
    perm = g.permutation(len(y))
    te, tr = perm[:200], perm[200:]
    return x[tr], y[tr], x[te], y[te], int(y.max()) + 1, None


def _build_model(args, input_shape, num_classes):
    """(model, optimiser), the model initialised from --seed."""
    manual_seed(args.seed)
    model = models.get_model(args.model, num_classes=num_classes, input_shape=input_shape)
    kw = {"lr": args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]}
    if args.weight_decay:
        kw["weight_decay"] = args.weight_decay
    if args.optimizer in ("sgd", "rmsprop") and args.momentum:
        kw["momentum"] = args.momentum
    return model, OPTIMIZER_CLASSES[args.optimizer](list(model.parameters()), **kw)


def _make_scheduler(args, opt, ck_state, steps_per_epoch):
    """(scheduler or None, 'epoch' or 'step'): --scheduler, re-planned when a resumed
    cosine run is given more epochs."""
    extension = schedule_extension(args, ck_state, steps_per_epoch) if args.resume else None
    if args.scheduler == "none":
        return None, "epoch"
    if args.scheduler == "step":
        return lr_scheduler.StepLR(opt, step_size=max(1, args.epochs // 3), gamma=0.1), "epoch"
    if extension is not None:
        if not args.quiet:
            print(f"refdl train: re-planning the cosine schedule for {args.epochs} "
                  f"epochs (the run was planned for {extension[1]})")
        return replanned_cosine(opt, args.epochs), "epoch"
    if args.scheduler == "cosine":
        return lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs), "epoch"
    return lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], epochs=args.epochs,
                                   steps_per_epoch=steps_per_epoch), "step"


def _header(args, model, opt, sizes, input_shape, threads_note):
    """The first line: what trains on what, with which optimiser, kernels and threads."""
    n_train, n_val, n_test = sizes
    return (f"refdl train: {args.model} ({model.num_parameters():,} parameters) on "
            f"{args.dataset} ({n_train} train / {n_val} validation / {n_test} test, input "
            f"{input_shape}), {args.optimizer} {_lr_description(args, opt)}, "
            f"{args.epochs} epochs, batch {args.batch_size}, seed {args.seed}; "
            f"{kernels_description()}, {threads_note}")


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


def _fit(args, model, loss, opt, schedule, train, val, out, num_classes):
    """refdl.train.fit with the run's options; returns the history."""
    sched, interval = schedule
    # overflow on the way to a NaN loss is reported once, by fit's guard, not as a
    # stream of NumPy warnings
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return fit(model, loss, opt, train, val, epochs=args.epochs,
                   scheduler=sched, scheduler_interval=interval,
                   clip_grad_norm=args.clip_grad_norm, checkpoint_path=out / "checkpoint.npz",
                   resume=args.resume, progress=not args.quiet, num_classes=num_classes)


def _report(args, model, history, ev, out, test_data, secs):
    """Write history.json and the plots, print the test result; exit status 3 when the
    run diverged, else 0. ``test_data`` is (x_test, y_test, image shape or None, number
    of classes); ``ev`` is refdl.train.evaluate's result on it."""
    xte, yte, img, num_classes = test_data
    say = (lambda *a: None) if args.quiet else print
    diverged = _diverged(history, num_classes)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    files = [out / "checkpoint.npz", out / "history.json"]
    if not args.no_plots:
        files += write_classifier_plots(args, model, history, ev, out, img, xte, yte)
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
