r"""Recurrent layers with hand-derived backpropagation through time (BPTT).

PyTorch's names, shapes, gate order and parameter layout:

=========  ====================================================================  =====
cell       step  (a = x W_ih^T + b_ih + h W_hh^T + b_hh, split by gate)          gates
=========  ====================================================================  =====
RNN        h' = act(a),  act = tanh | relu | identity                            1
LSTM       i, f, g, o = sig(a_i), sig(a_f), tanh(a_g), sig(a_o)                  4
           c' = f * c + i * g,   h' = o * tanh(c')
GRU        r = sig(gi_r + gh_r),  z = sig(gi_z + gh_z)                          3
           n = tanh(gi_n + r * gh_n),  h' = (1 - z) * n + z * h
           (gi = x W_ih^T + b_ih,  gh = h W_hh^T + b_hh, each split r | z | n)
=========  ====================================================================  =====

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
(the input x, the states h_0..h_T (and c_0..c_T), and per step an :class:`RNNStep` (h_t),
:class:`LSTMStep` (i, f, g, o, tanh(c_t)) or :class:`GRUStep` (r, z, n, gh_n)), plus the
dropout masks between layers; a cell's :class:`CellCache` holds x, the previous state and
one step's values. So one cell called T times in a loop and then backward T times in
reverse order is BPTT, and a layer called twice before its two backwards gets both right.

Initialisation (PyTorch's): every weight and bias ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)).
"""
import math
from typing import List, NamedTuple, Optional

import numpy as np

from .. import init
from ..functional import sigmoid
from ..random import get_rng
from ._validate import check_float, check_grad, layer_name
from .module import Module, Parameter

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTM", "GRU"]

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "RNN_IDENTITY": 1, "LSTM": 4, "GRU": 3}


# ---------------------------------------------------------------------------------------
# What one time step remembers (the symbols of docs/derivations/rnn.md, lstm.md, gru.md)
# ---------------------------------------------------------------------------------------

class RNNStep(NamedTuple):
    """Step t of an Elman RNN: h_t = act(a_t), from which act'(a_t) is read."""
    h: np.ndarray            # h_t (N, H)


class LSTMStep(NamedTuple):
    """Step t of an LSTM: the four gates and tanh(c_t)."""
    i: np.ndarray            # input gate sig(a_i)        (N, H)
    f: np.ndarray            # forget gate sig(a_f)
    g: np.ndarray            # candidate tanh(a_g)
    o: np.ndarray            # output gate sig(a_o)
    tanh_c: np.ndarray       # tanh(c_t)


class GRUStep(NamedTuple):
    """Step t of a GRU: the gates r, z, the candidate n, and gh_n (what r multiplies)."""
    r: np.ndarray            # reset gate sig(gi_r + gh_r)     (N, H)
    z: np.ndarray            # update gate sig(gi_z + gh_z)
    n: np.ndarray            # candidate tanh(gi_n + r * gh_n)
    gh_n: np.ndarray         # h_{t-1} W_hn^T + b_hn


# ---------------------------------------------------------------------------------------
# One time step of each cell: forward and its local backward.
#   xp: the input projection x_t W_ih^T + b_ih of this step, (N, G*H)
#   h, c: the previous state (N, H) (c is None except for the LSTM)
# The forward returns (h', c', step) with step an RNNStep / LSTMStep / GRUStep; the
# backward takes dL/dh' and dL/dc' and returns (d xp, d hp, dL/dh, dL/dc), where
# hp = h W_hh^T + b_hh is the recurrent projection.
# ---------------------------------------------------------------------------------------

def _rnn_step(act, xp, h, c, W_hh, b_hh):
    a = xp + h @ W_hh.T
    if b_hh is not None:
        a = a + b_hh
    if act == "tanh":
        h_new = np.tanh(a)
    elif act == "relu":
        h_new = np.maximum(a, 0)
    else:
        h_new = a
    return h_new, None, RNNStep(h=h_new)


def _rnn_step_back(act, dh, dc, s, h, c, W_hh):
    if act == "tanh":
        da = dh * (1 - s.h * s.h)              # tanh'(a) = 1 - tanh(a)^2
    elif act == "relu":
        da = dh * (s.h > 0)                    # relu'(a) = [a > 0]
    else:
        da = dh                                # identity
    return da, da, da @ W_hh, None


