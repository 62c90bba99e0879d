# %% [markdown]
# # 5. Normalisation and residual networks
#
# Batch normalisation standardises each channel over the batch, which couples the
# examples: its backward is not elementwise. A residual block adds its input to its
# output, so the gradient has a path that skips the block.

# %% [markdown]
# ## The derivation
#
# **BatchNorm** over the $m$ values of one channel:
#
# $$
# \mu = \frac1m\sum_k x_k, \quad \sigma^2 = \frac1m\sum_k (x_k-\mu)^2, \quad
# \hat x = \frac{x-\mu}{\sqrt{\sigma^2+\epsilon}}, \quad y = \gamma\hat x + \beta .
# $$
#
# With $g = \partial L/\partial y$ and $\hat g = \gamma g$, differentiating through $\mu$ and
# $\sigma^2$ (both depend on every $x_k$):
#
# $$
# \frac{\partial L}{\partial\beta} = \sum_k g_k, \qquad
# \frac{\partial L}{\partial\gamma} = \sum_k g_k\hat x_k, \qquad
# \frac{\partial L}{\partial x} = \frac{1}{m\sqrt{\sigma^2+\epsilon}}
# \left(m\,\hat g - \sum_k \hat g_k - \hat x \sum_k \hat g_k \hat x_k\right).
# $$
#
# The two subtracted terms make $\partial L/\partial x$ orthogonal to $\mathbf 1$ and to
# $\hat x$: shifting or scaling a channel's input changes nothing after normalisation. (A
# gradient check against $L = \sum y$ would pass any backward here, since that gradient
# is 0: refdl checks against a random projection.) In eval mode the running statistics
# are constants and $\partial L/\partial x = \hat g/\sqrt{\text{running var}+\epsilon}$.
#
# **Residual block** $y = \operatorname{relu}(F(x) + x)$: with $u = g \odot [F(x)+x > 0]$,
#
# $$
# \frac{\partial L}{\partial x} = u + \left(\frac{\partial F}{\partial x}\right)^{\!\top} u ,
# $$
#
# the identity path passes $u$ through untouched however small $F$'s Jacobian gets.
# Pages: `docs/derivations/batchnorm.md`, `layernorm.md`, `groupnorm.md`, `residual.md`.

# %% [markdown]
# ## The code, read from the library

# %%
show(nn.BatchNorm1d.backward, nn.BasicBlock.backward)

# %% [markdown]
# ## Forward and backward on a tiny example

# %%
bn = nn.BatchNorm1d(2).to(np.float64)
bn.weight.data[...] = [2.0, 0.5]
x = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [6.0, 0.0]])
y = bn(x)
print("y =\n", y, "\nper-channel mean", y.mean(0), " std", y.std(0))
g = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 2.0], [0.5, 0.5]])
dx = bn.backward(g)
m, eps = 4, bn.eps
xhat = (x - x.mean(0)) / np.sqrt(x.var(0) + eps)
gh = g * bn.weight.data
by_hand = (m * gh - gh.sum(0) - xhat * (gh * xhat).sum(0)) / (m * np.sqrt(x.var(0) + eps))
print("dL/dx =\n", dx, "\nby the formula =\n", by_hand)
print("sum over the batch (0):", dx.sum(0), "  <dx, xhat> (0):", (dx * xhat).sum(0))
assert np.allclose(dx, by_hand)

# %% [markdown]
# ## The gradient checks

# %%
rng = np.random.default_rng(0)
print(check_module(nn.BatchNorm2d(2), rng.standard_normal((3, 2, 3, 3))))
print(check_module(nn.LayerNorm(4), rng.standard_normal((2, 3, 4))))
r = check_module(nn.BasicBlock(2, 2), rng.standard_normal((2, 2, 4, 4)))
print("BasicBlock passed:", r.passed, f"max rel err {r.max_rel_error:.1e}")

# %% [markdown]
# ## A short run: the same small ResNet with and without its skip connections
#
# `ResNetSmall(residual=False)` deletes the identity paths and keeps everything else.

# %%
import matplotlib.pyplot as plt
from refdl.data import DataLoader, TensorDataset, load_digits
from refdl.models.resnet import ResNetSmall
from refdl.train import fit

xtr, ytr, xte, yte = load_digits()
curves = {}
for residual in (True, False):
    refdl.manual_seed(0)
    model = ResNetSmall(num_classes=10, input_shape=(1, 8, 8), blocks_per_stage=2,
                        widths=(8, 16), residual=residual)
    train = DataLoader(TensorDataset(xtr[:480], ytr[:480]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(xte, yte), batch_size=256)
    curves[residual] = fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                           train, val, epochs=3, progress=False)
fig, ax = plt.subplots(figsize=(6, 3.2))
for residual, h in curves.items():
    ax.plot(h["epoch"], h["val_accuracy"], "o-", label="with skips" if residual else "no skips")
ax.set(xlabel="epoch", ylabel="held-out accuracy"); ax.legend(); plt.show()

# %% [markdown]
# ## Exercises
#
# 1. BatchNorm in training mode with $g = \mathbf 1$ (every entry 1): what is $\partial L/\partial x$?
#    (for the $4\times 2$ input `x` above)
# 2. BatchNorm1d's $\partial L/\partial\beta$ for that $g$?
# 3. A residual block $y = F(x) + x$ (no ReLU) whose branch has $F(x) = 0.1x$: $\partial L/\partial x$
#    for $g = 1$, a scalar?

# %%
answer_1 = None
answer_2 = None
answer_3 = None

# %%
def checks():
    b = nn.BatchNorm1d(2).to(np.float64); b(x)
    dx1 = b.backward(np.ones_like(x))
    check("exercise 1", answer_1, dx1, atol=1e-9)
    check("exercise 2", answer_2, b.bias.grad)
    lin = nn.Linear(1, 1, bias=False).to(np.float64); lin.weight.data[...] = 0.1
    block = nn.Add(); xs = np.ones((1, 1))
    block(lin(xs), xs)
    da, db = block.backward(np.ones((1, 1)))
    check("exercise 3", answer_3, (lin.backward(da) + db)[0, 0])

checks()

# %% [markdown]
# ## Solutions

# %%
answer_1 = np.zeros((4, 2))   # a constant g is removed by the sum-over-the-batch term
answer_2 = [4.0, 4.0]         # sum of g over the batch
answer_3 = 1.1                # 1 (identity) + 0.1 (the branch)
checks()
