r"""GANs: MLP generator and critic, the GAN/WGAN losses, and WGAN-GP's gradient penalty
with a hand-derived double backward.

Losses on discriminator logits l (D = sigmoid(l)), averaged over the batch:

    discriminator   L_D = -log D(x) - log(1 - D(G(z)))      dL/dl_real = -sigmoid(-l),
                                                            dL/dl_fake = sigmoid(l)
    generator, saturating      L_G = log(1 - D(G(z)))       dL/dl = -sigmoid(l)
    generator, non-saturating  L_G = -log D(G(z))           dL/dl = -sigmoid(-l)

When D rejects fakes confidently (l -> -inf, D(G(z)) -> 0) the saturating gradient
-sigmoid(l) vanishes while the non-saturating one tends to -1.

WGAN: the critic f minimises mean f(fake) - mean f(real) (its weights clipped to
[-c, c] in the original WGAN); the generator minimises -mean f(fake).
WGAN-GP adds  P = lam * mean_n (||grad_x f(x_hat_n)|| - 1)^2  at x_hat on lines between
real and fake samples; its gradient with respect to the critic's weights is a second
derivative, computed here by differentiating the critic's backward pass by hand
(docs/derivations/wgan_gp.md).
"""
from typing import List, NamedTuple, Tuple

import numpy as np

from .. import init
from ..functional import log_sigmoid, sigmoid
from ..nn.validate import check_float, check_ndim, layer_name
from ..nn.linear import Linear
from ..nn.container import ModuleList
from ..nn.module import Module
from ..grad_mode import no_grad
from ..optim import Adam
from ..random import get_rng
from ..train import check_finite, run_steps

__all__ = ["MLPCritic", "GradientPenalty", "DiscriminatorLoss", "GeneratorLoss",
           "WassersteinCriticLoss", "clip_weights_", "mlp_generator", "train_gan",
           "sample_generator"]


class CriticCache(NamedTuple):
    """One call of MLPCritic (docs/derivations/wgan_gp.md's symbols, per layer)."""
    h: List[np.ndarray]          # h[l] = h_l, l = 0..L-1 (h_0 = x): what dW_{l+1} needs
    phi_prime: List[np.ndarray]  # phi_prime[l] = phi'(a_{l+1}), l = 0..L-2


class PenaltyCache(NamedTuple):
    """One call of GradientPenalty: the critic's two passes at x_hat (wgan_gp.md)."""
    h: List[np.ndarray]           # h_l, l = 0..L-1
    phi_prime: List[np.ndarray]   # phi'(a_l) of the hidden layers
    phi_second: List[np.ndarray]  # phi''(a_l) of the hidden layers
    g: list                       # g[l] = df/dh_l, l = 0..L-1 (the first backward)
    delta: list                   # delta[l] = g[l + 1] * phi'(a_{l+1})
    v: np.ndarray                 # v = df/dx = g[0], (N, d)
    norm: np.ndarray              # ||v_n||, (N,)


class LogitsCache(NamedTuple):
    """One call of DiscriminatorLoss: the logits of the real and the fake batch."""
    l_real: np.ndarray
    l_fake: np.ndarray


class GeneratorLossCache(NamedTuple):
    """One call of GeneratorLoss: the discriminator's logits (or scores) of the fakes."""
    l: np.ndarray


class ScoresShapeCache(NamedTuple):
    """One call of WassersteinCriticLoss: the shapes of f(real) and f(fake)."""
    real_shape: Tuple[int, ...]
    fake_shape: Tuple[int, ...]


def _act(name, a, slope):
    """phi(a), phi'(a), phi''(a) for the critic's activation."""
    if name == "tanh":
        t = np.tanh(a)
        d1 = 1 - t * t
        return t, d1, -2 * t * d1
    if name == "leaky_relu":
        pos = a > 0
        return np.where(pos, a, slope * a), np.where(pos, 1.0, slope), np.zeros_like(a)
    if name == "softplus":
        s = sigmoid(a)
        return np.logaddexp(0, a), s, s * (1 - s)
    raise ValueError(f"MLPCritic: unknown activation {name!r} (tanh, leaky_relu, softplus)")