def _lstm_step(xp, h, c, W_hh, b_hh):
    a = xp + h @ W_hh.T
    if b_hh is not None:
        a = a + b_hh
    a_i, a_f, a_g, a_o = np.split(a, 4, axis=-1)
    i, f, g, o = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g), sigmoid(a_o)
    c_new = f * c + i * g
    tanh_c = np.tanh(c_new)
    return o * tanh_c, c_new, LSTMStep(i=i, f=f, g=g, o=o, tanh_c=tanh_c)


def _lstm_step_back(dh, dc, s, h, c, W_hh):
    i, f, g, o, tanh_c = s.i, s.f, s.g, s.o, s.tanh_c
    do = dh * tanh_c
    dc = dc + dh * o * (1 - tanh_c * tanh_c)   # through h' = o tanh(c')
    da = np.concatenate([dc * g * i * (1 - i),           # a_i
                         dc * c * f * (1 - f),           # a_f
                         dc * i * (1 - g * g),           # a_g
                         do * o * (1 - o)], axis=-1)     # a_o
    return da, da, da @ W_hh, dc * f


def _gru_step(xp, h, c, W_hh, b_hh):
    gh = h @ W_hh.T
    if b_hh is not None:
        gh = gh + b_hh
    gi_r, gi_z, gi_n = np.split(xp, 3, axis=-1)
    gh_r, gh_z, gh_n = np.split(gh, 3, axis=-1)
    r = sigmoid(gi_r + gh_r)
    z = sigmoid(gi_z + gh_z)
    n = np.tanh(gi_n + r * gh_n)
    return n + z * (h - n), None, GRUStep(r=r, z=z, n=n, gh_n=gh_n)


def _gru_step_back(dh, dc, s, h, c, W_hh):
    r, z, n = s.r, s.z, s.n
    dn = dh * (1 - z) * (1 - n * n)            # d(pre-tanh of n)
    dr = dn * s.gh_n * r * (1 - r)             # through r * gh_n
    dz = dh * (h - n) * z * (1 - z)            # h' = n + z (h - n)
    d_gi = np.concatenate([dr, dz, dn], axis=-1)
    d_gh = np.concatenate([dr, dz, dn * r], axis=-1)
    return d_gi, d_gh, dh * z + d_gh @ W_hh, None


def _step_fns(mode):
    if mode == "LSTM":
        return _lstm_step, _lstm_step_back
    if mode == "GRU":
        return _gru_step, _gru_step_back
    act = mode[4:].lower()

    def fwd(*a):
        return _rnn_step(act, *a)

    def back(*a):
        return _rnn_step_back(act, *a)
    return fwd, back


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


def _data(p):
    return None if p is None else p.data


# ---------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------

class CellCache(NamedTuple):
    """One call of a cell: its input, the previous state and the step's values."""
    x: np.ndarray            # (N, I) the input (unbatched input is stored as N = 1)
    h: np.ndarray            # (N, H) the previous hidden state h
    c: Optional[np.ndarray]  # (N, H) the previous cell state c (LSTMCell), else None
    step: tuple              # RNNStep / LSTMStep / GRUStep of this call
    batched: bool            # the input had a batch dimension
    has_state: bool          # the state was passed: backward returns its gradient too


