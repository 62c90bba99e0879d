r"""refdl.nn.functional: PyTorch's functional names, each backed by its layer's backward.

    from refdl.nn import functional as F
    y = F.relu(F.linear(x, self.weight, self.bias))
    loss = F.cross_entropy(logits, targets, ignore_index=-1, label_smoothing=0.1)

Every function builds a temporary layer object (``F.linear`` a Linear, ``F.conv2d`` a
Conv2d, ``F.cross_entropy`` a CrossEntropyLoss, ...) holding the weights it was given, and
calls it. On refdl.autograd Tensors (or Parameters) that call goes through the bridge
(refdl/autograd/bridge.py): it records ONE node whose vector-Jacobian product is the
layer's own hand-derived backward, and a weight given as a Tensor receives its gradient
through the tape, a Parameter into ``Parameter.grad``. On plain NumPy arrays it returns the
layer's forward as an array (nothing is recorded). So ``F.relu(x)`` and ``nn.ReLU()(x)``
agree bit for bit, forward and backward (tests/test_autograd_modules.py).

The temporary layers never touch the library's random generator when they are made (they
copy a prototype built once per configuration); ``F.dropout`` and
``F.scaled_dot_product_attention`` draw their masks from it exactly like the layers.

Only ``F.pad`` has no layer: it is an engine op (the gradient of padding is a slice).
Derivations: the layers' pages in docs/derivations/; the bridge: docs/autograd-modules.md.
"""
from collections import OrderedDict

import numpy as np

from .. import grad_mode as _gm
from .module import Parameter
from . import activation as _act
from . import attention as _attn
from . import conv as _convmod
from . import dropout as _drop
from . import embedding as _emb
from . import linear as _lin
from . import loss as _loss
from . import normalization as _norm
from . import pooling as _pool

__all__ = ["relu", "leaky_relu", "elu", "gelu", "silu", "softplus", "tanh", "sigmoid",
           "softmax", "log_softmax", "cross_entropy", "nll_loss", "mse_loss", "l1_loss",
           "binary_cross_entropy_with_logits", "linear", "conv1d", "conv2d", "max_pool2d",
           "avg_pool2d", "layer_norm", "dropout", "embedding",
           "scaled_dot_product_attention", "pad"]


# -- plumbing -------------------------------------------------------------------------------
def _autograd():
    from .. import autograd       # autograd sits above nn: imported when first needed
    return autograd


def _is_graph_value(v):
    if isinstance(v, Parameter):
        return True
    T = _autograd().Tensor
    if isinstance(v, T):
        return True
    return isinstance(v, (tuple, list)) and any(isinstance(u, (T, Parameter)) for u in v)


_PROTOS = OrderedDict()


def _shell(key, make):
    """A fresh layer copied from a prototype (made once per ``key``, without touching the
    library's generator): its own per-call caches and parameters, no initialisation cost."""
    proto = _PROTOS.get(key)
    if proto is None:
        proto = _PROTOS[key] = make()
        if len(_PROTOS) > 256:
            _PROTOS.popitem(last=False)
    m = object.__new__(type(proto))
    d = dict(proto.__dict__)
    for name in ("_parameters", "_modules", "_buffers"):
        d[name] = OrderedDict(proto.__dict__[name])
    d["_saved"], d["_saved_stale"] = [], False
    m.__dict__.update(d)
    return m


def _param(w, sources):
    """A Parameter for the weight ``w`` given to a functional op.

    A Parameter is used as it is (its gradient goes to ``.grad``); a Tensor is wrapped in a
    Parameter viewing its array, and ``sources`` records that the Tensor stands behind it
    (its gradient flows into the Tensor's graph); an array is a constant."""
    if w is None or isinstance(w, Parameter):
        return w
    T = _autograd().Tensor
    p = Parameter.__new__(Parameter)
    if isinstance(w, T):
        p.data, p.requires_grad = w.data, w.requires_grad
        if w.requires_grad:
            sources[id(p)] = w
    else:
        p.data, p.requires_grad = np.asarray(w), False
    p.grad = None
    return p


def _run(layer, inputs, sources=None, kwargs=None, weights=()):
    """Call ``layer`` on the inputs: through the bridge when a Tensor or Parameter takes
    part, else on arrays with nothing recorded."""
    kwargs = kwargs or {}
    if any(_is_graph_value(v) for v in inputs) or any(_is_graph_value(w) for w in weights) \
            or any(_is_graph_value(v) for v in kwargs.values()):
        return _autograd().call_module(layer, tuple(inputs), kwargs, sources)
    with _gm.no_grad():
        return layer(*inputs, **kwargs)