class MLPCritic(Module):
    r"""An MLP critic/discriminator f: R^d -> R with first and second derivatives by hand.

    Layers: a_l = W_l h_{l-1} + b_l, h_l = phi(a_l) for l = 1..L-1, f = W_L h_{L-1} + b_L;
    h_0 = x. Shapes: x (N, d) -> f (N, 1). ``forward``/``backward`` are the usual pair
    (backward: delta_l = (W_{l+1}^T delta_{l+1}) * phi'(a_l), dW_l = delta_l^T h_{l-1}).
    ``input_gradient(x)`` returns v = df/dx (N, d), the quantity WGAN-GP penalises.
    Parameter names: ``layers.0.weight``, ``layers.0.bias``, ...
    """

    def __init__(self, in_features, hidden=(64, 64), activation="tanh", negative_slope=0.2,
                 dtype=np.float32, generator=None):
        super().__init__()
        _act(activation, np.zeros(1), negative_slope)  # validates the name
        sizes = [int(in_features)] + [int(h) for h in hidden] + [1]
        self.layers = ModuleList([Linear(a, b, dtype=dtype, generator=generator)
                                  for a, b in zip(sizes[:-1], sizes[1:])])
        self.activation, self.negative_slope = activation, float(negative_slope)
        self.in_features = int(in_features)

    def extra_repr(self):
        return f"in_features={self.in_features}, activation={self.activation!r}"

    def _forward(self, x):
        x = check_float(self, x)
        check_ndim(self, x, 2, shape_hint=f"(N, {self.in_features})")
        if x.shape[1] != self.in_features:
            raise ValueError(f"{layer_name(self)}: expected input of shape "
                             f"(N, {self.in_features}), got {tuple(x.shape)}")
        hs, d1s, d2s = [x], [], []
        for lin in list(self.layers)[:-1]:
            a = hs[-1] @ lin.weight.data.T + lin.bias.data
            h, d1, d2 = _act(self.activation, a, self.negative_slope)
            hs.append(h)
            d1s.append(d1)
            d2s.append(d2)
        last = self.layers[len(self.layers) - 1]
        f = hs[-1] @ last.weight.data.T + last.bias.data
        return f, hs, d1s, d2s

    def forward(self, x):
        f, hs, d1s, _ = self._forward(x)
        self.save_for_backward(CriticCache(h=hs, phi_prime=d1s))
        return f

    def backward(self, grad_out):
        c = self.pop_saved()
        lins = list(self.layers)
        delta = np.asarray(grad_out)                      # dL/df, (N, 1)
        for l in range(len(lins) - 1, -1, -1):
            lins[l].weight.grad += delta.T @ c.h[l]
            lins[l].bias.grad += delta.sum(axis=0)
            g = delta @ lins[l].weight.data               # dL/dh_l
            delta = g * c.phi_prime[l - 1] if l > 0 else g
        return delta

    def input_gradient(self, x):
        """v = df/dx for every row of x: (N, d)."""
        _, _, d1s, _ = self._forward(x)
        lins = list(self.layers)
        g = np.broadcast_to(lins[-1].weight.data, (len(x), lins[-1].weight.shape[1]))
        for l in range(len(lins) - 2, -1, -1):
            g = (g * d1s[l]) @ lins[l].weight.data
        return g


