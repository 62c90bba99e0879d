r"""Variational auto-encoders: the reparameterisation trick, the (beta-)ELBO loss, and an
MLP VAE whose backward is the chain rule over encoder, sampler and decoder.

    encoder:   x -> (mu, logvar)              q(z|x) = N(mu, diag exp(logvar))
    sampler:   z = mu + exp(logvar / 2) * eps,  eps ~ N(0, I)       (Reparameterize)
    decoder:   z -> x_hat                      p(x|z) = Bernoulli(sigmoid(x_hat)) or
                                                        N(x_hat, sigma^2 I)
    loss:      -ELBO_beta = E_q[-log p(x|z)] + beta * KL(q(z|x) || N(0, I))   (VAELoss)

Derivation of every gradient: docs/derivations/vae.md
"""
from typing import NamedTuple

import numpy as np

from ..checkpoint import save_checkpoint
from ..functional import log_sigmoid, sigmoid
from ..functional.gaussian import kl_diag_normal, kl_diag_normal_grad
from ..grad_mode import no_grad
from ..nn.validate import check_float, check_same_shape, layer_name
from ..nn.activation import ReLU
from ..nn.conv import Conv2d, ConvTranspose2d
from ..nn.linear import Flatten, Linear, Unflatten
from ..nn.container import Sequential
from ..nn.module import Module
from ..random import get_rng
from ..train import NonFiniteLossError, check_finite, run_steps

__all__ = ["Reparameterize", "VAELoss", "VAE", "conv_vae", "train_vae"]


class ReparameterizeCache(NamedTuple):
    """One call of Reparameterize: the noise eps and sigma = exp(logvar / 2)."""
    eps: np.ndarray
    sigma: np.ndarray


class VAELossCache(NamedTuple):
    """One call of VAELoss: its four inputs (docs/derivations/vae.md)."""
    x_hat: np.ndarray
    mu: np.ndarray
    logvar: np.ndarray
    x: np.ndarray


class Reparameterize(Module):
    r"""z = mu + sigma * eps with sigma = exp(logvar / 2), eps ~ N(0, I).

    Shapes: mu, logvar (N, d) -> z (N, d). In eval mode z = mu (no noise).
    Backward (eps held fixed, it does not depend on the parameters):
        dL/dmu = g,     dL/dlogvar = g * eps * sigma / 2.
    """

    def __init__(self, generator=None):
        super().__init__()
        self.generator = generator

    def forward(self, mu, logvar):
        mu = check_float(self, mu, "mu")
        logvar = check_float(self, logvar, "logvar")
        check_same_shape(self, mu, logvar, "mu", "logvar")
        sigma = np.exp(0.5 * logvar)
        if self.training:
            eps = get_rng(self.generator).standard_normal(mu.shape).astype(mu.dtype)
        else:
            eps = np.zeros_like(mu)
        self.save_for_backward(ReparameterizeCache(eps=eps, sigma=sigma))
        return mu + sigma * eps

    def backward(self, grad_out):
        c = self.pop_saved()
        g = np.asarray(grad_out)
        return g, g * c.eps * c.sigma * 0.5


