r"""Gaussian densities and KL divergences in closed form, with their gradients.

One family, three entry points by parameterisation:

* per coordinate, by mean and variance (``normal_kl``, ``gaussian_log_prob``: elementwise,
  the form diffusion models use, sum over coordinates yourself);
* diagonal, by mean and log-variance (``kl_diag_normal``, ``diag_normal_log_prob``: summed
  over ``axis``; the parameterisation a VAE encoder outputs);
* full covariance, by mean and covariance matrix (``kl_normal``, ``normal_log_prob``).

Per coordinate, with u = v1 / v2 - 1 (so log(v1 / v2) = log1p(u)),

    KL(N(m1, v1) || N(m2, v2)) = 1/2 [ (u - log1p(u)) + (m1 - m2)^2 / v2 ]

which keeps its relative accuracy when v1 ~ v2 (the textbook form
1/2 [log(v2/v1) + (v1 + (m1 - m2)^2)/v2 - 1] cancels: for v1 = 1 - 4e-5, v2 = 1 it loses
7 of 16 digits). The diagonal KL is the sum of these; the full-covariance one is

    KL(N(m1, S1) || N(m2, S2)) = 1/2 [ log det S2 / det S1 + tr(S2^-1 S1)
                                        + (m2 - m1)^T S2^-1 (m2 - m1) - d ]

Gradients (S symmetric positive definite):
    dKL/dm1 = S2^-1 (m1 - m2)            dKL/dS1 = 1/2 (S2^-1 - S1^-1)
For diagonal Gaussians with v = exp(logvar) (u_i = expm1(lv1_i - lv2_i)):
    KL = 1/2 sum_i [ (u_i - (lv1_i - lv2_i)) + (m1_i - m2_i)^2 / v2_i ]
    dKL/dm1 = (m1 - m2) / v2             dKL/dlv1 = 1/2 (v1 / v2 - 1)
and against the standard normal: KL = 1/2 sum_i (mu_i^2 + v_i - 1 - logvar_i).
Derivation: docs/derivations/gaussian.md
"""
import numpy as np

__all__ = ["normal_kl", "gaussian_log_prob", "check_variance",
           "kl_diag_normal", "kl_diag_normal_grad", "kl_normal", "kl_normal_grad",
           "normal_log_prob", "diag_normal_log_prob", "normal_entropy"]

LOG_2PI = np.log(2 * np.pi)


def check_variance(where, var, what="variance"):
    """Raise ValueError naming ``where`` unless every entry of ``var`` is positive and finite."""
    var = np.asarray(var)
    if np.any(~np.isfinite(var)) or np.any(var <= 0):
        bad = var[~(np.isfinite(var) & (var > 0))].ravel()[0]
        raise ValueError(f"{where}: {what} must be positive and finite, got {float(bad)!r}")


def _kl_from_ratio(u, log_ratio, sq_over_v2):
    """1/2 [(u - log(1 + u)) + (m1 - m2)^2 / v2] with u = v1/v2 - 1 and log(1 + u) given."""
    return 0.5 * ((u - log_ratio) + sq_over_v2)


def normal_kl(mean1, var1, mean2, var2):
    r"""Elementwise KL(N(mean1, var1) || N(mean2, var2)) of 1-D Gaussians, in nats.

    Sum over coordinates for isotropic/diagonal Gaussians. Variances must be > 0.
    """
    check_variance("normal_kl", var1, "var1")
    check_variance("normal_kl", var2, "var2")
    mean1, mean2 = np.asarray(mean1), np.asarray(mean2)
    var1, var2 = np.asarray(var1), np.asarray(var2)
    u = (var1 - var2) / var2
    return _kl_from_ratio(u, np.log1p(u), (mean1 - mean2) ** 2 / var2)


def gaussian_log_prob(x, mean, var):
    """Elementwise log N(x; mean, var) (variance > 0)."""
    check_variance("gaussian_log_prob", var)
    var = np.asarray(var)
    return -0.5 * (LOG_2PI + np.log(var) + (np.asarray(x) - mean) ** 2 / var)


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
    log_ratio = logvar1 - logvar2                  # log(v1 / v2)
    kl = _kl_from_ratio(np.expm1(log_ratio), log_ratio,
                        (mu1 - mu2) ** 2 * np.exp(-np.asarray(logvar2)))
    return np.sum(kl, axis=axis)


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
