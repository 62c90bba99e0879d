"""Per-call caches of the recurrent layers: one cell object unrolled by hand in a user's
loop (T calls, then T backwards in reverse order) is BPTT; an LSTM called twice before its
two backwards equals two separate passes; nothing stays pending after backward, in eval
mode or under no_grad.
"""
import warnings

import numpy as np
import pytest

import refdl
from refdl import nn
from refdl.gradcheck import check_module

RNG = np.random.default_rng
T, N, I, H = 4, 3, 2, 5

LAYER = {"RNN": nn.RNN, "LSTM": nn.LSTM, "GRU": nn.GRU}
CELL = {"RNN": nn.RNNCell, "LSTM": nn.LSTMCell, "GRU": nn.GRUCell}


class UnrolledCell(nn.Module):
    """A user's loop: ONE cell object called T times, h_t = cell(x_t, h_{t-1}).

    forward(x (T, N, I), h0 (N, H)[, c0]) -> out (T, N, H); backward walks t = T..1,
    delta_t = d_out_t + dL/dh_t from step t + 1, and calls cell.backward once per step,
    newest call first (the cell's caches come back last in, first out).
    """

    def __init__(self, cell):
        super().__init__()
        self.cell = cell
        self.lstm = isinstance(cell, nn.LSTMCell)

    def forward(self, x, h0, c0=None):
        state = (h0, c0) if self.lstm else h0
        outs = []
        for t in range(x.shape[0]):
            state = self.cell(x[t], state)
            outs.append(state[0] if self.lstm else state)
        return np.stack(outs)

    def backward(self, d_out):
        dx = np.empty(d_out.shape[:2] + (self.cell.input_size,))
        dh = np.zeros(d_out.shape[1:])
        dc = np.zeros_like(dh) if self.lstm else None
        for t in range(d_out.shape[0] - 1, -1, -1):
            if self.lstm:
                dx[t], dh, dc = self.cell.backward(dh + d_out[t], dc)
            else:
                dx[t], dh = self.cell.backward(dh + d_out[t])
        return (dx, dh, dc) if self.lstm else (dx, dh)


