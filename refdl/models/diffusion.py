r"""A small denoising diffusion probabilistic model (DDPM; Ho, Jain & Abbeel, 2020).

Notation is Ho et al.'s. The time step t is an integer 1..T (x_0 is the data, x_T is
almost pure noise); the arrays are stored zero-based, so ``betas[t-1]`` is beta_t and
``alphas_cumprod[t-1]`` is alpha_bar_t, with alpha_bar_0 = 1.

    alpha_t = 1 - beta_t,        alpha_bar_t = prod_{s<=t} alpha_s

Forward (noising) process, one step and in closed form:

    q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I)
    q(x_t | x_0)     = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I)

Posterior of one step back, given the data point (Gaussian conditioning):

    q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)
    mu~_t   = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
              + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
    beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t

Reverse model with fixed variance sigma_t^2 (beta_t or beta~_t) and the eps-parametrisation

    p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I),
    mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) / sqrt(alpha_t)

Variational bound (negative ELBO, nats per example), L = L_T + sum_{t=2}^T L_{t-1} + L_0:

    L_T     = KL(q(x_T | x_0) || N(0, I))                          (no parameters)
    L_{t-1} = E_q KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))
            = E_q [ beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)) ||eps - eps_theta||^2 ]
              + (a constant in theta)
    L_0     = -E_q log p_theta(x_0 | x_1)       (here a Gaussian decoder N(mu_theta(x_1, 1), sigma_1^2 I))

Training uses Ho's "simple" loss E_{t, x_0, eps} ||eps - eps_theta(x_t, t)||^2.
Derivations and the checks: docs/derivations/diffusion.md.

Also here: :class:`LinearGaussianReverse`, a 1-D reverse process p(x_{t-1}|x_t) = N(a_t x_t,
s_t^2) that is linear-Gaussian, so that log p(x_0), the ELBO and the gap between them
(a KL between two Gaussians over x_{1:T}) are all exact; and a ring-of-Gaussians sampler
with a mode-coverage measure.
"""
import contextlib
import copy
import math
from typing import NamedTuple

import numpy as np
from scipy.linalg import solve_triangular

from .. import random as _random
from ..functional import softmax
from ..functional.gaussian import check_variance as _check_var, gaussian_log_prob, normal_kl
from ..grad_mode import no_grad
from ..nn._validate import check_float, check_grad, layer_name
from ..nn.activation import GELU, ReLU, SiLU, Tanh
from ..nn.linear import Linear
from ..nn.module import Module, Sequential
from ..optim import Adam
from ..optim.lr_scheduler import CosineAnnealingLR
from ..train import check_finite, run_steps

__all__ = ["make_beta_schedule", "normal_kl", "gaussian_log_prob", "GaussianDiffusion",
           "SinusoidalTimeEmbedding", "NoisePredictor", "train_ddpm",
           "LinearGaussianReverse", "MixtureOracleEps"]

_LOG2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------------------------
# schedules and Gaussian helpers
# ---------------------------------------------------------------------------------------
def make_beta_schedule(schedule="linear", T=1000, beta_start=None, beta_end=None, s=0.008,
                       max_beta=0.999):
    r"""The variances beta_1..beta_T of the forward process, float64 array of shape (T,).

    * ``"linear"``: evenly spaced from beta_start to beta_end (Ho et al.). The defaults
      are Ho's 1e-4 and 0.02 rescaled by 1000/T (Nichol & Dhariwal's rule), so every T
      ends at alpha_bar_T ~ exp(-10 - ...) ~ 0: T = 1000 gives exactly 1e-4..0.02.
    * ``"cosine"``: alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2)
      (Nichol & Dhariwal 2021), beta_t = 1 - alpha_bar(t)/alpha_bar(t-1), clipped at max_beta.
    """
    T = _check_T("make_beta_schedule", T)
    if schedule == "linear":
        scale = 1000.0 / T
        b0 = 1e-4 * scale if beta_start is None else float(beta_start)
        b1 = 0.02 * scale if beta_end is None else float(beta_end)
        betas = np.linspace(b0, b1, T, dtype=np.float64)
    elif schedule == "cosine":
        if not s > 0:
            raise ValueError(f"make_beta_schedule: cosine offset s must be positive, got {s}")
        steps = np.arange(T + 1, dtype=np.float64) / T
        f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        ab = f / f[0]
        betas = np.minimum(1 - ab[1:] / ab[:-1], max_beta)
    else:
        raise ValueError(f"make_beta_schedule: unknown schedule {schedule!r} "
                         "(expected 'linear' or 'cosine')")
    _check_betas("make_beta_schedule", betas)
    return betas


