r"""Multi-layer recurrent layers (RNN, LSTM, GRU) with hand-derived backpropagation
through time (BPTT).

One time step of each cell (the gate table, forward and local backward) is in
refdl/nn/recurrent_cell.py; this file runs those steps over a sequence, layer by layer and
in both directions.

Layers (RNN, LSTM, GRU) take x of shape (T, N, input_size) (``batch_first``: (N, T, .);
unbatched: (T, input_size)) and an optional initial state h0 of shape
(num_layers * D, N, hidden_size), D = 2 if bidirectional else 1 (LSTM: a tuple (h0, c0)).
They return ``out, h_n`` (LSTM: ``out, (h_n, c_n)``) with out of shape
(T, N, D * hidden_size): the last layer's hidden states, both directions concatenated.

Backward (BPTT) takes the gradients of the outputs in order,
``backward(d_out, d_h_n=None)`` (LSTM: ``backward(d_out, d_h_n=None, d_c_n=None)``; an
omitted gradient is zero) and returns dL/dx, or ``(dx, dh0)`` when h0 was passed to forward
(LSTM: ``(dx, dh0, dc0)``). Walking t = T..1 it carries dL/dh_t (and dL/dc_t):

    dh_t  = d_out_t + (dL/dh_t from step t+1)
    step t's local backward gives d(pre-activations) and dL/dh_{t-1} (dL/dc_{t-1});

the weight gradients are sums over time of outer products, computed after the loop as one
matrix product each:  dW_ih = sum_t da_t^T x_t,  dW_hh = sum_t da^h_t^T h_{t-1},
db_ih = sum_t da_t,  db_hh = sum_t da^h_t,  dx_t = da_t W_ih.
The local step backwards are derived in docs/derivations/rnn.md, lstm.md and gru.md.

What backward keeps (docs/caches.md): each training-mode call records one named cache. A
layer's :class:`RNNLayerCache` holds, per layer and direction, a :class:`SequenceCache`
(the input x, the states h_0..h_T (and c_0..c_T), and per step an RNNStep (h_t), LSTMStep
(i, f, g, o, tanh(c_t)) or GRUStep (r, z, n, gh_n)), plus the dropout masks between
layers. So a layer called twice before its two backwards gets both right.

Initialisation (PyTorch's): every weight and bias ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)).
"""
from typing import List, NamedTuple, Optional

import numpy as np

from ..random import get_rng
from .validate import check_float, check_grad, layer_name
from .module import Module, Parameter
from .recurrent_cell import _GATES, _data, _step_fns, uniform_by_hidden_size

__all__ = ["RNN", "LSTM", "GRU"]


# ---------------------------------------------------------------------------------------
# One layer, one direction, over a whole sequence
# ---------------------------------------------------------------------------------------

class SequenceCache(NamedTuple):
    """One layer and direction of one call, over t = 1..T (docs/derivations/rnn.md)."""
    x: np.ndarray            # (T, N, I): x_1..x_T, this layer's input
    h: np.ndarray            # (T + 1, N, H): h[0] = h_0, h[t] = h_t
    c: Optional[np.ndarray]  # (T + 1, N, H): c[0] = c_0, c[t] = c_t (LSTM), else None
    steps: list              # steps[t - 1]: step t's RNNStep / LSTMStep / GRUStep


def _sequence_forward(mode, x, h0, c0, W_ih, W_hh, b_ih, b_hh, record=True):
    """One layer, one direction, over t = 0..T-1.  x (T, N, I), h0/c0 (N, H).

    Returns out (T, N, H), h_T, c_T and, when ``record``, the :class:`SequenceCache` for
    :func:`_sequence_backward` (else None).
    """
    step, _ = _step_fns(mode)
    T, N, _ = x.shape
    H = W_hh.shape[1]
    xp = x @ W_ih.T                           # all input projections in one product
    if b_ih is not None:
        xp = xp + b_ih
    hs = np.empty((T + 1, N, H), dtype=xp.dtype)   # hs[t] = h_t; hs[0] = h0
    hs[0] = h0
    cs = None
    if mode == "LSTM":
        cs = np.empty((T + 1, N, H), dtype=xp.dtype)
        cs[0] = c0
    steps = [] if record else None
    h, c = hs[0], c0
    for t in range(T):
        h, c, s = step(xp[t], h, c, W_hh, b_hh)
        hs[t + 1] = h
        if cs is not None:
            cs[t + 1] = c
        if record:
            steps.append(s)
    c_T = cs[T] if cs is not None else None
    cache = SequenceCache(x=x, h=hs, c=cs, steps=steps) if record else None
    return hs[1:], hs[T], c_T, cache


