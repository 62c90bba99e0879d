r"""The forward process of a DDPM and the losses built on it (Ho, Jain & Abbeel, 2020).

:class:`GaussianDiffusion` holds the fixed schedule and gives q(x_t | x_0), the posterior
q(x_{t-1} | x_t, x_0), the reverse model's mean from a noise prediction, the terms of the
variational bound and Ho's simple loss. Notation: the package's docstring
(refdl/models/diffusion/__init__.py). Derivation: docs/derivations/diffusion.md.
"""
import contextlib

import numpy as np

from ... import random as _random
from ...functional.gaussian import gaussian_log_prob, normal_kl
from ...grad_mode import no_grad
from ...nn.validate import check_float
from .samplers import AncestralSampling
from .schedules import _check_betas, make_beta_schedule

__all__ = ["GaussianDiffusion"]


class GaussianDiffusion(AncestralSampling):
    r"""The fixed forward process of a DDPM and the formulas built on it.

    ``GaussianDiffusion(betas)`` with ``betas`` of shape (T,) (beta_1..beta_T, each in
    (0, 1)), or ``GaussianDiffusion.from_schedule("linear"|"cosine", T)``.
    ``model_var``: the reverse-process variance sigma_t^2, ``"beta"`` (sigma_t^2 = beta_t)
    or ``"beta_tilde"`` (sigma_t^2 = beta~_t, with beta~_1 replaced by beta_1 so it is > 0).

    Every method takes t as in the notation above: an int in 1..T, or an int array of shape (N,) (one
    step per example, broadcast over the other axes of x of shape (N, ...)).
    Nothing here has trainable parameters; the model is passed in where needed.
    Sampling (``p_sample``, ``sample``) is inherited from
    :class:`~refdl.models.diffusion.samplers.AncestralSampling`.
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


    # -- training ------------------------------------------------------------------------
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