def _check_T(where, T):
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"{where}: T must be a positive integer, got {T!r}")
    return int(T)


def _check_betas(where, betas):
    betas = np.asarray(betas)
    if betas.ndim != 1 or betas.size == 0:
        raise ValueError(f"{where}: betas must be a non-empty 1-D array, got shape "
                         f"{tuple(betas.shape)}")
    bad = np.flatnonzero(~(np.isfinite(betas) & (betas > 0) & (betas < 1)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where}: every beta_t must lie in (0, 1), got beta_{i + 1} = "
                         f"{float(betas[i])!r}")


# ---------------------------------------------------------------------------------------
# the diffusion process
# ---------------------------------------------------------------------------------------
class GaussianDiffusion:
    r"""The fixed forward process of a DDPM and the formulas built on it.

    ``GaussianDiffusion(betas)`` with ``betas`` of shape (T,) (beta_1..beta_T, each in
    (0, 1)), or ``GaussianDiffusion.from_schedule("linear"|"cosine", T)``.
    ``model_var``: the reverse-process variance sigma_t^2, ``"beta"`` (sigma_t^2 = beta_t)
    or ``"beta_tilde"`` (sigma_t^2 = beta~_t, with beta~_1 replaced by beta_1 so it is > 0).

    Every method takes t as in the notation above: an int in 1..T, or an int array of shape (N,) (one
    step per example, broadcast over the other axes of x of shape (N, ...)).
    Nothing here has trainable parameters; the model is passed in where needed.
    """

    def __init__(self, betas, model_var="beta"):
        betas = np.array(betas, dtype=np.float64, copy=True)
        _check_betas("GaussianDiffusion", betas)
        if model_var not in ("beta", "beta_tilde"):
            raise ValueError(f"GaussianDiffusion: model_var must be 'beta' or 'beta_tilde', "
                             f"got {model_var!r}")
        self.model_var = model_var
        self.T = betas.size
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.alphas_cumprod_prev = np.concatenate([[1.0], self.alphas_cumprod[:-1]])
        # beta~_t = (1 - ab_{t-1}) / (1 - ab_t) beta_t;  beta~_1 = 0
        self.posterior_variance = betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        self.posterior_mean_coef2 = ((1 - self.alphas_cumprod_prev) * np.sqrt(self.alphas)
                                     / (1 - self.alphas_cumprod))
        if model_var == "beta":
            self.model_variance = betas.copy()
        else:
            self.model_variance = np.concatenate([[betas[0]], self.posterior_variance[1:]])

    @classmethod
    def from_schedule(cls, schedule="linear", T=1000, model_var="beta", **kwargs):
        return cls(make_beta_schedule(schedule, T, **kwargs), model_var=model_var)

    def __repr__(self):
        return (f"GaussianDiffusion(T={self.T}, beta_1={self.betas[0]:.3g}, "
                f"beta_T={self.betas[-1]:.3g}, model_var={self.model_var!r})")

    # -- indexing ------------------------------------------------------------------------
    def _t(self, where, t, x=None, lo=1):
        """Validate t (1..T, as in the notation) and return the zero-based index array."""
        t_arr = np.asarray(t)
        if not np.issubdtype(t_arr.dtype, np.integer):
            if t_arr.dtype == bool or not np.issubdtype(t_arr.dtype, np.floating) or \
                    np.any(t_arr != np.round(t_arr)):
                raise TypeError(f"GaussianDiffusion.{where}: t must be an integer time step "
                                f"(or an int array), got {t!r}")
            t_arr = t_arr.astype(np.int64)
        if t_arr.ndim > 1:
            raise ValueError(f"GaussianDiffusion.{where}: t must be an int or a 1-D int array, "
                             f"got shape {tuple(t_arr.shape)}")
        if t_arr.size and (t_arr.min() < lo or t_arr.max() > self.T):
            bad = t_arr[(t_arr < lo) | (t_arr > self.T)].ravel()[0]
            raise ValueError(f"GaussianDiffusion.{where}: t must lie in {lo}..T={self.T}, "
                             f"got {int(bad)}")
        if x is not None and t_arr.ndim == 1:
            if x.ndim == 0 or x.shape[0] != t_arr.shape[0]:
                raise ValueError(f"GaussianDiffusion.{where}: t has shape {tuple(t_arr.shape)}"
                                 f" but x has shape {tuple(x.shape)}; expected one step per "
                                 "example (N,) for x of shape (N, ...)")
        return t_arr - 1

    @staticmethod
    def _gather(arr, idx, x):
        """arr[idx] shaped to broadcast against x (idx scalar or (N,)), in x's dtype."""
        v = arr[idx]
        if np.ndim(v) == 1:
            v = v.reshape((-1,) + (1,) * (x.ndim - 1))
        dt = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        return np.asarray(v, dtype=dt)

    def _x(self, where, x, what="x"):
        return check_float(f"GaussianDiffusion.{where}", x, what)

    # -- forward process -----------------------------------------------------------------
    def q_mean_variance(self, x0, t):
        """Mean sqrt(ab_t) x_0 and variance (1 - ab_t) (per coordinate) of q(x_t | x_0)."""
        x0 = self._x("q_mean_variance", x0, "x0")
        i = self._t("q_mean_variance", t, x0)
        ab = self._gather(self.alphas_cumprod, i, x0)
        return np.sqrt(ab) * x0, np.broadcast_to(1 - ab, np.broadcast_shapes(ab.shape, x0.shape))

    def q_sample(self, x0, t, noise=None, generator=None):
        r"""Draw x_t ~ q(x_t | x_0) in one shot: sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps.

        ``noise`` (eps, shape of x0) is drawn from ``generator`` when not given.
        """
        x0 = self._x("q_sample", x0, "x0")
        i = self._t("q_sample", t, x0)
        if noise is None:
            noise = _random.get_rng(generator).standard_normal(x0.shape).astype(x0.dtype)
        else:
            noise = self._x("q_sample", noise, "noise")
            if noise.shape != x0.shape:
                raise ValueError(f"GaussianDiffusion.q_sample: noise must have x0's shape "
                                 f"{tuple(x0.shape)}, got {tuple(noise.shape)}")
        ab = self._gather(self.alphas_cumprod, i, x0)
        return np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise

    def q_step(self, x_prev, t, generator=None):
        """One forward step: x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) z, z ~ N(0, I)."""
        x_prev = self._x("q_step", x_prev, "x_prev")
        i = self._t("q_step", t, x_prev)
        z = _random.get_rng(generator).standard_normal(x_prev.shape).astype(x_prev.dtype)
        return (np.sqrt(self._gather(self.alphas, i, x_prev)) * x_prev
                + np.sqrt(self._gather(self.betas, i, x_prev)) * z)

    def q_posterior(self, x0, xt, t):
        r"""Mean mu~_t(x_t, x_0) and variance beta~_t of q(x_{t-1} | x_t, x_0).

        At t = 1, beta~_1 = 0 and mu~_1 = x_0 (alpha_bar_0 = 1): the posterior is a point mass.
        """
        x0 = self._x("q_posterior", x0, "x0")
        xt = self._x("q_posterior", xt, "xt")
        if x0.shape != xt.shape:
            raise ValueError(f"GaussianDiffusion.q_posterior: x0 and xt must have one shape, "
                             f"got {tuple(x0.shape)} and {tuple(xt.shape)}")
        i = self._t("q_posterior", t, x0)
        mean = (self._gather(self.posterior_mean_coef1, i, x0) * x0
                + self._gather(self.posterior_mean_coef2, i, x0) * xt)
        var = self._gather(self.posterior_variance, i, x0)
        return mean, np.broadcast_to(var, np.broadcast_shapes(var.shape, x0.shape))

    # -- reverse model -------------------------------------------------------------------
    def predict_x0_from_eps(self, xt, t, eps):
        """x_0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t), the inverse of q_sample."""
        xt = self._x("predict_x0_from_eps", xt, "xt")
        i = self._t("predict_x0_from_eps", t, xt)
        ab = self._gather(self.alphas_cumprod, i, xt)
        return (xt - np.sqrt(1 - ab) * eps) / np.sqrt(ab)

    def p_mean_from_eps(self, xt, t, eps):
        r"""mu_theta = (x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(alpha_t).

        Equal to mu~_t(x_t, x_0) with x_0 replaced by predict_x0_from_eps(x_t, t, eps).
        """
        xt = self._x("p_mean_from_eps", xt, "xt")
        eps = self._x("p_mean_from_eps", eps, "eps")
        if eps.shape != xt.shape:
            raise ValueError(f"GaussianDiffusion.p_mean_from_eps: eps must have xt's shape "
                             f"{tuple(xt.shape)}, got {tuple(eps.shape)}")
        i = self._t("p_mean_from_eps", t, xt)
        b = self._gather(self.betas, i, xt)
        ab = self._gather(self.alphas_cumprod, i, xt)
        a = self._gather(self.alphas, i, xt)
        return (xt - b / np.sqrt(1 - ab) * eps) / np.sqrt(a)

    def eps_weight(self, t):
        r"""lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - ab_t)): L_{t-1} = lambda_t E||eps - eps_theta||^2 + const."""
        i = self._t("eps_weight", t)
        b, a, ab = self.betas[i], self.alphas[i], self.alphas_cumprod[i]
        return b ** 2 / (2 * self.model_variance[i] * a * (1 - ab))

    # -- the terms of the variational bound (nats, summed over the non-batch axes) -------
    @staticmethod
    def _sum_example(v):
        v = np.asarray(v)
        return v.reshape(v.shape[0], -1).sum(axis=1) if v.ndim > 1 else v

    def prior_kl(self, x0):
        r"""L_T = KL(q(x_T | x_0) || N(0, I)) per example, shape (N,) for x0 (N, ...).

        = 0.5 sum_d [ ab_T x0_d^2 + (1 - ab_T) - 1 - log(1 - ab_T) ]. It contains no model
        parameter at all (the forward process and the prior are fixed), so dL_T/dtheta = 0.
        """
        x0 = self._x("prior_kl", x0, "x0")
        m, v = self.q_mean_variance(x0, self.T)
        return self._sum_example(normal_kl(m, v, 0.0, 1.0))

    def kl_term(self, x0, xt, t, eps_pred):
        r"""KL(q(x_{t-1} | x_t, x_0) || N(mu_theta(x_t, eps_pred), sigma_t^2 I)) per example.

        The integrand of L_{t-1}, t in 2..T (at t = 1 the posterior is a point mass: use
        :meth:`decoder_nll`). Computed from the two means and variances directly.
        """
        x0 = self._x("kl_term", x0, "x0")
        self._t("kl_term", t, x0, lo=2)
        mt, vt = self.q_posterior(x0, xt, t)
        mp = self.p_mean_from_eps(xt, t, eps_pred)
        i = self._t("kl_term", t, x0, lo=2)
        sv = self._gather(self.model_variance, i, x0)
        return self._sum_example(normal_kl(mt, vt, mp, sv))

    def decoder_nll(self, x0, x1, eps_pred):
        r"""L_0 integrand: -log N(x_0; mu_theta(x_1, 1), sigma_1^2 I) per example (nats).

        (Ho et al. use a discretised decoder for 8-bit images; for continuous 2-D data the
        Gaussian density itself is the decoder.)
        """
        x0 = self._x("decoder_nll", x0, "x0")
        mp = self.p_mean_from_eps(x1, 1, eps_pred)
        return -self._sum_example(gaussian_log_prob(x0, mp, self.model_variance[0]))

    def elbo_terms(self, model, x0, generator=None):
        r"""One-sample Monte Carlo estimate of every term of the bound, per example.

        Returns a dict of arrays: ``"L_T"`` (N,), ``"L_t"`` (N, T-1) (column j is
        L_{j+1}, i.e. t = j + 2), ``"L_0"`` (N,), and ``"bound"`` (N,) their sum: an
        unbiased estimate of -ELBO >= -log p_theta(x_0). ``model(x_t, t)`` returns eps_theta.
        """
        x0 = self._x("elbo_terms", x0, "x0")
        rng = _random.get_rng(generator)
        N = x0.shape[0]
        Lt = np.zeros((N, self.T - 1))
        with no_grad():                  # evaluation: the model records nothing
            for t in range(2, self.T + 1):
                eps = rng.standard_normal(x0.shape).astype(x0.dtype)
                xt = self.q_sample(x0, t, eps)
                tt = np.full(N, t, dtype=np.int64)
                Lt[:, t - 2] = self.kl_term(x0, xt, tt, model(xt, tt))
            eps = rng.standard_normal(x0.shape).astype(x0.dtype)
            x1 = self.q_sample(x0, 1, eps)
            L0 = self.decoder_nll(x0, x1, model(x1, np.ones(N, dtype=np.int64)))
        LT = self.prior_kl(x0)
        return {"L_T": LT, "L_t": Lt, "L_0": L0, "bound": LT + Lt.sum(axis=1) + L0}

    # -- training and sampling -----------------------------------------------------------
    def simple_loss(self, model, x0, generator=None, backward=True):
        r"""Ho's L_simple = mean over batch and coordinates of (eps - eps_theta(x_t, t))^2.

        Draws t ~ U{1..T} and eps ~ N(0, I) per example, x_t = q_sample(x0, t, eps).
        With ``backward=True`` it also runs ``model.backward(dL/deps_theta)``, where
        dL/deps_theta = 2 (eps_theta - eps) / (number of entries); gradients ACCUMULATE in
        the model's parameters (call ``zero_grad`` first); with ``backward=False`` the
        model runs under ``refdl.no_grad()`` and records nothing. Returns the loss (a float).
        """
        x0 = self._x("simple_loss", x0, "x0")
        rng = _random.get_rng(generator)
        t = rng.integers(1, self.T + 1, size=x0.shape[0])
        eps = rng.standard_normal(x0.shape).astype(x0.dtype)
        xt = self.q_sample(x0, t, eps)
        with contextlib.nullcontext() if backward else no_grad():
            pred = model(xt, t)
        diff = pred - eps
        loss = float(np.mean(diff * diff))
        if backward:
            model.backward((2.0 / diff.size) * diff)
        return loss

    def p_sample(self, model, xt, t, generator=None):
        """One ancestral step x_{t-1} = mu_theta(x_t, t) + sigma_t z (z = 0 at t = 1).

        Inference: the model runs under ``refdl.no_grad()`` and records nothing."""
        xt = self._x("p_sample", xt, "xt")
        if not isinstance(t, (int, np.integer)):
            raise TypeError(f"GaussianDiffusion.p_sample: t must be one int step, got {t!r}")
        i = self._t("p_sample", t)
        tt = np.full(xt.shape[0], t, dtype=np.int64)
        with no_grad():
            eps_pred = model(xt, tt)
        mean = self.p_mean_from_eps(xt, t, eps_pred)
        if t == 1:
            return mean
        z = _random.get_rng(generator).standard_normal(xt.shape).astype(xt.dtype)
        return mean + math.sqrt(self.model_variance[i]) * z

    def sample(self, model, shape, generator=None, dtype=np.float32, return_trajectory=False):
        r"""Ancestral sampling (Ho et al., Algorithm 2): x_T ~ N(0, I), then p_sample for
        t = T, ..., 1. Returns x_0 of ``shape``, or (x_0, [x_T, ..., x_0]) with the trajectory.
        """
        rng = _random.get_rng(generator)
        shape = tuple(int(s) for s in np.atleast_1d(shape))
        x = rng.standard_normal(shape).astype(dtype)
        traj = [x] if return_trajectory else None
        for t in range(self.T, 0, -1):
            x = self.p_sample(model, x, t, rng)
            if return_trajectory:
                traj.append(x)
        return (x, traj) if return_trajectory else x


