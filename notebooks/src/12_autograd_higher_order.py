# %% [markdown]
# # 12. Autograd and higher-order derivatives
#
# The layers of refdl write their backward by hand. `refdl.autograd` is the other way:
# record the operations, then run the chain rule over the graph in reverse. Because its
# gradients are built from the same operations, they are graphs too, and can be
# differentiated again.

# %% [markdown]
# ## The derivation
#
# A program is a graph of intermediate values $v_i = f_i(v_{j}: j \in \text{parents}(i))$.
# Reverse mode propagates **adjoints** $\bar v_i = \partial L/\partial v_i$ from the output,
# in reverse topological order:
#
# $$
# \bar v_L = 1, \qquad \bar v_j = \sum_{i:\, j \in \text{parents}(i)} \bar v_i\,
# \frac{\partial f_i}{\partial v_j},
# $$
#
# a *sum* over every consumer of $v_j$ (fan-out). Each operation supplies `compute` (its
# forward) and `gradient` (the vector-Jacobian product $\bar v_i \partial f_i/\partial v_j$).
# When `gradient` is itself written with graph operations, the adjoints are new graph
# nodes: differentiating $\bar x$ again gives Hessian-vector products,
#
# $$
# \frac{\partial}{\partial x}\left\langle \nabla_x L, u\right\rangle = H u .
# $$
#
# Page: `docs/derivations/autograd.md`.

# %% [markdown]
# ## The code, read from the library

# %%
from refdl import autograd as ag
from refdl.autograd import ops

show(ops.Tanh, ops.EWiseMul, ag.Tensor.backward)

# %% [markdown]
# ## Derivatives of $x^3$, and of $\tanh$, to the third order

# %%
x = ag.Tensor(np.array([0.5, 2.0]), requires_grad=True)
y = (x ** 3).sum()
(g1,) = ag.grad(y, x, create_graph=True)       # 3 x^2, a graph
(g2,) = ag.grad(g1.sum(), x, create_graph=True)  # 6 x
(g3,) = ag.grad(g2.sum(), x)                     # 6
print("3x^2 =", g1.numpy(), " 6x =", g2.numpy(), " 6 =", g3.numpy())

t = ag.Tensor(np.array([0.3]), requires_grad=True)
(d1,) = ag.grad(ag.tanh(t).sum(), t, create_graph=True)
(d2,) = ag.grad(d1.sum(), t)
th = np.tanh(0.3)
print("tanh'  =", d1.numpy(), " 1 - tanh^2      =", 1 - th ** 2)
print("tanh'' =", d2.numpy(), " -2 tanh (1 - tanh^2) =", -2 * th * (1 - th ** 2))
assert np.allclose(d2.numpy(), -2 * th * (1 - th ** 2))

# %% [markdown]
# ## A second opinion on a hand-derived layer
#
# The same Linear-tanh network through `refdl.nn` (hand-derived backward) and through the
# engine:

# %%
refdl.manual_seed(0)
net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(np.float64)
xs = np.random.default_rng(0).standard_normal((5, 3))
out = net(xs)
net.zero_grad()
dx_hand = net.backward(np.ones_like(out))
X = ag.Tensor(xs, requires_grad=True)
W1, b1 = ag.Tensor(net[0].weight.data), ag.Tensor(net[0].bias.data)
W2, b2 = ag.Tensor(net[2].weight.data), ag.Tensor(net[2].bias.data)
h = ag.tanh(X @ ag.transpose(W1) + ag.broadcast_to(b1, (5, 4)))
o = h @ ag.transpose(W2) + ag.broadcast_to(b2, (5, 1))
(dx_engine,) = ag.grad(o.sum(), X)
print("max |hand - engine| =", np.abs(dx_hand - dx_engine.numpy()).max())

# %% [markdown]
# ## The gradient checks: first and second order

# %%
from refdl.gradcheck import gradgradcheck

print(gradgradcheck(lambda a, b: ag.tanh(a * b).sum() + (a ** 3).sum(),
                    [np.random.default_rng(1).standard_normal(4), np.random.default_rng(2).standard_normal(4)]))

# %% [markdown]
# ## A short training run written only with the engine
#
# Logistic regression with a hidden layer on the two moons, the gradients from `ag.grad`:

# %%
import matplotlib.pyplot as plt
from refdl.data import make_moons

pts, lab = make_moons(400, noise=0.15, generator=np.random.default_rng(0))
rng = np.random.default_rng(0)
params = [rng.standard_normal((2, 16)) * 0.5, np.zeros(16), rng.standard_normal((16, 1)) * 0.5, np.zeros(1)]
yv = lab.reshape(-1, 1).astype(float)
losses = []
for step in range(300):
    P = [ag.Tensor(p, requires_grad=True) for p in params]
    hid = ag.tanh(ag.Tensor(pts) @ P[0] + ag.broadcast_to(P[1], (400, 16)))
    logit = hid @ P[2] + ag.broadcast_to(P[3], (400, 1))
    # logistic loss with labels s = +-1: mean log(1 + exp(-s z))
    loss = ag.mean(ag.log(1 + ag.exp(-ag.Tensor(2 * yv - 1) * logit)))
    grads = ag.grad(loss, P)
    params = [p - 0.5 * g.numpy() for p, g in zip(params, grads)]
    losses.append(loss.item())
acc = np.mean(((np.tanh(pts @ params[0] + params[1]) @ params[2] + params[3]) > 0).ravel() == lab)
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(losses); ax.set(xlabel="step", ylabel="logistic loss", title=f"engine-only training: {100 * acc:.1f}% right")
plt.show()

# %% [markdown]
# ## Exercises
#
# 1. $\frac{d^2}{dx^2}\tanh(x)$ at $x = 0$?
# 2. The third derivative of $x^3$ at $x = 5$?
# 3. The gradient of $\sum_i x_i^2$ at $x = (1, -2, 3)$?

# %%
answer_1 = None
answer_2 = None
answer_3 = None

# %%
def checks():
    t0 = ag.Tensor(np.array([0.0]), requires_grad=True)
    (a1,) = ag.grad(ag.tanh(t0).sum(), t0, create_graph=True)
    (a2,) = ag.grad(a1.sum(), t0)
    check("exercise 1", answer_1, a2.numpy()[0])
    t5 = ag.Tensor(np.array([5.0]), requires_grad=True)
    (c1,) = ag.grad((t5 ** 3).sum(), t5, create_graph=True)
    (c2,) = ag.grad(c1.sum(), t5, create_graph=True)
    (c3,) = ag.grad(c2.sum(), t5)
    check("exercise 2", answer_2, c3.numpy()[0])
    v = ag.Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    check("exercise 3", answer_3, ag.grad((v * v).sum(), v)[0].numpy())

checks()

# %% [markdown]
# ## Solutions

# %%
answer_1 = 0.0                 # -2 tanh(0) (1 - tanh(0)^2)
answer_2 = 6.0                 # d^3/dx^3 x^3 = 6, everywhere
answer_3 = [2.0, -4.0, 6.0]    # 2 x
checks()