def _sequence_backward(mode, sc, d_out, d_hT, d_cT, W_ih, W_hh, grads, record=None):
    """BPTT for one layer, one direction, from its :class:`SequenceCache` ``sc``.

    Returns dx (T, N, I), dh0, dc0. ``grads`` = (dW_ih, dW_hh, db_ih, db_hh) arrays (or
    None) to which the parameter gradients are added. If ``record`` is a (T, N, H) array,
    record[t] receives the total dL/dh_t (the gradient reaching the state of step t from
    the output and from the future).
    """
    _, step_back = _step_fns(mode)
    T = sc.x.shape[0]
    G = W_ih.shape[0]
    d_xp = np.empty(sc.x.shape[:2] + (G,), dtype=np.result_type(sc.h, d_out))
    d_hp = np.empty_like(d_xp) if mode == "GRU" else d_xp
    dh = d_hT
    dc = d_cT
    for t in range(T - 1, -1, -1):
        dh = dh + d_out[t]                    # delta_t = g_t + (from step t + 1)
        if record is not None:
            record[t] = dh
        c_prev = sc.c[t] if sc.c is not None else None
        d_xp[t], d_hp_t, dh, dc = step_back(dh, dc, sc.steps[t], sc.h[t], c_prev, W_hh)
        if d_hp is not d_xp:
            d_hp[t] = d_hp_t
    dW_ih, dW_hh, db_ih, db_hh = grads
    if dW_ih is not None:
        dW_ih += np.tensordot(d_xp, sc.x, axes=([0, 1], [0, 1]))
    if dW_hh is not None:
        dW_hh += np.tensordot(d_hp, sc.h[:-1], axes=([0, 1], [0, 1]))
    if db_ih is not None:
        db_ih += d_xp.sum(axis=(0, 1))
    if db_hh is not None:
        db_hh += d_hp.sum(axis=(0, 1))
    return d_xp @ W_ih, dh, dc


def _grad_or_none(p):
    return p.grad if (p is not None and p.requires_grad) else None


# ---------------------------------------------------------------------------------------
# Multi-layer, optionally bidirectional layers
# ---------------------------------------------------------------------------------------

class RNNLayerCache(NamedTuple):
    """One call of RNN / LSTM / GRU: BPTT's inputs for every layer and direction."""
    seqs: List[SequenceCache]    # seqs[layer * D + direction]
    dropout_masks: list          # dropout_masks[layer]: inverted-dropout mask on the
                                 # layer's input (None: no dropout before this layer)
    batched: bool                # the input had a batch dimension
    has_state: bool              # h0 (LSTM: (h0, c0)) was passed: return its gradient