# ---------------------------------------------------------------------------------------
# the noise-prediction network
# ---------------------------------------------------------------------------------------
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
               cosine_lr=True, generator=None, log_every=0, callback=None):
    r"""Train ``model`` with :meth:`GaussianDiffusion.simple_loss` for ``steps`` steps.

    ``data``: an array (M, D) to draw minibatches from (with replacement), or a function
    ``data(n, generator) -> (n, D)`` giving fresh samples. ``optimizer`` defaults to
    ``refdl.optim.Adam(model.parameters(), lr=lr)``; with ``cosine_lr`` its learning rate
    is annealed to 0 over the run (``CosineAnnealingLR(T_max=steps)``, stepped every step),
    which removes most of the minibatch noise from the final weights. Returns the losses.
    A non-finite loss stops training with refdl.train.NonFiniteLossError (a
    FloatingPointError) naming the step, before any
    update from it; if the parameters themselves had become non-finite, those used at the
    previous (finite-loss) step are restored.
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

    losses = run_steps(step, steps, callback=callback, log_every=log_every,
                       log=log).get("loss", [])
    return losses


# ---------------------------------------------------------------------------------------
# an exactly solvable 1-D model: the reverse process is linear-Gaussian
# ---------------------------------------------------------------------------------------
class LinearGaussianReverse:
    r"""p(x_T) = N(0, prior_var),  p(x_{t-1} | x_t) = N(a_t x_t, s2_t), scalars x_t.

    Everything about it is Gaussian, so log p(x_0), the ELBO and the gap
    log p(x_0) - ELBO = KL(q(x_{1:T} | x_0) || p(x_{1:T} | x_0)) are exact. ``a`` and ``s2``
    have shape (T,) with a[t-1] = a_t. With :meth:`true_reverse` (the time reversal of q
    for data N(0, data_var)) the model equals q and the gap is 0 for every x_0.
    """

    def __init__(self, diffusion, a, s2, prior_var=1.0):
        self.diffusion = diffusion
        T = diffusion.T
        self.a = np.array(a, dtype=np.float64).reshape(-1)
        self.s2 = np.array(s2, dtype=np.float64).reshape(-1)
        if self.a.size != T or self.s2.size != T:
            raise ValueError(f"LinearGaussianReverse: a and s2 must have shape (T,) = ({T},), "
                             f"got {self.a.shape} and {self.s2.shape}")
        _check_var("LinearGaussianReverse", self.s2, "s2 (every reverse variance)")
        _check_var("LinearGaussianReverse", prior_var, "prior_var")
        self.prior_var = float(prior_var)

    @classmethod
    def true_reverse(cls, diffusion, data_var=1.0, prior="exact"):
        r"""The exact reverse of q for x_0 ~ N(0, data_var): with v_t = ab_t data_var + 1 - ab_t,
        a_t = sqrt(alpha_t) v_{t-1} / v_t and s2_t = v_{t-1} - alpha_t v_{t-1}^2 / v_t;
        prior N(0, v_T) (``prior="exact"``) or N(0, 1) (``prior="standard"``)."""
        _check_var("LinearGaussianReverse.true_reverse", data_var, "data_var")
        ab = np.concatenate([[1.0], diffusion.alphas_cumprod])
        v = ab * data_var + 1 - ab
        a = np.sqrt(diffusion.alphas) * v[:-1] / v[1:]
        s2 = v[:-1] - diffusion.alphas * v[:-1] ** 2 / v[1:]
        return cls(diffusion, a, s2, v[-1] if prior == "exact" else 1.0)

    def marginal_variances(self):
        """V_t = Var_p(x_t), t = 0..T: V_T = prior_var, V_{t-1} = a_t^2 V_t + s2_t."""
        T = self.diffusion.T
        V = np.empty(T + 1)
        V[T] = self.prior_var
        for t in range(T, 0, -1):
            V[t - 1] = self.a[t - 1] ** 2 * V[t] + self.s2[t - 1]
        return V

    def log_likelihood(self, x0):
        """Exact log p(x_0) = log N(x_0; 0, V_0)."""
        return gaussian_log_prob(np.asarray(x0, dtype=np.float64), 0.0,
                                 self.marginal_variances()[0])

    def elbo_terms(self, x0):
        r"""The bound's terms in closed form (expectations over q done analytically).

        Returns dict ``L_T``, ``L_t`` (..., T-1) (t = 2..T), ``L_0``; ELBO = -(their sum).
        L_{t-1} = 0.5[log(s2/b~) + b~/s2 - 1] + E[(mu~ - a_t x_t)^2] / (2 s2), with
        mu~ - a_t x_t = c1 x_0 + (c2 - a_t) x_t and x_t ~ N(sqrt(ab_t) x_0, 1 - ab_t).
        """
        d = self.diffusion
        x0 = np.asarray(x0, dtype=np.float64)
        ab = d.alphas_cumprod
        LT = normal_kl(np.sqrt(ab[-1]) * x0, 1 - ab[-1], 0.0, self.prior_var)
        Lt = []
        for t in range(2, d.T + 1):
            i = t - 1
            m, v = np.sqrt(ab[i]) * x0, 1 - ab[i]
            dcoef = d.posterior_mean_coef2[i] - self.a[i]
            sq = (d.posterior_mean_coef1[i] * x0 + dcoef * m) ** 2 + dcoef ** 2 * v
            bt, s2 = d.posterior_variance[i], self.s2[i]
            Lt.append(0.5 * (np.log(s2 / bt) + bt / s2 - 1) + sq / (2 * s2))
        m1, v1 = np.sqrt(ab[0]) * x0, 1 - ab[0]
        sq = (x0 - self.a[0] * m1) ** 2 + self.a[0] ** 2 * v1
        L0 = 0.5 * (_LOG2PI + np.log(self.s2[0])) + sq / (2 * self.s2[0])
        Lt = np.stack(Lt, axis=-1) if Lt else np.zeros(np.shape(x0) + (0,))
        return {"L_T": LT, "L_t": Lt, "L_0": L0}

    def elbo(self, x0):
        """Exact ELBO = -(L_T + sum_t L_{t-1} + L_0)."""
        L = self.elbo_terms(x0)
        return -(L["L_T"] + L["L_t"].sum(axis=-1) + L["L_0"])

    def elbo_monte_carlo(self, x0, n_samples, generator=None):
        r"""E_q[log p(x_{0:T}) - log q(x_{1:T} | x_0)] by sampling the forward chain.

        Uses only the one-step kernels (no decomposition). x0 a float; returns
        (mean, standard error) over ``n_samples`` chains.
        """
        d = self.diffusion
        rng = _random.get_rng(generator)
        x0 = float(x0)
        prev = np.full(n_samples, x0)
        log_q = np.zeros(n_samples)
        log_p = np.zeros(n_samples)
        for t in range(1, d.T + 1):
            i = t - 1
            xt = math.sqrt(d.alphas[i]) * prev + math.sqrt(d.betas[i]) * rng.standard_normal(n_samples)
            log_q += gaussian_log_prob(xt, math.sqrt(d.alphas[i]) * prev, d.betas[i])
            log_p += gaussian_log_prob(prev, self.a[i] * xt, self.s2[i])
            prev = xt
        log_p += gaussian_log_prob(prev, 0.0, self.prior_var)
        w = log_p - log_q
        return float(w.mean()), float(w.std(ddof=1) / math.sqrt(n_samples))

    def joint_covariance(self):
        r"""Covariance C (T+1, T+1) of (x_0, ..., x_T) under p: for i <= j,
        C_ij = (a_{i+1} ... a_j) V_j (x_i is x_j scaled down the chain plus independent noise)."""
        T = self.diffusion.T
        V = self.marginal_variances()
        C = np.empty((T + 1, T + 1))
        for j in range(T + 1):
            prod = 1.0
            C[j, j] = V[j]
            for i in range(j - 1, -1, -1):
                prod *= self.a[i]                 # a_{i+1}
                C[i, j] = C[j, i] = prod * V[j]
        return C

    def posterior(self, x0):
        """Mean (T,) and covariance (T, T) of p(x_{1:T} | x_0) by Gaussian conditioning."""
        C = self.joint_covariance()
        mean = C[1:, 0] / C[0, 0] * float(x0)
        cov = C[1:, 1:] - np.outer(C[1:, 0], C[0, 1:]) / C[0, 0]
        return mean, cov

    def forward_posterior(self, x0):
        r"""Mean (T,) and covariance (T, T) of q(x_{1:T} | x_0):
        mean_t = sqrt(ab_t) x_0, Cov(x_i, x_j) = sqrt(ab_j / ab_i) (1 - ab_i) for i <= j."""
        ab = self.diffusion.alphas_cumprod
        mean = np.sqrt(ab) * float(x0)
        r = np.sqrt(ab[None, :] / ab[:, None])       # [i, j] = sqrt(ab_j / ab_i)
        cov = np.triu(r * (1 - ab)[:, None])
        cov = cov + np.triu(cov, 1).T
        return mean, cov

    def posterior_gap(self, x0):
        r"""KL(q(x_{1:T} | x_0) || p(x_{1:T} | x_0)), the KL dropped to obtain the ELBO:
        0.5[tr(P^{-1} Q) + (m_p - m_q)^T P^{-1} (m_p - m_q) - T + log det P - log det Q]."""
        mq, Q = self.forward_posterior(x0)
        mp, P = self.posterior(x0)
        Lp = np.linalg.cholesky(P)
        Lq = np.linalg.cholesky(Q)
        A = solve_triangular(Lp, Lq, lower=True)            # Lp^{-1} Lq
        dm = solve_triangular(Lp, mp - mq, lower=True)
        T = mq.size
        logdet = 2 * (np.sum(np.log(np.diag(Lp))) - np.sum(np.log(np.diag(Lq))))
        return 0.5 * (np.sum(A * A) + dm @ dm - T + logdet)


# ---------------------------------------------------------------------------------------
# the exact noise predictor of a Gaussian mixture
# ---------------------------------------------------------------------------------------
class MixtureOracleEps:
    r"""The exact minimiser of the simple loss for data from an isotropic Gaussian mixture.

    For x_0 ~ sum_k w_k N(c_k, std^2 I), q(x_t) = sum_k w_k N(sqrt(ab_t) c_k, v_t I) with
    v_t = ab_t std^2 + 1 - ab_t, and the best noise prediction is
    E[eps | x_t] = -sqrt(1 - ab_t) grad log q(x_t)
                 = sqrt(1 - ab_t) sum_k r_k(x_t) (x_t - sqrt(ab_t) c_k) / v_t,
    r_k the responsibilities. Called like a model: ``oracle(x_t, t) -> eps`` (N, D).
    Sampling with it measures the error of the sampler alone (finite T), not of training.
    """

    def __init__(self, diffusion, centers, std, weights=None):
        self.diffusion = diffusion
        self.centers = np.asarray(centers, dtype=np.float64)
        if not std > 0:
            raise ValueError(f"MixtureOracleEps: std must be positive, got {std!r}")
        self.std = float(std)
        k = len(self.centers)
        self.weights = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, float)

    def __call__(self, x, t):
        d = self.diffusion
        x = np.asarray(x)
        i = d._t("MixtureOracleEps", t, x)
        ab = np.broadcast_to(d.alphas_cumprod[i], (x.shape[0],))[:, None]
        v = ab * self.std ** 2 + 1 - ab                          # (N, 1)
        mu = np.sqrt(ab)[:, :, None] * self.centers.T[None]       # (N, D, K)
        diff = x.astype(np.float64)[:, :, None] - mu
        logr = np.log(self.weights)[None] - 0.5 * (diff ** 2).sum(1) / v
        r = softmax(logr, axis=1)
        eps = np.sqrt(1 - ab) * np.einsum("ndk,nk->nd", diff, r) / v
        return eps.astype(x.dtype, copy=False)
