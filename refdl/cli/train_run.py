"""``refdl train``'s run: its options checked before anything runs, its folder (--out,
--resume and the run's config.json), its threads, its validation split, and a cosine
schedule re-planned when a resumed run is given more epochs."""
import json
import math
from pathlib import Path

import numpy as np

from ..optim import lr_scheduler
from ..threads import auto_num_threads, set_num_threads
from .common import UserError

# options that define a run: --resume takes them from the run's config.json
RUN_OPTIONS = ("model", "dataset", "data_dir", "batch_size", "optimizer", "lr", "momentum",
               "weight_decay", "scheduler", "clip_grad_norm", "seed")


def check_train_values(args):
    """Refuse numeric options no training can use, before anything runs."""
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


def pick_out(args):
    """(the run's folder, whether --out named it): without --out, runs/MODEL-DATASET, or
    the first runs/MODEL-DATASET-N without a checkpoint (a resumed run keeps the first)."""
    if args.out is not None:
        return Path(args.out), True
    base = Path("runs") / f"{args.model}-{args.dataset}"
    if args.resume:
        return base, False
    out, i = base, 2
    while (out / "checkpoint.npz").exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out, False


def apply_run_config(args, out):
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


def schedule_extension(args, state, steps_per_epoch):
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


def replanned_cosine(opt, total):
    """CosineAnnealingLR over ``total`` epochs that keeps that plan when a checkpoint's
    state (planned for fewer epochs) is loaded into it, using the closed form
    eta_t = eta_min + (eta_0 - eta_min)(1 + cos(pi t / total)) / 2 from then on."""
    class CosineAnnealingLR(lr_scheduler.CosineAnnealingLR):   # same name: the checkpoint fits
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


def apply_threads(args):
    """--threads N (or, without it, the cores nobody else is using): refdl.set_num_threads.
    Returns a short description for the header."""
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be a positive integer, got {args.threads}")
        set_num_threads(args.threads)
        return f"{args.threads} thread{'s' * (args.threads > 1)}"
    n, why = auto_num_threads()
    set_num_threads(n)
    return f"{n} thread{'s' * (n > 1)} ({why}; --threads to choose)"


def validation_split(x, y, fraction, seed):
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
