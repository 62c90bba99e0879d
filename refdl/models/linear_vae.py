r"""The linear-Gaussian VAE, with its ELBO and gradients in closed form.

Model (x in R^dx, z in R^dz):
    encoder   q(z|x) = N(W x, Sigma),        W (dz, dx), Sigma = L L^T (dz, dz)
    decoder   p(x|z) = N(U z, eta_d^2 I),    U (dx, dz)
    prior     p(z)   = N(0, eta_e^2 I)

With r = x - U W x, the ELBO of one x is (derivation: docs/derivations/linear_vae.md)

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))
            = - dx/2 log(2 pi eta_d^2) - (||r||^2 + tr(U Sigma U^T)) / (2 eta_d^2)
              - 1/2 [ dz log eta_e^2 - log det Sigma + (tr Sigma + ||W x||^2) / eta_e^2 - dz ]

and its gradients are (the beta-ELBO weights the KL by beta; beta = 1 here)
    dELBO/dW     = U^T r x^T / eta_d^2 - W x x^T / eta_e^2
    dELBO/dU     = (r (W x)^T - U Sigma) / eta_d^2
    dELBO/dSigma = 1/2 Sigma^-1 - U^T U / (2 eta_d^2) - I / (2 eta_e^2)
    dELBO/dlog eta_d = -dx + (||r||^2 + tr(U Sigma U^T)) / eta_d^2.

The exact marginal likelihood is log N(x; 0, eta_e^2 U U^T + eta_d^2 I); the ELBO never
exceeds it and equals it when q is the true posterior:
    Sigma* = (U^T U / eta_d^2 + I / eta_e^2)^-1,   W* = Sigma* U^T / eta_d^2.
"""
from typing import NamedTuple

import numpy as np

from ..functional.gaussian import normal_log_prob
from ..nn._validate import check_float, check_ndim, layer_name
from ..nn.module import Module, Parameter
from ..optim import Adam
from ..random import get_rng
from ..train import check_finite, run_steps

__all__ = ["LinearGaussianVAE"]


class LinearVAECache(NamedTuple):
    """One call of LinearGaussianVAE: the data X (N, dx); the gradients need only X."""
    X: np.ndarray


