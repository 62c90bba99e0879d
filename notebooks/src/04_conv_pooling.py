# %% [markdown]
# # 4. Convolution and pooling
#
# A convolution is one matrix product once every receptive field is laid out as a column
# (im2col); its backward is two more products and the scatter back (col2im). Max pooling
# routes each gradient to the input that won.

# %% [markdown]
# ## The derivation
#
# Input $x$ $(N, C, H, W)$, weight $W$ $(O, C, k_h, k_w)$, stride $s$, padding $p$,
# dilation $d$. Deep learning's convolution is a cross-correlation:
#
# $$
# y_{n,o,i,j} = b_o + \sum_{c,u,v} W_{o,c,u,v}\; x^{\text{pad}}_{n,\,c,\; i s + u d,\; j s + v d},
# \qquad L_\text{out} = \left\lfloor \frac{L + 2p - d(k-1) - 1}{s} \right\rfloor + 1 .
# $$
#
# **im2col** gathers $\text{cols}_{(c,u,v),(n,i,j)} = x^{\text{pad}}_{n,c,is+ud,js+vd}$, a
# $(C k_h k_w) \times (N H_\text{out} W_\text{out})$ matrix, so that $Y = W_\text{mat}\,
# \text{cols}$. Then with $G$ the gradient laid out like $Y$ (Linear's derivation again):
#
# $$
# \frac{\partial L}{\partial W_\text{mat}} = G\,\text{cols}^\top, \qquad
# \frac{\partial L}{\partial \text{cols}} = W_\text{mat}^\top G, \qquad
# \frac{\partial L}{\partial x} = \operatorname{col2im}\!\left(W_\text{mat}^\top G\right),
# \qquad \frac{\partial L}{\partial b_o} = \sum_{n,i,j} g_{n,o,i,j},
# $$
#
# col2im *adds* each column entry back where im2col copied it from (an input pixel seen by
# several windows collects several gradients). **Max pooling**: $\partial L/\partial x$
# is $g$ at each window's arg-max, zero elsewhere (summed where windows overlap).
# Pages: `docs/derivations/conv.md`, `pooling.md`.

# %% [markdown]
# ## The code, read from the library

# %%
from refdl import functional as F

show(F.im2col, nn.Conv2d.forward, nn.Conv2d.backward)

# %% [markdown]
# ## im2col, drawn
#
# A 4x4 image with pixels numbered 0..15 and a 3x3 kernel: each column of the matrix is
# one receptive field, each row one kernel offset.

# %%
import matplotlib.pyplot as plt

img = np.arange(16.0).reshape(1, 1, 4, 4)
cols = F.im2col(img, (3, 3))
print("cols shape (C*kh*kw, N*Hout*Wout) =", cols.shape)
fig, (a0, a1) = plt.subplots(1, 2, figsize=(8, 3.4), gridspec_kw={"width_ratios": [1, 1.3]})
a0.imshow(img[0, 0], cmap="Pastel1")
for (i, j), val in np.ndenumerate(img[0, 0]):
    a0.text(j, i, int(val), ha="center", va="center")
a0.add_patch(plt.Rectangle((-0.5, -0.5), 3, 3, fill=False, ec="C3", lw=2))
a0.set_title("input; the first window in red"); a0.axis("off")
a1.imshow(cols, cmap="Pastel1", aspect="auto")
for (i, j), val in np.ndenumerate(cols):
    a1.text(j, i, int(val), ha="center", va="center", fontsize=8)
a1.add_patch(plt.Rectangle((-0.5, -0.5), 1, 9, fill=False, ec="C3", lw=2))
a1.set(title="im2col: one column per window", xlabel="window (n, i, j)",
       ylabel="kernel offset (c, u, v)")
plt.show()

# %% [markdown]
# ## Forward and backward on a tiny example, against loops