class GradientPenalty(Module):
    r"""WGAN-GP's penalty P = lam * mean_n (||v_n|| - center)^2, v_n = grad_x f(x_n).

    ``center=1`` is Gulrajani et al.'s two-sided penalty; ``center=0`` gives the form
    lam * ||grad D(x)||^2 (a zero-centred penalty).
    x: (N, d) -> 0-d P. ``backward(grad=1)`` adds dP/dtheta to the critic's parameter
    gradients and returns dP/dx, by differentiating the critic's backward pass. With the
    critic f = w_L^T h_{L-1} + b_L, h_l = phi(a_l), a_l = W_l h_{l-1} + b_l, h_0 = x:

      backward pass (per sample):  g_{L-1} = w_L,  delta_l = g_l * phi'(a_l),
                                   g_{l-1} = W_l^T delta_l,  v = g_0   (l = L-1 .. 1)
      its adjoint, from u = dP/dv = (2 lam / N) (||v|| - center) v / ||v||:
            gbar_0 = u;  for l = 1 .. L-1:
              deltabar_l = W_l gbar_{l-1},      Wbar_l += delta_l gbar_{l-1}^T,
              gbar_l = deltabar_l * phi'(a_l),  abar_l = deltabar_l * g_l * phi''(a_l);
            w_L bar += gbar_{L-1}
      then the forward pass in reverse (hbar_{L-1} = 0), for l = L-1 .. 1:
              ahat_l = abar_l + hbar_l * phi'(a_l),  Wbar_l += ahat_l h_{l-1}^T,
              bbar_l += ahat_l,  hbar_{l-1} = W_l^T ahat_l;   dP/dx = hbar_0.
    (The code indexes layers from 0: ``layers[l]`` maps h_l to a_{l+1}.)
    Derivation: docs/derivations/wgan_gp.md
    """

    def __init__(self, critic, lam=10.0, center=1.0):
        super().__init__()
        if not isinstance(critic, MLPCritic):
            raise TypeError(f"GradientPenalty: expected an MLPCritic, got {type(critic).__name__}")
        self.critic, self.lam, self.center = critic, float(lam), float(center)

    def extra_repr(self):
        return f"lam={self.lam}, center={self.center}"

    def forward(self, x):
        f, hs, d1s, d2s = self.critic._forward(x)
        lins = list(self.critic.layers)
        N = len(x)
        gs = [None] * len(lins)                      # gs[l] = df/dh_l, l = 0..L-1
        gs[-1] = np.broadcast_to(lins[-1].weight.data, (N, lins[-1].weight.shape[1]))
        deltas = [None] * (len(lins) - 1)
        for l in range(len(lins) - 2, -1, -1):
            deltas[l] = gs[l + 1] * d1s[l]
            gs[l] = deltas[l] @ lins[l].weight.data
        v = gs[0]
        norm = np.sqrt(np.sum(v * v, axis=1))
        self.save_for_backward(PenaltyCache(h=hs, phi_prime=d1s, phi_second=d2s, g=gs,
                                            delta=deltas, v=v, norm=norm))
        return np.asarray(self.lam * np.mean((norm - self.center) ** 2))

    def backward(self, grad=None):
        pc = self.pop_saved()
        hs, d1s, d2s, gs, deltas = pc.h, pc.phi_prime, pc.phi_second, pc.g, pc.delta
        v, norm = pc.v, pc.norm
        c = 1.0 if grad is None else float(np.asarray(grad))
        lins = list(self.critic.layers)
        N = len(v)
        safe = np.where(norm > 0, norm, 1.0)
        u = (c * 2 * self.lam / N) * ((norm - self.center) / safe)[:, None] * v
        if self.center != 0:
            u = np.where((norm > 0)[:, None], u, 0.0)
        # adjoint of the backward pass, from v = g_0 up to g_{L-1} = w_L
        gbar = u
        abars = [None] * (len(lins) - 1)
        for l in range(len(lins) - 1):
            # g_l = delta_l @ W_l  (layer index l is lins[l], mapping h_l -> a_{l+1})
            dbar = gbar @ lins[l].weight.data.T                 # d P / d delta_l
            lins[l].weight.grad += deltas[l].T @ gbar
            gbar = dbar * d1s[l]                                # d P / d g_{l+1}
            abars[l] = dbar * gs[l + 1] * d2s[l]                # through phi'(a)
        lins[-1].weight.grad += gbar.sum(axis=0, keepdims=True)
        # adjoint of the forward pass: only the pre-activations a_l carry P's dependence
        hbar = np.zeros_like(hs[-1])
        for l in range(len(lins) - 2, -1, -1):
            abar = abars[l] + hbar * d1s[l]
            lins[l].weight.grad += abar.T @ hs[l]
            lins[l].bias.grad += abar.sum(axis=0)
            hbar = abar @ lins[l].weight.data
        return hbar


