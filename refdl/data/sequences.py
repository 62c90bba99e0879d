r"""Synthetic sequence tasks that need no download (for RNN experiments and ``refdl train``).

* :func:`adding_problem` (Hochreiter & Schmidhuber 1997; Le et al. 2015): each step has a
  value u_t ~ U(0, 1) and a marker m_t in {0, 1}; exactly two steps are marked, one in each
  half of the sequence; the target is the sum of the two marked values. Predicting the
  constant 1 gives MSE 1/6 ~ 0.167 (the variance of a sum of two U(0,1)); solving it needs
  a memory that spans ~T/2 steps.
* :func:`copy_task`: a sequence of symbols, a long blank delay, then the symbols again.
* :func:`digit_rows`: the 8x8 digits of scikit-learn as sequences of 8 rows of 8 pixels,
  the data set of the registered ``gru`` classifier (layout 'sequence').

All arrays are time-major free: inputs are (N, T, F) (batch first), as a DataLoader gives.
"""
import numpy as np

from ..random import get_rng

__all__ = ["adding_problem", "copy_task", "digit_rows", "AddingProblem"]


def adding_problem(n, T, generator=None, dtype=np.float32):
    """x (n, T, 2) = [value, marker], y (n, 1) = the sum of the two marked values."""
    if T < 2:
        raise ValueError(f"adding_problem: T must be at least 2, got {T}")
    rng = get_rng(generator)
    values = rng.uniform(0.0, 1.0, size=(n, T))
    markers = np.zeros((n, T))
    half = T // 2
    i = rng.integers(0, half, size=n)
    j = rng.integers(half, T, size=n)
    rows = np.arange(n)
    markers[rows, i] = 1
    markers[rows, j] = 1
    x = np.stack([values, markers], axis=-1).astype(dtype)
    y = (values[rows, i] + values[rows, j])[:, None].astype(dtype)
    return x, y


class AddingProblem:
    """An endless supply of fresh adding-problem batches: ``batch(n)`` -> (x, y)."""

    def __init__(self, T, generator=None, dtype=np.float32):
        self.T = int(T)
        self.rng = get_rng(generator)
        self.dtype = dtype

    def batch(self, n):
        return adding_problem(n, self.T, self.rng, self.dtype)


def copy_task(n, n_symbols=8, length=5, delay=20, generator=None, dtype=np.float32):
    """The copy task: remember ``length`` symbols over ``delay`` blank steps.

    Alphabet: symbols 0..n_symbols-1, blank = n_symbols, go-marker = n_symbols + 1.
    Input: the symbols, ``delay`` blanks with the go-marker on the last one, then
    ``length`` blanks; target: blanks until the go-marker, then the symbols.
    Returns x (n, T, n_symbols + 2) one-hot, and the integer targets y (n, T),
    T = 2 * length + delay.
    """
    rng = get_rng(generator)
    blank, go = n_symbols, n_symbols + 1
    T = 2 * length + delay
    seq = rng.integers(0, n_symbols, size=(n, length))
    inp = np.full((n, T), blank)
    inp[:, :length] = seq
    inp[:, length + delay - 1] = go
    tgt = np.full((n, T), blank)
    tgt[:, length + delay:] = seq
    x = np.eye(n_symbols + 2, dtype=dtype)[inp]
    return x, tgt


def digit_rows(dtype=np.float32):
    """scikit-learn's 8x8 digits as sequences: x (1797, 8, 8) rows in [0, 1], y (1797,)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0).astype(dtype)
    return x, d.target.astype(np.int64)