class LinearGaussianVAE(Module):
    """Linear-Gaussian VAE; ``forward(X)`` returns the loss -mean_n ELBO(x_n).

    X: (N, dx) -> 0-d loss. ``backward(grad=1)`` adds d loss / d parameter into the
    gradients of ``W``, ``U``, ``L_offdiag`` (strictly lower part of Sigma's Cholesky
    factor), ``log_sigma`` (log of its diagonal) and ``log_eta_d``; returns dloss/dX.
    ``eta_e`` (the prior scale) is fixed.
    """

    def __init__(self, dx, dz, eta_e=1.0, eta_d=1.0, beta=1.0, dtype=np.float64,
                 generator=None):
        super().__init__()
        if dx <= 0 or dz <= 0:
            raise ValueError(f"LinearGaussianVAE: dx and dz must be positive, got {dx}, {dz}")
        if eta_e <= 0 or eta_d <= 0:
            raise ValueError(f"LinearGaussianVAE: eta_e and eta_d must be positive, got "
                             f"eta_e={eta_e}, eta_d={eta_d}")
        g = get_rng(generator)
        if beta < 0:
            raise ValueError(f"LinearGaussianVAE: beta must be non-negative, got {beta}")
        self.dx, self.dz, self.eta_e, self.beta = int(dx), int(dz), float(eta_e), float(beta)
        self.W = Parameter(0.1 * g.standard_normal((dz, dx)).astype(dtype))
        self.U = Parameter(0.1 * g.standard_normal((dx, dz)).astype(dtype))
        self.L_offdiag = Parameter(np.zeros((dz, dz), dtype))
        self.log_sigma = Parameter(np.full(dz, np.log(0.5), dtype))
        self.log_eta_d = Parameter(np.array(np.log(eta_d), dtype))

    def extra_repr(self):
        return f"dx={self.dx}, dz={self.dz}, eta_e={self.eta_e}, beta={self.beta}"

    # -- the pieces -----------------------------------------------------------------------
    def cholesky(self):
        """L = strictly-lower(L_offdiag) + diag(exp(log_sigma)); Sigma = L L^T."""
        return np.tril(self.L_offdiag.data, -1) + np.diag(np.exp(self.log_sigma.data))

    def encoder_covariance(self):
        L = self.cholesky()
        return L @ L.T

    def set_encoder(self, W, Sigma):
        """Set W and Sigma (through its Cholesky factor)."""
        L = np.linalg.cholesky(Sigma)
        self.W.data[...] = W
        self.L_offdiag.data[...] = np.tril(L, -1)
        self.log_sigma.data[...] = np.log(np.diag(L))

    def optimal_encoder(self):
        """(W*, Sigma*) of the exact posterior p(z|x) for the current decoder."""
        eta_d2 = np.exp(2 * self.log_eta_d.data)
        U = self.U.data
        Sigma = np.linalg.inv(U.T @ U / eta_d2 + np.eye(self.dz) / self.eta_e ** 2)
        return Sigma @ U.T / eta_d2, Sigma

    def _check(self, X):
        X = check_float(self, X)
        check_ndim(self, X, 2, shape_hint=f"(N, {self.dx})")
        if X.shape[1] != self.dx:
            raise ValueError(f"{layer_name(self)}: expected input of shape (N, {self.dx}), "
                             f"got {tuple(X.shape)}")
        return X

    def elbo(self, X):
        """Per-example closed-form (beta-)ELBO, E_q[log p(x|z)] - beta KL, shape (N,)."""
        X = self._check(X)
        eta_d2 = np.exp(2 * self.log_eta_d.data)
        L = self.cholesky()
        S = L @ L.T
        U, W = self.U.data, self.W.data
        Z = X @ W.T                                   # (N, dz) encoder means
        R = X - Z @ U.T                               # residuals
        trUSU = np.sum((U @ L) ** 2)
        logdetS = 2 * np.sum(self.log_sigma.data)
        rec = (-0.5 * self.dx * np.log(2 * np.pi * eta_d2)
               - (np.sum(R * R, axis=1) + trUSU) / (2 * eta_d2))
        kl = 0.5 * (self.dz * np.log(self.eta_e ** 2) - logdetS
                    + (np.trace(S) + np.sum(Z * Z, axis=1)) / self.eta_e ** 2 - self.dz)
        return rec - self.beta * kl

    def log_likelihood(self, X):
        """Exact log p(x) = log N(x; 0, eta_e^2 U U^T + eta_d^2 I), shape (N,)."""
        X = self._check(X)
        C = self.eta_e ** 2 * self.U.data @ self.U.data.T + \
            np.exp(2 * self.log_eta_d.data) * np.eye(self.dx)
        return normal_log_prob(X, np.zeros(self.dx), C)

    def mc_elbo(self, X, n_samples=1000, generator=None):
        """Monte Carlo ELBO: mean over z ~ q(z|x) of log p(x|z) + log p(z) - log q(z|x)."""
        X = self._check(X)
        g = get_rng(generator)
        eta_d2 = np.exp(2 * self.log_eta_d.data)
        L = self.cholesky()
        S = L @ L.T
        out = np.empty(len(X))
        for n, x in enumerate(X):
            z = x @ self.W.data.T + g.standard_normal((n_samples, self.dz)) @ L.T
            r = x - z @ self.U.data.T
            log_px_z = -0.5 * (self.dx * np.log(2 * np.pi * eta_d2) + np.sum(r * r, 1) / eta_d2)
            log_pz = normal_log_prob(z, np.zeros(self.dz), self.eta_e ** 2 * np.eye(self.dz))
            log_qz = normal_log_prob(z, self.W.data @ x, S)
            out[n] = np.mean(log_px_z + log_pz - log_qz)
        return out

    # -- the Module contract: loss = -mean ELBO ------------------------------------------
    def forward(self, X):
        X = self._check(X)
        self.save_for_backward(LinearVAECache(X=X))
        return np.asarray(-np.mean(self.elbo(X)))

    def backward(self, grad=None):
        X = self.pop_saved().X
        c = -(1.0 if grad is None else float(np.asarray(grad))) / len(X)  # d loss/d sum ELBO
        eta_d2 = np.exp(2 * self.log_eta_d.data)
        ee2 = self.eta_e ** 2
        L = self.cholesky()
        S = L @ L.T
        U, W = self.U.data, self.W.data
        Z = X @ W.T
        R = X - Z @ U.T
        N = len(X)
        b = self.beta
        dW = (U.T @ R.T @ X) / eta_d2 - b * (W @ X.T @ X) / ee2
        dU = (R.T @ Z - N * U @ S) / eta_d2
        dS = N * (b * (0.5 * np.linalg.inv(S) - np.eye(self.dz) / (2 * ee2))
                  - U.T @ U / (2 * eta_d2))
        dL = 2 * dS @ L                                # d/dL of f(L L^T), dS symmetric
        Q = np.sum(R * R) + N * np.sum((U @ L) ** 2)
        dlog_eta_d = -N * self.dx + Q / eta_d2
        self.W.grad += c * dW
        self.U.grad += c * dU
        self.L_offdiag.grad += c * np.tril(dL, -1)
        self.log_sigma.grad += c * np.diag(dL) * np.exp(self.log_sigma.data)
        self.log_eta_d.grad += c * dlog_eta_d
        # d ELBO / dx = -(I - UW)^T r / eta_d^2 ... written out:
        dX = (-(R - R @ U @ W) / eta_d2 - b * (Z @ W) / ee2)
        return c * dX

    def fit(self, X, steps=2000, lr=0.05, callback=None):
        """Maximise the mean closed-form ELBO over W, U, Sigma, eta_d with Adam (full batch).

        Returns the history of the loss (-mean ELBO); a non-finite loss raises
        refdl.train.NonFiniteLossError (a FloatingPointError) naming the step.
        """
        opt = Adam([p for p in self.parameters() if p.requires_grad], lr=lr)

        def step(t, _):
            opt.zero_grad()
            loss = check_finite(self(X), t, message=f"LinearGaussianVAE.fit: non-finite "
                                                    f"loss at step {t}")
            self.backward()
            opt.step()
            return loss

        return run_steps(step, steps, callback=callback).get("loss", [])

    @staticmethod
    def ppca_mle(X, dz, eta_e=1.0):
        """Tipping & Bishop's closed-form maximum-likelihood (U, eta_d^2) for zero-mean X.

        With S = X^T X / N = V diag(lam) V^T (eigenvalues descending):
            eta_d^2 = mean(lam[dz:]),   U = V[:, :dz] diag(sqrt(lam[:dz] - eta_d^2)) / eta_e,
        up to a rotation of the latent space. Returns (U, eta_d2, max log-likelihood mean).
        """
        N, dx = X.shape
        S = X.T @ X / N
        lam, V = np.linalg.eigh(S)
        lam, V = lam[::-1], V[:, ::-1]
        eta_d2 = lam[dz:].mean()
        U = V[:, :dz] * np.sqrt(np.maximum(lam[:dz] - eta_d2, 0)) / eta_e
        C = eta_e ** 2 * U @ U.T + eta_d2 * np.eye(dx)
        ll = normal_log_prob(X, np.zeros(dx), C).mean()
        return U, eta_d2, ll
