r"""The noise schedule of a DDPM: the variances beta_1..beta_T of the forward process.

alpha_t = 1 - beta_t and alpha_bar_t = prod_{s<=t} alpha_s (notation: the package's
docstring, refdl/models/diffusion/__init__.py). Derivation: docs/derivations/diffusion.md.
"""
import math

import numpy as np

__all__ = ["make_beta_schedule"]


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

