# %% [markdown]
# # 10. GANs and WGAN-GP
#
# A generator $G$ maps noise to samples; a discriminator (or critic) $D$ tells them from
# data. The original GAN's discriminator is a classifier; WGAN-GP's critic estimates a
# Wasserstein distance and is kept 1-Lipschitz by a penalty on its *input gradient*,
# whose own gradient needs second derivatives.

# %% [markdown]
# ## The derivation
#
# **GAN.** $\min_G \max_D\; \mathbb{E}_{x}\log D(x) + \mathbb{E}_{z}\log(1 - D(G(z)))$.
# For fixed $G$ the best discriminator is $D^*(x) = p_\text{data}(x)/(p_\text{data}(x) + p_G(x))$,
# and the game then minimises $2\,\mathrm{JS}(p_\text{data}\,\|\,p_G) - \log 4$. In practice the
# generator minimises the *non-saturating* $-\log D(G(z))$, whose gradient does not vanish
# when $D$ confidently rejects the fakes.
#
# **WGAN-GP.** The critic $f$ maximises $\mathbb{E} f(x) - \mathbb{E} f(G(z))$ minus the penalty
#
# $$
# P = \lambda\, \mathbb{E}_{\hat x}\left(\|\nabla_{\hat x} f(\hat x)\| - 1\right)^2, \qquad
# \hat x = \alpha x + (1-\alpha) G(z).
# $$
#
# $P$ depends on $\theta$ through $v = \nabla_x f$, itself a backward pass. With
# $u = \partial P/\partial v = 2\lambda(\|v\|-1)\, v/\|v\|$ (per sample, divided by $N$), the
# gradient $\partial P/\partial\theta$ is the derivative of the backward pass in the direction
# $u$ — a *double backward*. For an MLP critic the backward is
# $g_{L-1} = w_L$, $\delta_l = g_l \odot \phi'(a_l)$, $g_{l-1} = W_l^\top\delta_l$, $v = g_0$, and its
# adjoint brings in $\phi''(a_l)$. Pages: `docs/derivations/wgan_gp.md`, `penalty.md`.

# %% [markdown]
# ## The code, read from the library

# %%
from refdl.metrics import mode_coverage
from refdl.models.gan import GradientPenalty, MLPCritic, sample_generator, train_gan

show(GradientPenalty.forward, GradientPenalty.backward)

# %% [markdown]
# ## The penalty on a tiny critic, by hand

# %%
critic = MLPCritic(2, (3,), activation="tanh", generator=np.random.default_rng(0)).to(np.float64)
x = np.array([[0.5, -1.0], [2.0, 0.3]])
gp = GradientPenalty(critic, lam=10.0)
P = float(gp(x))
out = critic(x)                                    # v = d f / d x, one backward per sample
v = critic.backward(np.ones_like(out))
print("f(x) =", out.ravel(), "\nv = grad_x f =\n", v)
print("P =", P, "  by hand:", 10.0 * np.mean((np.linalg.norm(v, axis=1) - 1) ** 2))
assert np.isclose(P, 10.0 * np.mean((np.linalg.norm(v, axis=1) - 1) ** 2))

# %% [markdown]
# ## The gradient checks
#
# The penalty's gradients (input and every critic parameter) against central differences
# of $P$ itself: the hand-derived double backward.

# %%
critic.zero_grad()
print(check_module(GradientPenalty(critic, lam=10.0), np.random.default_rng(1).standard_normal((4, 2))))

# %% [markdown]
# ## A short training run: 8 Gaussians on a ring, GAN vs WGAN-GP
#
# Larger learning rates than the papers' (5e-3 and 3e-3) so that a short run gets
# somewhere; `scripts/gan_toys.py` runs the long versions (`docs/generative.md`). A mode
# counts as covered when it receives at least 20% of its fair share of the samples that
# lie within 3 standard deviations of a mode.

# %%
import matplotlib.pyplot as plt
from refdl.data import make_ring

def ring(n, rng):
    return make_ring(n, std=0.05, generator=rng)[0].astype(np.float32)   # (points, mode labels)

real = ring(1000, np.random.default_rng(0))
centers = 2.0 * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], 1)
fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
for ax, kind, steps, lr in zip(axes, ("gan", "wgan-gp"), (1500, 2000), (5e-3, 3e-3)):
    G, D, hist = train_gan(ring, kind=kind, steps=steps, batch_size=128, hidden=(64, 64),
                           lr=lr, generator=np.random.default_rng(0), progress=True)
    s = sample_generator(G, 1000, generator=np.random.default_rng(1))
    m = mode_coverage(s, centers, 0.05)
    ax.scatter(real[:, 0], real[:, 1], s=2, c="0.7", label="data")
    ax.scatter(s[:, 0], s[:, 1], s=2, c="C3", label=kind)
    ax.set(title=f"{kind}, {steps} steps:\n{m['modes_covered']}/8 modes covered, "
                 f"{100 * m['high_quality']:.0f}% of samples near a mode", aspect="equal")
    ax.legend(loc="lower right", fontsize=7)
plt.show()

# %% [markdown]
# ## Exercises
#
# 1. $D^*(x)$ where $p_\text{data}(x) = 0.3$ and $p_G(x) = 0.1$?
# 2. The penalty of a linear critic $f(x) = a\cdot x$ with $a = (0.6, 0.8)$, $\lambda = 10$?
# 3. The same with $a = (1.2, 1.6)$?

# %%
answer_1 = None
answer_2 = None
answer_3 = None

# %%
def checks():
    check("exercise 1", answer_1, 0.3 / (0.3 + 0.1))
    lin = MLPCritic(2, (2,), activation="leaky_relu", negative_slope=1.0).to(np.float64)
    lin.layers[0].weight.data[...] = np.eye(2); lin.layers[0].bias.data[...] = 0
    pts = np.random.default_rng(3).standard_normal((6, 2))
    lin.layers[1].weight.data[...] = [[0.6, 0.8]]
    check("exercise 2", answer_2, float(GradientPenalty(lin, lam=10.0)(pts)), atol=1e-12)
    lin.layers[1].weight.data[...] = [[1.2, 1.6]]
    check("exercise 3", answer_3, float(GradientPenalty(lin, lam=10.0)(pts)))

checks()

# %% [markdown]
# ## Solutions

# %%
answer_1 = 0.75        # 0.3 / 0.4
answer_2 = 0.0         # |a| = 1: no penalty
answer_3 = 10.0        # |a| = 2: 10 (2 - 1)^2
checks()
