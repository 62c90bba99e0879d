r"""Gaussian densities and KL divergences in closed form, with their gradients.

Diagonal Gaussians are given by mean and log-variance (the parameterisation a VAE encoder
outputs); full-covariance Gaussians by mean and covariance matrix.

KL(N(m1, S1) || N(m2, S2)) = 1/2 [ log det S2 / det S1 + tr(S2^-1 S1)
                                    + (m2 - m1)^T S2^-1 (m2 - m1) - d ]

Gradients (S symmetric positive definite):
    dKL/dm1 = S2^-1 (m1 - m2)            dKL/dS1 = 1/2 (S2^-1 - S1^-1)
For diagonal Gaussians with v = exp(logvar):
    KL = 1/2 sum_i [ lv2_i - lv1_i + (v1_i + (m1_i - m2_i)^2) / v2_i - 1 ]
    dKL/dm1 = (m1 - m2) / v2             dKL/dlv1 = 1/2 (v1 / v2 - 1)
and against the standard normal: KL = 1/2 sum_i (mu_i^2 + v_i - 1 - logvar_i).
Derivation: docs/derivations/gaussian.md
"""
import numpy as np

__all__ = ["kl_diag_normal", "kl_diag_normal_grad", "kl_normal", "kl_normal_grad",
           "normal_log_prob", "diag_normal_log_prob", "normal_entropy"]

LOG_2PI = np.log(2 * np.pi)


def _chol(S, what):
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"{what}: expected a square covariance matrix, got shape {S.shape}")
    try:
        return np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        ev = np.linalg.eigvalsh((S + S.T) / 2).min()
        raise ValueError(f"{what}: covariance is not positive definite "
                         f"(smallest eigenvalue {ev:.3g})") from None


def _logdet(L):
    return 2.0 * np.sum(np.log(np.diag(L)))


def kl_diag_normal(mu1, logvar1, mu2=0.0, logvar2=0.0, axis=-1):
    """KL(N(mu1, diag e^lv1) || N(mu2, diag e^lv2)), summed over ``axis``."""
    mu1, logvar1 = np.asarray(mu1), np.asarray(logvar1)
    if mu1.shape != logvar1.shape:
        raise ValueError(f"kl_diag_normal: mu {mu1.shape} and logvar {logvar1.shape} "
                         "must have the same shape")
    d = logvar2 - logvar1 + (np.exp(logvar1 - logvar2)
                             + (mu1 - mu2) ** 2 * np.exp(-np.asarray(logvar2))) - 1.0
    return 0.5 * np.sum(d, axis=axis)


def kl_diag_normal_grad(mu1, logvar1, mu2=0.0, logvar2=0.0):
    """(dKL/dmu1, dKL/dlogvar1) of :func:`kl_diag_normal` (per element)."""
    return (mu1 - mu2) * np.exp(-np.asarray(logvar2)), 0.5 * (np.exp(logvar1 - logvar2) - 1.0)


def kl_normal(m1, S1, m2, S2):
    """KL(N(m1, S1) || N(m2, S2)) for full covariances (d-dimensional, one pair)."""
    m1, m2 = np.asarray(m1, np.float64), np.asarray(m2, np.float64)
    L1, L2 = _chol(S1, "kl_normal S1"), _chol(S2, "kl_normal S2")
    d = m1.shape[-1]
    if np.shape(S1) != (d, d) or np.shape(S2) != (d, d) or m2.shape != m1.shape:
        raise ValueError(f"kl_normal: shapes do not agree: m1 {m1.shape}, S1 {np.shape(S1)}, "
                         f"m2 {m2.shape}, S2 {np.shape(S2)}")
    A = np.linalg.solve(L2, L1)                    # L2^-1 L1: tr(S2^-1 S1) = ||A||_F^2
    b = np.linalg.solve(L2, m2 - m1)
    return 0.5 * (_logdet(L2) - _logdet(L1) + np.sum(A * A) + b @ b - d)


def kl_normal_grad(m1, S1, m2, S2):
    """(dKL/dm1, dKL/dS1) of :func:`kl_normal`, S1 treated as a symmetric matrix."""
    S2inv = np.linalg.inv(np.asarray(S2, np.float64))
    S1inv = np.linalg.inv(np.asarray(S1, np.float64))
    return S2inv @ (np.asarray(m1) - np.asarray(m2)), 0.5 * (S2inv - S1inv)


def normal_log_prob(x, m, S):
    """log N(x; m, S) for rows x of shape (..., d)."""
    L = _chol(S, "normal_log_prob")
    z = np.linalg.solve(L, (np.asarray(x) - m).T).T
    d = L.shape[0]
    return -0.5 * (d * LOG_2PI + _logdet(L) + np.sum(z * z, axis=-1))


def diag_normal_log_prob(x, mu, logvar, axis=-1):
    """log N(x; mu, diag e^logvar), summed over ``axis``."""
    return -0.5 * np.sum(LOG_2PI + logvar + (x - mu) ** 2 * np.exp(-logvar), axis=axis)


def normal_entropy(S):
    """H[N(m, S)] = 1/2 log det(2 pi e S)."""
    L = _chol(S, "normal_entropy")
    d = L.shape[0]
    return 0.5 * (d * (LOG_2PI + 1.0) + _logdet(L))
