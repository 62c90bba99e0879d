"""``refdl sample CHECKPOINT``: characters from a text model trained by
``refdl train --model gpt``."""
import sys

import numpy as np

from ..checkpoint import load_checkpoint, read_checkpoint
from ..data.text import CharVocab
from ..models.gpt import GPT
from .common import UserError


def cmd_sample(args):
    """``refdl sample CHECKPOINT``: characters from a trained text model."""
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