class _CellBase(Module):
    _mode = None

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, generator=None,
                 nonlinearity=None):
        super().__init__()
        if nonlinearity is not None:
            self.nonlinearity = nonlinearity
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        if self.input_size <= 0 or self.hidden_size <= 0:
            raise ValueError(f"{type(self).__name__}: input_size and hidden_size must be "
                             f"positive, got ({input_size}, {hidden_size})")
        self.bias = bool(bias)
        G = _GATES[self.mode] * self.hidden_size
        self.weight_ih = Parameter(np.empty((G, self.input_size), dtype=dtype))
        self.weight_hh = Parameter(np.empty((G, self.hidden_size), dtype=dtype))
        if bias:
            self.bias_ih = Parameter(np.empty(G, dtype=dtype))
            self.bias_hh = Parameter(np.empty(G, dtype=dtype))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters(generator)

    @property
    def mode(self):
        return self._mode

    def reset_parameters(self, generator=None):
        """Every weight and bias ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -k, k, generator=generator)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s

    def _prepare(self, x, states):
        x = check_float(self, x)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"{layer_name(self)}: expected input of shape (N, "
                             f"{self.input_size}) or ({self.input_size},), got "
                             f"{tuple(x.shape)}")
        batched = x.ndim == 2
        shape = (x.shape[0], self.hidden_size) if batched else (self.hidden_size,)
        dtype = np.result_type(x.dtype, self.weight_ih.dtype)
        out = []
        for name, s in states:
            if s is None:
                out.append(np.zeros(shape, dtype=dtype))
                continue
            s = check_float(self, s, name)
            if s.shape != shape:
                raise ValueError(f"{layer_name(self)}: expected {name} of shape {shape} "
                                 f"(input has shape {tuple(x.shape)}), got {tuple(s.shape)}")
            out.append(s)
        if not batched:
            x = x[None]
            out = [s[None] for s in out]
        return x, out, batched

    def _gi(self, x):
        """The input projection gi = x W_ih^T + b_ih, (N, G*H)."""
        gi = x @ self.weight_ih.data.T
        return gi if self.bias_ih is None else gi + self.bias_ih.data

    def _check_grad_state(self, c, grad, what):
        """dL/d(a returned state), checked against its shape, as (N, H)."""
        shape = c.h.shape if c.batched else c.h.shape[1:]
        g = check_grad(self, grad, shape, what)
        return g if c.batched else g[None]

    def _affine_backward(self, c, d_gi, d_gh):
        """Through gi = x W_ih^T + b_ih and gh = h W_hh^T + b_hh: add
        dW_ih = d_gi^T x, db_ih = sum_n d_gi, dW_hh = d_gh^T h, db_hh = sum_n d_gh;
        return dL/dx = d_gi W_ih."""
        if self.weight_ih.requires_grad:
            self.weight_ih.grad += d_gi.T @ c.x
        if self.weight_hh.requires_grad:
            self.weight_hh.grad += d_gh.T @ c.h
        if self.bias_ih is not None and self.bias_ih.requires_grad:
            self.bias_ih.grad += d_gi.sum(axis=0)
        if self.bias_hh is not None and self.bias_hh.requires_grad:
            self.bias_hh.grad += d_gh.sum(axis=0)
        return d_gi @ self.weight_ih.data

    @staticmethod
    def _result(c, *grads):
        """(dx, dh[, dc]) in the caller's layout; dx alone when no state was passed."""
        if not c.batched:
            grads = tuple(g[0] for g in grads)
        return grads if c.has_state else grads[0]


class RNNCell(_CellBase):
    r"""Elman RNN cell (PyTorch's ``nn.RNNCell``):  h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh).

    nonlinearity: 'tanh' (default), 'relu', or 'identity' (the linear RNN).
    Shapes: x (N, input_size) or (input_size,), h (N, hidden_size) -> h' of h's shape.
    W_ih (hidden, input), W_hh (hidden, hidden), b_ih, b_hh (hidden,).
    ``h1 = cell(x, h)``, then ``cell.backward(d_h1)``.

    Backward, with g = dL/dh' and a the pre-activation:
        da = g * act'(a)  (tanh: 1 - h'^2;  relu: [a > 0];  identity: 1)
        dL/dx = da W_ih    dL/dh = da W_hh    dW_ih = da^T x    dW_hh = da^T h
        db_ih = db_hh = sum_n da
    ``backward(d_h1)`` returns dx, or (dx, dh) when h was passed to forward.
    One cell called T times in a loop holds T caches; T backwards in reverse order
    (t = T..1) give BPTT. Derivation: docs/derivations/rnn.md
    """

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh",
                 dtype=np.float32, generator=None):
        if nonlinearity not in ("tanh", "relu", "identity"):
            raise ValueError(f"RNNCell: unknown nonlinearity {nonlinearity!r}; expected "
                             "'tanh', 'relu' or 'identity'")
        super().__init__(input_size, hidden_size, bias, dtype, generator, nonlinearity)

    @property
    def mode(self):
        return "RNN_" + self.nonlinearity.upper()

    def extra_repr(self):
        s = super().extra_repr()
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s

    def forward(self, input, hx=None):
        x, (h,), batched = self._prepare(input, [("hx", hx)])
        h1, _, step = _rnn_step(self.nonlinearity, self._gi(x), h, None,
                                self.weight_hh.data, _data(self.bias_hh))
        self.save_for_backward(CellCache(x=x, h=h, c=None, step=step, batched=batched,
                                         has_state=hx is not None))
        return h1 if batched else h1[0]

    def backward(self, d_h1):
        c = self.pop_saved()
        g = self._check_grad_state(c, d_h1, "d_h1")
        # da = g * act'(a);  dL/dh = da W_hh
        da, _, dh, _ = _rnn_step_back(self.nonlinearity, g, None, c.step, c.h, None,
                                      self.weight_hh.data)
        dx = self._affine_backward(c, da, da)          # a = gi + gh: the same da for both
        return self._result(c, dx, dh)


