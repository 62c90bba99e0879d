# %% [markdown]
# # 2. Activations, losses and initialisation
#
# Elementwise activations have diagonal Jacobians, so their backward is a product with
# the derivative; softmax couples its inputs; a loss starts the backward sweep; and the
# initial weights decide whether a signal survives the trip through many layers.

# %% [markdown]
# ## The derivation
#
# **Elementwise.** For $h = \phi(z)$, $\;\partial L/\partial z = g \odot \phi'(z)$ with
#
# $$
# \sigma'(z) = \sigma(z)\,(1 - \sigma(z)), \qquad \tanh'(z) = 1 - \tanh^2 z, \qquad
# \operatorname{ReLU}'(z) = [z > 0], \qquad
# \operatorname{GELU}'(z) = \Phi(z) + z\,\varphi(z).
# $$
#
# **Softmax.** $s = \operatorname{softmax}(z)$, $s_i = e^{z_i}/\sum_k e^{z_k}$ has the
# Jacobian $\partial s_i/\partial z_j = s_i(\delta_{ij} - s_j)$, i.e.
# $J = \operatorname{diag}(s) - s s^\top$. Applied to $g$ without building $J$:
#
# $$
# \frac{\partial L}{\partial z} = J^\top g = s \odot \left(g - \langle g, s\rangle\right).
# $$
#
# **Losses** (mean reduction over the $N$ examples, $M$ entries):
#
# $$
# \text{MSE: } \frac{\partial L}{\partial \hat y} = \frac{2(\hat y - y)}{M}, \qquad
# \text{BCE with logits: } \frac{\partial L}{\partial z} = \frac{\sigma(z) - y}{M}, \qquad
# \text{CE: } \frac{\partial L}{\partial z} = \frac{\operatorname{softmax}(z) - \operatorname{onehot}(y)}{N}.
# $$
#
# **Initialisation.** For $z = W h$ with $W_{ij}$ i.i.d. of variance $v$ and $n$ inputs,
# $\operatorname{Var} z = n\,v\,\mathbb{E}[h^2]$. After a ReLU $\mathbb{E}[h^2] =
# \tfrac12 \operatorname{Var} z_{\text{prev}}$, so the variance stays constant with
# $v = 2/n$ (Kaiming/He); Xavier/Glorot's $v = 2/(n_\text{in} + n_\text{out})$ does the
# same for tanh near 0. Pages: `docs/derivations/activation.md`, `softmax.md`, `loss.md`,
# `init.md`.

# %% [markdown]
# ## The code, read from the library

# %%
show(nn.Softmax.forward, nn.Softmax.backward, refdl.init.kaiming_normal_)

# %% [markdown]
# ## Forward and backward on a tiny example
#
# Softmax's backward against the explicit Jacobian:

# %%
sm = nn.Softmax(dim=-1)
z = np.array([[1.0, 2.0, 3.0]])
s = sm(z)
g = np.array([[0.5, -1.0, 2.0]])
dz = sm.backward(g)
J = np.diag(s[0]) - np.outer(s[0], s[0])
print("s =", s, "\nJ =\n", J)
print("J^T g         =", J.T @ g[0])
print("s*(g - <g,s>) =", dz[0])
assert np.allclose(J.T @ g[0], dz[0])

sig = nn.Sigmoid()
zz = np.array([[-2.0, 0.0, 2.0]])
out = sig(zz)
print("sigmoid", out, " backward of ones", sig.backward(np.ones_like(zz)),
      " sigma(1 - sigma)", out * (1 - out))

# %% [markdown]
# ## The gradient checks

# %%
from refdl.gradcheck import check_loss

rng = np.random.default_rng(0)
for layer in (nn.Sigmoid(), nn.Tanh(), nn.GELU(), nn.SiLU(), nn.Softmax(dim=-1)):
    r = check_module(layer, rng.standard_normal((3, 4)))
    print(f"{type(layer).__name__:<8} passed={r.passed}  max rel err {r.max_rel_error:.1e}")
