"""Every layer's defaults against PyTorch's documented values (torch.nn, version 2.x
documentation pages, e.g. https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html),
checked twice: the constructor's signature, and the behaviour of a layer built with no
optional argument (a default can be right in the signature and ignored in the code).

The table (class: {argument: documented default}) is the documentation, copied; refdl's
extras (dtype, generator) and layers PyTorch does not have are listed at the end.
"""
import inspect
import math

import numpy as np
import pytest
from scipy import special

from refdl import nn

# torch.nn documented defaults (signature of each class in the PyTorch 2.x docs)
DOCUMENTED = {
    "Linear": dict(bias=True),
    "Conv1d": dict(stride=1, padding=0, dilation=1, groups=1, bias=True, padding_mode="zeros"),
    "Conv2d": dict(stride=1, padding=0, dilation=1, groups=1, bias=True, padding_mode="zeros"),
    "Conv3d": dict(stride=1, padding=0, dilation=1, groups=1, bias=True, padding_mode="zeros"),
    "ConvTranspose1d": dict(stride=1, padding=0, output_padding=0, groups=1, bias=True,
                            dilation=1, padding_mode="zeros"),
    "ConvTranspose2d": dict(stride=1, padding=0, output_padding=0, groups=1, bias=True,
                            dilation=1, padding_mode="zeros"),
    "ConvTranspose3d": dict(stride=1, padding=0, output_padding=0, groups=1, bias=True,
                            dilation=1, padding_mode="zeros"),
    "MaxPool1d": dict(stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False),
    "MaxPool2d": dict(stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False),
    "MaxPool3d": dict(stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False),
    "AvgPool1d": dict(stride=None, padding=0, ceil_mode=False, count_include_pad=True),
    "AvgPool2d": dict(stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                      divisor_override=None),
    "AvgPool3d": dict(stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                      divisor_override=None),
    "AdaptiveMaxPool1d": dict(return_indices=False),
    "AdaptiveMaxPool2d": dict(return_indices=False),
    "AdaptiveMaxPool3d": dict(return_indices=False),
    "BatchNorm1d": dict(eps=1e-5, momentum=0.1, affine=True, track_running_stats=True),
    "BatchNorm2d": dict(eps=1e-5, momentum=0.1, affine=True, track_running_stats=True),
    "BatchNorm3d": dict(eps=1e-5, momentum=0.1, affine=True, track_running_stats=True),
    "InstanceNorm1d": dict(eps=1e-5, momentum=0.1, affine=False, track_running_stats=False),
    "InstanceNorm2d": dict(eps=1e-5, momentum=0.1, affine=False, track_running_stats=False),
    "InstanceNorm3d": dict(eps=1e-5, momentum=0.1, affine=False, track_running_stats=False),
    "LayerNorm": dict(eps=1e-5, elementwise_affine=True, bias=True),
    "GroupNorm": dict(eps=1e-5, affine=True),
    "Dropout": dict(p=0.5, inplace=False),
    "Dropout1d": dict(p=0.5, inplace=False),
    "Dropout2d": dict(p=0.5, inplace=False),
    "Dropout3d": dict(p=0.5, inplace=False),
    "ReLU": dict(inplace=False),
    "LeakyReLU": dict(negative_slope=0.01, inplace=False),
    "ELU": dict(alpha=1.0, inplace=False),
    "GELU": dict(approximate="none"),
    "SiLU": dict(inplace=False),
    "Softplus": dict(beta=1.0, threshold=20.0),
    "Flatten": dict(start_dim=1, end_dim=-1),
    "Embedding": dict(padding_idx=None),
    "RNN": dict(num_layers=1, nonlinearity="tanh", bias=True, batch_first=False, dropout=0.0,
                bidirectional=False),
    "LSTM": dict(num_layers=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False),
    "GRU": dict(num_layers=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False),
    "RNNCell": dict(bias=True, nonlinearity="tanh"),
    "LSTMCell": dict(bias=True),
    "GRUCell": dict(bias=True),
    "MultiheadAttention": dict(dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                               kdim=None, vdim=None, batch_first=False),
    "TransformerEncoderLayer": dict(dim_feedforward=2048, dropout=0.1, activation="relu",
                                    layer_norm_eps=1e-5, batch_first=False, norm_first=False,
                                    bias=True),
    "TransformerEncoder": dict(norm=None),
    "Upsample": dict(size=None, scale_factor=None, mode="nearest", align_corners=None),
    "CrossEntropyLoss": dict(weight=None, ignore_index=-100, reduction="mean",
                             label_smoothing=0.0),
    "NLLLoss": dict(weight=None, ignore_index=-100, reduction="mean"),
    "MSELoss": dict(reduction="mean"),
    "L1Loss": dict(reduction="mean"),
    "HuberLoss": dict(reduction="mean", delta=1.0),
    "SmoothL1Loss": dict(reduction="mean", beta=1.0),
    "KLDivLoss": dict(reduction="mean", log_target=False),
    "BCELoss": dict(weight=None, reduction="mean"),
    "BCEWithLogitsLoss": dict(weight=None, reduction="mean", pos_weight=None),
}
# refdl deviates on purpose where PyTorch's default is deprecated: Softmax/LogSoftmax's
# dim=None ("implicit dimension choice ... deprecated") is dim=-1 in refdl.
REFDL_CHOICES = {"Softmax": dict(dim=-1), "LogSoftmax": dict(dim=-1)}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_signature_defaults_match_pytorch_documentation(name):
    sig = inspect.signature(getattr(nn, name).__init__).parameters
    for arg, value in DOCUMENTED[name].items():
        assert arg in sig, f"{name} has no argument {arg!r}"
        assert sig[arg].default == value and type(sig[arg].default) is type(value), \
            f"{name}({arg}=...) defaults to {sig[arg].default!r}, PyTorch documents {value!r}"


