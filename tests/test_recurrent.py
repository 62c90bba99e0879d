"""RNN, LSTM, GRU: forward against a plain reference, BPTT against numeric gradients,
shapes, PyTorch layout, errors, truncated BPTT, and the gradient-flow experiments."""
import numpy as np
import pytest

import refdl
from refdl import nn
from refdl.functional import sigmoid
from refdl.gradcheck import check_module
from refdl.nn.tbptt import chunk_slices, truncated_bptt

RNG = np.random.default_rng


# ---------------------------------------------------------------------------------------
# A plain reference: PyTorch's documented equations, one step at a time, no caching
# ---------------------------------------------------------------------------------------

def ref_step(mode, x, h, c, W_ih, W_hh, b_ih, b_hh):
    gi = x @ W_ih.T + b_ih
    gh = h @ W_hh.T + b_hh
    if mode.startswith("RNN"):
        a = gi + gh
        act = {"tanh": np.tanh, "relu": lambda v: np.maximum(v, 0), "identity": lambda v: v}
        return act[mode[4:]](a), None
    if mode == "LSTM":
        H = h.shape[-1]
        a = gi + gh
        i, f, g, o = (a[:, k * H:(k + 1) * H] for k in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        return sigmoid(o) * np.tanh(c), c
    H = h.shape[-1]
    r = sigmoid(gi[:, :H] + gh[:, :H])
    z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
    n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    return (1 - z) * n + z * h, None


def ref_forward(layer, mode, x, h0, c0):
    """x (T, N, I); returns out (T, N, D*H), h_n, c_n by explicit loops over layers,
    directions and time, reading the parameters by their PyTorch names."""
    D = 2 if layer.bidirectional else 1
    H = layer.hidden_size
    inp = x
    hn, cn = [], []
    for l in range(layer.num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            P = {n: getattr(layer, n + sfx).data for n in ("weight_ih", "weight_hh")}
            for n in ("bias_ih", "bias_hh"):
                P[n] = getattr(layer, n + sfx).data if layer.bias else 0.0
            k = l * D + d
            h, c = h0[k], (c0[k] if c0 is not None else None)
            seq = range(x.shape[0]) if d == 0 else range(x.shape[0] - 1, -1, -1)
            o = np.zeros(x.shape[:2] + (H,))
            for t in seq:
                h, c = ref_step(mode, inp[t], h, c, P["weight_ih"], P["weight_hh"],
                                P["bias_ih"], P["bias_hh"])
                o[t] = h
            outs.append(o)
            hn.append(h)
            cn.append(c)
        inp = np.concatenate(outs, axis=-1)
    return inp, np.stack(hn), (np.stack(cn) if mode == "LSTM" else None)


def make(kind, *args, **kw):
    if kind.startswith("RNN"):
        return nn.RNN(*args, nonlinearity=kind[4:], **kw)
    return getattr(nn, kind)(*args, **kw)


class WithState(nn.Module):
    """LSTM(x, (h0, c0)) as a module of three array inputs, for check_module."""

    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm

    def forward(self, x, h0, c0):
        out, (h, c) = self.lstm(x, (h0, c0))
        return out, h, c

    def backward(self, d_out, d_h=None, d_c=None):
        return self.lstm.backward(d_out, d_h, d_c)


class CellWithState(nn.Module):
    """LSTMCell(x, (h, c)) with three array inputs, for check_module."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x, h, c):
        return self.cell(x, (h, c))

    def backward(self, d_h, d_c=None):
        return self.cell.backward(d_h, d_c)


KINDS = ["RNN_tanh", "RNN_relu", "RNN_identity", "LSTM", "GRU"]


# ---------------------------------------------------------------------------------------
# Forward semantics
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cfg", [dict(), dict(num_layers=2, bidirectional=True),
                                 dict(num_layers=3, bias=False)])
def test_forward_matches_reference(kind, cfg):
    refdl.manual_seed(1)
    layer = make(kind, 3, 4, **cfg).to(np.float64)
    rng = RNG(2)
    D = 2 if layer.bidirectional else 1
    x = rng.standard_normal((5, 2, 3))
    h0 = rng.standard_normal((layer.num_layers * D, 2, 4))
    c0 = rng.standard_normal(h0.shape) if kind == "LSTM" else None
    want_out, want_h, want_c = ref_forward(layer, kind, x, h0, c0)
    if kind == "LSTM":
        out, (h, c) = layer(x, (h0, c0))
        np.testing.assert_allclose(c, want_c, rtol=1e-12, atol=1e-14)
    else:
        out, h = layer(x, h0)
    assert out.shape == (5, 2, D * 4) and h.shape == h0.shape
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h, want_h, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["RNN_tanh", "LSTM", "GRU"])
def test_layer_equals_its_cell_unrolled(kind):
    refdl.manual_seed(3)
    layer = make(kind, 3, 4).to(np.float64)
    if kind == "LSTM":
        cell = nn.LSTMCell(3, 4)
    elif kind == "GRU":
        cell = nn.GRUCell(3, 4)
    else:
        cell = nn.RNNCell(3, 4)
    cell.to(np.float64)
    for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(cell, n).data[...] = getattr(layer, n + "_l0").data
    x = RNG(0).standard_normal((6, 2, 3))
    out, _ = layer(x)
    h = np.zeros((2, 4))
    c = np.zeros((2, 4))
    for t in range(6):
        if kind == "LSTM":
            h, c = cell(x[t], (h, c))
        else:
            h = cell(x[t], h)
        np.testing.assert_allclose(out[t], h, rtol=1e-13, atol=1e-15)


def test_parameter_names_shapes_and_init_range():
    refdl.manual_seed(0)
    lstm = nn.LSTM(5, 7, num_layers=2, bidirectional=True)
    names = [n for n, _ in lstm.named_parameters()]
    assert names == [f"{w}_l{l}{s}" for l in range(2) for s in ("", "_reverse")
                     for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert lstm.weight_ih_l0.shape == (28, 5)
    assert lstm.weight_ih_l1.shape == (28, 14)          # layer 1 reads both directions
    assert lstm.weight_hh_l1_reverse.shape == (28, 7)
    assert nn.GRU(5, 7).weight_hh_l0.shape == (21, 7)
    assert nn.RNN(5, 7, bias=False).num_parameters() == 7 * 5 + 7 * 7
    k = 1 / np.sqrt(7)
    allv = np.concatenate([p.data.ravel() for p in lstm.parameters()])
    assert allv.dtype == np.float32 and allv.min() >= -k and allv.max() <= k
    assert allv.max() > 0.9 * k and allv.min() < -0.9 * k
    cell = nn.GRUCell(5, 7)
    assert [n for n, _ in cell.named_parameters()] == ["weight_ih", "weight_hh", "bias_ih",
                                                       "bias_hh"]
    assert repr(nn.GRU(5, 7, num_layers=2, batch_first=True)) == \
        "GRU(5, 7, num_layers=2, batch_first=True)"


@pytest.mark.parametrize("kind", ["RNN_tanh", "LSTM", "GRU"])
def test_batch_first_and_unbatched_agree_with_time_major(kind):
    refdl.manual_seed(0)
    a = make(kind, 3, 4, num_layers=2, bidirectional=True).to(np.float64)
    b = make(kind, 3, 4, num_layers=2, bidirectional=True, batch_first=True).to(np.float64)
    b.load_state_dict(a.state_dict())
    x = RNG(0).standard_normal((5, 2, 3))
    out_a, st_a = a(x)
    out_b, st_b = b(x.transpose(1, 0, 2))
    np.testing.assert_allclose(out_b, out_a.transpose(1, 0, 2), rtol=1e-14)
    out_u, st_u = a(x[:, 1])                   # unbatched (T, input)
    np.testing.assert_allclose(out_u, out_a[:, 1], rtol=1e-13, atol=1e-15)
    h_a = st_a[0] if kind == "LSTM" else st_a
    h_u = st_u[0] if kind == "LSTM" else st_u
    assert h_u.shape == (4, 4)
    np.testing.assert_allclose(h_u, h_a[:, 1], rtol=1e-13, atol=1e-15)


def test_dtype_follows_input_and_h_n_is_last_output():
    refdl.manual_seed(0)
    gru = nn.GRU(3, 4)
    x = RNG(0).standard_normal((4, 2, 3)).astype(np.float32)
    out, h = gru(x)
    assert out.dtype == np.float32 and h.dtype == np.float32
    np.testing.assert_array_equal(h[0], out[-1])
    out64, _ = gru(x.astype(np.float64))
    assert out64.dtype == np.float64


def test_dropout_between_layers_train_and_eval():
    refdl.manual_seed(0)
    gru = nn.GRU(3, 4, num_layers=2, dropout=0.5).to(np.float64)
    x = RNG(0).standard_normal((4, 2, 3))
    gru.eval()
    e1, _ = gru(x)
    e2, _ = gru(x)
    np.testing.assert_array_equal(e1, e2)
    gru.train()
    t1, _ = gru(x)
    assert not np.allclose(t1, e1)
    nodrop = nn.GRU(3, 4, num_layers=2, dropout=0.0).to(np.float64)
    nodrop.load_state_dict(gru.state_dict())
    np.testing.assert_allclose(nodrop(x)[0], e1, rtol=1e-14)   # eval == no dropout


# ---------------------------------------------------------------------------------------
# Gradient checks (float64; every parameter, the input and the initial state)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [1, 2, 5])
def test_gradcheck_layer_with_initial_state(kind, T):
    refdl.manual_seed(10 + T)
    rng = RNG(T)
    layer = make(kind, 2, 3)
    x = rng.standard_normal((T, 2, 2))
    h0 = rng.standard_normal((1, 2, 3))
    if kind == "LSTM":
        check_module(WithState(layer), x, h0, rng.standard_normal((1, 2, 3)))
    else:
        check_module(layer, x, h0)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_two_layers_bidirectional_batch_first(kind):
    refdl.manual_seed(20)
    rng = RNG(20)
    layer = make(kind, 2, 3, num_layers=2, bidirectional=True, batch_first=True)
    x = rng.standard_normal((2, 3, 2))
    h0 = rng.standard_normal((4, 2, 3))
    if kind == "LSTM":
        check_module(WithState(layer), x, h0, rng.standard_normal((4, 2, 3)))
    else:
        check_module(layer, x, h0)


@pytest.mark.parametrize("kind", ["RNN_tanh", "LSTM", "GRU"])
def test_gradcheck_without_state_dropout_nobias_unbatched(kind):
    refdl.manual_seed(30)
    rng = RNG(30)
    # no h0: backward returns dx only; the output gradients are (out, h_n[, c_n])
    check_module(make(kind, 2, 3, num_layers=2, dropout=0.4), rng.standard_normal((3, 2, 2)))
    check_module(make(kind, 2, 3, bias=False), rng.standard_normal((4, 2, 2)))
    check_module(make(kind, 2, 3, bidirectional=True), rng.standard_normal((4, 2)))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu", "identity"])
def test_gradcheck_rnn_cell(nonlinearity):
    refdl.manual_seed(40)
    rng = RNG(40)
    cell = nn.RNNCell(3, 4, nonlinearity=nonlinearity)
    check_module(cell, rng.standard_normal((2, 3)), rng.standard_normal((2, 4)))
    check_module(cell, rng.standard_normal(3))                      # unbatched, no h
    check_module(nn.RNNCell(3, 4, bias=False, nonlinearity=nonlinearity),
                 rng.standard_normal((2, 3)), rng.standard_normal((2, 4)))


def test_gradcheck_lstm_and_gru_cells():
    refdl.manual_seed(50)
    rng = RNG(50)
    check_module(CellWithState(nn.LSTMCell(3, 4)), rng.standard_normal((2, 3)),
                 rng.standard_normal((2, 4)), rng.standard_normal((2, 4)))
    check_module(nn.LSTMCell(3, 4, bias=False), rng.standard_normal((2, 3)))
    check_module(nn.LSTMCell(3, 4), rng.standard_normal(3))
    check_module(nn.GRUCell(3, 4), rng.standard_normal((2, 3)), rng.standard_normal((2, 4)))
    check_module(nn.GRUCell(3, 4, bias=False), rng.standard_normal(3))


def test_backward_returns_dx_dh0_and_accepts_omitted_gradients():
    refdl.manual_seed(0)
    lstm = nn.LSTM(3, 4, num_layers=2).to(np.float64)
    rng = RNG(0)
    x = rng.standard_normal((5, 2, 3))
    h0, c0 = rng.standard_normal((2, 2, 4)), rng.standard_normal((2, 2, 4))
    out, (h, c) = lstm(x, (h0, c0))
    g = rng.standard_normal(out.shape)
    dx, dh0, dc0 = lstm.backward(g)
    assert dx.shape == x.shape and dh0.shape == h0.shape and dc0.shape == c0.shape
    gw = lstm.weight_hh_l0.grad.copy()
    lstm.zero_grad()
    lstm(x, (h0, c0))
    dx2, dh02, dc02 = lstm.backward(g, np.zeros_like(h), np.zeros_like(c))
    np.testing.assert_array_equal(dx, dx2)
    np.testing.assert_array_equal(lstm.weight_hh_l0.grad, gw)
    lstm.zero_grad()
    lstm(x, (h0, c0))
    dx3, _, _ = lstm.backward(g, (np.zeros_like(h), np.zeros_like(c)))   # the pair form
    np.testing.assert_array_equal(dx, dx3)
    gru = nn.GRU(3, 4)
    gru(x)
    assert isinstance(gru.backward(rng.standard_normal((5, 2, 4))), np.ndarray)  # no h0


def test_retained_state_gradients_equal_the_suffix_initial_state_gradient():
    """state_grads[0][t] = dL/dh_t = d_out[t] + (dL/dh0 of the layer run on x[t+1:] from h_t)."""
    refdl.manual_seed(0)
    gru = nn.GRU(3, 4).to(np.float64)
    gru.retain_state_grads = True
    rng = RNG(0)
    x = rng.standard_normal((6, 2, 3))
    out, h = gru(x)
    g, gh = rng.standard_normal(out.shape), rng.standard_normal(h.shape)
    gru.backward(g, gh)
    dh = gru.state_grads[0]
    np.testing.assert_allclose(dh[-1], g[-1] + gh[0], rtol=1e-14)
    for t in (0, 2, 4):
        gru.retain_state_grads = False
        gru(x[t + 1:], out[t][None])
        _, dh_suffix = gru.backward(g[t + 1:], gh)
        np.testing.assert_allclose(dh[t], g[t] + dh_suffix[0], rtol=1e-12)


# ---------------------------------------------------------------------------------------
# Bad input: clear errors naming the layer and both shapes
# ---------------------------------------------------------------------------------------

def test_errors():
    gru = nn.GRU(3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"GRU\(3, 4, num_layers=2\): expected input of "
                                         r"shape \(T, N, 3\).*got \(5, 2, 6\)"):
        gru(np.zeros((5, 2, 6)))
    with pytest.raises(ValueError, match=r"GRU\(3, 4, num_layers=2\): expected h0 of shape "
                                         r"\(2, 2, 4\).*input of shape \(5, 2, 3\), "
                                         r"got \(1, 2, 4\)"):
        gru(np.zeros((5, 2, 3)), np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match=r"GRU\(3, 4, num_layers=2\): got a sequence of "
                                         r"length zero \(input shape \(0, 2, 3\)"):
        gru(np.zeros((0, 2, 3)))
    with pytest.raises(ValueError, match=r"length zero"):
        nn.RNN(3, 4, batch_first=True)(np.zeros((2, 0, 3)))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, T, 3\)"):
        nn.LSTM(3, 4, batch_first=True)(np.zeros((2, 5)))
    with pytest.raises(TypeError, match=r"LSTM\(3, 4\): expected hx to be a tuple"):
        nn.LSTM(3, 4)(np.zeros((5, 2, 3)), np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match=r"LSTM\(3, 4\): expected c0 of shape \(1, 2, 4\).*"
                                         r"got \(1, 3, 4\)"):
        nn.LSTM(3, 4)(np.zeros((5, 2, 3)), (np.zeros((1, 2, 4)), np.zeros((1, 3, 4))))
    with pytest.raises(RuntimeError, match=r"GRU\(3, 4\).backward called before forward"):
        nn.GRU(3, 4).backward(np.zeros((5, 2, 4)))
    gru = nn.GRU(3, 4)
    gru(np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match=r"GRU\(3, 4\).backward: expected d_out of "
                                         r"shape \(5, 2, 4\).*got \(5, 2, 3\)"):
        gru.backward(np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match=r"GRUCell\(3, 4\): expected input of shape "
                                         r"\(N, 3\) or \(3,\), got \(2, 5\)"):
        nn.GRUCell(3, 4)(np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"RNNCell\(3, 4\): expected hx of shape \(2, 4\) "
                                         r"\(input has shape \(2, 3\)\), got \(3, 4\)"):
        nn.RNNCell(3, 4)(np.zeros((2, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="unknown nonlinearity 'sigmoid'"):
        nn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="floating-point input"):
        nn.GRU(3, 4)(np.zeros((5, 2, 3), dtype=np.int64))


# ---------------------------------------------------------------------------------------
# Truncated BPTT
# ---------------------------------------------------------------------------------------

def test_truncated_gradient_is_the_full_gradient_restricted_to_the_window():
    """For a loss on the window [a, T): full grad = truncated grad + the paths through
    h_{a-1}, and truncated_bptt gives the truncated one."""
    refdl.manual_seed(0)
    rng = RNG(0)
    lstm = nn.LSTM(2, 3).to(np.float64)
    x = rng.standard_normal((9, 2, 2))
    a = 6
    R = rng.standard_normal((9, 2, 3))
    R[:a] = 0                                       # the loss only sees the window's outputs

    # full BPTT through all 9 steps
    out, _ = lstm(x)
    lstm.zero_grad()
    lstm.backward(R)
    full = {n: p.grad.copy() for n, p in lstm.named_parameters()}

    # truncated: chunks of length 6 and 3 with the state carried over
    lstm.zero_grad()
    grads = []

    def loss_and_grad(i, sl, out_chunk):
        return float(np.sum(out_chunk * R[sl])), R[sl]

    def step(i):
        grads.append({n: p.grad.copy() for n, p in lstm.named_parameters()})
        lstm.zero_grad()

    losses, _ = truncated_bptt(lstm, x, a, loss_and_grad, step=step)
    assert [s.stop for s in chunk_slices(9, a)] == [6, 9]
    assert losses[0] == 0.0 and np.isclose(losses[1], np.sum(out[a:] * R[a:]))
    trunc = grads[1]
    assert all(np.all(g == 0) for g in grads[0].values())

    # the paths the truncation removed: dL/dh_{a-1}, dL/dc_{a-1} pushed back through x[:a]
    with refdl.no_grad():                           # the state only: no backward for it
        state = lstm(x[:a])[1]
    _, (h, c) = lstm(x[a:], state)
    lstm.zero_grad()
    _, dh, dc = lstm.backward(R[a:])
    lstm.zero_grad()
    lstm(x[:a])
    lstm.backward(np.zeros((a, 2, 3)), dh, dc)
    removed = {n: p.grad.copy() for n, p in lstm.named_parameters()}
    for n in full:
        assert not np.allclose(trunc[n], full[n])   # truncation does change the gradient
        np.testing.assert_allclose(trunc[n] + removed[n], full[n], rtol=1e-10, atol=1e-13)


def test_truncated_bptt_trains_a_long_sequence_in_chunks():
    """A GRU + Linear predicting x_{t-1}[0] from the stream, trained with TBPTT (k = 10)."""
    from refdl.optim import Adam
    refdl.manual_seed(0)
    rng = RNG(0)
    gru, head = nn.GRU(1, 8, batch_first=True), nn.Linear(8, 1)
    params = list(gru.parameters()) + list(head.parameters())
    opt = Adam(params, lr=0.02)

    def loss_and_grad(i, sl, out):
        pred = head(out)
        tgt = prev[:, sl]
        diff = pred - tgt
        loss = float(np.mean(diff ** 2))
        return loss, head.backward(2 * diff / diff.size)

    def step(i):
        opt.step()
        opt.zero_grad()

    first = last = None
    for epoch in range(30):
        x = rng.standard_normal((8, 100, 1)).astype(np.float32)
        prev = np.concatenate([np.zeros((8, 1, 1), np.float32), x[:, :-1]], axis=1)
        losses, h = truncated_bptt(gru, x, 10, loss_and_grad, step=step)
        assert len(losses) == 10 and h.shape == (1, 8, 8)
        first = first if first is not None else np.mean(losses)
        last = np.mean(losses)
    assert first > 0.8 and last < 0.1


# ---------------------------------------------------------------------------------------
# Experiments on gradient flow (seeded)
# ---------------------------------------------------------------------------------------

def state_gradient_norms(layer, x, seed=1):
    """||dL/dh_t|| for t = 1..T with L = <r, h_T> (r random): the gradient reaching step t."""
    layer.retain_state_grads = True
    out, _ = layer(x)
    d = np.zeros_like(out)
    d[-1] = RNG(seed).standard_normal(d[-1].shape)
    layer.backward(d)
    return np.linalg.norm(layer.state_grads[0].reshape(x.shape[0], -1), axis=1)


def test_gradient_norm_vs_t_rnn_lstm_gru():
    """With PyTorch's default init all three cells' gradients vanish backwards in time;
    opening the LSTM forget gate / GRU update gate (gate bias +3) makes the additive
    state path carry the gradient across 60 steps, which no setting of a tanh RNN does."""
    T, H = 60, 32
    x = RNG(1).standard_normal((T, 8, 4))
    ratio = {}
    for kind, bias in [("RNN_tanh", 0), ("LSTM", 0), ("GRU", 0), ("LSTM", 3), ("GRU", 3)]:
        refdl.manual_seed(0)
        layer = make(kind, 4, H).to(np.float64)
        if bias:
            layer.bias_ih_l0.data[H:2 * H] += bias     # LSTM: forget gate; GRU: update gate
        g = state_gradient_norms(layer, x)
        ratio[kind, bias] = g[0] / g[-1]
    assert ratio["RNN_tanh", 0] < 1e-12
    assert ratio["LSTM", 0] < 1e-9 and ratio["GRU", 0] < 1e-8
    assert ratio["LSTM", 3] > 0.05 and ratio["GRU", 3] > 0.05


W_H_PAPER = np.array([[-0.64, -0.06, -1.12],
                      [-0.56, 0.28, -0.76],
                      [0.62, -1.66, -0.2]])


def linear_rnn(W_h, nonlinearity="identity"):
    rnn = nn.RNN(1, 3, nonlinearity=nonlinearity).to(np.float64)
    rnn.weight_hh_l0.data[...] = W_h
    return rnn


def dL_dh0_norm(rnn, T, seed=0):
    x = RNG(seed).standard_normal((T, 1, 1))
    out, h = rnn(x, np.zeros((1, 1, 3)))
    _, dh0 = rnn.backward(np.zeros_like(out), np.ones_like(h))
    return float(np.linalg.norm(dh0))


def test_linear_rnn_gradient_grows_at_the_spectral_radius():
    rho = np.max(np.abs(np.linalg.eigvals(W_H_PAPER)))
    rnn = linear_rnn(W_H_PAPER)
    Ts = np.arange(20, 81, 10)
    norms = np.array([dL_dh0_norm(rnn, T) for T in Ts])
    rate = np.exp(np.polyfit(Ts, np.log(norms), 1)[0])
    assert abs(rate - rho) < 1e-6 * rho
    assert norms[-1] > 1e4


def test_orthogonal_w_h_preserves_the_gradient_norm_only_without_saturation():
    rng = RNG(0)
    Q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    lin = linear_rnn(Q)
    for T in (10, 100, 300):
        assert abs(dL_dh0_norm(lin, T) - np.sqrt(3)) < 1e-10   # |Q^T ... Q^T 1| = |1|
    tanh = linear_rnn(Q, "tanh")
    assert dL_dh0_norm(tanh, 100) < 1e-3 * np.sqrt(3)          # tanh' < 1 still vanishes


def test_clipping_keeps_training_finite_where_it_otherwise_diverges():
    from refdl.nn.utils import clip_grad_norm_
    from refdl.optim import SGD

    def train(max_norm, steps=60, T=50):
        refdl.manual_seed(0)
        rng = RNG(0)
        rnn, head = linear_rnn(W_H_PAPER), nn.Linear(3, 1).to(np.float64)
        params = list(rnn.parameters()) + list(head.parameters())
        opt = SGD(params, lr=0.01)
        losses = []
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(steps):
                x = rng.standard_normal((T, 16, 1))
                y = x[-5:].sum(axis=0)
                out, _ = rnn(x)
                p = head(out[-1])
                loss = float(np.mean((p - y) ** 2))
                losses.append(loss)
                if not np.isfinite(loss):
                    break
                opt.zero_grad()
                d = np.zeros_like(out)
                d[-1] = head.backward(2 * (p - y) / p.size)
                rnn.backward(d)
                if max_norm is not None:
                    clip_grad_norm_(params, max_norm)
                opt.step()
        return losses

    plain, clipped = train(None), train(1.0)
    assert not np.isfinite(plain[-1]) and len(plain) < 10
    assert len(clipped) == 60 and np.all(np.isfinite(clipped))
    assert np.mean(clipped[-10:]) < 1e-3 * clipped[0]


def test_adding_problem_short_gru_learns():
    """The fast version of scripts/rnn_gradients.py's adding problem (T = 10)."""
    from refdl.data.sequences import adding_problem
    from refdl.nn.utils import clip_grad_norm_
    from refdl.optim import Adam
    refdl.manual_seed(0)
    rng = RNG(0)
    gru, head = nn.GRU(2, 16, batch_first=True), nn.Linear(16, 1)
    params = list(gru.parameters()) + list(head.parameters())
    opt = Adam(params, lr=1e-2)
    losses = []
    for _ in range(250):
        x, y = adding_problem(32, 10, rng)
        out, _ = gru(x)
        p = head(out[:, -1])
        losses.append(float(np.mean((p - y) ** 2)))
        opt.zero_grad()
        d = np.zeros_like(out)
        d[:, -1] = head.backward(2 * (p - y) / p.size)
        gru.backward(d)
        clip_grad_norm_(params, 1.0)
        opt.step()
    assert np.mean(losses[:20]) > 0.1            # chance level is 1/6
    assert np.mean(losses[-20:]) < 0.01


# ---------------------------------------------------------------------------------------
# Sequence classifiers (refdl.models.rnn) and the sequence data
# ---------------------------------------------------------------------------------------

def test_gradcheck_sequence_classifiers():
    from refdl.models.rnn import GRUClassifier, LSTMClassifier, ElmanClassifier
    refdl.manual_seed(60)
    rng = RNG(60)
    x = rng.standard_normal((2, 3, 2))
    check_module(GRUClassifier(num_classes=3, input_shape=(3, 2), hidden_size=3), x)
    check_module(LSTMClassifier(num_classes=3, input_shape=(3, 2), hidden_size=3,
                                bidirectional=True), x)
    check_module(ElmanClassifier(num_classes=3, input_shape=(3, 2), hidden_size=3,
                                 num_layers=2), x)


def test_gru_classifier_learns_digit_rows():
    from refdl.data.sequences import digit_rows
    from refdl.models.rnn import GRUClassifier
    from refdl.optim import Adam
    refdl.manual_seed(0)
    rng = RNG(0)
    x, y = digit_rows()
    order = rng.permutation(len(x))
    tr, te = order[:1400], order[1400:]
    model = GRUClassifier(num_classes=10, input_shape=(8, 8), hidden_size=32)
    opt = Adam(model.parameters(), lr=1e-2)
    from refdl.functional import softmax
    for epoch in range(4):
        for b in np.array_split(rng.permutation(tr), len(tr) // 64):
            p = softmax(model(x[b]))               # cross-entropy: dL/dlogits = (p - onehot)/N
            p[np.arange(len(b)), y[b]] -= 1
            opt.zero_grad()
            model.backward(p / len(b))
            opt.step()
    acc = np.mean(np.argmax(model(x[te]), axis=1) == y[te])
    assert acc > 0.85


def test_sequence_tasks():
    from refdl.data.sequences import adding_problem, copy_task
    x, y = adding_problem(100, 20, np.random.default_rng(0))
    assert x.shape == (100, 20, 2) and y.shape == (100, 1)
    assert np.all(x[:, :, 1].sum(axis=1) == 2)
    assert np.all(x[:, :10, 1].sum(axis=1) == 1)             # one marker in each half
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * x[:, :, 1]).sum(axis=1), rtol=1e-6)
    x, y = copy_task(3, n_symbols=4, length=2, delay=5, generator=np.random.default_rng(0))
    assert x.shape == (3, 9, 6) and y.shape == (3, 9)
    np.testing.assert_array_equal(y[:, -2:], np.argmax(x[:, :2], axis=-1))
    assert np.all(np.argmax(x[:, 6], axis=-1) == 5)          # the go-marker


@pytest.mark.parametrize("kind", ["RNN_relu", "GRU"])
def test_gradcheck_unbatched_with_initial_state(kind):
    refdl.manual_seed(70)
    rng = RNG(70)
    layer = make(kind, 2, 3, num_layers=2, bidirectional=True)
    check_module(layer, rng.standard_normal((3, 2)), rng.standard_normal((4, 3)))
    lstm = WithState(nn.LSTM(2, 3, bidirectional=True))
    check_module(lstm, rng.standard_normal((3, 2)), rng.standard_normal((2, 3)),
                 rng.standard_normal((2, 3)))


def test_rnn_classifier_bidirectional_two_layers_gradcheck():
    from refdl.models.rnn import RNNClassifier
    rng = np.random.default_rng(11)
    model = RNNClassifier("gru", input_size=2, hidden_size=3, num_classes=3, num_layers=2,
                          bidirectional=True)
    check_module(model, rng.standard_normal((2, 4, 2)))