def _dtype(x):
    return np.asarray(getattr(x, "data", x)).dtype


def _rng0():
    return np.random.default_rng(0)     # prototypes are overwritten: any values will do


# -- activations -------------------------------------------------------------------------------
def relu(input, inplace=False):
    """max(x, 0) (nn.ReLU)."""
    return _run(_act.ReLU(), [input])


def leaky_relu(input, negative_slope=0.01, inplace=False):
    return _run(_act.LeakyReLU(negative_slope), [input])


def elu(input, alpha=1.0, inplace=False):
    return _run(_act.ELU(alpha), [input])


def gelu(input, approximate="none"):
    """x Phi(x) (nn.GELU), or its tanh approximation."""
    return _run(_act.GELU(approximate), [input])


def silu(input, inplace=False):
    return _run(_act.SiLU(), [input])


def softplus(input, beta=1.0, threshold=20.0):
    return _run(_act.Softplus(beta, threshold), [input])


def tanh(input):
    return _run(_act.Tanh(), [input])


def sigmoid(input):
    return _run(_act.Sigmoid(), [input])


def softmax(input, dim=-1, dtype=None):
    """exp(x_i) / sum_j exp(x_j) along ``dim`` (nn.Softmax)."""
    return _run(_act.Softmax(dim), [input])


def log_softmax(input, dim=-1, dtype=None):
    return _run(_act.LogSoftmax(dim), [input])


# -- losses --------------------------------------------------------------------------------------
def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """nn.CrossEntropyLoss on logits: input (N, C) or (N, C, d...), target class indices
    (or probabilities); ``ignore_index``, ``label_smoothing`` and ``reduction`` as PyTorch."""
    w = None if weight is None else np.asarray(getattr(weight, "data", weight))
    return _run(_loss.CrossEntropyLoss(w, ignore_index, reduction, label_smoothing),
                [input, target])


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    w = None if weight is None else np.asarray(getattr(weight, "data", weight))
    return _run(_loss.NLLLoss(w, ignore_index, reduction), [input, target])


def mse_loss(input, target, reduction="mean"):
    return _run(_loss.MSELoss(reduction), [input, target])


def l1_loss(input, target, reduction="mean"):
    return _run(_loss.L1Loss(reduction), [input, target])


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean",
                                     pos_weight=None):
    a = (lambda v: None if v is None else np.asarray(getattr(v, "data", v)))
    return _run(_loss.BCEWithLogitsLoss(a(weight), reduction, a(pos_weight)),
                [input, target])


# -- layers with weights -------------------------------------------------------------------------
def linear(input, weight, bias=None):
    """y = x W^T + b (nn.Linear): W (out, in), b (out,)."""
    W = np.asarray(getattr(weight, "data", weight))
    if W.ndim != 2:
        raise ValueError(f"linear: expected a weight of shape (out_features, in_features), "
                         f"got {W.shape}")
    out_f, in_f = W.shape
    layer = _shell(("linear", in_f, out_f, bias is not None, W.dtype.str),
                   lambda: _lin.Linear(in_f, out_f, bias is not None, dtype=W.dtype,
                                       generator=_rng0()))
    sources = {}
    layer.weight = _param(weight, sources)
    if bias is not None:
        layer.bias = _param(bias, sources)
    return _run(layer, [input], sources, weights=(weight, bias))


def _conv(cls, rank, input, weight, bias, stride, padding, dilation, groups):
    W = np.asarray(getattr(weight, "data", weight))
    if W.ndim != rank + 2:
        raise ValueError(f"conv{rank}d: expected a weight of shape (out_channels, "
                         f"in_channels/groups, {'k, ' * rank}), got {W.shape}")
    out_c, in_c = W.shape[0], W.shape[1] * groups
    k = tuple(W.shape[2:])
    key = (cls.__name__, out_c, in_c, k, str(stride), str(padding), str(dilation), groups,
           bias is not None, W.dtype.str)
    layer = _shell(key, lambda: cls(in_c, out_c, k, stride=stride, padding=padding,
                                    dilation=dilation, groups=groups, bias=bias is not None,
                                    dtype=W.dtype, generator=_rng0()))
    sources = {}
    layer.weight = _param(weight, sources)
    if bias is not None:
        layer.bias = _param(bias, sources)
    return _run(layer, [input], sources, weights=(weight, bias))


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """nn.Conv1d with the given weight (out, in/groups, k) and bias."""
    return _conv(_conv_cls("Conv1d"), 1, input, weight, bias, stride, padding, dilation,
                 groups)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """nn.Conv2d with the given weight (out, in/groups, kh, kw) and bias."""
    return _conv(_conv_cls("Conv2d"), 2, input, weight, bias, stride, padding, dilation,
                 groups)