def test_deliberate_choices():
    for name, d in REFDL_CHOICES.items():
        sig = inspect.signature(getattr(nn, name).__init__).parameters
        for arg, value in d.items():
            assert sig[arg].default == value


# ------------------------------------------------------------------- behaviour of defaults
def rng(seed=0):
    return np.random.default_rng(seed)


def test_transformer_encoder_layer_defaults_behave():
    layer = nn.TransformerEncoderLayer(8, 2).to(np.float64)
    x = rng().standard_normal((5, 3, 8))                 # (L, N, E): batch_first=False
    # post-norm (norm_first=False): the output is LayerNorm's (weight 1, bias 0), so every
    # token has mean 0 and variance 1 / (1 + eps / var); a pre-norm layer's output does not
    layer.eval()
    y = layer(x)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1, atol=1e-4)
    # batch_first=False: the second axis is the batch; permuting it permutes the output
    perm = [2, 0, 1]
    np.testing.assert_allclose(layer(x[:, perm]), y[:, perm], rtol=1e-12, atol=1e-12)
    # dropout 0.1 everywhere PyTorch puts it (attention weights, after attention, inside
    # the feed-forward block, after it); train mode is random, eval is not
    ps = [m.p for _, m in layer.named_modules() if isinstance(m, nn.Dropout)]
    assert ps == [0.1, 0.1, 0.1] and layer.self_attn.dropout == 0.1
    layer.train()
    assert not np.allclose(layer(x), layer(x))
    # layer_norm_eps 1e-5, seen in the output: a token of variance v normalises to
    # variance v / (v + eps)
    norms = [m for _, m in layer.named_modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 and all(m.eps == 1e-5 for m in norms)
    t = 3e-3 * rng(1).standard_normal((1, 8))
    v = t.var()
    np.testing.assert_allclose(norms[0].to(np.float64)(t).var(), v / (v + 1e-5), rtol=1e-9)
    # dim_feedforward 2048, activation relu
    assert layer.linear1.weight.shape == (2048, 8) and isinstance(layer.activation, nn.ReLU)


def test_batchnorm_defaults_behave():
    for bn, shape in ((nn.BatchNorm1d(3), (16, 3)), (nn.BatchNorm2d(3), (8, 3, 4, 4)),
                      (nn.BatchNorm3d(3), (4, 3, 2, 3, 3))):
        bn = bn.to(np.float64)
        x = 2 + 3 * rng().standard_normal(shape)
        axes = tuple(i for i in range(x.ndim) if i != 1)
        y = bn(x)
        # momentum 0.1 from running_mean 0, running_var 1; the running variance is unbiased
        n = x.size // 3
        np.testing.assert_allclose(bn.running_mean, 0.1 * x.mean(axes), rtol=1e-12)
        np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * x.var(axes) * n / (n - 1),
                                   rtol=1e-12)
        # eps 1e-5 in the batch normalisation, affine weight 1 and bias 0
        mean = x.mean(axes, keepdims=True)
        np.testing.assert_allclose(y, (x - mean) / np.sqrt(x.var(axes, keepdims=True) + 1e-5),
                                   rtol=1e-10)
        assert bn.weight is not None and np.all(bn.weight.data == 1) and np.all(bn.bias.data == 0)


def test_instance_group_layer_norm_defaults_behave():
    x = 1e-3 * rng().standard_normal((2, 4, 5))
    inorm = nn.InstanceNorm1d(4).to(np.float64)
    assert inorm.num_parameters() == 0 and getattr(inorm, "running_mean", None) is None
    m, v = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(inorm(x), (x - m) / np.sqrt(v + 1e-5), rtol=1e-9)
    gn = nn.GroupNorm(2, 4).to(np.float64)
    assert gn.num_parameters() == 8
    g = x.reshape(2, 2, 10)
    ref = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5))
    np.testing.assert_allclose(gn(x), ref.reshape(x.shape), rtol=1e-9)
    ln = nn.LayerNorm(5).to(np.float64)
    assert ln.num_parameters() == 10
    np.testing.assert_allclose(ln(x), (x - m) / np.sqrt(v + 1e-5), rtol=1e-9)


