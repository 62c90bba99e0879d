"""``refdl train --model gpt``: a character-level language model trained on a text for
--steps steps, compared with the bigram baseline, with a sample of what it writes."""
import json
import sys
from pathlib import Path

import numpy as np

from ..checkpoint import save_checkpoint
from ..data.text import CharVocab, bigram_baseline, load_text, split_ids
from ..models.gpt import GPT, train_gpt
from ..random import manual_seed
from .common import UserError, check_out_writable, run_config
from .train_plots import plot_lm_history
from .train_run import check_train_values

TEXT_MODELS = ("gpt",)            # trained by cmd_train_text on characters of a text


def cmd_train_text(args):
    """``refdl train --model gpt``: a character-level language model on a text."""
    _check_text_options(args)
    text, vocab, train_ids, val_ids = _load_corpus(args.text)
    block = min(args.block_size, len(val_ids) - 1)
    baseline, alpha = bigram_baseline(train_ids, val_ids, len(vocab))
    name = _text_name(args.text)
    out = _text_run_folder(args, name)
    model = _build_gpt(args, len(vocab), block)
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
    try:
        hist, sample = _train_and_sample(args, model, (train_ids, val_ids), lr, vocab, text,
                                         say)
    except FloatingPointError as e:
        print(f"refdl train: {e}", file=sys.stderr)
        return 1
    files = _save_text_run(args, out, model, vocab, name, hist, (baseline, alpha), sample)
    val = hist["val_loss"][-1]
    say(f"validation loss {val:.4f} nats/char after {hist['steps_done']} steps "
        f"({hist['seconds']:.0f} s); bigram baseline {baseline:.4f} "
        f"({'below' if val < baseline else 'NOT below'} it by {abs(baseline - val):.3f})")
    say("sample (temperature 0.8):\n" + sample)
    say("wrote " + ", ".join(str(f) for f in files))
    say(f"generate more: refdl sample {out / 'checkpoint.npz'} --prompt \"The \" --chars 500")
    return 0


def _check_text_options(args):
    """Refuse --resume and impossible numbers before anything runs."""
    if args.resume:
        raise UserError(f"--resume is not supported for --model {args.model}; train again "
                        "with more --steps")
    if min(args.steps, args.batch_size, args.block_size, args.eval_interval) < 1:
        raise UserError("--steps, --batch-size, --block-size and --eval-interval must be "
                        "positive")
    if args.lr is not None and not args.lr > 0:
        raise UserError(f"--lr must be positive, got {args.lr}")
    check_train_values(args)


def _load_corpus(path):
    """(text, vocabulary, training ids, validation ids): the last 10% held out."""
    try:
        text = load_text(path)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"--text: {e}") from None
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text)
    if len(ids) < 40:
        raise UserError(f"--text: the text has only {len(ids)} characters; a language model "
                        "needs a few hundred at least")
    train_ids, val_ids = split_ids(ids, 0.1)
    return text, vocab, train_ids, val_ids


def _text_name(path):
    """The text's short name for the run folder: the file's stem, or sklearn-descr."""
    return "sklearn-descr" if path is None else (Path(path).stem or "text")


def _text_run_folder(args, name):
    """--out, or the first runs/gpt-NAME[-N] without a checkpoint; never overwritten."""
    if args.out is not None:
        out = Path(args.out)
    else:
        base = Path("runs") / f"{args.model}-{name}"
        out, i = base, 2
        while (out / "checkpoint.npz").exists():
            out, i = Path(f"{base}-{i}"), i + 1
    if (out / "checkpoint.npz").exists():
        raise UserError(f"{out} already holds a checkpoint; choose another --out (nothing "
                        "was overwritten)")
    check_out_writable(out)
    return out


def _build_gpt(args, vocab_size, block):
    """The GPT of the options, initialised from --seed; a bad shape is a user error."""
    manual_seed(args.seed)
    try:
        return GPT(vocab_size, block_size=block, n_layer=args.n_layer, n_head=args.n_head,
                   n_embd=args.n_embd, dropout=args.dropout, tie_weights=not args.no_tie)
    except ValueError as e:
        raise UserError(str(e)) from None


def _train_and_sample(args, model, ids, lr, vocab, text, say):
    """(history, a 300-character sample at temperature 0.8) after train_gpt."""
    from threadpoolctl import threadpool_limits

    train_ids, val_ids = ids
    # --threads N is obeyed; without it 1 BLAS thread: this model's matrices are small, and
    # on the shared 2-core machine a step took 0.23 s with 1 thread, 1.9 s with 2
    threads = getattr(args, "threads", None) or 1
    with threadpool_limits(threads), np.errstate(over="ignore"):
        hist = train_gpt(model, train_ids, val_ids, steps=args.steps,
                         batch_size=args.batch_size, lr=lr,
                         clip_grad_norm=args.clip_grad_norm or 1.0,
                         eval_interval=args.eval_interval, seed=args.seed,
                         time_limit=args.time_limit, log=None if args.quiet else say)
        sample = vocab.decode(model.generate(vocab.encode(text[:1]), 300, temperature=0.8,
                                             generator=np.random.default_rng(args.seed))[0])
    return hist, sample


def _save_text_run(args, out, model, vocab, name, hist, bigram, sample):
    """Write config.json, the checkpoint, history.json, sample.txt and (unless --no-plots)
    loss.png; returns the files written."""
    baseline, alpha = bigram
    ck = out / "checkpoint.npz"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(run_config(args), indent=1))
    save_checkpoint(ck, model, epoch=hist["steps_done"], history=hist, extra={
        "kind": "char-lm", "model": args.model, "gpt_config": model.config(),
        "vocab": "".join(vocab.itos), "text": name, "bigram_val_loss": baseline})
    (out / "history.json").write_text(json.dumps(
        dict(hist, bigram_val_loss=baseline, bigram_alpha=alpha), indent=1))
    (out / "sample.txt").write_text(sample, encoding="utf-8")
    files = [ck, out / "history.json", out / "sample.txt"]
    if not args.no_plots:
        files.append(plot_lm_history(hist, baseline, out / "loss.png",
                                     f"{args.model} on {name}: {model.num_parameters():,} "
                                     f"parameters"))
    return files
