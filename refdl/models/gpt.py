r"""A small GPT: a decoder-only Transformer language model, every backward hand-derived.

    GPT(vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64, dropout=0.0,
        tie_weights=True, bias=True)

idx (N, T) integer tokens (T <= block_size) -> logits (N, T, vocab_size), the scores of
the next token at every position. With E = n_embd:

    x0 = tok_emb(idx) + P[:T]                 token embedding W_e (V, E) + learned positions
    x  = drop(x0)
    x  = block_k(x, causal)   k = 1..n_layer  pre-norm TransformerEncoderLayer(E, n_head,
                                              4E, GELU) with the causal mask: position t
                                              attends to positions <= t only
    logits = head(ln_f(x))                    head: Linear(E, V, bias=False), W_h (V, E)

The blocks are "decoder" blocks in GPT's sense (masked self-attention, no
cross-attention), which is exactly ``TransformerEncoderLayer(..., norm_first=True)`` called
with ``is_causal=True``. Weight tying (``tie_weights=True``, GPT-2's choice) makes the head
use the token embedding matrix, W_h = W_e: ``head.weight is tok_emb.weight``, one
Parameter.

Backward (g = dL/dlogits), the chain rule over the children in reverse:

    g = head.backward(g)             dW_h += g^T ln_f(x)
    g = ln_f.backward(g)
    g = block_k.backward(g)          k = n_layer..1
    g = drop.backward(g)
    g = pos_emb.backward(g)          dP[t] += sum_n g[n, t]
    tok_emb.backward(g)              dW_e[i] += sum of g over the positions holding token i

With tying, W is used twice (lookup and output projection), so dL/dW is the sum of the two
gradients; both backwards *add* into the one Parameter's ``grad``, so the sum happens by
itself. Integer inputs have no gradient: ``backward`` returns None.
Derivation: docs/gpt.md. Training: :func:`train_gpt`; ``refdl train --model gpt``.
"""
import math
import time
from typing import NamedTuple

import numpy as np

from .. import init
from ..grad_mode import no_grad
from ..nn import (CrossEntropyLoss, Dropout, Embedding, LayerNorm, LearnedPositionalEncoding,
                  Linear, Module, ModuleList, TransformerEncoderLayer)
from ..nn.validate import check_grad, layer_name
from ..random import get_rng
from ..train import check_finite, run_steps

__all__ = ["GPT", "GPTCache", "train_gpt", "lm_loss", "evaluate_lm", "random_windows",
           "eval_windows"]


class GPTCache(NamedTuple):
    """One call of GPT: the shape of the logits (N, T, V) (the children keep the rest)."""
    logits_shape: tuple


