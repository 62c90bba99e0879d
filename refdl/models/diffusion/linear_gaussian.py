r"""An exactly solvable 1-D diffusion model: the reverse process is linear-Gaussian.

With p(x_{t-1} | x_t) = N(a_t x_t, s_t^2) everything is Gaussian, so log p(x_0), the ELBO
and the gap between them (a KL between two Gaussians over x_{1:T}) are exact, and the
bound's Monte Carlo estimate can be checked against them. Derivation:
docs/derivations/diffusion.md.
"""
import math

import numpy as np
from scipy.linalg import solve_triangular

from ... import random as _random
from ...functional.gaussian import check_variance as _check_var, gaussian_log_prob, normal_kl

__all__ = ["LinearGaussianReverse"]

_LOG2PI = math.log(2 * math.pi)


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