def test_activation_defaults_behave():
    z = np.array([-30.0, -1.0, 0.5, 1.0, 25.0])
    np.testing.assert_allclose(nn.LeakyReLU()(z), np.where(z > 0, z, 0.01 * z))
    np.testing.assert_allclose(nn.ELU()(z), np.where(z > 0, z, np.expm1(z)))
    np.testing.assert_allclose(nn.GELU()(z), 0.5 * z * (1 + special.erf(z / math.sqrt(2))),
                               rtol=1e-12)                       # exact, not tanh
    sp = nn.Softplus()(z)
    np.testing.assert_allclose(sp[:4], np.log1p(np.exp(z[:4])), rtol=1e-12)
    assert sp[4] == 25.0                                          # above threshold 20: x
    x = rng().standard_normal((3, 4))
    np.testing.assert_allclose(nn.Softmax()(x).sum(-1), 1.0)     # dim=-1


def test_dropout_default_p():
    x = np.ones((200, 200))
    y = nn.Dropout()(x)
    assert abs(np.mean(y == 0) - 0.5) < 0.01 and set(np.unique(y)) == {0.0, 2.0}


def test_conv_and_pool_defaults_behave():
    x = rng().standard_normal((1, 2, 7, 7))
    conv = nn.Conv2d(2, 3, 3).to(np.float64)
    assert conv(x).shape == (1, 3, 5, 5) and conv.bias is not None   # stride 1, padding 0
    # PyTorch's init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias (fan_in = 18)
    big = nn.Conv2d(16, 32, 3)
    bound = 1 / math.sqrt(16 * 9)
    w = big.weight.data
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound
    lin = nn.Linear(200, 300)
    assert np.abs(lin.weight.data).max() <= 1 / math.sqrt(200)
    assert np.abs(lin.bias.data).max() <= 1 / math.sqrt(200)
    assert nn.MaxPool2d(2)(x).shape == (1, 2, 3, 3)                  # stride = kernel
    # count_include_pad=True: the corner window of a padded 3x3 average sees 4 of 9 values
    ones = np.ones((1, 1, 4, 4))
    assert nn.AvgPool2d(3, stride=1, padding=1)(ones)[0, 0, 0, 0] == pytest.approx(4 / 9)
    assert nn.ConvTranspose2d(2, 3, 3).to(np.float64)(x).shape == (1, 3, 9, 9)


def test_embedding_and_recurrent_init_defaults():
    e = nn.Embedding(400, 50)
    assert abs(e.weight.data.std() - 1) < 0.02 and abs(e.weight.data.mean()) < 0.02  # N(0, 1)
    for cls in (nn.RNN, nn.GRU, nn.LSTM):
        m = cls(5, 40)
        for _, p in m.named_parameters():
            assert np.abs(p.data).max() <= 1 / math.sqrt(40)          # U(+-1/sqrt(hidden))
    r = nn.RNN(2, 3).to(np.float64)
    out, h = r(rng().standard_normal((4, 2, 2)))                       # (L, N, H_in)
    assert out.shape == (4, 2, 3) and h.shape == (1, 2, 3)
    np.testing.assert_allclose(out[-1], h[0])
    assert np.abs(out).max() < 1                                      # tanh


def test_loss_defaults_behave():
    logits = rng().standard_normal((4, 3))
    y = np.array([0, 2, -100, 1])                                      # ignore_index -100
    ce = nn.CrossEntropyLoss()(logits, y)
    lp = logits - special.logsumexp(logits, 1, keepdims=True)
    keep = y != -100
    assert float(ce) == pytest.approx(-lp[keep, y[keep]].mean(), rel=1e-12)   # mean, no smoothing
    # backward: the ignored row gets no gradient, the others (softmax - onehot) / 3
    crit = nn.CrossEntropyLoss()
    crit(logits, y)
    g = crit.backward()
    p = np.exp(lp)
    expect = (p - np.eye(3)[np.where(keep, y, 0)]) / keep.sum()
    expect[~keep] = 0
    np.testing.assert_allclose(g, expect, rtol=1e-12, atol=1e-15)
    a, b = rng(1).standard_normal(10), rng(2).standard_normal(10)
    d = a - b
    assert float(nn.HuberLoss()(a, b)) == pytest.approx(
        np.mean(np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5)), rel=1e-12)
    assert float(nn.MSELoss()(a, b)) == pytest.approx(np.mean(d * d), rel=1e-12)
    assert float(nn.L1Loss()(a, b)) == pytest.approx(np.mean(np.abs(d)), rel=1e-12)


def test_multihead_attention_defaults_behave():
    m = nn.MultiheadAttention(8, 2).to(np.float64)
    assert m.in_proj_bias is not None and m.dropout == 0.0
    x = rng().standard_normal((5, 3, 8))                               # (L, N, E)
    y, w = m(x, x, x)
    assert y.shape == (5, 3, 8) and w.shape == (3, 5, 5)              # weights averaged over heads
    m.train()
    np.testing.assert_array_equal(m(x, x, x)[0], y)                    # dropout 0: deterministic