# %%
refdl.manual_seed(0)
conv = nn.Conv2d(1, 2, (3, 2), padding=1).to(np.float64)     # a non-square kernel
x = np.random.default_rng(0).standard_normal((1, 1, 4, 4))
y = conv(x)
W, b = conv.weight.data, conv.bias.data
xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
loop = np.zeros_like(y)
for o in range(2):
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            loop[0, o, i, j] = b[o] + np.sum(W[o] * xp[0, :, i:i + 3, j:j + 2])
print("y[0, 0] =\n", y[0, 0])
print("max |conv - loops| =", np.abs(y - loop).max())
g = np.ones_like(y)
dx = conv.backward(g)
print("dL/dx for g = 1 (how many windows, weighted, see each pixel):\n", dx[0, 0])
pool = nn.MaxPool2d(2)
xq = np.array([[[[1.0, 5.0, 2.0, 0.0], [3.0, 4.0, 8.0, 1.0],
                 [0.0, 1.0, 2.0, 3.0], [9.0, 1.0, 4.0, 2.0]]]])
print("max pool:\n", pool(xq)[0, 0], "\nits backward of ones:\n", pool.backward(np.ones((1, 1, 2, 2)))[0, 0])

# %% [markdown]
# ## The gradient checks

# %%
rng = np.random.default_rng(1)
print(check_module(nn.Conv2d(2, 3, (3, 2), stride=2, padding=1), rng.standard_normal((2, 2, 5, 5))))
print(check_module(nn.MaxPool2d(2), rng.permutation(32).reshape(1, 2, 4, 4) / 4.0))

# %% [markdown]
# ## A short training run: LeNet-5 on the digits

# %%
from refdl.data import DataLoader, TensorDataset, load_digits
from refdl.models import get_model
from refdl.train import evaluate, fit

refdl.manual_seed(0)
xtr, ytr, xte, yte = load_digits()
model = get_model("lenet5", num_classes=10, input_shape=(1, 8, 8))
opt = optim.Adam(model.parameters(), lr=3e-3)
train = DataLoader(TensorDataset(xtr, ytr), batch_size=32, shuffle=True)
test = DataLoader(TensorDataset(xte, yte), batch_size=256)
history = fit(model, nn.CrossEntropyLoss(), opt, train, test, epochs=3)
plot.plot_history(history, title="LeNet-5, 3 epochs")

# %%
plot.plot_filters(next(iter(model.parameters())))

# %%
ev = evaluate(model, test, nn.CrossEntropyLoss())
plot.plot_misclassified(xte, yte, ev["y_pred"])

# %% [markdown]
# ## Exercises
#
# 1. Output length of a convolution with $L = 8$, $k = 3$, $p = 1$, $s = 2$?
# 2. The shape of im2col's matrix for $x$ of shape $(2, 3, 5, 5)$ and a 3x3 kernel, no padding?
# 3. For the 4x4 input `xq` above and `MaxPool2d(2)`, which entries of $\partial L/\partial x$
#    are 1 when $g = 1$? (a 4x4 0/1 array)

# %%
answer_1 = None
answer_2 = None
answer_3 = None

# %%
def checks():
    check("exercise 1", answer_1, nn.Conv1d(1, 1, 3, stride=2, padding=1)(np.zeros((1, 1, 8))).shape[-1])
    check("exercise 2", answer_2, F.im2col(np.zeros((2, 3, 5, 5)), (3, 3)).shape)
    p = nn.MaxPool2d(2); p(xq)
    check("exercise 3", answer_3, p.backward(np.ones((1, 1, 2, 2)))[0, 0])

checks()

# %% [markdown]
# ## Solutions

# %%
answer_1 = (8 + 2 * 1 - 3) // 2 + 1          # 4
answer_2 = (3 * 3 * 3, 2 * 3 * 3)             # (C k k, N Hout Wout) = (27, 18)
answer_3 = [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0]]  # 5, 8, 9, 4 win
checks()