class LSTMCell(_CellBase):
    r"""Long short-term memory cell (PyTorch's ``nn.LSTMCell``).

    a = x W_ih^T + b_ih + h W_hh^T + b_hh, split in gate order i, f, g, o:
        i = sig(a_i)  f = sig(a_f)  g = tanh(a_g)  o = sig(a_o)
        c' = f * c + i * g        h' = o * tanh(c')
    Shapes: x (N, input) or (input,); h, c (N, hidden); W_ih (4 hidden, input),
    W_hh (4 hidden, hidden), biases (4 hidden,).  ``h1, c1 = cell(x, (h, c))``, then
    ``cell.backward(d_h1)`` or ``cell.backward(d_h1, d_c1)``.

    Backward, with gh = dL/dh', gc = dL/dc':
        do = gh * tanh(c')        dc = gc + gh * o * (1 - tanh(c')^2)
        di = dc * g   df = dc * c   dg = dc * i   dL/dc = dc * f
        da = [di i(1-i), df f(1-f), dg (1-g^2), do o(1-o)]
        dL/dx = da W_ih   dL/dh = da W_hh   dW_ih = da^T x   dW_hh = da^T h
    ``backward(d_h1, d_c1=None)`` returns dx, or (dx, dh, dc) when (h, c) was passed.
    Derivation: docs/derivations/lstm.md
    """
    _mode = "LSTM"

    def forward(self, input, hx=None):
        if hx is None:
            h = c = None
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{layer_name(self)}: expected hx to be a tuple (h, c), got "
                                f"{type(hx).__name__}")
            h, c = hx
        x, (h, c), batched = self._prepare(input, [("h", h), ("c", c)])
        h1, c1, step = _lstm_step(self._gi(x), h, c, self.weight_hh.data, _data(self.bias_hh))
        self.save_for_backward(CellCache(x=x, h=h, c=c, step=step, batched=batched,
                                         has_state=hx is not None))
        return (h1, c1) if batched else (h1[0], c1[0])

    def backward(self, d_h1, d_c1=None):
        c = self.pop_saved()
        gh = self._check_grad_state(c, d_h1, "d_h1")
        gc = np.zeros_like(gh) if d_c1 is None else self._check_grad_state(c, d_c1, "d_c1")
        # da = [di i(1-i), df f(1-f), dg (1-g^2), do o(1-o)];  dL/dh = da W_hh, dL/dc = dc f
        da, _, dh, dc = _lstm_step_back(gh, gc, c.step, c.h, c.c, self.weight_hh.data)
        dx = self._affine_backward(c, da, da)          # a = gi + gh: the same da for both
        return self._result(c, dx, dh, dc)


