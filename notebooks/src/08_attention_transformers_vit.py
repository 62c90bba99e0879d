# %% [markdown]
# # 8. Attention, Transformers and the Vision Transformer
#
# Attention mixes the values of all positions with weights computed from the queries and
# keys. Its backward is two matrix products and a softmax backward; a Transformer layer
# wraps it in residual connections and layer norms; a ViT feeds it image patches.

# %% [markdown]
# ## The derivation
#
# For one head, $Q \in \mathbb{R}^{L\times d}$, $K \in \mathbb{R}^{S\times d}$,
# $V \in \mathbb{R}^{S\times d_v}$:
#
# $$
# S = \frac{Q K^\top}{\sqrt d}, \qquad P = \operatorname{softmax}_\text{rows}(S), \qquad O = P V .
# $$
#
# With $G = \partial L/\partial O$:
#
# $$
# \frac{\partial L}{\partial V} = P^\top G, \qquad
# \frac{\partial L}{\partial P} = G V^\top, \qquad
# \frac{\partial L}{\partial S} = P \odot \left(\frac{\partial L}{\partial P} -
# \operatorname{rowsum}\!\left(\frac{\partial L}{\partial P}\odot P\right)\right),
# $$
# $$
# \frac{\partial L}{\partial Q} = \frac{1}{\sqrt d}\,\frac{\partial L}{\partial S}\, K, \qquad
# \frac{\partial L}{\partial K} = \frac{1}{\sqrt d}\left(\frac{\partial L}{\partial S}\right)^{\!\top} Q .
# $$
#
# The $1/\sqrt d$ keeps the scores' variance at 1 when $q, k$ have unit-variance entries
# ($\operatorname{Var}\, q\cdot k = d$), so the softmax does not saturate. In
# self-attention $Q, K, V$ are all projections of the same $X$: their three gradients add
# (fan-out). A pre-norm Transformer layer is
# $X' = X + \operatorname{MHA}(\operatorname{LN}(X))$, $Y = X' + \operatorname{MLP}(\operatorname{LN}(X'))$.
# Pages: `docs/derivations/attention.md`, `transformer.md`.

# %% [markdown]
# ## The code, read from the library

# %%
show(nn.ScaledDotProductAttention.forward, nn.ScaledDotProductAttention.backward)

# %% [markdown]
# ## One head on three tokens, forward and backward by hand

# %%
sdpa = nn.ScaledDotProductAttention()
rng = np.random.default_rng(0)
Q, K, V = rng.standard_normal((3, 2)), rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
O, P = sdpa(Q, K, V, need_weights=True)
print("attention weights P (rows sum to 1) =\n", P)
G = rng.standard_normal((3, 2))
dQ, dK, dV = sdpa.backward(G)
S = Q @ K.T / np.sqrt(2)
Pm = np.exp(S - S.max(1, keepdims=True)); Pm /= Pm.sum(1, keepdims=True)
dP = G @ V.T
dS = Pm * (dP - (dP * Pm).sum(1, keepdims=True))
print("dV =\n", dV, "\nP^T G =\n", Pm.T @ G)
assert np.allclose(dV, Pm.T @ G) and np.allclose(dQ, dS @ K / np.sqrt(2)) and np.allclose(dK, dS.T @ Q / np.sqrt(2))

# %% [markdown]
# ## The gradient checks

# %%
x3 = [rng.standard_normal((2, 3, 4)) for _ in range(3)]
print(check_module(nn.ScaledDotProductAttention(), *x3))
r = check_module(nn.MultiheadAttention(4, 2, batch_first=True), *x3)
print("MultiheadAttention passed:", r.passed, f"max rel err {r.max_rel_error:.1e}")
r = check_module(nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, dropout=0.0, batch_first=True),
                 rng.standard_normal((2, 3, 4)))
print("TransformerEncoderLayer passed:", r.passed, f"max rel err {r.max_rel_error:.1e}")

# %% [markdown]
# ## A short training run: a small ViT on the digits
#
# 2x2 patches of the 8x8 digits (16 tokens), dimension 32, two layers, mean-pooled tokens.
# A Transformer typically sits on a plateau at chance for the first epochs before the
# attention patterns form; four short epochs on 800 images show the take-off, not the
# end (`scripts/train_vit_digits.py` trains one to convergence).

# %%
from refdl.data import DataLoader, TensorDataset, load_digits
from refdl.models.vit import ViT
from refdl.train import fit

xtr, ytr, xte, yte = load_digits()
refdl.manual_seed(0)
vit = ViT(num_classes=10, input_shape=(1, 8, 8), patch_size=2, dim=32, depth=2, heads=2,
          dropout=0.0, pool="mean")
history = fit(vit, nn.CrossEntropyLoss(), optim.Adam(vit.parameters(), lr=4e-3),
              DataLoader(TensorDataset(xtr[:800], ytr[:800]), 32, shuffle=True),
              DataLoader(TensorDataset(xte, yte), 256), epochs=4)
plot.plot_history(history, title="ViT (dim 32, depth 2) on the digits")

# %% [markdown]
# ## Exercises
#
# 1. If all keys are equal, what are the attention weights of one query over 4 positions?
# 2. The scale $1/\sqrt d$ for $d = 16$?
# 3. If every row of $V$ is the same vector $v = (1, 2)$, what is $\partial L/\partial Q$ for any $G$?
#    (for the 3x2 `Q` above)

# %%
answer_1 = None
answer_2 = None
answer_3 = None

# %%
def checks():
    a = nn.ScaledDotProductAttention()
    _, w = a(rng.standard_normal((1, 2)), np.ones((4, 2)), rng.standard_normal((4, 2)), need_weights=True)
    check("exercise 1", answer_1, w[0])
    q16 = np.zeros((1, 16)); q16[0, 0] = 1.0
    k16 = np.zeros((2, 16)); k16[0, 0] = 1.0      # scores: scale * 1 and 0
    _, w16 = a(q16, k16, np.zeros((2, 1)), need_weights=True)
    check("exercise 2", answer_2, np.log(w16[0, 0] / w16[0, 1]))
    a(Q, K, np.tile([1.0, 2.0], (3, 1)))
    check("exercise 3", answer_3, a.backward(rng.standard_normal((3, 2)))[0], atol=1e-12)

checks()

# %% [markdown]
# ## Solutions

# %%
answer_1 = [0.25] * 4          # equal scores, uniform softmax
answer_2 = 0.25                # 1 / sqrt(16)
answer_3 = np.zeros((3, 2))    # the output no longer depends on the weights: dP V^T is constant per row
checks()