class VAELoss(Module):
    r"""Negative beta-ELBO, averaged over the batch.

    forward(x_hat, mu, logvar, x) with x_hat, x (N, ...) and mu, logvar (N, d) -> 0-d loss
    (the sums run over every entry of one example: D = x[0].size)
        L = 1/N sum_n [ rec_n + beta * KL_n ],   KL_n = 1/2 sum_j (mu^2 + e^lv - 1 - lv)
        bernoulli (x_hat are logits, x in [0, 1]):
            rec_n = -sum_i [x log sigmoid(x_hat) + (1 - x) log sigmoid(-x_hat)]
        gaussian (x_hat are means, fixed sigma):
            rec_n = sum_i (x - x_hat)^2 / (2 sigma^2) + D/2 log(2 pi sigma^2)
    backward(grad=1) -> (dL/dx_hat, dL/dmu, dL/dlogvar):
        bernoulli: (sigmoid(x_hat) - x) / N;   gaussian: (x_hat - x) / (N sigma^2)
        dmu = beta mu / N,   dlogvar = beta (e^lv - 1) / (2N).
    ``last_rec`` and ``last_kl`` hold the batch means of the two terms.
    """

    def __init__(self, likelihood="bernoulli", beta=1.0, sigma=1.0):
        super().__init__()
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"VAELoss: likelihood must be 'bernoulli' or 'gaussian', "
                             f"got {likelihood!r}")
        if sigma <= 0:
            raise ValueError(f"VAELoss: sigma must be positive, got {sigma}")
        if beta < 0:
            raise ValueError(f"VAELoss: beta must be non-negative, got {beta}")
        self.likelihood, self.beta, self.sigma = likelihood, float(beta), float(sigma)

    def extra_repr(self):
        return f"likelihood={self.likelihood!r}, beta={self.beta}"

    def forward(self, x_hat, mu, logvar, x):
        x_hat = check_float(self, x_hat, "x_hat")
        x = check_float(self, x, "x")
        check_same_shape(self, x_hat, x, "x_hat", "x")
        check_same_shape(self, mu, logvar, "mu", "logvar")
        if np.isnan(x_hat).any() or np.isnan(mu).any() or np.isnan(logvar).any():
            raise ValueError(f"{layer_name(self)}: NaN in the network's outputs")
        N = len(x)
        if self.likelihood == "bernoulli":
            rec = -np.sum((x * log_sigmoid(x_hat) + (1 - x) * log_sigmoid(-x_hat))
                          .reshape(N, -1), axis=1)
        else:
            D = x[0].size
            rec = (np.sum((x - x_hat).reshape(N, -1) ** 2, axis=1) / (2 * self.sigma ** 2)
                   + 0.5 * D * np.log(2 * np.pi * self.sigma ** 2))
        kl = kl_diag_normal(mu, logvar)
        self.save_for_backward(VAELossCache(x_hat=x_hat, mu=mu, logvar=logvar, x=x))
        self.last_rec, self.last_kl = float(rec.mean()), float(kl.mean())
        return np.asarray(np.mean(rec + self.beta * kl))

    def backward(self, grad=None):
        lc = self.pop_saved()
        x_hat, mu, logvar, x = lc.x_hat, lc.mu, lc.logvar, lc.x
        c = (1.0 if grad is None else float(np.asarray(grad))) / len(x)
        if self.likelihood == "bernoulli":
            d_xhat = c * (sigmoid(x_hat) - x)
        else:
            d_xhat = c * (x_hat - x) / self.sigma ** 2
        dmu, dlv = kl_diag_normal_grad(mu, logvar)
        return d_xhat, c * self.beta * dmu, c * self.beta * dlv


class VAE(Module):
    r"""A VAE: x (N, *input_shape) -> (x_hat (N, *input_shape), mu (N, d), logvar (N, d)).

    The default networks are MLPs: encoder Linear(D, h1)-ReLU-...-Linear(h_k, 2d), split into
    (mu, logvar); decoder Linear(d, h_k)-ReLU-...-Linear(h1, D) giving logits (Bernoulli) or
    means (Gaussian). Any ``encoder`` (x -> (N, 2d)) and ``decoder`` (z -> x_hat) modules
    can be passed instead (see :func:`conv_vae`).
    Backward(d_xhat, d_mu=0, d_logvar=0) is the chain rule with the fan-in at (mu, logvar):
        dz = decoder.backward(d_xhat)
        (dmu_s, dlv_s) = sampler.backward(dz)
        dx = encoder.backward(concat(d_mu + dmu_s, d_logvar + dlv_s)).
    """

    def __init__(self, in_features=64, latent_dim=2, hidden=(128,), dtype=np.float32,
                 generator=None, encoder=None, decoder=None, input_shape=None):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.input_shape = tuple(input_shape) if input_shape is not None else (int(in_features),)
        self.in_features = int(np.prod(self.input_shape))
        if encoder is None:
            enc, d = [], self.in_features
            for h in hidden:
                enc += [Linear(d, h, dtype=dtype, generator=generator), ReLU()]
                d = h
            enc.append(Linear(d, 2 * self.latent_dim, dtype=dtype, generator=generator))
            encoder = Sequential(*enc)
        if decoder is None:
            dec, d = [], self.latent_dim
            for h in reversed(hidden):
                dec += [Linear(d, h, dtype=dtype, generator=generator), ReLU()]
                d = h
            dec.append(Linear(d, self.in_features, dtype=dtype, generator=generator))
            decoder = Sequential(*dec)
        self.encoder = encoder
        self.sampler = Reparameterize(generator)
        self.decoder = decoder
        self._dtype = np.dtype(dtype)

    def extra_repr(self):
        return f"input_shape={self.input_shape}, latent_dim={self.latent_dim}"

    def encode(self, x):
        h = self.encoder(x)
        if h.ndim != 2 or h.shape[1] != 2 * self.latent_dim:
            raise ValueError(f"{layer_name(self)}: the encoder must output (N, "
                             f"{2 * self.latent_dim}) = (mu, logvar), got {tuple(h.shape)}")
        return h[:, :self.latent_dim], h[:, self.latent_dim:]

    def forward(self, x):
        x = check_float(self, x)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{layer_name(self)}: expected input of shape "
                             f"(N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        mu, logvar = self.encode(x)
        z = self.sampler(mu, logvar)
        return self.decoder(z), mu, logvar

    def backward(self, d_xhat, d_mu=None, d_logvar=None):
        dz = self.decoder.backward(d_xhat)
        dmu, dlv = self.sampler.backward(dz)
        if d_mu is not None:
            dmu = dmu + d_mu
        if d_logvar is not None:
            dlv = dlv + d_logvar
        return self.encoder.backward(np.concatenate([dmu, dlv], axis=1))

    def decode(self, z, likelihood="bernoulli"):
        """Decoder output as data: probabilities (Bernoulli) or means (Gaussian).

        Inference: runs under ``refdl.no_grad()``, so the decoder records nothing."""
        z = np.asarray(z)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"{layer_name(self)}.decode: expected z of shape "
                             f"(N, {self.latent_dim}), got {tuple(z.shape)}")
        with no_grad():
            out = self.decoder(z.astype(self._dtype, copy=False))
        return sigmoid(out) if likelihood == "bernoulli" else out

    def sample(self, n, likelihood="bernoulli", generator=None):
        """Decode n draws z ~ N(0, I)."""
        z = get_rng(generator).standard_normal((n, self.latent_dim))
        return self.decode(z, likelihood)