class DiscriminatorLoss(Module):
    r"""L_D = -mean log sigmoid(l_real) - mean log(1 - sigmoid(l_fake)).

    real_logits (N, 1), fake_logits (M, 1) -> 0-d loss; backward -> (dl_real, dl_fake)
    = (-sigmoid(-l_real)/N, sigmoid(l_fake)/M).
    """

    def forward(self, real_logits, fake_logits):
        r = check_float(self, real_logits, "real_logits")
        f = check_float(self, fake_logits, "fake_logits")
        self.save_for_backward(LogitsCache(l_real=r, l_fake=f))
        return np.asarray(-np.mean(log_sigmoid(r)) - np.mean(log_sigmoid(-f)))

    def backward(self, grad=None):
        lc = self.pop_saved()
        r, f = lc.l_real, lc.l_fake
        c = 1.0 if grad is None else float(np.asarray(grad))
        return c * -sigmoid(-r) / r.size, c * sigmoid(f) / f.size


class GeneratorLoss(Module):
    r"""The generator's loss on the discriminator's logits of fakes, l (N, 1) -> 0-d.

    saturating:      L = mean log(1 - sigmoid(l)) = mean log sigmoid(-l),  dL/dl = -sigmoid(l)/N
    non_saturating:  L = -mean log sigmoid(l),                             dL/dl = -sigmoid(-l)/N
    wasserstein:     L = -mean l,                                          dL/dl = -1/N
    """

    KINDS = ("saturating", "non_saturating", "wasserstein")

    def __init__(self, kind="non_saturating"):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"GeneratorLoss: kind must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind

    def extra_repr(self):
        return f"kind={self.kind!r}"

    def forward(self, fake_logits):
        l = check_float(self, fake_logits, "fake_logits")
        self.save_for_backward(GeneratorLossCache(l=l))
        if self.kind == "saturating":
            return np.asarray(np.mean(log_sigmoid(-l)))
        if self.kind == "non_saturating":
            return np.asarray(-np.mean(log_sigmoid(l)))
        return np.asarray(-np.mean(l))

    def backward(self, grad=None):
        l = self.pop_saved().l
        c = (1.0 if grad is None else float(np.asarray(grad))) / l.size
        if self.kind == "saturating":
            return -c * sigmoid(l)
        if self.kind == "non_saturating":
            return -c * sigmoid(-l)
        return -c * np.ones_like(l)


class WassersteinCriticLoss(Module):
    """L = mean f(fake) - mean f(real); backward -> (-1/N, 1/M) arrays."""

    def forward(self, real_scores, fake_scores):
        r = check_float(self, real_scores, "real_scores")
        f = check_float(self, fake_scores, "fake_scores")
        self.save_for_backward(ScoresShapeCache(real_shape=r.shape, fake_shape=f.shape))
        return np.asarray(np.mean(f) - np.mean(r))

    def backward(self, grad=None):
        sc = self.pop_saved()
        rs, fs = sc.real_shape, sc.fake_shape
        c = 1.0 if grad is None else float(np.asarray(grad))
        return -c * np.ones(rs) / np.prod(rs), c * np.ones(fs) / np.prod(fs)


def clip_weights_(module, c):
    """The original WGAN's Lipschitz device: clip every parameter to [-c, c] in place."""
    for p in module.parameters():
        np.clip(p.data, -c, c, out=p.data)
    return module


