r"""Truncated backpropagation through time (TBPTT).

A long sequence x_1..x_T is cut into chunks of k steps. Each chunk is run from the hidden
state the previous chunk ended in (the forward pass is carried across chunks, so the model
still *sees* the whole past), but the backward pass stops at the chunk's first step: the
incoming state is treated as a constant ("detached"). For chunk [a, b) and its loss L_ab

    truncated dL_ab/dW = sum_{t=a..b-1} (dL_ab/dh_t) (dh_t/dW)|_{h_{t-1} fixed},

which is the full gradient of L_ab with every path that crosses the boundary at h_{a-1}
removed. The full gradient is the truncated one plus exactly those removed paths:

    full dL_ab/dW = truncated dL_ab/dW + (dL_ab/dh_{a-1}) (d h_{a-1}/dW),

(tests/test_recurrent.py checks this identity). Truncation bounds the number of Jacobians
dh_t/dh_{t-1} in any product by k, so the gradient can neither explode nor vanish over
more than k steps, at the price of not learning dependencies longer than k. Memory is O(k) instead of O(T): each chunk's forward records one cache
(docs/caches.md) and the chunk's backward consumes it before the next chunk runs.
"""
import numpy as np

__all__ = ["detach_state", "chunk_slices", "truncated_bptt"]


def detach_state(h):
    """A copy of a hidden state (an array, or a tuple (h, c) for an LSTM).

    NumPy arrays carry no graph, so "detaching" is only a copy; what actually cuts the
    gradient is that the next chunk is run with the state as a fresh input and the
    gradient returned for it by ``backward`` is discarded.
    """
    if h is None:
        return None
    if isinstance(h, (tuple, list)):
        return tuple(np.array(s, copy=True) for s in h)
    return np.array(h, copy=True)


def chunk_slices(T, k):
    """[slice(0, k), slice(k, 2k), ...] covering range(T); the last one may be shorter."""
    if k <= 0:
        raise ValueError(f"truncated BPTT: the chunk length k must be positive, got {k}")
    return [slice(a, min(a + k, T)) for a in range(0, T, k)]


def truncated_bptt(rnn, x, k, loss_and_grad, h0=None, step=None):
    """Run ``rnn`` over ``x`` in chunks of ``k`` time steps with truncated BPTT.

    rnn: an RNN, LSTM or GRU layer (its ``batch_first`` decides the time axis of a 3-D x;
    an unbatched 2-D x has time on axis 0).
    loss_and_grad(i, sl, out) -> (loss, d_out): the caller's loss on chunk i (time slice
    ``sl`` of the whole sequence) given the layer's output ``out`` on the chunk, and
    dL/d(out). A head (e.g. a Linear) is run and back-propagated inside it.
    step(i): called after chunk i's backward (clip, ``optimizer.step()``, ``zero_grad``);
    None accumulates the gradients of all chunks.
    Returns (list of chunk losses, final state) -- the state can seed the next call.
    """
    x = np.asarray(x)
    axis = 1 if (x.ndim == 3 and rnn.batch_first) else 0
    h = detach_state(h0)
    losses = []
    for i, sl in enumerate(chunk_slices(x.shape[axis], k)):
        xc = x[:, sl] if axis == 1 else x[sl]
        out, h = rnn(xc, h)                 # forward carried across the boundary
        loss, d_out = loss_and_grad(i, sl, out)
        rnn.backward(d_out)                 # the gradient for the incoming state is dropped
        if step is not None:
            step(i)
        h = detach_state(h)
        losses.append(loss)
    return losses, h