print(check_loss(nn.BCEWithLogitsLoss(), rng.standard_normal((4, 3)),
                 rng.integers(0, 2, (4, 3)).astype(float)))
print(check_loss(nn.MSELoss(), rng.standard_normal((4, 3)), rng.standard_normal((4, 3))))

# %% [markdown]
# ## Initialisation: the signal through 20 ReLU layers
#
# The standard deviation of the activations, layer by layer, for three initialisations:

# %%
import matplotlib.pyplot as plt

def activation_stds(init_fn, depth=20, width=256):
    refdl.manual_seed(0)
    layers = [nn.Linear(width, width) for _ in range(depth)]
    for lay in layers:
        init_fn(lay.weight)
    h = np.random.default_rng(0).standard_normal((512, width)).astype(np.float32)
    stds = []
    for lay in layers:
        h = np.maximum(lay(h), 0)
        stds.append(float(h.std()))
    return stds

inits = {"N(0, 0.01)": lambda w: refdl.init.normal_(w, 0.0, 0.01),
         "Xavier normal": refdl.init.xavier_normal_,
         "Kaiming normal (ReLU)": lambda w: refdl.init.kaiming_normal_(w, nonlinearity="relu")}
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, fn in inits.items():
    ax.semilogy(range(1, 21), activation_stds(fn), "o-", ms=3, label=name)
ax.set(xlabel="layer", ylabel="std of the activations", title="20 ReLU layers of width 256")
ax.legend(); plt.show()

# %% [markdown]
# ## A short training run: the same deep network, two initialisations
#
# A 10-layer ReLU MLP on the 8x8 digits, 150 Adam steps: with $\mathcal N(0, 0.01)$ the
# signal dies before the output and the loss does not move; with Kaiming it trains.

# %%
from refdl.data import load_digits

xtr, ytr, xte, yte = load_digits(layout="flat")

def train(init_fn, steps=150):
    refdl.manual_seed(0)
    layers = []
    for i in range(10):
        lin = nn.Linear(64 if i == 0 else 64, 64)
        init_fn(lin.weight)
        layers += [lin, nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(64, 10))
    opt, ce = optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss()
    rng, losses = np.random.default_rng(0), []
    for _ in range(steps):
        idx = rng.integers(0, len(ytr), 64)
        loss = ce(model(xtr[idx]), ytr[idx])
        opt.zero_grad(); model.backward(ce.backward()); opt.step()
        losses.append(float(loss))
    return losses

fig, ax = plt.subplots(figsize=(6, 3.5))
for name in ("N(0, 0.01)", "Kaiming normal (ReLU)"):
    ax.plot(train(inits[name]), label=name)
ax.set(xlabel="step", ylabel="cross-entropy", title="10 ReLU layers on the digits")
ax.legend(); plt.show()

# %% [markdown]
# ## Exercises
#
# 1. $\sigma'(0)$?
# 2. The softmax backward of $g = (1, 1, 1)$ for any $z$ (a 3-vector)?
# 3. Kaiming's weight variance for a ReLU layer with 50 inputs?

# %%
answer_1 = None
answer_2 = None
answer_3 = None

# %%
def checks():
    s = nn.Sigmoid(); s(np.zeros((1, 1)))
    check("exercise 1", answer_1, s.backward(np.ones((1, 1)))[0, 0])
    m = nn.Softmax(dim=-1); m(np.random.default_rng(5).standard_normal((1, 3)))
    check("exercise 2", answer_2, m.backward(np.ones((1, 3)))[0], atol=1e-12)
    w = nn.Linear(50, 20000).weight
    refdl.init.kaiming_normal_(w, nonlinearity="relu")
    check("exercise 3", answer_3, round(float(w.data.var()), 3), atol=2e-3)

checks()

# %% [markdown]
# ## Solutions

# %%
answer_1 = 0.25              # sigma(0) (1 - sigma(0)) = 1/2 * 1/2
answer_2 = [0.0, 0.0, 0.0]   # g - <g, s> = 1 - 1: shifting all logits changes nothing
answer_3 = 2 / 50            # 0.04
checks()
