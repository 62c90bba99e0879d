# %% [markdown]
# # 7. RNN, LSTM, GRU and vanishing gradients
#
# A recurrent network applies the same cell at every time step; backpropagation through
# time (BPTT) runs the chain rule backwards over the steps, multiplying one Jacobian per
# step. Products of many Jacobians shrink or explode; the LSTM's additive cell state is
# the classic fix.

# %% [markdown]
# ## The derivation
#
# **Elman RNN:** $h_t = \tanh(a_t)$, $a_t = W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}$.
# With $\delta_t = \partial L/\partial a_t$ and $\bar h_t$ the total gradient reaching
# $h_t$ (from the output at $t$ and from step $t+1$):
#
# $$
# \delta_t = \bar h_t \odot (1 - h_t^2), \qquad \bar h_{t-1} \mathrel{+}= W_{hh}^\top \delta_t, \qquad
# \frac{\partial L}{\partial W_{hh}} = \sum_t \delta_t h_{t-1}^\top, \qquad
# \frac{\partial L}{\partial W_{ih}} = \sum_t \delta_t x_t^\top .
# $$
#
# Unrolled, $\dfrac{\partial h_T}{\partial h_0} = \prod_{t=T}^{1} \operatorname{diag}(1-h_t^2)\, W_{hh}$:
# its norm behaves like $\rho^T$, vanishing when the factors are below 1.
#
# **LSTM:** gates $i, f, o = \sigma(\cdot)$, candidate $\tilde c = \tanh(\cdot)$,
# $c_t = f_t \odot c_{t-1} + i_t \odot \tilde c_t$, $h_t = o_t \odot \tanh c_t$, so
#
# $$
# \frac{\partial c_t}{\partial c_{t-1}} = \operatorname{diag}(f_t), \qquad
# \bar c_{t-1} = \bar c_t \odot f_t + \dots
# $$
#
# the cell state carries the gradient back through a product of forget gates, which the
# network can keep near 1. **GRU:** $h_t = (1-z_t)\odot n_t + z_t \odot h_{t-1}$, the same
# idea with one gate. Pages: `docs/derivations/rnn.md`, `lstm.md`, `gru.md`.

# %% [markdown]
# ## The code, read from the library

# %%
show(nn.RNNCell.forward, nn.RNNCell.backward, nn.LSTMCell.backward)

# %% [markdown]
# ## One RNN step forward and backward, by hand

# %%
cell = nn.RNNCell(2, 3).to(np.float64)
x1, h0 = np.array([[1.0, -1.0]]), np.array([[0.5, 0.0, -0.5]])
h1 = cell(x1, h0)
a = x1 @ cell.weight_ih.data.T + cell.bias_ih.data + h0 @ cell.weight_hh.data.T + cell.bias_hh.data
print("h1 =", h1, "\ntanh(a) =", np.tanh(a))
g = np.array([[1.0, 2.0, -1.0]])
dx, dh0 = cell.backward(g)
delta = g * (1 - h1 ** 2)
print("dL/dh0 =", dh0, "\nW_hh^T delta =", delta @ cell.weight_hh.data)
assert np.allclose(dh0, delta @ cell.weight_hh.data) and np.allclose(dx, delta @ cell.weight_ih.data)

# %% [markdown]
# ## The gradient checks

# %%
rng = np.random.default_rng(0)
for layer in (nn.RNN(3, 4, batch_first=True), nn.LSTM(3, 4, batch_first=True), nn.GRU(3, 4, batch_first=True)):
    r = check_module(layer, rng.standard_normal((2, 5, 3)))
    print(f"{type(layer).__name__:<5} passed={r.passed}  tensors={len(r.tensors)}  max rel err {r.max_rel_error:.1e}")

# %% [markdown]
# ## Vanishing gradients, measured
#
# $\|\partial h_T / \partial x_1\|$ (the gradient reaching the first input from the last
# hidden state) for sequences of growing length, freshly initialised networks:

# %%
import matplotlib.pyplot as plt

def first_input_grad(kind, T, H=32):
    refdl.manual_seed(0)
    net = getattr(nn, kind)(4, H, batch_first=True).to(np.float64)
    xs = np.random.default_rng(0).standard_normal((8, T, 4))
    out = net(xs)[0]
    g = np.zeros_like(out); g[:, -1] = 1.0 / np.sqrt(H)
    return float(np.linalg.norm(net.backward(g)[:, 0]))

Ts = [2, 5, 10, 20, 40, 60]
fig, ax = plt.subplots(figsize=(6, 3.3))
for kind in ("RNN", "GRU", "LSTM"):
    ax.semilogy(Ts, [first_input_grad(kind, T) for T in Ts], "o-", label=kind)
ax.set(xlabel="sequence length T", ylabel="||dh_T / dx_1||", title="at initialisation")
ax.legend(); plt.show()

# %% [markdown]
# ## A short training run: an LSTM reading the digits row by row

# %%
from refdl.data import DataLoader, TensorDataset, load_digits
from refdl.models.rnn import LSTMClassifier
from refdl.train import fit

xtr, ytr, xte, yte = load_digits(layout="sequence")           # (N, 8 rows, 8 pixels)
refdl.manual_seed(0)
model = LSTMClassifier(num_classes=10, input_shape=(8, 8), hidden_size=32)
history = fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=1e-2),
              DataLoader(TensorDataset(xtr[:900], ytr[:900]), 32, shuffle=True),
              DataLoader(TensorDataset(xte, yte), 256), epochs=4)
plot.plot_history(history, title="LSTM on the rows of the digits")

# %% [markdown]
# ## Exercises
#
# 1. A scalar linear RNN $h_t = 0.5\, h_{t-1}$: $\partial h_{10}/\partial h_0$?
# 2. An LSTM step with forget gate $f_t = 1$ everywhere: $\partial c_t/\partial c_{t-1}$ for a
#    3-unit cell (the diagonal, as a 3-vector)?
# 3. The tanh RNN step above: the entries of $\delta = g\odot(1-h_1^2)$ for the `g` used there?

# %%
answer_1 = None
answer_2 = None
answer_3 = None

# %%
def checks():
    lin = nn.RNN(1, 1, nonlinearity="relu", bias=False).to(np.float64)
    lin.weight_ih_l0.data[...] = 0.0; lin.weight_hh_l0.data[...] = 0.5
    out, hT = lin(np.zeros((10, 1, 1)), np.ones((1, 1, 1)))
    _, dh0 = lin.backward(np.zeros_like(out), np.ones_like(hT))
    check("exercise 1", answer_1, dh0[0, 0, 0])
    lstm = nn.LSTMCell(2, 3).to(np.float64)
    lstm.bias_ih.data[3:6] = 50.0                  # forget-gate bias: f = sigmoid(50+...) = 1
    state = (np.zeros((1, 3)), np.random.default_rng(2).standard_normal((1, 3)))
    h, c = lstm(np.zeros((1, 2)), state)
    _, _, dc_prev = lstm.backward(np.zeros((1, 3)), np.ones((1, 3)))
    check("exercise 2", answer_2, dc_prev[0])
    check("exercise 3", answer_3, (g * (1 - h1 ** 2))[0])

checks()

# %% [markdown]
# ## Solutions

# %%
answer_1 = 0.5 ** 10                 # one factor 0.5 per step
answer_2 = [1.0, 1.0, 1.0]           # c_t = 1 * c_{t-1} + i * c~: the identity
answer_3 = (g * (1 - np.tanh(a) ** 2))[0]
checks()