class _RNNBase(Module):
    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32,
                 generator=None):
        super().__init__()
        self.mode = mode
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        name = type(self).__name__
        if self.input_size <= 0 or self.hidden_size <= 0 or self.num_layers <= 0:
            raise ValueError(f"{name}: input_size, hidden_size and num_layers must be "
                             f"positive, got ({input_size}, {hidden_size}, {num_layers})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")
        G = _GATES[mode] * self.hidden_size
        D = 2 if self.bidirectional else 1
        self._flat_names = []
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else self.hidden_size * D
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
                names = [f"weight_ih{sfx}", f"weight_hh{sfx}"]
                setattr(self, names[0], Parameter(np.empty((G, in_size), dtype=dtype)))
                setattr(self, names[1], Parameter(np.empty((G, self.hidden_size), dtype=dtype)))
                if self.bias:
                    names += [f"bias_ih{sfx}", f"bias_hh{sfx}"]
                    setattr(self, names[2], Parameter(np.empty(G, dtype=dtype)))
                    setattr(self, names[3], Parameter(np.empty(G, dtype=dtype)))
                self._flat_names.append(names)
        self.reset_parameters(generator)
        # retain_state_grads = True makes backward keep dL/dh_t for every step in
        # state_grads[layer * D + direction], an array (T, N, hidden) in time order (like
        # PyTorch's retain_grad); it is how the vanishing/exploding gradient is measured.
        self.retain_state_grads = False
        self.state_grads = None

    def reset_parameters(self, generator=None):
        """Every weight and bias ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
        uniform_by_hidden_size(self, generator)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s

    @property
    def _D(self):
        return 2 if self.bidirectional else 1

    def _params(self, layer, d):
        names = self._flat_names[layer * self._D + d]
        ps = [getattr(self, n) for n in names]
        if not self.bias:
            ps += [None, None]
        return ps

    def _check_input(self, x):
        x = check_float(self, x)
        I = self.input_size
        want = "(N, T, {0}), (T, {0})" if self.batch_first else "(T, N, {0}), (T, {0})"
        want = want.format(I) + " for unbatched input"
        if x.ndim not in (2, 3) or x.shape[-1] != I:
            raise ValueError(f"{layer_name(self)}: expected input of shape {want}, got "
                             f"{tuple(x.shape)}")
        batched = x.ndim == 3
        shape = x.shape
        if batched and self.batch_first:
            x = x.transpose(1, 0, 2)
        if not batched:
            x = x[:, None, :]
        if x.shape[0] == 0:
            raise ValueError(f"{layer_name(self)}: got a sequence of length zero (input "
                             f"shape {tuple(shape)}, expected {want}); "
                             "a recurrent layer needs at least one time step")
        return x, batched

    def _check_state(self, s, name, x_shape, batched, N, dtype):
        L = self.num_layers * self._D
        shape = (L, N, self.hidden_size) if batched else (L, self.hidden_size)
        if s is None:
            return np.zeros((L, N, self.hidden_size), dtype=dtype)
        s = check_float(self, s, name)
        if s.shape != shape:
            raise ValueError(f"{layer_name(self)}: expected {name} of shape {shape} "
                             f"(num_layers * num_directions, "
                             f"{'N, ' if batched else ''}hidden_size) for input of shape "
                             f"{tuple(x_shape)}, got {tuple(s.shape)}")
        return s if batched else s[:, None, :]

    # RNN and GRU: one state h (LSTM overrides both with its pair (h, c))
    def forward(self, input, hx=None):
        """``out, h_n = layer(x, h0)``."""
        out, h_n, _ = self._forward(input, hx, None, hx is not None)
        return out, h_n

    def backward(self, d_out, d_h_n=None):
        """BPTT: dx, or (dx, dh0) when h0 was passed to forward."""
        c = self.pop_saved()
        return self._backward(c, d_out, d_h_n, None)

    def _forward(self, input, h0, c0, with_state):
        """Shared forward. Returns out (in the caller's layout), h_n, c_n (or None)."""
        x, batched = self._check_input(input)
        T, N, _ = x.shape
        dtype = np.result_type(x.dtype, self.weight_ih_l0.dtype)
        h0 = self._check_state(h0, "h0", np.shape(input), batched, N, dtype)
        lstm = self.mode == "LSTM"
        if lstm:
            c0 = self._check_state(c0, "c0", np.shape(input), batched, N, dtype)
        D = self._D
        rng = get_rng()
        record = self.recording
        layer_in = x
        seqs, masks = [], []
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            mask = None
            if layer > 0 and self.training and self.dropout > 0:
                keep = 1.0 - self.dropout
                mask = (rng.random(layer_in.shape) < keep).astype(layer_in.dtype) / keep
                layer_in = layer_in * mask
            masks.append(mask)
            outs = []
            for d in range(D):
                W_ih, W_hh, b_ih, b_hh = self._params(layer, d)
                k = layer * D + d
                xin = layer_in if d == 0 else layer_in[::-1]
                out, hT, cT, sc = _sequence_forward(
                    self.mode, xin, h0[k], c0[k] if lstm else None, W_ih.data, W_hh.data,
                    _data(b_ih), _data(b_hh), record)
                outs.append(out if d == 0 else out[::-1])
                seqs.append(sc)
                h_n.append(hT)
                c_n.append(cT)
            layer_in = outs[0] if D == 1 else np.concatenate(outs, axis=-1)
        out = layer_in
        h_n = np.stack(h_n)
        c_n = np.stack(c_n) if lstm else None
        if record:
            self.save_for_backward(RNNLayerCache(seqs=seqs, dropout_masks=masks,
                                                 batched=batched, has_state=with_state))
        if batched and self.batch_first:
            out = out.transpose(1, 0, 2)
        if not batched:
            out, h_n = out[:, 0], h_n[:, 0]
            c_n = c_n[:, 0] if lstm else None
        return out, h_n, c_n

    def _backward(self, c, d_out, d_h_n, d_c_n):
        """Shared BPTT from the call's :class:`RNNLayerCache` ``c``: the layers from the top
        down (:meth:`_layer_backward`), then the gradients in the caller's layout."""
        lstm = self.mode == "LSTM"
        g, d_hn, d_cn = self._upstream_grads(c, d_out, d_h_n, d_c_n)
        dh0 = np.zeros(d_hn.shape, dtype=np.result_type(g, c.seqs[0].h))
        dc0 = np.zeros_like(dh0) if lstm else None
        records = [None] * len(c.seqs)
        for layer in range(self.num_layers - 1, -1, -1):
            g = self._layer_backward(c, layer, g, d_hn, d_cn, dh0, dc0, records)
        dx = g
        if self.retain_state_grads:
            self.state_grads = [r if c.batched else r[:, 0] for r in records]
        if c.batched and self.batch_first:
            dx = dx.transpose(1, 0, 2)
        if not c.batched:
            dx, dh0 = dx[:, 0], dh0[:, 0]
            dc0 = dc0[:, 0] if lstm else None
        if not c.has_state:
            return dx
        return (dx, dh0, dc0) if lstm else (dx, dh0)

    def _upstream_grads(self, c, d_out, d_h_n, d_c_n):
        """d_out, d_h_n, d_c_n checked against the shapes of the call's outputs in the
        caller's layout, returned in the (T, N, .) layout: d_out (T, N, D * H) and
        d_h_n, d_c_n (num_layers * D, N, H), zero where omitted."""
        D, H = self._D, self.hidden_size
        T, N = c.seqs[0].x.shape[:2]
        hn_shape = (self.num_layers * D, N, H)
        if c.batched:
            user_out = (N, T, D * H) if self.batch_first else (T, N, D * H)
            user_hn = hn_shape
        else:
            user_out = (T, D * H)
            user_hn = (self.num_layers * D, H)
        d_out = check_grad(self, d_out, user_out, "d_out")
        grads_state = []
        for g, what in ((d_h_n, "d_h_n"), (d_c_n, "d_c_n")):
            if g is None:
                grads_state.append(np.zeros(hn_shape, dtype=d_out.dtype))
            else:
                g = check_grad(self, g, user_hn, what)
                grads_state.append(g if c.batched else g[:, None, :])
        if c.batched and self.batch_first:
            d_out = d_out.transpose(1, 0, 2)
        if not c.batched:
            d_out = d_out[:, None, :]
        return d_out, grads_state[0], grads_state[1]

    def _layer_backward(self, c, layer, g_layer, d_hn, d_cn, dh0, dc0, records):
        """BPTT through one layer, each direction by :func:`_sequence_backward`: returns
        dL/d(layer input) from g_layer = dL/d(layer output) (T, N, D * H), and fills
        dh0[k], dc0[k] (and records[k] when retain_state_grads) for k = layer * D + d."""
        D, H = self._D, self.hidden_size
        lstm = self.mode == "LSTM"
        dx = None
        for d in range(D):
            W_ih, W_hh, b_ih, b_hh = self._params(layer, d)
            k = layer * D + d
            g = g_layer[..., d * H:(d + 1) * H]
            if d == 1:
                g = g[::-1]
            grads = tuple(_grad_or_none(p) for p in (W_ih, W_hh, b_ih, b_hh))
            if self.retain_state_grads:
                records[k] = np.empty(g.shape[:1] + dh0.shape[1:], dtype=dh0.dtype)
            dxd, dh0[k], dck = _sequence_backward(
                self.mode, c.seqs[k], g, d_hn[k], d_cn[k] if lstm else None,
                W_ih.data, W_hh.data, grads, records[k])
            if records[k] is not None and d == 1:
                records[k] = records[k][::-1]
            if lstm:
                dc0[k] = dck
            if d == 1:
                dxd = dxd[::-1]
            dx = dxd if dx is None else dx + dxd
        if c.dropout_masks[layer] is not None:
            dx = dx * c.dropout_masks[layer]
        return dx


class RNN(_RNNBase):
    r"""Multi-layer Elman RNN (PyTorch's ``nn.RNN``):
    h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), act = tanh | relu | identity.

    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
    batch_first=False, dropout=0.0, bidirectional=False)``.
    x (T, N, input) [batch_first: (N, T, input); unbatched: (T, input)],
    h0 (num_layers * D, N, hidden) -> out (T, N, D * hidden), h_n (num_layers * D, N, hidden).
    Parameters weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k} (+ ``_reverse``).
    Layer k > 0 reads layer k-1's output, through inverted dropout in training mode.

    Backward (BPTT): ``backward(d_out, d_h_n=None)`` returns dx, or (dx, dh0) if h0 was
    given. Per step, with dh_t = d_out_t + dL/dh_t from step t+1:
        da_t = dh_t * act'(a_t)    dL/dh_{t-1} = da_t W_hh    dx_t = da_t W_ih
        dW_ih = sum_t da_t^T x_t   dW_hh = sum_t da_t^T h_{t-1}   db = sum_t,n da_t
    so dL/dh_s = dL/dh_t prod_{u=s+1..t} diag(act'(a_u)) W_hh: the product that explodes
    or vanishes with the spectral radius of W_hh (docs/derivations/rnn.md).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh",
                 bias=True, batch_first=False, dropout=0.0, bidirectional=False,
                 dtype=np.float32, generator=None):
        if nonlinearity not in ("tanh", "relu", "identity"):
            raise ValueError(f"RNN: unknown nonlinearity {nonlinearity!r}; expected "
                             "'tanh', 'relu' or 'identity'")
        super().__init__("RNN_" + nonlinearity.upper(), input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, dtype, generator)
        self.nonlinearity = nonlinearity

    def extra_repr(self):
        s = super().extra_repr()
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s


class LSTM(_RNNBase):
    r"""Multi-layer LSTM (PyTorch's ``nn.LSTM``), gate order i, f, g, o:
        i, f, g, o = sig, sig, tanh, sig of (x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
        c_t = f * c_{t-1} + i * g      h_t = o * tanh(c_t)

    ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False)``; ``out, (h_n, c_n) = lstm(x, (h0, c0))``.
    Shapes as :class:`RNN`; weights have 4 * hidden rows.

    Backward (BPTT): ``backward(d_out, d_h_n=None, d_c_n=None)`` returns dx, or
    (dx, dh0, dc0) if (h0, c0) was given. The cell-state path carries
    dL/dc_{t-1} = dc_t * f_t: a product of forget gates, not of W_hh (docs/derivations/lstm.md).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, generator=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, dtype, generator)

    def forward(self, input, hx=None):
        if hx is None:
            h0 = c0 = None
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{layer_name(self)}: expected hx to be a tuple (h0, c0), "
                                f"got {type(hx).__name__}")
            h0, c0 = hx
        out, h_n, c_n = self._forward(input, h0, c0, hx is not None)
        return out, (h_n, c_n)

    def backward(self, d_out, d_h_n=None, d_c_n=None):
        """BPTT. ``d_h_n`` may also be the pair ``(d_h_n, d_c_n)`` (mirroring the output
        ``(h_n, c_n)``), or the two stacked in one array of shape (2, *h_n.shape)."""
        c = self.pop_saved()
        if d_c_n is None and d_h_n is not None:
            if isinstance(d_h_n, (tuple, list)) and len(d_h_n) == 2:
                d_h_n, d_c_n = d_h_n
            elif (isinstance(d_h_n, np.ndarray) and d_h_n.shape[:1] == (2,)
                  and d_h_n.ndim == (4 if c.batched else 3)):
                d_h_n, d_c_n = d_h_n[0], d_h_n[1]
        return self._backward(c, d_out, d_h_n, d_c_n)


class GRU(_RNNBase):
    r"""Multi-layer GRU (PyTorch's ``nn.GRU``), gate order r, z, n:
        r = sig(gi_r + gh_r)   z = sig(gi_z + gh_z)   n = tanh(gi_n + r * gh_n)
        h_t = (1 - z) * n + z * h_{t-1}
    with gi = x_t W_ih^T + b_ih and gh = h_{t-1} W_hh^T + b_hh.

    ``GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False)``; ``out, h_n = gru(x, h0)``.
    Shapes as :class:`RNN`; weights have 3 * hidden rows.

    Backward (BPTT): ``backward(d_out, d_h_n=None)`` returns dx, or (dx, dh0) if h0 was
    given. The update gate gives the direct path dL/dh_{t-1} += dh_t * z_t, which carries
    the gradient across many steps when z ~ 1 (docs/derivations/gru.md).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, generator=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, dtype, generator)
