r"""The noise-prediction network eps_theta(x_t, t) of a DDPM and its training loop.

:class:`SinusoidalTimeEmbedding` embeds the time step, :class:`NoisePredictor` is an MLP on
[x_t, emb(t)], and :func:`train_ddpm` fits it with Ho's simple loss
(:meth:`~refdl.models.diffusion.process.GaussianDiffusion.simple_loss`), on refdl.train's
step loop. Derivation: docs/derivations/diffusion.md.
"""
import copy
import math
from typing import NamedTuple

import numpy as np

from ... import random as _random
from ...nn.activation import GELU, ReLU, SiLU, Tanh
from ...nn.linear import Linear
from ...nn.container import Sequential
from ...nn.module import Module
from ...nn.validate import check_float, check_grad, layer_name
from ...optim import Adam
from ...optim.lr_scheduler import CosineAnnealingLR
from ...train import check_finite, run_steps

__all__ = ["SinusoidalTimeEmbedding", "NoisePredictor", "train_ddpm"]


class TimeEmbeddingCache(NamedTuple):
    """One call of SinusoidalTimeEmbedding: the time steps t (N,)."""
    t: np.ndarray


class SinusoidalTimeEmbedding(Module):
    r"""Transformer-style embedding of the time step (Vaswani et al.; Ho et al. use it).

    Shapes: t (N,) (int or float) -> e (N, dim), dim even, half = dim/2,
        f_k = exp(-log(max_period) k / half),  k = 0..half-1
        e[:, k] = sin(t f_k),   e[:, half + k] = cos(t f_k)
    No parameters. Backward (only when t is a float input):
        dL/dt = sum_k f_k ( g[:, k] cos(t f_k) - g[:, half + k] sin(t f_k) )
    For an integer t (the usual case) backward returns None: t is not differentiable.
    """

    def __init__(self, dim, max_period=10000.0):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 2 or dim % 2:
            raise ValueError(f"SinusoidalTimeEmbedding: dim must be an even integer >= 2, "
                             f"got {dim!r}")
        if not max_period > 1:
            raise ValueError(f"SinusoidalTimeEmbedding: max_period must be > 1, got {max_period!r}")
        self.dim = int(dim)
        self.max_period = float(max_period)
        half = self.dim // 2
        self._freqs = np.exp(-math.log(self.max_period) * np.arange(half) / half)

    def extra_repr(self):
        return f"dim={self.dim}, max_period={self.max_period:g}"

    def forward(self, t, dtype=None):
        t = np.asarray(t)
        if t.ndim != 1 or not (np.issubdtype(t.dtype, np.integer)
                               or np.issubdtype(t.dtype, np.floating)):
            raise ValueError(f"{layer_name(self)}: expected a 1-D array of time steps (N,), "
                             f"got shape {tuple(t.shape)} dtype {t.dtype}")
        self.save_for_backward(TimeEmbeddingCache(t=t))
        arg = t.astype(np.float64)[:, None] * self._freqs
        out = np.concatenate([np.sin(arg), np.cos(arg)], axis=1)
        if dtype is None:
            dtype = t.dtype if np.issubdtype(t.dtype, np.floating) else np.float32
        return out.astype(dtype, copy=False)

    def backward(self, grad_out):
        t = self.pop_saved().t
        g = check_grad(self, grad_out, (t.shape[0], self.dim))
        if not np.issubdtype(t.dtype, np.floating):
            return None
        half = self.dim // 2
        arg = t[:, None] * self._freqs
        return np.sum(self._freqs * (g[:, :half] * np.cos(arg) - g[:, half:] * np.sin(arg)),
                      axis=1).astype(t.dtype, copy=False)



_ACTIVATIONS = {"relu": ReLU, "silu": SiLU, "gelu": GELU, "tanh": Tanh}


