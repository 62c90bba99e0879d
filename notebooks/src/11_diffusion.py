# %% [markdown]
# # 11. Diffusion models (DDPM)
#
# A fixed forward process adds Gaussian noise in $T$ small steps until the data are
# pure noise; a network learns to predict the noise, which gives the reverse steps.

# %% [markdown]
# ## The derivation
#
# Forward: $q(x_t\mid x_{t-1}) = \mathcal N(\sqrt{1-\beta_t}\,x_{t-1}, \beta_t I)$. With
# $\alpha_t = 1-\beta_t$ and $\bar\alpha_t = \prod_{s\le t}\alpha_s$ the steps compose in
# closed form:
#
# $$
# q(x_t\mid x_0) = \mathcal N\!\left(\sqrt{\bar\alpha_t}\,x_0,\; (1-\bar\alpha_t) I\right),
# \qquad x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon .
# $$
#
# The posterior of one step back is Gaussian too,
# $q(x_{t-1}\mid x_t, x_0) = \mathcal N(\tilde\mu_t, \tilde\beta_t I)$ with
# $\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t$ and, writing $x_0$ through
# the noise,
#
# $$
# \tilde\mu_t = \frac{1}{\sqrt{\alpha_t}}\left(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\varepsilon\right).
# $$
#
# So a network $\varepsilon_\theta(x_t, t)$ that predicts $\varepsilon$ gives the reverse mean.
# Ho et al.'s simplified objective is $L_\text{simple} = \mathbb{E}_{t, x_0, \varepsilon}
# \|\varepsilon - \varepsilon_\theta(x_t, t)\|^2$, whose gradient with respect to the
# prediction is $2(\varepsilon_\theta - \varepsilon)/M$. Page: `docs/derivations/diffusion.md`.

# %% [markdown]
# ## The code, read from the library

# %%
from refdl.data.synthetic import make_ring, ring_centers
from refdl.models.diffusion import GaussianDiffusion, NoisePredictor, train_ddpm

show(GaussianDiffusion.q_sample, GaussianDiffusion.simple_loss, GaussianDiffusion.p_mean_from_eps)

# %% [markdown]
# ## The forward process on numbers

# %%
d = GaussianDiffusion.from_schedule("linear", 100)
print("alpha_bar at t = 1, 10, 50, 100:", d.alphas_cumprod[[0, 9, 49, 99]])
x0 = np.full((20000, 1), 2.0)
for t in (1, 50, 100):
    xt = d.q_sample(x0, t, generator=np.random.default_rng(t))
    ab = d.alphas_cumprod[t - 1]
    print(f"t={t:3d}: mean {xt.mean():.3f} (sqrt(ab) x0 = {np.sqrt(ab) * 2:.3f}), "
          f"var {xt.var():.3f} (1 - ab = {1 - ab:.3f})")

# %% [markdown]
# ## The gradient check of the noise predictor
#
# The network takes $(x_t, t)$; $t$ is an integer, so only $x_t$ and the parameters are checked:

# %%
net = NoisePredictor(2, 8, 2, 4, dtype=np.float64, generator=np.random.default_rng(0))
print(check_module(net, np.random.default_rng(1).standard_normal((3, 2)), np.array([1, 40, 99]), wrt=[0]))

# %% [markdown]
# ## A short training run: a ring of 8 Gaussians
#
# 1,200 steps put the samples on the ring; separating the 8 modes takes about ten times
# more (`scripts/ddpm_2d.py`, `docs/generative.md`).

# %%
import matplotlib.pyplot as plt

refdl.manual_seed(0)
rng = np.random.default_rng(0)
d = GaussianDiffusion.from_schedule("linear", 100)
net = NoisePredictor(2, 64, 3, 16, generator=rng)
data = lambda n, g: make_ring(n, std=0.05, generator=g)[0]   # (points, labels)
losses = train_ddpm(net, d, data, 1200, batch_size=128, lr=2e-3, generator=rng)
samples, traj = d.sample(net, (1000, 2), generator=rng, return_trajectory=True)
real = data(1000, np.random.default_rng(1))
fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
axes[0].plot(np.convolve(losses, np.ones(50) / 50, "valid")); axes[0].set(title="L_simple (smoothed)", xlabel="step")
for ax, (title, pts) in zip(axes[1:], [("data", real), ("x_T: noise", traj[0]), ("x_0: DDPM samples", samples)]):
    ax.scatter(pts[:, 0], pts[:, 1], s=2); ax.set(title=title, aspect="equal", xlim=(-3, 3), ylim=(-3, 3))
plt.show()

# %% [markdown]
# ## Exercises
#
# 1. Two steps with $\beta_1 = \beta_2 = 0.5$: $\bar\alpha_2$?
# 2. For $x_0 = 0$, the variance of $x_t$ in terms of $\bar\alpha_t$ at $\bar\alpha_t = 0.19$?
# 3. The gradient of $L_\text{simple}$ with respect to a prediction $\varepsilon_\theta = (1, 3)$
#    when $\varepsilon = (0, 1)$ (one example of 2 entries)?

# %%
answer_1 = None
answer_2 = None
answer_3 = None

# %%
def checks():
    check("exercise 1", answer_1, GaussianDiffusion(np.array([0.5, 0.5])).alphas_cumprod[-1])
    dd = GaussianDiffusion(np.array([0.81]))          # alpha_bar_1 = 0.19
    xs = dd.q_sample(np.zeros((200000, 1)), 1, generator=np.random.default_rng(0))
    check("exercise 2", answer_2, round(float(xs.var()), 2), atol=0.01)
    mse = nn.MSELoss(); mse(np.array([[1.0, 3.0]]), np.array([[0.0, 1.0]]))
    check("exercise 3", answer_3, mse.backward()[0])

checks()

# %% [markdown]
# ## Solutions

# %%
answer_1 = 0.25            # 0.5 * 0.5
answer_2 = 0.81            # 1 - alpha_bar
answer_3 = [1.0, 2.0]      # 2 (eps_theta - eps) / 2 entries
checks()