# -- models, training and evaluation on toy data ---------------------------------------
def mlp_generator(latent_dim=2, out_features=2, hidden=(64, 64), cond_dim=0, generator=None,
                  dtype=np.float32):
    """G: z (N, latent_dim [+ cond_dim]) -> x (N, out_features), Linear-ReLU-...-Linear."""
    from ..nn.activation import ReLU
    from ..nn.container import Sequential
    layers, d = [], latent_dim + cond_dim
    for h in hidden:
        layers += [Linear(d, h, dtype=dtype, generator=generator), ReLU()]
        d = h
    layers.append(Linear(d, out_features, dtype=dtype, generator=generator))
    return Sequential(*layers)


def train_gan(sample_real, kind="gan", steps=2000, batch_size=256, latent_dim=2,
              hidden=(64, 64), lr=None, n_critic=None, lam=10.0, clip=0.01,
              critic_activation=None, n_classes=0, generator=None, log_every=0,
              print_fn=print, progress=False):
    r"""Train a GAN on samples from ``sample_real(n, rng) -> (n, d)`` array.

    kind: 'gan' (non-saturating generator loss, BCE discriminator, Adam(2e-4, (0.5, .999))),
          'gan-saturating' (the minimax generator loss log(1 - D(G(z)))),
          'wgan' (critic clipped to [-clip, clip], RMSprop-like small lr; here Adam),
          'wgan-gp' (two-sided penalty lam (||grad f(x_hat)|| - 1)^2, n_critic = 5,
          Adam(1e-4, (0.5, 0.9))).
    The critic is an :class:`MLPCritic` with ``critic_activation`` ('leaky_relu' by default;
    'tanh' and 'softplus' give it a non-zero second derivative).
    Conditional GAN (``n_classes`` > 0): ``sample_real(n, rng)`` returns (x, y) with integer
    labels y; the generator sees concat(z, onehot(y)) and the discriminator
    concat(x, onehot(y)), so D estimates p_data(x, y) / (p_data(x, y) + p_theta(x|y) p(y))
    (Mirza & Osindero, 2014); fake labels are drawn uniformly.
    Returns (G, D, history) with history = {'d_loss': [...], 'g_loss': [...]}.
    A non-finite loss stops training with refdl.train.NonFiniteLossError (a
    FloatingPointError) naming the step.
    """
    kinds = ("gan", "gan-saturating", "wgan", "wgan-gp")
    if kind not in kinds:
        raise ValueError(f"train_gan: kind must be one of {kinds}, got {kind!r}")
    run = _GanRun(sample_real, kind, batch_size, latent_dim, hidden, lr, lam, clip,
                  critic_activation, n_classes, get_rng(generator))
    if n_critic is None:
        n_critic = 5 if run.wasserstein else 1

    def step(i, _):
        for _ in range(n_critic):
            d_loss = run.critic_step(i)
        return {"d_loss": d_loss, "g_loss": run.generator_step(i)}

    def log(i, h):
        if print_fn is not None:
            print_fn(f"{kind} step {i}: d_loss {h['d_loss'][-1]:.4f} "
                     f"g_loss {h['g_loss'][-1]:.4f}")

    history = {"d_loss": [], "g_loss": []}
    history.update(run_steps(step, steps, log_every=log_every, log=log, progress=progress,
                              desc=f"{kind} training"))
    return run.G, run.D, history