def _conv_cls(name):
    return getattr(_convmod, name)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """nn.LayerNorm over the trailing ``normalized_shape`` with the given gamma and beta."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else \
        tuple(normalized_shape)
    dt = _dtype(input)
    affine = weight is not None
    layer = _shell(("layer_norm", shape, float(eps), affine, bias is not None, dt.str),
                   lambda: _norm.LayerNorm(shape, eps=eps, elementwise_affine=affine,
                                           bias=bias is not None, dtype=dt))
    sources = {}
    if affine:
        layer.weight = _param(weight, sources)
        if bias is not None:
            layer.bias = _param(bias, sources)
    elif bias is not None:
        raise ValueError("layer_norm: a bias without a weight is not supported; pass "
                         "weight=ones")
    return _run(layer, [input], sources, weights=(weight, bias))


def embedding(input, weight, padding_idx=None):
    """Rows of ``weight`` (num_embeddings, dim) at the integer indices ``input``."""
    W = np.asarray(getattr(weight, "data", weight))
    layer = _shell(("embedding", W.shape, padding_idx, W.dtype.str),
                   lambda: _emb.Embedding(W.shape[0], W.shape[1], padding_idx=padding_idx,
                                          dtype=W.dtype, generator=_rng0()))
    sources = {}
    layer.weight = _param(weight, sources)
    return _run(layer, [input], sources, weights=(weight,))


# -- layers without weights -----------------------------------------------------------------------
def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    return _run(_pool.MaxPool2d(kernel_size, stride, padding, dilation, return_indices,
                                ceil_mode), [input])


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    return _run(_pool.AvgPool2d(kernel_size, stride, padding, ceil_mode, count_include_pad,
                                divisor_override), [input])


def dropout(input, p=0.5, training=True, inplace=False):
    """Inverted dropout (nn.Dropout): zero with probability p, scale the rest by 1/(1-p).
    ``training=False`` returns the input unchanged (as PyTorch's)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training:
        return input
    return _run(_drop.Dropout(p), [input])


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None):
    """softmax(q k^T * scale + M) v (nn.ScaledDotProductAttention's backward).

    ``attn_mask`` boolean (True = may attend) or float (added); ``is_causal``; dropout
    with ``dropout_p`` on the weights, always (the function has no train/eval mode)."""
    layer = _attn.ScaledDotProductAttention(dropout=dropout_p, scale=scale)
    mask = None if attn_mask is None else np.asarray(getattr(attn_mask, "data", attn_mask))
    return _run(layer, [query, key, value], kwargs=dict(attn_mask=mask, is_causal=is_causal))


def pad(input, pad, mode="constant", value=0.0):
    """Pad the last len(pad)//2 dimensions: ``pad = (left, right, top, bottom, ...)``,
    the last dimension first (PyTorch's order). Only ``mode='constant'``.

    Backward: the gradient of the padded tensor, sliced back to the input's place."""
    if mode != "constant":
        raise NotImplementedError(f"pad: mode {mode!r} is not supported (only 'constant')")
    pad = tuple(int(p) for p in pad)
    if len(pad) % 2:
        raise ValueError(f"pad: expected an even number of pad sizes, got {len(pad)}")
    nd = np.ndim(getattr(input, "data", input))
    if len(pad) // 2 > nd:
        raise ValueError(f"pad: {len(pad) // 2} dimensions to pad, the input has {nd}")
    widths = [(0, 0)] * nd
    for i in range(len(pad) // 2):
        widths[nd - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    if any(a < 0 or b < 0 for a, b in widths):
        raise ValueError(f"pad: negative pad sizes are not supported, got {pad}")
    if not _is_graph_value(input):
        return np.pad(np.asarray(input), widths, constant_values=value)
    return _autograd().ops.Pad(widths, value)(input)
