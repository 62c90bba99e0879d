r"""Sampling from a DDPM: ancestral sampling, and the exact noise predictor of a mixture.

:class:`AncestralSampling` holds Ho et al.'s Algorithm 2 (``p_sample``, ``sample``);
:class:`~refdl.models.diffusion.process.GaussianDiffusion` inherits it, so the sampler
reads its schedule (``T``, ``model_variance``) and the model mean ``p_mean_from_eps``.
:class:`MixtureOracleEps` is the best possible noise predictor for data from a Gaussian
mixture: sampling with it measures the error of the sampler alone (finite T), not of
training. Derivation: docs/derivations/diffusion.md.
"""
import math

import numpy as np

from ... import random as _random
from ...functional import softmax
from ...grad_mode import no_grad

__all__ = ["AncestralSampling", "MixtureOracleEps"]


class AncestralSampling:
    """Ancestral sampling x_T -> x_{T-1} -> ... -> x_0 (Ho et al., Algorithm 2).

    A base of :class:`~refdl.models.diffusion.process.GaussianDiffusion`, which provides
    ``T``, ``model_variance``, ``p_mean_from_eps`` and the checks ``_x`` and ``_t``.
    """

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
