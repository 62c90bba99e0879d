# %% [markdown]
# # 9. Variational autoencoders
#
# A VAE encodes $x$ into a Gaussian $q(z\mid x) = \mathcal N(\mu, \operatorname{diag}\sigma^2)$,
# samples $z$ from it, and decodes. It maximises the evidence lower bound (ELBO); the
# reparameterisation trick makes the sampling step differentiable.

# %% [markdown]
# ## The derivation
#
# $$
# \log p(x) \ge \mathbb{E}_{q(z\mid x)}\left[\log p(x\mid z)\right] - \operatorname{KL}\!\left(q(z\mid x)\,\|\,\mathcal N(0, I)\right)
# = \text{ELBO}(x) .
# $$
#
# For $q = \mathcal N(\mu, \operatorname{diag} e^{\ell})$ ($\ell = \log\sigma^2$) the KL term
# has a closed form and simple gradients:
#
# $$
# \operatorname{KL} = \tfrac12 \sum_j \left(\mu_j^2 + e^{\ell_j} - 1 - \ell_j\right), \qquad
# \frac{\partial \operatorname{KL}}{\partial \mu_j} = \mu_j, \qquad
# \frac{\partial \operatorname{KL}}{\partial \ell_j} = \tfrac12\left(e^{\ell_j} - 1\right).
# $$
#
# **Reparameterisation:** $z = \mu + \sigma\odot\varepsilon$, $\varepsilon \sim \mathcal N(0, I)$
# drawn outside the graph, $\sigma = e^{\ell/2}$, so with $g = \partial L/\partial z$
#
# $$
# \frac{\partial L}{\partial \mu} = g, \qquad \frac{\partial L}{\partial \ell} = g\odot\varepsilon\odot\tfrac{\sigma}{2}.
# $$
#
# With a Bernoulli decoder (logits $\hat x$) the reconstruction term is a binary
# cross-entropy whose gradient is $\sigma(\hat x) - x$. The loss minimised is
# $-\text{ELBO}$ averaged over the batch. Pages: `docs/derivations/vae.md`, `gaussian.md`,
# `linear_vae.md`.

# %% [markdown]
# ## The code, read from the library

# %%
from refdl.models.vae import VAE, VAELoss, Reparameterize, train_vae

show(Reparameterize.forward, Reparameterize.backward, VAELoss.backward)

# %% [markdown]
# ## The sampling step, forward and backward

# %%
rep = Reparameterize(generator=np.random.default_rng(0))
mu, logvar = np.array([[0.0, 1.0]]), np.array([[0.0, np.log(4.0)]])
z = rep(mu, logvar)
eps = (z - mu) / np.exp(0.5 * logvar)
print("z =", z, " eps =", eps, " sigma =", np.exp(0.5 * logvar))
dmu, dlv = rep.backward(np.array([[1.0, 1.0]]))
print("dL/dmu =", dmu, "  dL/dlogvar =", dlv, "  g eps sigma / 2 =", eps * np.exp(0.5 * logvar) / 2)
assert np.allclose(dlv, eps * np.exp(0.5 * logvar) / 2)
kl_loss = VAELoss("bernoulli")
x01 = np.array([[1.0, 0.0]])
value = kl_loss(np.zeros((1, 2)), mu, logvar, x01)
print("KL of this q:", float(kl_loss.last_kl), "  closed form:", 0.5 * np.sum(mu ** 2 + np.exp(logvar) - 1 - logvar))

# %% [markdown]
# ## The gradient checks

# %%
rng = np.random.default_rng(1)
print(check_module(Reparameterize(), rng.standard_normal((3, 2)), rng.standard_normal((3, 2))))
r = check_module(VAELoss("bernoulli"), rng.standard_normal((4, 5)), rng.standard_normal((4, 2)),
                 rng.standard_normal((4, 2)), rng.random((4, 5)), wrt=[0, 1, 2])
print("VAELoss (x_hat, mu, logvar) passed:", r.passed)
r = check_module(VAE(5, 2, hidden=(6,)), rng.standard_normal((4, 5)))
print("whole VAE passed:", r.passed, f"max rel err {r.max_rel_error:.1e}")

# %% [markdown]
# ## A short training run: a 2-D latent space of the digits

# %%
import matplotlib.pyplot as plt
from refdl.data import load_digits

xtr, ytr, xte, yte = load_digits(layout="flat")
refdl.manual_seed(0)
vae = VAE(64, latent_dim=2, hidden=(64,))
hist = train_vae(vae, VAELoss("bernoulli"), optim.Adam(vae.parameters(), lr=3e-3), xtr,
                 epochs=15, generator=np.random.default_rng(0))
vae.eval()
_, mu_te, _ = vae(xte)
fig, (a0, a1) = plt.subplots(1, 2, figsize=(9, 3.8))
a0.plot(hist); a0.set(xlabel="epoch", ylabel="-ELBO (nats per image)", title="training")
sc = a1.scatter(mu_te[:, 0], mu_te[:, 1], c=yte, cmap="tab10", s=8)
fig.colorbar(sc, ax=a1, label="digit"); a1.set(title="posterior means of the test digits")
plt.show()

# %% [markdown]
# ## Exercises
#
# 1. The KL term for $\mu = (1, -1)$, $\ell = (0, 0)$?
# 2. $\partial\operatorname{KL}/\partial\ell$ at $\ell = 0$?
# 3. With $\varepsilon = 2$, $\ell = 0$ and $g = 1$: $\partial L/\partial\ell$ through the sampling step?

# %%
answer_1 = None
answer_2 = None
answer_3 = None

# %%
def checks():
    f = VAELoss("bernoulli")
    f(np.zeros((1, 1)), np.array([[1.0, -1.0]]), np.zeros((1, 2)), np.zeros((1, 1)))
    check("exercise 1", answer_1, float(f.last_kl))
    f(np.zeros((1, 1)), np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 1)))
    check("exercise 2", answer_2, f.backward()[2][0, 0])
    r = Reparameterize(); eps = r(np.zeros((1, 1)), np.zeros((1, 1)))[0, 0]   # z = eps here
    dlv = r.backward(np.ones((1, 1)))[1][0, 0]                                  # linear in eps
    check("exercise 3", answer_3, dlv * 2.0 / eps)

checks()

# %% [markdown]
# ## Solutions

# %%
answer_1 = 1.0      # 1/2 (1 + 1 + 0 + 0)
answer_2 = 0.0      # 1/2 (e^0 - 1)
answer_3 = 1.0      # g eps sigma / 2 = 1 * 2 * 1 / 2
checks()
