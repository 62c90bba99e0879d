"""Conv padding modes against np.pad, forward and backward.

PyTorch's names map to NumPy's: 'reflect' -> 'reflect' (the edge is not repeated:
[a b c] -> [c b | a b c | b a]), 'replicate' -> 'edge', 'circular' -> 'wrap'. NumPy's
'symmetric' (edge repeated: [b a | a b c | c b]) is NOT PyTorch's reflect; the tests say so.

Forward: conv with padding_mode=m equals the unpadded conv of np.pad(x, mode=M).
Backward: padding is linear, x_pad = P x, so dL/dx = P^T dL/dx_pad; P is materialised
from np.pad on basis vectors, and the adjoint identity <backward(g), v> = <g, conv(v)>
(bias-free) is checked with random g, v.
"""
import numpy as np
import pytest

from refdl import nn
from refdl.gradcheck import check_module

NP_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap", "zeros": "constant"}
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
SHAPES = {1: (7,), 2: (5, 6), 3: (4, 5, 4)}


def pad_matrix(spatial, pad, mode):
    """P with vec(np.pad(x)) = P vec(x) for one channel."""
    n = int(np.prod(spatial))
    cols = [np.pad(np.eye(n)[i].reshape(spatial), pad, mode=mode).ravel() for i in range(n)]
    return np.stack(cols, 1)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular", "zeros"])
def test_padding_mode_forward_and_backward_match_np_pad(d, mode):
    rng = np.random.default_rng(d)
    spatial = SHAPES[d]
    pad = (2, 1, 1)[:d] if d > 1 else 2
    pads = [(p, p) for p in ((pad,) if d == 1 else pad)]
    conv = CONV[d](2, 3, 3, padding=pad, padding_mode=mode, bias=False).to(np.float64)
    plain = CONV[d](2, 3, 3, padding=0, bias=False).to(np.float64)
    plain.weight.data[...] = conv.weight.data
    x = rng.standard_normal((2, 2) + spatial)
    xp = np.pad(x, [(0, 0), (0, 0)] + pads, mode=NP_MODE[mode])
    y = conv(x)
    np.testing.assert_allclose(y, plain(xp), rtol=1e-12, atol=1e-12)
    # backward: P^T applied to the unpadded conv's input gradient on x_pad
    g = rng.standard_normal(y.shape)
    conv.zero_grad()
    dx = conv.backward(g)
    plain(xp)
    dxp = plain.backward(g)
    P = pad_matrix(spatial, pads, NP_MODE[mode])
    ref = (dxp.reshape(2, 2, -1) @ P).reshape(x.shape)
    np.testing.assert_allclose(dx, ref, rtol=1e-12, atol=1e-12)
    # adjoint identity <backward(g), v> = <g, conv(v)>
    v = rng.standard_normal(x.shape)
    assert np.sum(dx * v) == pytest.approx(np.sum(g * conv(v)), rel=1e-12)
    np.testing.assert_allclose(conv.weight.grad, plain.weight.grad, rtol=1e-12, atol=1e-12)


def test_reflect_is_not_numpy_symmetric():
    """The distinction the tests above rely on: on [1 2 3 4] with padding 2, reflect gives
    [3 2 1 2 3 4 3 2], symmetric [2 1 1 2 3 4 4 3]; refdl's reflect must be the first."""
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    conv = nn.Conv1d(1, 1, 1, padding=2, padding_mode="reflect", bias=False).to(np.float64)
    conv.weight.data[...] = 1.0            # a 1-tap identity kernel: the output IS the pad
    np.testing.assert_array_equal(conv(x)[0, 0], [3, 2, 1, 2, 3, 4, 3, 2])
    assert not np.array_equal(conv(x)[0, 0], np.pad(x[0, 0], 2, mode="symmetric"))
    rep = nn.Conv1d(1, 1, 1, padding=2, padding_mode="replicate", bias=False).to(np.float64)
    rep.weight.data[...] = 1.0
    np.testing.assert_array_equal(rep(x)[0, 0], [1, 1, 1, 2, 3, 4, 4, 4])
    circ = nn.Conv1d(1, 1, 1, padding=2, padding_mode="circular", bias=False).to(np.float64)
    circ.weight.data[...] = 1.0
    np.testing.assert_array_equal(circ(x)[0, 0], [3, 4, 1, 2, 3, 4, 1, 2])


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_gradcheck_with_bias(mode):
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 4))
    check_module(nn.Conv2d(2, 2, 3, padding=(2, 1), padding_mode=mode), x)