def cell_like(layer, kind):
    """The cell with the one-layer layer's weights."""
    cell = CELL[kind](layer.input_size, layer.hidden_size).double()
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(cell, name).data[...] = getattr(layer, name + "_l0").data
    return cell


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_cell_unrolled_by_hand_is_bptt(kind):
    refdl.manual_seed(0)
    layer = LAYER[kind](I, H).double()
    loop = UnrolledCell(cell_like(layer, kind))
    rng = RNG(1)
    x, h0, c0 = rng.standard_normal((T, N, I)), rng.standard_normal((N, H)), \
        rng.standard_normal((N, H))
    d_out = rng.standard_normal((T, N, H))
    states = (x, h0, c0) if kind == "LSTM" else (x, h0)

    # the user's loop passes the numeric gradient check (x, h0, c0 and every parameter)
    assert check_module(loop, *states).passed

    # and equals the layer's BPTT: outputs, dx, dh0 (dc0) and every parameter gradient
    layer.zero_grad()
    loop.zero_grad()
    if kind == "LSTM":
        out, _ = layer(x, (h0[None], c0[None]))
        dx, dh0, dc0 = layer.backward(d_out)
    else:
        out, _ = layer(x, h0[None])
        dx, dh0 = layer.backward(d_out)
    out_loop = loop(*states)
    assert loop.cell.num_saved == T
    grads_loop = loop.backward(d_out)
    assert loop.cell.num_saved == 0 and layer.num_saved == 0
    np.testing.assert_allclose(out_loop, out, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(grads_loop[0], dx, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads_loop[1], dh0[0], rtol=1e-12, atol=1e-14)
    if kind == "LSTM":
        np.testing.assert_allclose(grads_loop[2], dc0[0], rtol=1e-12, atol=1e-14)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        np.testing.assert_allclose(getattr(loop.cell, name).grad,
                                   getattr(layer, name + "_l0").grad, rtol=1e-12, atol=1e-14)


def lstm_pass(lstm, x, h0c0, d_out, d_h_n):
    lstm.zero_grad()
    lstm(x, h0c0)
    grads = lstm.backward(d_out, d_h_n)
    return grads, [p.grad.copy() for p in lstm.parameters()]


@pytest.mark.parametrize("options", [dict(), dict(num_layers=2, bidirectional=True,
                                                  batch_first=True)])
def test_lstm_called_twice_before_two_backwards_equals_separate_passes(options):
    refdl.manual_seed(2)
    lstm = nn.LSTM(I, H, **options).double()
    L = lstm.num_layers * (2 if lstm.bidirectional else 1)
    D = 2 if lstm.bidirectional else 1
    rng = RNG(3)
    xs = [rng.standard_normal((N, T + k, I) if lstm.batch_first else (T + k, N, I))
          for k in range(2)]                          # two calls of different lengths
    states = [(rng.standard_normal((L, N, H)), rng.standard_normal((L, N, H)))
              for _ in range(2)]
    d_outs = [rng.standard_normal(x.shape[:2] + (D * H,)) for x in xs]
    d_hns = [rng.standard_normal((L, N, H)) for _ in range(2)]

    sep = [lstm_pass(lstm, x, s, g, gh) for x, s, g, gh in zip(xs, states, d_outs, d_hns)]

    lstm.zero_grad()
    for x, s in zip(xs, states):
        lstm(x, s)
    assert lstm.num_saved == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = lstm.backward(d_outs[1], d_hns[1])   # the newest call first
        first = lstm.backward(d_outs[0], d_hns[0])
    assert lstm.num_saved == 0
    for got, (want, _) in zip((first, second), sep):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)       # bit for bit
    # the parameter gradients are the two passes' sum (added in the same order: equal)
    for p, g1, g2 in zip(lstm.parameters(), sep[1][1], sep[0][1]):
        np.testing.assert_array_equal(p.grad, g1 + g2)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_nothing_pending_after_backward_in_eval_or_under_no_grad(kind):
    refdl.manual_seed(4)
    layer, cell = LAYER[kind](I, H, num_layers=2, dropout=0.5), CELL[kind](I, H)
    x = RNG(5).standard_normal((T, N, I)).astype(np.float32)
    out, _ = layer(x)
    h = cell(x[0])
    assert layer.num_saved == 1 and cell.num_saved == 1
    layer.backward(np.ones_like(out))
    cell.backward(np.ones_like(h[0] if kind == "LSTM" else h))
    assert layer.num_saved == 0 and cell.num_saved == 0
    with refdl.no_grad():
        for _ in range(3):
            layer(x)
            cell(x[0])
    assert layer.num_saved == 0 and cell.num_saved == 0
    layer.eval()
    cell.eval()
    for _ in range(3):
        layer(x)
        cell(x[0])
    assert layer.num_saved == 0 and cell.num_saved == 0
    with pytest.raises(nn.CacheError, match=f"{kind}\\(2, 5, num_layers=2.*backward called "
                                            "before forward"):
        layer.backward(np.ones_like(out))
    with pytest.raises(nn.CacheError, match=f"{kind}Cell\\(2, 5\\).backward called before"):
        cell.backward(np.ones((N, H), np.float32))
    # refdl.enable_grad() records in eval mode (no dropout then): one cache, one backward
    with refdl.enable_grad():
        out, _ = layer(x)
    assert layer.num_saved == 1
    layer.backward(np.ones_like(out))
    assert layer.num_saved == 0


def test_truncated_bptt_leaves_no_cache_behind():
    from refdl.nn.tbptt import truncated_bptt
    refdl.manual_seed(6)
    gru = nn.GRU(I, H).double()
    x = RNG(7).standard_normal((10, N, I))
    losses, h = truncated_bptt(gru, x, 3, lambda i, sl, out: (float(out.sum()),
                                                              np.ones_like(out)))
    assert len(losses) == 4 and gru.num_saved == 0
