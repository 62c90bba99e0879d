r"""Recurrent cells: one time step of an Elman RNN, an LSTM and a GRU, forward and backward.

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

The step functions below (``_rnn_step``, ``_lstm_step``, ``_gru_step`` and their
``_back``) are the whole of each cell's math; the cells (RNNCell, LSTMCell, GRUCell) apply
them to one input, and the multi-layer sequence layers of refdl/nn/recurrent.py apply them
over t = 1..T. The local step backwards are derived in docs/derivations/rnn.md, lstm.md and
gru.md.

What backward keeps (docs/caches.md): a cell's :class:`CellCache` holds x, the previous
state and one step's values, an :class:`RNNStep` (h_t), :class:`LSTMStep` (i, f, g, o,
tanh(c_t)) or :class:`GRUStep` (r, z, n, gh_n). So one cell called T times in a loop and
then backward T times in reverse order is BPTT.

Initialisation (PyTorch's): every weight and bias ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)).
"""
import math
from typing import NamedTuple, Optional

import numpy as np

from .. import init
from ..functional import sigmoid
from .validate import check_float, check_grad, layer_name
from .module import Module, Parameter

__all__ = ["RNNCell", "LSTMCell", "GRUCell"]

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "RNN_IDENTITY": 1, "LSTM": 4, "GRU": 3}


# ---------------------------------------------------------------------------------------
# What one time step remembers (the symbols of docs/derivations/rnn.md, lstm.md, gru.md)
# ---------------------------------------------------------------------------------------

def uniform_by_hidden_size(module, generator=None):
    """PyTorch's init of the recurrent cells and layers: every parameter of ``module`` ~
    U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
    k = 1.0 / math.sqrt(module.hidden_size)
    for p in module.parameters():
        init.uniform_(p, -k, k, generator=generator)


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
        uniform_by_hidden_size(self, generator)

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

    def _record(self, x, h, c, step, batched, hx):
        """Keep this call's :class:`CellCache` for backward (training mode, grad mode)."""
        if self.recording:
            self.save_for_backward(CellCache(x=x, h=h, c=c, step=step, batched=batched,
                                             has_state=hx is not None))

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
        self._record(x, h, None, step, batched, hx)
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
        self._record(x, h, c, step, batched, hx)
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
        self._record(x, h, None, step, batched, hx)
        return h1 if batched else h1[0]

    def backward(self, d_h1):
        c = self.pop_saved()
        g = self._check_grad_state(c, d_h1, "d_h1")
        # d gi = [dr, dz, dn], d gh = [dr, dz, dn r];  dL/dh = g z + d gh W_hh
        d_gi, d_gh, dh, _ = _gru_step_back(g, None, c.step, c.h, None, self.weight_hh.data)
        dx = self._affine_backward(c, d_gi, d_gh)
        return self._result(c, dx, dh)
