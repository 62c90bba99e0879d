# %% [markdown]
# # 3. Optimisers and learning-rate schedules
#
# An optimiser sees only parameters and their gradients; the backward pass never changes
# a weight. Here: SGD with momentum, Adam, and the schedules that shape the step size.

# %% [markdown]
# ## The derivation (the update rules, PyTorch's forms)
#
# With $g_t = \nabla_\theta L(\theta_{t-1})$ (plus $\lambda\theta_{t-1}$ for weight decay):
#
# **SGD with momentum $\mu$:** $\;b_t = \mu\, b_{t-1} + g_t,\quad \theta_t = \theta_{t-1} - \eta\, b_t$
# (Nesterov: step with $g_t + \mu b_t$ instead of $b_t$).
#
# **Adam:**
#
# $$
# m_t = \beta_1 m_{t-1} + (1-\beta_1)\, g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2,
# $$
# $$
# \hat m_t = \frac{m_t}{1-\beta_1^t}, \qquad \hat v_t = \frac{v_t}{1-\beta_2^t}, \qquad
# \theta_t = \theta_{t-1} - \eta\, \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}.
# $$
#
# At $t = 1$ the bias corrections give $\hat m_1 = g_1$, $\hat v_1 = g_1^2$: the first step
# is $\eta\, g/(|g| + \epsilon) \approx \eta \operatorname{sign}(g)$ whatever the gradient's
# scale. AdamW decays the weights directly, $\theta \leftarrow \theta(1 - \eta\lambda)$,
# instead of adding $\lambda\theta$ to $g$.
#
# **Cosine annealing:** $\eta_t = \eta_{\min} + \tfrac12(\eta_0 - \eta_{\min})
# \left(1 + \cos\frac{\pi t}{T}\right)$. Page: `docs/derivations/optim.md`.

# %% [markdown]
# ## The code, read from the library

# %%
show(optim.SGD._update, optim.Adam._update)

# %% [markdown]
# ## Three Adam steps by hand and by `optim.Adam`

# %%
p = nn.Parameter(np.array([1.0, -2.0]))
opt = optim.Adam([p], lr=0.1)
theta, m, v = p.data.copy(), np.zeros(2), np.zeros(2)
b1, b2, eps = 0.9, 0.999, 1e-8
for t in range(1, 4):
    grad = 2 * theta * np.array([1.0, 10.0])        # L = x^2 + 10 y^2
    p.grad[...] = 2 * p.data * np.array([1.0, 10.0])
    opt.step()
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad ** 2
    theta = theta - 0.1 * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    print(f"t={t}  by hand {theta}   optim.Adam {p.data}")
assert np.allclose(theta, p.data)

# %% [markdown]
# ## The gradient check of what is optimised below
#
# The optimisers trust the gradients they are given; the model they train is checked:

# %%
print(check_module(nn.Linear(2, 1), np.random.default_rng(0).standard_normal((5, 2))))

# %% [markdown]
# ## A short run: three optimisers on an ill-conditioned valley
#
# $L(x, y) = \tfrac12(x^2 + 25 y^2)$, 60 steps each from $(-4, 1)$:

# %%
import matplotlib.pyplot as plt

def path(make, steps=60):
    p = nn.Parameter(np.array([-4.0, 1.0]))
    opt = make([p])
    pts = [p.data.copy()]
    for _ in range(steps):
        opt.zero_grad()
        p.grad += p.data * np.array([1.0, 25.0])
        opt.step()
        pts.append(p.data.copy())
    return np.array(pts)

runs = {"SGD lr 0.07": lambda ps: optim.SGD(ps, lr=0.07),
        "SGD + momentum 0.9, lr 0.02": lambda ps: optim.SGD(ps, lr=0.02, momentum=0.9),
        "Adam lr 0.3": lambda ps: optim.Adam(ps, lr=0.3)}
fig, ax = plt.subplots(figsize=(7, 3.5))
X, Y = np.meshgrid(np.linspace(-4.5, 1, 200), np.linspace(-1.3, 1.3, 200))
ax.contour(X, Y, 0.5 * (X ** 2 + 25 * Y ** 2), levels=20, colors="0.8", linewidths=0.6)
for name, make in runs.items():
    pts = path(make)
    ax.plot(pts[:, 0], pts[:, 1], "o-", ms=2, lw=1, label=f"{name}: L={0.5 * (pts[-1, 0]**2 + 25 * pts[-1, 1]**2):.1e}")
ax.legend(fontsize=8); ax.set(title="60 steps on 0.5 (x² + 25 y²)"); plt.show()

# %% [markdown]
# And the schedules `refdl.optim.lr_scheduler` offers, read off a real optimiser:

# %%
from refdl.optim import lr_scheduler as ls

def lrs(make, steps=100):
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.1)
    sched, out = make(opt), []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step(); sched.step()
    return out

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(lrs(lambda o: ls.StepLR(o, step_size=30, gamma=0.1)), label="StepLR(30, 0.1)")
ax.plot(lrs(lambda o: ls.CosineAnnealingLR(o, T_max=100)), label="CosineAnnealingLR(100)")
ax.plot(lrs(lambda o: ls.OneCycleLR(o, max_lr=0.1, total_steps=100)), label="OneCycleLR(0.1)")
ax.set(xlabel="step", ylabel="learning rate"); ax.legend(); plt.show()

# %% [markdown]
# ## Exercises
#
# 1. Adam's very first update $\theta_1 - \theta_0$ for $g = (2, -0.5)$, $\eta = 0.1$ (to 6 digits)?
# 2. The cosine schedule's rate halfway, $t = T/2$, for $\eta_0 = 0.1$, $\eta_{\min} = 0$?
# 3. SGD with momentum 0.9 and a constant gradient 1: the size of the 3rd step for $\eta = 1$?

# %%
answer_1 = None
answer_2 = None
answer_3 = None

# %%
def checks():
    p = nn.Parameter(np.zeros(2)); opt = optim.Adam([p], lr=0.1)
    p.grad[...] = [2.0, -0.5]; opt.step()
    check("exercise 1", answer_1, p.data, atol=1e-6)
    check("exercise 2", answer_2, lrs(lambda o: ls.CosineAnnealingLR(o, T_max=100), 51)[-1])
    q = nn.Parameter(np.zeros(1)); sgd = optim.SGD([q], lr=1.0, momentum=0.9)
    steps = []
    for _ in range(3):
        before = q.data.copy(); q.grad[...] = 1.0; sgd.step(); steps.append(before - q.data)
    check("exercise 3", answer_3, steps[-1][0])

checks()

# %% [markdown]
# ## Solutions

# %%
answer_1 = [-0.1, 0.1]        # -lr * g / |g|: the first step ignores the gradient's scale
answer_2 = 0.05               # 0.5 * 0.1 * (1 + cos(pi / 2))
answer_3 = 1 + 0.9 + 0.81     # b_3 = 1 + mu + mu^2
checks()