class NoisePredictor(Module):
    r"""eps_theta(x_t, t): an MLP on [x_t, emb(t)] predicting the noise, for vector data.

    Shapes: x (N, data_dim) float, t (N,) int steps 1..T (or one int) -> eps (N, data_dim).
    Layout (``num_layers`` hidden layers of width ``hidden``)::

        h_0 = concat(x, emb(t))               (N, data_dim + time_dim)
        h_k = act(Linear(h_{k-1}))            k = 1..num_layers
        eps = Linear(h_L)                     (N, data_dim)

    Backward is the chain rule: g_h0 = net.backward(g) (Sequential, layer by layer in
    reverse), then the concatenation splits it: dL/dx = g_h0[:, :data_dim]; the columns of
    emb(t) go on to the time embedding only when t is a float input (then backward returns
    (dL/dx, dL/dt)); for integer t it returns dL/dx alone.
    """

    def __init__(self, data_dim=2, hidden=64, num_layers=3, time_dim=16, activation="silu",
                 max_period=10000.0, dtype=np.float32, generator=None):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"NoisePredictor: unknown activation {activation!r}; expected "
                             f"one of {sorted(_ACTIVATIONS)}")
        for name, v in (("data_dim", data_dim), ("hidden", hidden), ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"NoisePredictor: {name} must be a positive integer, got {v!r}")
        self.data_dim, self.hidden, self.num_layers = int(data_dim), int(hidden), int(num_layers)
        self.activation = activation
        self.time_embed = SinusoidalTimeEmbedding(time_dim, max_period)
        self.time_dim = self.time_embed.dim
        layers, width = [], self.data_dim + self.time_dim
        for _ in range(self.num_layers):
            layers += [Linear(width, self.hidden, dtype=dtype, generator=generator),
                       _ACTIVATIONS[activation]()]
            width = self.hidden
        layers.append(Linear(width, self.data_dim, dtype=dtype, generator=generator))
        self.net = Sequential(*layers)

    def extra_repr(self):
        return (f"data_dim={self.data_dim}, hidden={self.hidden}, num_layers={self.num_layers}, "
                f"time_dim={self.time_dim}, activation={self.activation!r}")

    def forward(self, x, t):
        x = check_float(self, x)
        if x.ndim != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"{layer_name(self)}: expected x of shape (N, {self.data_dim}), "
                             f"got {tuple(x.shape)}")
        t = np.asarray(t)
        if t.ndim == 0:
            t = np.full(x.shape[0], t)
        if t.shape != (x.shape[0],):
            raise ValueError(f"{layer_name(self)}: expected t of shape ({x.shape[0]},) (one "
                             f"step per row of x), got {tuple(t.shape)}")
        float_t = np.issubdtype(t.dtype, np.floating)
        emb = self.time_embed(t.astype(x.dtype) if float_t else t, dtype=x.dtype)
        return self.net(np.concatenate([x, emb], axis=1))

    def backward(self, grad_out):
        g = self.net.backward(grad_out)
        dx = g[:, :self.data_dim]
        dt = self.time_embed.backward(g[:, self.data_dim:])   # None for an integer t
        return dx if dt is None else (dx, dt)


def train_ddpm(model, diffusion, data, steps, batch_size=256, optimizer=None, lr=2e-3,
               cosine_lr=True, generator=None, log_every=0, callback=None, progress=False):
    r"""Train ``model`` with :meth:`GaussianDiffusion.simple_loss` for ``steps`` steps.

    ``data``: an array (M, D) to draw minibatches from (with replacement), or a function
    ``data(n, generator) -> (n, D)`` giving fresh samples. ``optimizer`` defaults to
    ``refdl.optim.Adam(model.parameters(), lr=lr)``; with ``cosine_lr`` its learning rate
    is annealed to 0 over the run (``CosineAnnealingLR(T_max=steps)``, stepped every step),
    which removes most of the minibatch noise from the final weights. Returns the losses.
    A non-finite loss stops training with refdl.train.NonFiniteLossError (a
    FloatingPointError) naming the step, before any
    update from it; if the parameters themselves had become non-finite, those used at the
    previous (finite-loss) step are restored. ``progress``: a tqdm.auto bar over the steps
    (refdl.progress; one summary line in a pipe).
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"train_ddpm: steps must be a non-negative integer, got {steps!r}")
    rng = _random.get_rng(generator)
    opt = optimizer if optimizer is not None else Adam(model.parameters(), lr=lr)
    sched = None
    if cosine_lr and steps > 0:
        sched = CosineAnnealingLR(opt, T_max=steps)
    if callable(data):
        draw = data
    else:
        data = check_float("train_ddpm", data, "data")
        draw = lambda n, g: data[g.integers(0, data.shape[0], size=n)]  # noqa: E731
    good = [copy.deepcopy(model.state_dict())]    # the parameters of the last finite step

    def step(i, _):
        x0 = draw(batch_size, rng)
        model.zero_grad()
        loss = diffusion.simple_loss(model, x0, rng)
        if not math.isfinite(loss):
            model.zero_grad()
            if all(np.all(np.isfinite(p.data)) for p in model.parameters()):
                kept = f"the model keeps its parameters after step {i - 1}"
            else:
                model.load_state_dict(good[0])
                kept = (f"the parameters had become non-finite; restored those used at step "
                        f"{i - 1}")
            check_finite(loss, i, message=f"train_ddpm: non-finite loss {loss} at step {i}; "
                                          f"{kept}")
        good[0] = model.state_dict()
        opt.step()
        if sched is not None:
            sched.step()
        return loss

    def log(i, h):
        print(f"step {i:6d}  loss {np.mean(h['loss'][-log_every:]):.4f}")

    losses = run_steps(step, steps, callback=callback, log_every=log_every, log=log,
                       progress=progress, desc="DDPM training").get("loss", [])
    return losses