class GRUCell(_CellBase):
    r"""Gated recurrent unit cell (PyTorch's ``nn.GRUCell``).

    gi = x W_ih^T + b_ih,  gh = h W_hh^T + b_hh, each split in gate order r, z, n:
        r = sig(gi_r + gh_r)   z = sig(gi_z + gh_z)   n = tanh(gi_n + r * gh_n)
        h' = (1 - z) * n + z * h
    Shapes: x (N, input) or (input,); h (N, hidden); W_ih (3 hidden, input),
    W_hh (3 hidden, hidden), biases (3 hidden,).  ``h1 = cell(x, h)``, then
    ``cell.backward(d_h1)``.

    Backward, with g = dL/dh':
        dn = g (1-z) (1-n^2)            (gradient of n's pre-activation)
        dr = dn * gh_n * r (1-r)        dz = g (h - n) z (1-z)
        d gi = [dr, dz, dn]             d gh = [dr, dz, dn * r]
        dL/dx = d gi W_ih   dL/dh = g z + d gh W_hh   dW_ih = d gi^T x   dW_hh = d gh^T h
    ``backward(d_h1)`` returns dx, or (dx, dh) when h was passed to forward.
    Derivation: docs/derivations/gru.md
    """
    _mode = "GRU"

    def forward(self, input, hx=None):
        x, (h,), batched = self._prepare(input, [("hx", hx)])
        h1, _, step = _gru_step(self._gi(x), h, None, self.weight_hh.data,
                                _data(self.bias_hh))
        self.save_for_backward(CellCache(x=x, h=h, c=None, step=step, batched=batched,
                                         has_state=hx is not None))
        return h1 if batched else h1[0]

    def backward(self, d_h1):
        c = self.pop_saved()
        g = self._check_grad_state(c, d_h1, "d_h1")
        # d gi = [dr, dz, dn], d gh = [dr, dz, dn r];  dL/dh = g z + d gh W_hh
        d_gi, d_gh, dh, _ = _gru_step_back(g, None, c.step, c.h, None, self.weight_hh.data)
        dx = self._affine_backward(c, d_gi, d_gh)
        return self._result(c, dx, dh)


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
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -k, k, generator=generator)

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
        self.save_for_backward(RNNLayerCache(seqs=seqs, dropout_masks=masks,
                                             batched=batched, has_state=with_state))
        if batched and self.batch_first:
            out = out.transpose(1, 0, 2)
        if not batched:
            out, h_n = out[:, 0], h_n[:, 0]
            c_n = c_n[:, 0] if lstm else None
        return out, h_n, c_n

    def _backward(self, c, d_out, d_h_n, d_c_n):
        """Shared BPTT from the call's :class:`RNNLayerCache` ``c``."""
        batched = c.batched
        lstm = self.mode == "LSTM"
        D = self._D
        H = self.hidden_size
        T, N = c.seqs[0].x.shape[:2]
        out_shape = (T, N, D * H)
        hn_shape = (self.num_layers * D, N, H)
        # the gradients in the caller's layout, checked, then in (T, N, .) layout
        if batched:
            user_out = (out_shape[1], out_shape[0], out_shape[2]) if self.batch_first \
                else out_shape
            user_hn = hn_shape
        else:
            user_out = (out_shape[0], out_shape[2])
            user_hn = (hn_shape[0], hn_shape[2])
        d_out = check_grad(self, d_out, user_out, "d_out")
        grads_state = []
        for g, what in ((d_h_n, "d_h_n"), (d_c_n, "d_c_n")):
            if g is None:
                grads_state.append(np.zeros(hn_shape, dtype=d_out.dtype))
            else:
                g = check_grad(self, g, user_hn, what)
                grads_state.append(g if batched else g[:, None, :])
        d_hn, d_cn = grads_state
        if batched and self.batch_first:
            d_out = d_out.transpose(1, 0, 2)
        if not batched:
            d_out = d_out[:, None, :]
        dh0 = np.zeros(hn_shape, dtype=np.result_type(d_out, c.seqs[0].h))
        dc0 = np.zeros_like(dh0) if lstm else None
        records = [None] * len(c.seqs)
        g_layer = d_out
        for layer in range(self.num_layers - 1, -1, -1):
            dx = None
            for d in range(D):
                W_ih, W_hh, b_ih, b_hh = self._params(layer, d)
                k = layer * D + d
                g = g_layer[..., d * H:(d + 1) * H]
                if d == 1:
                    g = g[::-1]
                grads = tuple(_grad_or_none(p) for p in (W_ih, W_hh, b_ih, b_hh))
                if self.retain_state_grads:
                    records[k] = np.empty((T,) + dh0.shape[1:], dtype=dh0.dtype)
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
            g_layer = dx
        dx = g_layer
        if self.retain_state_grads:
            self.state_grads = [r if batched else r[:, 0] for r in records]
        if batched and self.batch_first:
            dx = dx.transpose(1, 0, 2)
        if not batched:
            dx, dh0 = dx[:, 0], dh0[:, 0]
            dc0 = dc0[:, 0] if lstm else None
        if not c.has_state:
            return dx
        return (dx, dh0, dc0) if lstm else (dx, dh0)


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

    def forward(self, input, hx=None):
        out, h_n, _ = self._forward(input, hx, None, hx is not None)
        return out, h_n

    def backward(self, d_out, d_h_n=None):
        c = self.pop_saved()
        return self._backward(c, d_out, d_h_n, None)


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

    def forward(self, input, hx=None):
        out, h_n, _ = self._forward(input, hx, None, hx is not None)
        return out, h_n

    def backward(self, d_out, d_h_n=None):
        c = self.pop_saved()
        return self._backward(c, d_out, d_h_n, None)
