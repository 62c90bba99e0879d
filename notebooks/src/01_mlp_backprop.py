# %% [markdown]
# # 1. The MLP and backpropagation
#
# A multilayer perceptron is a chain of affine maps and nonlinearities. Training it needs
# $\partial L/\partial\theta$ for every weight; backpropagation gets them all in one
# backward sweep, layer by layer, each layer turning the gradient of its output into the
# gradient of its input. This notebook derives that sweep for `nn.Linear`, reads refdl's
# code for it, runs it on numbers small enough to check by eye, proves it numerically and
# trains an MLP on two interleaved spirals.

# %% [markdown]
# ## The derivation
#
# `nn.Linear(in, out)` computes $y = x W^\top + b$ with $x \in \mathbb{R}^{N\times
# \text{in}}$, $W \in \mathbb{R}^{\text{out}\times\text{in}}$, $b \in \mathbb{R}^{\text{out}}$.
# Write $g = \partial L/\partial y$ (same shape as $y$). Component-wise
# $y_{nj} = \sum_i x_{ni} W_{ji} + b_j$, so by the chain rule
#
# $$
# \frac{\partial L}{\partial x_{ni}} = \sum_j g_{nj} W_{ji}, \qquad
# \frac{\partial L}{\partial W_{ji}} = \sum_n g_{nj} x_{ni}, \qquad
# \frac{\partial L}{\partial b_j} = \sum_n g_{nj},
# $$
#
# that is
#
# $$
# \frac{\partial L}{\partial x} = g\,W \;(N\times\text{in}), \qquad
# \frac{\partial L}{\partial W} = g^\top x \;(\text{out}\times\text{in}), \qquad
# \frac{\partial L}{\partial b} = \textstyle\sum_n g_n \;(\text{out}).
# $$
#
# $b$ is shared by every row of the batch (it *fans out*), so its gradient sums over the
# batch. For the ReLU $h = \max(z, 0)$: $\partial L/\partial z = g \odot [z > 0]$. For the
# mean cross-entropy of logits $z$ and labels $y$,
# $L = -\frac1N \sum_n \log \operatorname{softmax}(z_n)_{y_n}$ and
#
# $$
# \frac{\partial L}{\partial z} = \frac{1}{N}\left(\operatorname{softmax}(z) - \operatorname{onehot}(y)\right).
# $$
#
# The full pages: `docs/derivations/linear.md`, `activation.md`, `loss.md`
# (`refdl explain Linear` prints them).

# %% [markdown]
# ## The code, read from the library

# %%
show(nn.Linear.forward, nn.Linear.backward)

# %% [markdown]
# ## Forward and backward on a tiny example

# %%
lin = nn.Linear(3, 2).to(np.float64)
x = np.array([[1.0, 2.0, 3.0],
              [0.5, -1.0, 0.0]])
y = lin(x)                         # training mode: the forward records what backward needs
print("W =\n", lin.weight.data, "\nb =", lin.bias.data)
print("y = x W^T + b =\n", y)
g = np.array([[1.0, 0.0],
              [0.0, 2.0]])         # an upstream gradient dL/dy
dx = lin.backward(g)
print("dL/dx = g W =\n", dx)
print("dL/dW = g^T x =\n", lin.weight.grad)
print("dL/db = sum_n g_n =", lin.bias.grad)
assert np.allclose(dx, g @ lin.weight.data) and np.allclose(lin.weight.grad, g.T @ x)

# %% [markdown]
# A two-layer network is the same step applied twice, right to left. Here the sweep is
# written out by hand and compared with `Sequential.backward`:

# %%
refdl.manual_seed(1)
net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(np.float64)
loss_fn = nn.CrossEntropyLoss()
labels = np.array([0, 1])
loss = loss_fn(net(x), labels)
net.zero_grad()
dx_auto = net.backward(loss_fn.backward())

# by hand: the forward again, then the three backward formulas
z1 = x @ net[0].weight.data.T + net[0].bias.data
h = np.maximum(z1, 0)
z2 = h @ net[2].weight.data.T + net[2].bias.data
p = np.exp(z2 - z2.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
dz2 = (p - np.eye(2)[labels]) / len(labels)       # softmax - onehot, over N
dh = dz2 @ net[2].weight.data
dz1 = dh * (z1 > 0)
dx_hand = dz1 @ net[0].weight.data
print("loss", float(loss))
print("dL/dx by hand    \n", dx_hand)
print("dL/dx by backward\n", dx_auto)
assert np.allclose(dx_hand, dx_auto) and np.allclose(dz2.T @ h, net[2].weight.grad)

# %% [markdown]
# ## The gradient check
#
# Central differences $\frac{L(\theta + h e_k) - L(\theta - h e_k)}{2h}$ on a random
# projection $L = \langle y, R\rangle$ of the output, for the input and every parameter,
# in float64 (relative error below $10^{-7}$ passes; a correct backward lands near
# $10^{-10}$):

# %%
print(check_module(nn.Linear(3, 2), np.random.default_rng(0).standard_normal((4, 3))))
print(check_module(net, np.random.default_rng(1).standard_normal((4, 3))))

# %% [markdown]
# ## A short training run: an MLP on three spirals

# %%
from refdl.data import make_spirals
from refdl.models.mlp import MLP

refdl.manual_seed(0)
pts, cls = make_spirals(600, 3, generator=np.random.default_rng(0))
pts = pts.astype(np.float32)
model = MLP(input_shape=(2,), num_classes=3, hidden=(64, 64))
opt = optim.Adam(model.parameters(), lr=1e-2)
loss_fn = nn.CrossEntropyLoss()
losses = []
for step in range(300):                    # full batch: forward, loss, backward, step
    loss = loss_fn(model(pts), cls)
    opt.zero_grad()
    model.backward(loss_fn.backward())
    opt.step()
    losses.append(float(loss))
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
plot.plot_decision_boundary(model, pts, cls, title="MLP on three spirals")

# %% [markdown]
# ## Exercises
#
# 1. `nn.Linear(5, 3)` on a batch of 7: what is the shape of $\partial L/\partial W$?
#    (a tuple)
# 2. With $N = 4$ and $g$ all ones of shape $(4, 2)$, what is $\partial L/\partial b$?
# 3. One example with logits $z = (0, 0)$ and label $y = 0$: what is
#    $\partial L/\partial z$ of the cross-entropy?
#
# Write your answers in the next cell (replace `None`); the cell after checks them.

# %%
answer_1 = None
answer_2 = None
answer_3 = None

# %%
def checks():
    probe = nn.Linear(5, 3)
    probe(np.ones((7, 5), np.float32))
    probe.backward(np.ones((7, 3), np.float32))
    check("exercise 1", answer_1, probe.weight.grad.shape)
    b = nn.Linear(3, 2)
    b(np.ones((4, 3), np.float32))
    b.backward(np.ones((4, 2), np.float32))
    check("exercise 2", answer_2, b.bias.grad)
    ce = nn.CrossEntropyLoss()
    ce(np.zeros((1, 2)), np.array([0]))
    check("exercise 3", answer_3, ce.backward())


checks()

# %% [markdown]
# ## Solutions

# %%
answer_1 = (3, 5)            # dL/dW has W's shape (out, in), whatever the batch
answer_2 = [4.0, 4.0]        # sum over the 4 rows of g
answer_3 = [[-0.5, 0.5]]     # softmax(0, 0) = (1/2, 1/2), minus onehot(0)
checks()