def conv_vae(input_shape=(1, 8, 8), latent_dim=2, channels=(16, 32), dtype=np.float32,
             generator=None):
    """A convolutional VAE for small images (H and W divisible by 2**len(channels)).

    encoder: [Conv2d(c, k, 3, stride 2, padding 1)-ReLU] per entry of ``channels``,
             Flatten, Linear(-> 2 latent_dim);
    decoder: Linear(latent_dim -> last feature map)-ReLU, Unflatten, then
             [ConvTranspose2d(k, k', 4, stride 2, padding 1)-ReLU] mirrored, the last one
             to the input's channels without ReLU (each doubles H and W).
    """
    C, H, W = input_shape
    f = 2 ** len(channels)
    if H % f or W % f:
        raise ValueError(f"conv_vae: H and W must be divisible by {f}, got {input_shape}")
    kw = dict(dtype=dtype, generator=generator)
    enc, c = [], C
    for k in channels:
        enc += [Conv2d(c, k, 3, stride=2, padding=1, **kw), ReLU()]
        c = k
    feat = (c, H // f, W // f)
    n = int(np.prod(feat))
    enc += [Flatten(), Linear(n, 2 * latent_dim, **kw)]
    dec = [Linear(latent_dim, n, **kw), ReLU(), Unflatten(1, feat)]
    outs = list(reversed(channels[:-1])) + [C]
    for i, k in enumerate(outs):
        dec.append(ConvTranspose2d(c, k, 4, stride=2, padding=1, **kw))
        if i < len(outs) - 1:
            dec.append(ReLU())
        c = k
    return VAE(latent_dim=latent_dim, encoder=Sequential(*enc), decoder=Sequential(*dec),
               input_shape=input_shape, dtype=dtype)


def _vae_step(vae, loss_fn, optimizer, xb, step):
    """One step on the batch xb: {'loss': the batch's -ELBO, 'n': its size}."""
    with np.errstate(over="ignore", invalid="ignore"):   # divergence is caught below
        x_hat, mu, logvar = vae(xb)
        finite = all(np.all(np.isfinite(a)) for a in (x_hat, mu, logvar))
        value = check_finite(loss_fn(x_hat, mu, logvar, xb) if finite else np.nan, step)
    optimizer.zero_grad()
    vae.backward(*loss_fn.backward())
    optimizer.step()
    return {"loss": value, "n": len(xb)}


def train_vae(vae, loss_fn, optimizer, X, epochs=10, batch_size=64, checkpoint_path=None,
              generator=None, print_fn=None):
    """Minimise ``loss_fn`` (a VAELoss) over the rows of X with mini-batches.

    Returns the history of the per-epoch mean loss. After every epoch a checkpoint is
    written atomically when ``checkpoint_path`` is given. A NaN or infinite loss stops
    training with refdl.train.NonFiniteLossError naming the epoch and step; the checkpoint
    then still holds the last good epoch.
    """
    rng = get_rng(generator)
    history = []
    for epoch in range(1, epochs + 1):
        vae.train()
        perm = rng.permutation(len(X))
        batches = (X[perm[i:i + batch_size]] for i in range(0, len(X), batch_size))
        try:
            sizes = run_steps(lambda step, xb: _vae_step(vae, loss_fn, optimizer, xb, step),
                              batches)
        except NonFiniteLossError as e:
            raise NonFiniteLossError(epoch, e.step, e.value, {"loss": history},
                                     checkpoint_path, epoch - 1) from None
        total = 0.0
        for n, value in zip(sizes["n"], sizes["loss"]):
            total += value * n
        history.append(total / len(X))
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, vae, optimizer, epoch=epoch,
                            history={"loss": history})
        if print_fn is not None:
            print_fn(f"epoch {epoch}: -ELBO {history[-1]:.4f} (rec {loss_fn.last_rec:.4f}, "
                     f"KL {loss_fn.last_kl:.4f})")
    return history