class _GanRun:
    """The pieces of one train_gan run (networks, optimisers, losses, the random source)
    and its two steps. Draws from ``rng`` in a fixed order: one real batch of 2 to learn
    the data's width, G's and D's initial weights, then the steps."""

    def __init__(self, sample_real, kind, batch_size, latent_dim, hidden, lr, lam, clip,
                 critic_activation, n_classes, rng):
        self.sample_real, self.kind, self.rng = sample_real, kind, rng
        self.batch_size, self.latent_dim, self.clip = batch_size, latent_dim, clip
        self.K = K = int(n_classes)
        self.d = d = self.real_batch(2)[0].shape[1]
        self.wasserstein = wasserstein = kind.startswith("wgan")
        self.G = mlp_generator(latent_dim, d, hidden, cond_dim=K, generator=rng)
        self.D = MLPCritic(d + K, hidden, activation=critic_activation or "leaky_relu",
                           generator=rng)
        if lr is None:
            lr = 1e-4 if kind == "wgan-gp" else 2e-4
        betas = (0.5, 0.9) if kind == "wgan-gp" else (0.5, 0.999)
        self.opt_g = Adam(self.G.parameters(), lr=lr, betas=betas)
        self.opt_d = Adam(self.D.parameters(), lr=lr, betas=betas)
        self.d_loss_fn = WassersteinCriticLoss() if wasserstein else DiscriminatorLoss()
        self.g_loss_fn = GeneratorLoss("wasserstein" if wasserstein else "saturating"
                                       if kind == "gan-saturating" else "non_saturating")
        self.gp = GradientPenalty(self.D, lam=lam, center=1.0) if kind == "wgan-gp" else None

    def real_batch(self, n):
        out = self.sample_real(n, self.rng)
        if self.K:
            x, y = out
            return np.asarray(x, np.float32), np.eye(self.K, dtype=np.float32)[y]
        return np.asarray(out, np.float32), np.zeros((n, 0), np.float32)

    def fake_labels(self, n):
        if not self.K:
            return np.zeros((n, 0), np.float32)
        return np.eye(self.K, dtype=np.float32)[self.rng.integers(0, self.K, n)]

    def generate(self, n):
        c = self.fake_labels(n)
        z = self.rng.standard_normal((n, self.latent_dim)).astype(np.float32)
        return self.G(np.concatenate([z, c], 1)), c

    def critic_step(self, step):
        """One update of D on a real and a fake batch; returns D's loss."""
        n, D = self.batch_size, self.D
        real, c_real = self.real_batch(n)
        with no_grad():         # the critic's step does not differentiate G
            fake, c_fake = self.generate(n)
        real, fake = np.concatenate([real, c_real], 1), np.concatenate([fake, c_fake], 1)
        self.opt_d.zero_grad()
        # one pass over real and fake together, so D's cache serves one backward
        out = D(np.concatenate([real, fake]))
        d_loss = float(self.d_loss_fn(out[:n], out[n:]))
        D.backward(np.concatenate(self.d_loss_fn.backward()))
        if self.gp is not None:
            e = self.rng.uniform(size=(n, 1)).astype(np.float32)
            d_loss += float(self.gp(e * real + (1 - e) * fake))
            self.gp.backward()
        check_finite(d_loss, step, message=f"train_gan({self.kind}): non-finite critic loss "
                                           f"at step {step}")
        self.opt_d.step()
        if self.kind == "wgan":
            clip_weights_(D, self.clip)
        return d_loss

    def generator_step(self, step):
        """One update of G through D; returns G's loss."""
        self.opt_g.zero_grad()
        fake, c_fake = self.generate(self.batch_size)
        g_loss = check_finite(self.g_loss_fn(self.D(np.concatenate([fake, c_fake], 1))), step,
                              message=f"train_gan({self.kind}): non-finite generator loss "
                                      f"at step {step}")
        dx = self.D.backward(self.g_loss_fn.backward())[:, :self.d]   # not the label columns
        self.G.backward(dx)
        self.opt_g.step()      # D's gradients from this pass are discarded by opt_d.zero_grad
        return g_loss


def sample_generator(G, n, latent_dim=2, labels=None, n_classes=0, generator=None):
    """n samples of a generator from train_gan (``labels``: ints for a conditional G).

    Runs under ``refdl.no_grad()``: sampling records nothing for a backward."""
    rng = get_rng(generator)
    z = rng.standard_normal((n, latent_dim)).astype(np.float32)
    if n_classes:
        labels = rng.integers(0, n_classes, n) if labels is None else np.asarray(labels)
        z = np.concatenate([z, np.eye(n_classes, dtype=np.float32)[labels]], 1)
    with no_grad():                     # inference: G keeps no cache
        return G(z)