class GPT(Module):
    __doc__ = __doc__

    def __init__(self, vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64, dropout=0.0,
                 tie_weights=True, bias=True, dtype=np.float32, generator=None):
        super().__init__()
        self.vocab_size, self.block_size = int(vocab_size), int(block_size)
        self.n_layer, self.n_head, self.n_embd = int(n_layer), int(n_head), int(n_embd)
        for name, v in (("vocab_size", self.vocab_size), ("block_size", self.block_size),
                        ("n_layer", self.n_layer), ("n_head", self.n_head),
                        ("n_embd", self.n_embd)):
            if v <= 0:
                raise ValueError(f"GPT: {name} must be positive, got {v}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPT: n_embd must be divisible by n_head, got n_embd="
                             f"{self.n_embd}, n_head={self.n_head}")
        self.dropout_p = float(dropout)
        self.tie_weights = bool(tie_weights)
        E = self.n_embd
        self.tok_emb = Embedding(self.vocab_size, E, dtype=dtype, generator=generator)
        self.pos_emb = LearnedPositionalEncoding(self.block_size, E, batch_first=True,
                                                 dtype=dtype, generator=generator)
        self.drop = Dropout(dropout)
        self.blocks = ModuleList([
            TransformerEncoderLayer(E, self.n_head, 4 * E, dropout, activation="gelu",
                                    batch_first=True, norm_first=True, bias=bias, dtype=dtype,
                                    generator=generator)
            for _ in range(self.n_layer)])
        self.ln_f = LayerNorm(E, bias=bias, dtype=dtype)
        self.head = Linear(E, self.vocab_size, bias=False, dtype=dtype, generator=generator)
        self._init_weights(generator)
        if self.tie_weights:
            self.head.weight = self.tok_emb.weight        # one Parameter, two uses

    def _init_weights(self, generator):
        """GPT-2's: N(0, 0.02^2) matrices and embeddings, zero biases, the projections
        into the residual stream (attention out_proj, linear2) N(0, (0.02/sqrt(2 n_layer))^2)."""
        resid = 0.02 / math.sqrt(2 * self.n_layer)
        for name, p in self.named_parameters():
            if p.data.ndim >= 2:
                std = resid if name.endswith(("out_proj.weight", "linear2.weight")) else 0.02
                init.normal_(p, 0.0, std, generator=generator)
            elif "norm" not in name and "ln_f" not in name:
                init.zeros_(p)

    def extra_repr(self):
        return (f"vocab_size={self.vocab_size}, block_size={self.block_size}, "
                f"n_layer={self.n_layer}, n_head={self.n_head}, n_embd={self.n_embd}, "
                f"dropout={self.dropout_p}, tie_weights={self.tie_weights}")

    def config(self):
        """The constructor's arguments (to rebuild the model from a checkpoint)."""
        return dict(vocab_size=self.vocab_size, block_size=self.block_size,
                    n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                    dropout=self.dropout_p, tie_weights=self.tie_weights,
                    bias=self.ln_f.bias is not None)

    def forward(self, idx):
        idx = np.asarray(idx)
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"{layer_name(self)}: expected integer token ids, got dtype "
                            f"{idx.dtype}")
        if idx.ndim != 2:
            raise ValueError(f"{layer_name(self)}: expected token ids of shape (N, T), got "
                             f"{tuple(idx.shape)}")
        if idx.shape[1] > self.block_size:
            raise ValueError(f"{layer_name(self)}: sequence length {idx.shape[1]} exceeds "
                             f"block_size {self.block_size} (crop the context to the last "
                             f"{self.block_size} tokens)")
        x = self.drop(self.pos_emb(self.tok_emb(idx)))
        for block in self.blocks:
            x = block(x, is_causal=True)
        N, T, E = x.shape
        # (N T, E) rows: one 2-D product in the head (a stacked 3-D matmul is far slower
        # with a multithreaded BLAS)
        logits = self.head(self.ln_f(x.reshape(N * T, E))).reshape(N, T, self.vocab_size)
        self.save_for_backward(GPTCache(logits_shape=logits.shape))
        return logits

    def backward(self, grad_out):
        c = self.pop_saved()
        g = check_grad(self, grad_out, c.logits_shape)
        N, T, V = c.logits_shape
        g = self.ln_f.backward(self.head.backward(g.reshape(N * T, V))).reshape(N, T, -1)
        for block in reversed(list(self.blocks)):
            g = block.backward(g)
        g = self.pos_emb.backward(self.drop.backward(g))
        self.tok_emb.backward(g)          # with tying, adds to head's gradient: same Parameter
        return None

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Append ``max_new_tokens`` sampled tokens to idx (N, T); returns (N, T + new).

        Each step feeds the last ``block_size`` tokens, takes the last position's logits,
        divides them by ``temperature`` (> 0), keeps the ``top_k`` largest (if given) and
        samples from their softmax. Runs in eval mode under ``no_grad()`` (mode restored).
        """
        idx = np.asarray(idx, dtype=np.int64)
        if idx.ndim == 1:
            idx = idx[None]
        if not temperature > 0:
            raise ValueError(f"GPT.generate: temperature must be positive, got {temperature}")
        if top_k is not None and int(top_k) < 1:
            raise ValueError(f"GPT.generate: top_k must be at least 1, got {top_k}")
        if idx.shape[1] == 0:
            raise ValueError("GPT.generate: give at least one token to start from")
        rng = get_rng(generator)
        was = self.training
        self.eval()
        try:
            with no_grad():
                for _ in range(int(max_new_tokens)):
                    logits = self.forward(idx[:, -self.block_size:])[:, -1].astype(np.float64)
                    logits = logits / float(temperature)
                    if top_k is not None and int(top_k) < logits.shape[-1]:
                        kth = np.sort(logits, axis=-1)[:, -int(top_k)][:, None]
                        logits = np.where(logits < kth, -np.inf, logits)
                    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
                    p /= p.sum(axis=-1, keepdims=True)
                    nxt = np.array([rng.choice(p.shape[-1], p=row) for row in p])
                    idx = np.concatenate([idx, nxt[:, None]], axis=1)
        finally:
            self.train(was)
        return idx


# ---------------------------------------------------------------------------- training
def random_windows(ids, block_size, batch_size, rng):
    """A batch of windows: x (B, T) = ids[s:s+T], y (B, T) = ids[s+1:s+T+1], random s."""
    ids = np.asarray(ids)
    T = min(int(block_size), len(ids) - 1)
    starts = rng.integers(0, len(ids) - T, size=int(batch_size))
    idx = starts[:, None] + np.arange(T)
    return ids[idx], ids[idx + 1]


def eval_windows(ids, block_size, max_windows=64):
    """Fixed, evenly spaced windows (x, y) over ``ids`` (the same every call)."""
    ids = np.asarray(ids)
    T = min(int(block_size), len(ids) - 1)
    n = len(ids) - T
    starts = np.unique(np.linspace(0, n - 1, num=min(int(max_windows), n)).astype(np.int64))
    idx = starts[:, None] + np.arange(T)
    return ids[idx], ids[idx + 1]


def lm_loss(model, loss_fn, x, y):
    """Mean next-token cross-entropy of ``model`` on (x, y) (N, T); records caches."""
    logits = model(x)
    N, T, V = logits.shape
    return loss_fn(logits.reshape(N * T, V), y.reshape(-1)), logits.shape


def evaluate_lm(model, x, y, batch_size=64):
    """Mean cross-entropy (nats/token) over the windows (x, y), eval mode, no caches."""
    loss_fn = CrossEntropyLoss()
    was = model.training
    model.eval()
    total, n = 0.0, 0
    try:
        with no_grad():
            for i in range(0, len(x), batch_size):
                xb, yb = x[i:i + batch_size], y[i:i + batch_size]
                logits = model(xb)
                total += float(loss_fn(logits.reshape(-1, logits.shape[-1]),
                                       yb.reshape(-1))) * yb.size
                n += yb.size
    finally:
        model.train(was)
    return total / n


def train_gpt(model, train_ids, val_ids, steps=1000, batch_size=32, lr=3e-3,
              weight_decay=0.01, clip_grad_norm=1.0, eval_interval=100, eval_windows_n=64,
              warmup=None, seed=0, time_limit=None, log=None):
    r"""Train ``model`` on next-character prediction; returns the history dict.

    Each step draws ``batch_size`` random windows of ``model.block_size`` + 1 ids from
    ``train_ids`` (seeded by ``seed``), computes the mean cross-entropy of the logits,
    runs the explicit backward ``model.backward(loss_fn.backward())``, clips the gradient
    norm and takes an AdamW step; the learning rate warms up linearly for ``warmup`` steps
    (default steps // 20) and then follows a cosine to lr/10. Every ``eval_interval`` steps
    (and at the end) the loss on fixed windows of ``train_ids`` and ``val_ids`` is measured
    in eval mode. ``time_limit`` (seconds) stops early. ``log(str)`` receives a progress
    line per evaluation.

    history: step, train_loss, val_loss (at the evaluations), loss (every step), lr, time.
    The loop is refdl.train.run_steps; a non-finite loss stops it with
    refdl.train.NonFiniteLossError (a FloatingPointError) naming the step, before the
    backward and the update of that step.
    """
    from ..nn.utils import clip_grad_norm_

    rng = np.random.default_rng(seed)
    loss_fn = CrossEntropyLoss()
    opt = _adamw(model, lr, weight_decay)
    warmup = max(1, steps // 20) if warmup is None else int(warmup)
    windows = [eval_windows(ids, model.block_size, eval_windows_n)     # fixed, for the
               for ids in (train_ids, val_ids)]                        # evaluations
    hist = {"step": [], "train_loss": [], "val_loss": [], "time": [], "loss": [], "lr": []}
    dtype = model.ln_f.weight.data.dtype
    t0 = time.perf_counter()

    def step_fn(step, _):
        step_lr = lr * _warmup_cosine(step, steps, warmup)
        for gr in opt.param_groups:
            gr["lr"] = step_lr
        x, y = random_windows(train_ids, model.block_size, batch_size, rng)
        opt.zero_grad()
        loss, shape = lm_loss(model, loss_fn, x, y)
        check_finite(loss, step)
        model.backward(loss_fn.backward().reshape(shape).astype(dtype, copy=False))
        if clip_grad_norm:
            clip_grad_norm_(model.parameters(), clip_grad_norm)
        opt.step()
        return {"loss": float(loss), "lr": step_lr}

    def evaluate_and_stop(step, _):      # after each step: evaluate when due; out of time?
        out_of_time = time_limit is not None and time.perf_counter() - t0 > time_limit
        if step % eval_interval == 0 or step == steps or out_of_time:
            _record_evaluation(hist, model, windows, step, t0, log)
        return out_of_time

    model.train()
    _record_evaluation(hist, model, windows, 0, t0, log)
    done = run_steps(step_fn, int(steps), until=evaluate_and_stop)
    hist["loss"], hist["lr"] = done.get("loss", []), done.get("lr", [])
    hist["steps_done"] = len(hist["loss"])
    hist["seconds"] = time.perf_counter() - t0
    return hist


def _record_evaluation(hist, model, windows, step, t0, log):
    """Append the step, the losses on the fixed train and validation windows and the time
    since ``t0`` to ``hist``; hand ``log`` one line."""
    tl, vl = (evaluate_lm(model, x, y) for x, y in windows)
    hist["step"].append(step)
    hist["train_loss"].append(tl)
    hist["val_loss"].append(vl)
    hist["time"].append(time.perf_counter() - t0)
    if log is not None:
        log(f"step {step:5d}  train {tl:.4f}  val {vl:.4f}  ({time.perf_counter() - t0:.0f} s)")


def _adamw(model, lr, weight_decay):
    """AdamW with weight decay on the matrices only (not on biases, norms' gains)."""
    from ..optim import AdamW

    decay = [p for n, p in model.named_parameters() if p.data.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.data.ndim < 2]
    return AdamW([{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99))


def _warmup_cosine(step, steps, warmup):
    """The learning-rate factor: linear warm-up to 1 over ``warmup`` steps, then a cosine
    down to 0.1 at ``steps``."""
    if step <= warmup:
        return step / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
