"""refdl.interop: every layer with a PyTorch twin, the containers and the registered models
go to PyTorch and back with their weights, and compute the same function (float64).
Skipped when PyTorch is not installed."""
import numpy as np
import pytest

import refdl
from refdl import interop, nn
from refdl.models import get_model

torch = pytest.importorskip("torch")


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


LAYERS = [
    (lambda: nn.Linear(5, 3), (4, 5)),
    (lambda: nn.Linear(5, 3, bias=False), (4, 5)),
    (lambda: nn.Conv1d(2, 3, 3, stride=2, padding=1), (2, 2, 9)),
    (lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2),
     (2, 4, 7, 6)),
    (lambda: nn.Conv2d(2, 3, 3, padding=2, padding_mode="reflect"), (1, 2, 6, 6)),
    (lambda: nn.Conv3d(2, 2, 2), (1, 2, 4, 4, 4)),
    (lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), (2, 3, 4, 4)),
    (lambda: nn.BatchNorm1d(3), (6, 3)),
    (lambda: nn.BatchNorm2d(3, momentum=0.2), (4, 3, 3, 3)),
    (lambda: nn.LayerNorm(5), (2, 4, 5)),
    (lambda: nn.GroupNorm(2, 4), (3, 4, 2, 2)),
    (lambda: nn.InstanceNorm2d(3, affine=True), (2, 3, 4, 4)),
    (lambda: nn.MaxPool2d(2), (2, 3, 6, 6)),
    (lambda: nn.AvgPool2d(3, stride=2, padding=1), (2, 3, 7, 7)),
    (lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 3, 7, 8)),
    (lambda: nn.ReLU(), (3, 4)), (lambda: nn.GELU(approximate="tanh"), (3, 4)),
    (lambda: nn.LeakyReLU(0.2), (3, 4)), (lambda: nn.PReLU(3), (2, 3, 4)),
    (lambda: nn.Softmax(dim=1), (3, 4)), (lambda: nn.Flatten(), (2, 3, 4)),
    (lambda: nn.Dropout(0.3), (3, 4)),
    (lambda: nn.GRU(4, 5, num_layers=2, batch_first=True), (2, 6, 4)),
    (lambda: nn.LSTM(4, 5, bidirectional=True), (6, 2, 4)),
    (lambda: nn.RNN(4, 5, nonlinearity="relu"), (6, 2, 4)),
    (lambda: nn.TransformerEncoderLayer(8, 2, 16), (5, 3, 8)),
    (lambda: nn.TransformerEncoderLayer(8, 2, 16, norm_first=True, batch_first=True,
                                        activation="gelu"), (3, 5, 8)),
]


def same(a, b):
    if isinstance(a, tuple):
        for x, y in zip(a, b):
            same(x, y)
        return
    np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("make,shape", LAYERS, ids=[str(i) for i in range(len(LAYERS))])
