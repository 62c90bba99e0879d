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

The package follows the lecture, one module per part:

* ``schedules.py``: the variances beta_1..beta_T (:func:`make_beta_schedule`);
* ``process.py``: :class:`GaussianDiffusion`, the forward process q, its posterior, the
  reverse model's mean, the terms of the bound and the simple loss;
* ``samplers.py``: ancestral sampling (``GaussianDiffusion.p_sample`` / ``sample``) and
  :class:`MixtureOracleEps`, the exact noise predictor of a Gaussian mixture (sampling
  with it measures the sampler's error alone);
* ``network.py``: the noise-prediction network (:class:`SinusoidalTimeEmbedding`,
  :class:`NoisePredictor`) and its training loop :func:`train_ddpm`;
* ``linear_gaussian.py``: :class:`LinearGaussianReverse`, a 1-D reverse process
  p(x_{t-1}|x_t) = N(a_t x_t, s_t^2) that is linear-Gaussian, so that log p(x_0), the
  ELBO and the gap between them (a KL between two Gaussians over x_{1:T}) are all exact.

Every public name is importable from ``refdl.models.diffusion``.
"""
from ...functional.gaussian import gaussian_log_prob, normal_kl
from .linear_gaussian import LinearGaussianReverse
from .network import (NoisePredictor, SinusoidalTimeEmbedding, TimeEmbeddingCache,  # noqa: F401
                      train_ddpm)
from .process import GaussianDiffusion
from .samplers import AncestralSampling, MixtureOracleEps
from .schedules import make_beta_schedule

__all__ = ["make_beta_schedule", "normal_kl", "gaussian_log_prob", "GaussianDiffusion",
           "SinusoidalTimeEmbedding", "NoisePredictor", "train_ddpm",
           "AncestralSampling", "LinearGaussianReverse", "MixtureOracleEps"]
