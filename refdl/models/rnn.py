r"""Recurrent sequence classifiers: an RNN/LSTM/GRU over the sequence, a Linear on the end.

x (N, T, F)  --rnn (batch_first)-->  h_n  --last layer's final state(s)-->  (N, D*H)
             --Linear-->  logits (N, num_classes)

For a bidirectional network the forward direction's state after step T and the backward
direction's state after step 1 are concatenated. Backward: the Linear's input gradient is
the gradient of h_n of the last layer (zero for the other layers and for ``out``), handed
to the recurrent layer's BPTT.

Registry entry (layout 'sequence'): ``gru`` -> :func:`GRUClassifier`, e.g. the 8x8 digits
read row by row: ``GRUClassifier(num_classes=10, input_shape=(8, 8), hidden_size=64)``.
"""
from typing import NamedTuple, Tuple

import numpy as np

from .. import nn
from ..nn._validate import check_float, layer_name

__all__ = ["RNNClassifier", "GRUClassifier", "LSTMClassifier", "ElmanClassifier"]

_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}


class ClassifierCache(NamedTuple):
    """One call of RNNClassifier: the shapes of the recurrent layer's out and h_n, to build
    their gradients (zero except the last layer's h_n); the layers keep the rest."""
    out_shape: Tuple[int, ...]
    h_n_shape: Tuple[int, ...]


class RNNClassifier(nn.Module):
    """``RNNClassifier(cell, input_size, hidden_size, num_classes, num_layers=1,
    bidirectional=False, dropout=0.0)``; forward x (N, T, input_size) -> logits (N, classes).
    """

    def __init__(self, cell, input_size, hidden_size, num_classes, num_layers=1,
                 bidirectional=False, dropout=0.0, dtype=np.float32, generator=None):
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"RNNClassifier: unknown cell {cell!r}; expected one of "
                             f"{sorted(_CELLS)}")
        self.cell = cell
        self.rnn = _CELLS[cell](input_size, hidden_size, num_layers=num_layers,
                                batch_first=True, dropout=dropout,
                                bidirectional=bidirectional, dtype=dtype, generator=generator)
        D = 2 if bidirectional else 1
        self.fc = nn.Linear(D * hidden_size, num_classes, dtype=dtype, generator=generator)

    def extra_repr(self):
        return f"cell={self.cell!r}"

    def forward(self, x):
        x = check_float(self, x)
        if x.ndim != 3:
            raise ValueError(f"{layer_name(self)}: expected input of shape (N, T, "
                             f"{self.rnn.input_size}), got {tuple(x.shape)}")
        out, state = self.rnn(x)
        h_n = state[0] if self.cell == "lstm" else state
        D = 2 if self.rnn.bidirectional else 1
        last = h_n[-D:]                                  # (D, N, H): the last layer
        feats = np.concatenate(list(last), axis=-1)      # (N, D*H)
        self.save_for_backward(ClassifierCache(out_shape=out.shape, h_n_shape=h_n.shape))
        return self.fc(feats)

    def backward(self, grad_out):
        """Head, then only h_n receives a gradient (the per-step outputs none): BPTT through
        the recurrent layer from d h_n."""
        c = self.pop_saved()
        out_shape, hn_shape = c.out_shape, c.h_n_shape
        g = self.fc.backward(grad_out)                   # (N, D*H)
        D = 2 if self.rnn.bidirectional else 1
        H = self.rnn.hidden_size
        d_hn = np.zeros(hn_shape, dtype=g.dtype)
        for d in range(D):
            d_hn[hn_shape[0] - D + d] = g[:, d * H:(d + 1) * H]
        d_out = np.zeros(out_shape, dtype=g.dtype)
        return self.rnn.backward(d_out, d_hn)


def _sizes(input_shape):
    if len(input_shape) != 2:
        raise ValueError(f"a sequence model needs input_shape (T, features), got {input_shape}")
    return int(input_shape[1])


def GRUClassifier(num_classes=10, input_shape=(8, 8), hidden_size=64, num_layers=1,
                  bidirectional=False, dropout=0.0, **kwargs):
    """A GRU over (N, T, F) sequences then a Linear; input_shape = (T, F)."""
    return RNNClassifier("gru", _sizes(input_shape), hidden_size, num_classes, num_layers,
                         bidirectional, dropout, **kwargs)


def LSTMClassifier(num_classes=10, input_shape=(8, 8), hidden_size=64, num_layers=1,
                   bidirectional=False, dropout=0.0, **kwargs):
    """An LSTM over (N, T, F) sequences then a Linear; input_shape = (T, F)."""
    return RNNClassifier("lstm", _sizes(input_shape), hidden_size, num_classes, num_layers,
                         bidirectional, dropout, **kwargs)


def ElmanClassifier(num_classes=10, input_shape=(8, 8), hidden_size=64, num_layers=1,
                    bidirectional=False, dropout=0.0, **kwargs):
    """A tanh RNN over (N, T, F) sequences then a Linear; input_shape = (T, F)."""
    return RNNClassifier("rnn", _sizes(input_shape), hidden_size, num_classes, num_layers,
                         bidirectional, dropout, **kwargs)