def test_layer_round_trip_computes_the_same_function(make, shape):
    refdl.manual_seed(0)
    ours = make().double()
    for b in ours.buffers():                     # non-trivial running statistics
        b[...] = np.abs(rand(*b.shape, seed=3)) + 0.5
    ours.eval()
    theirs = interop.to_torch(ours)
    assert isinstance(theirs, getattr(torch.nn, type(ours).__name__))
    x = rand(*shape, seed=1)
    with refdl.no_grad(), torch.no_grad():
        same(ours(x), theirs(torch.tensor(x)))
    back = interop.from_torch(theirs)
    assert type(back) is type(ours) and not back.training
    with refdl.no_grad():
        np.testing.assert_array_equal(_first(back(x)), _first(ours(x)))
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(v, v2)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name,kw,shape", [
    ("mlp", dict(input_shape=(1, 8, 8), hidden=(16,)), (3, 1, 8, 8)),
    ("lenet5", dict(input_shape=(1, 28, 28)), (2, 1, 28, 28)),
    ("vgg_small", dict(input_shape=(1, 8, 8)), (2, 1, 8, 8)),
    ("resnet_small", dict(input_shape=(1, 8, 8)), (2, 1, 8, 8)),
    ("gru", dict(input_shape=(5, 8), hidden_size=6), (3, 5, 8)),
    ("lstm", dict(input_shape=(5, 8), hidden_size=6, bidirectional=True), (3, 5, 8)),
    ("rnn", dict(input_shape=(5, 8), hidden_size=6, num_layers=2), (3, 5, 8)),
])
def test_registered_models_round_trip(name, kw, shape):
    refdl.manual_seed(0)
    try:
        model = get_model(name, num_classes=4, **kw).double()
    except TypeError as e:
        pytest.fail(f"{name}: {e}")
    model.train()
    x = rand(*shape, seed=2)
    theirs = interop.to_torch(model)
    assert list(theirs.state_dict())[:3] == list(model.state_dict())[:3]
    model.eval()
    theirs.eval()
    with refdl.no_grad(), torch.no_grad():
        same(model(x), theirs(torch.tensor(x)))
    back = interop.from_torch(theirs)
    assert type(back) is type(model)
    with refdl.no_grad():
        np.testing.assert_array_equal(back.eval()(x), model(x))


def test_training_mode_gradients_agree_through_the_twin():
    refdl.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    tnet = interop.to_torch(net)
    x, g = rand(5, 4, seed=4), rand(5, 2, seed=5)
    net(x)
    dx = net.backward(g)
    tx = torch.tensor(x, requires_grad=True)
    tnet(tx).backward(torch.tensor(g))
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12)
    for (n, p), (tn, tp) in zip(net.named_parameters(), tnet.named_parameters()):
        assert n == tn
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12)


def test_no_counterpart_is_a_clear_error():
    class Mine(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(interop.InteropError, match="no PyTorch counterpart for Mine"):
        interop.to_torch(Mine())

    class TorchMine(torch.nn.Module):
        pass
    with pytest.raises(interop.InteropError, match="refdl has no TorchMine.*load_state_dict"):
        interop.from_torch(TorchMine())
    sd = interop.state_dict_from_torch(torch.nn.Linear(3, 2))
    lin = nn.Linear(3, 2)
    lin.load_state_dict(sd)
    np.testing.assert_array_equal(lin.weight.data, sd["weight"])


def test_decoder_layer_and_attention_through_the_twin():
    refdl.manual_seed(2)
    x, mem = rand(5, 3, 8, seed=1), rand(4, 3, 8, seed=2)
    dec = nn.TransformerDecoderLayer(8, 2, 16).double().eval()
    mha = nn.MultiheadAttention(8, 2).double().eval()
    tdec, tmha = interop.to_torch(dec), interop.to_torch(mha)
    with refdl.no_grad(), torch.no_grad():
        same(dec(x, mem), tdec(torch.tensor(x), torch.tensor(mem)))
        same(mha(x, mem, mem)[0], tmha(torch.tensor(x), torch.tensor(mem),
                                       torch.tensor(mem))[0])


def test_native_torch_layers_convert_by_their_attributes():
    torch.manual_seed(0)
    for tmod, shape in ((torch.nn.Linear(4, 3, bias=False), (2, 4)),
                        (torch.nn.Conv2d(2, 3, 3, stride=2, padding=1), (1, 2, 6, 6)),
                        (torch.nn.BatchNorm1d(3).eval(), (5, 3)),
                        (torch.nn.LSTM(3, 4, num_layers=2, batch_first=True), (2, 5, 3))):
        tmod = tmod.double()
        ours = interop.from_torch(tmod)
        assert type(ours).__name__ == type(tmod).__name__
        x = rand(*shape, seed=3)
        with refdl.no_grad(), torch.no_grad():
            same(_first(ours(x)), _first(tmod(torch.tensor(x))))
