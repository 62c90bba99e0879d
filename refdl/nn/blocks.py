r"""Blocks whose backward is the chain rule over their children, made visible.

* ``Add``: y = x_1 + ... + x_k. Backward: every input receives dL/dy unchanged
  (the addition *copies* the gradient to each branch).
* ``Concat(dim)``: y = concatenate(x_1, ..., x_k along dim). Backward: dL/dx_i is the slice
  of dL/dy that x_i filled.
* ``BasicBlock`` and ``Bottleneck``: the residual blocks of He et al. (2016), with
  torchvision's layout and state_dict keys. The input x *fans out* to the residual branch
  F and the shortcut S (identity, or a 1x1 convolution + BatchNorm "projection" when the
  stride or the channel count changes), and the two are added:

      y = relu(F(x) + S(x))
      dL/dx = dL/dx|_through F  +  dL/dx|_through S           (the fan-out is summed)

  With the identity shortcut dL/dx = J_F^T g + g: the gradient reaches x undiminished
  whatever F does to it, which is why deep residual nets train (docs/derivations/residual.md).

Caches: Add records ``AddCache(k, y_shape)`` and Concat ``ConcatCache(sizes, dim)`` per
training-mode call; BasicBlock and Bottleneck record nothing of their own (their children
record theirs, and their backward calls the children's backwards in reverse order).

Convolutions and activations are looked up when a block is built, so this file imports
even where the convolution layers are not yet available.
"""
from typing import NamedTuple

import numpy as np

from .validate import check_float, layer_name
from .activation import ReLU
from .batchnorm import BatchNorm2d
from .conv import Conv2d
from .container import Sequential
from .module import Module

__all__ = ["Add", "Concat", "BasicBlock", "Bottleneck"]


class AddCache(NamedTuple):
    """One call of Add: how many inputs receive dL/dy, and y's shape."""
    k: int
    y_shape: tuple


class ConcatCache(NamedTuple):
    """One call of Concat: each input's size along ``dim`` (where to cut dL/dy)."""
    sizes: list
    dim: int                  # the axis, non-negative
    y_shape: tuple


class Add(Module):
    r"""Sum of its inputs: ``Add()(x1, x2, ...) = x1 + x2 + ...`` (all of one shape).

    Backward: dL/dx_i = dL/dy for every i; returns a tuple (one array for one input).
    """

    def forward(self, *xs):
        if not xs:
            raise ValueError("Add: expected at least one input")
        xs = [check_float(self, x, f"input {i}") for i, x in enumerate(xs)]
        for i, x in enumerate(xs[1:], 1):
            if x.shape != xs[0].shape:
                raise ValueError(f"{layer_name(self)}: all inputs must have the same shape, "
                                 f"got input 0 {tuple(xs[0].shape)} and input {i} "
                                 f"{tuple(x.shape)}")
        if self.recording:
            self.save_for_backward(AddCache(k=len(xs), y_shape=xs[0].shape))
        y = xs[0].copy()
        for x in xs[1:]:
            y = y + x
        return y

    def backward(self, grad_out):
        c = self.pop_saved()
        g = np.asarray(grad_out)
        if g.shape != c.y_shape:
            raise ValueError(f"{layer_name(self)}.backward: expected grad_out of shape "
                             f"{tuple(c.y_shape)} (the output's), got {tuple(g.shape)}")
        if c.k == 1:
            return g.copy()
        return tuple(g.copy() for _ in range(c.k))


class Concat(Module):
    r"""Concatenation along ``dim`` (``torch.cat(xs, dim)`` as a module; default channels).

    (N, C_1, *), ..., (N, C_k, *) -> (N, C_1 + ... + C_k, *): every other dimension must
    agree (a ValueError names both shapes). Backward: dL/dx_i is the block of dL/dy at
    x_i's position along dim; returns a tuple (one array for one input).
    """

    def __init__(self, dim=1):
        super().__init__()
        self.dim = int(dim)

    def extra_repr(self):
        return f"dim={self.dim}"

    def forward(self, *xs):
        if not xs:
            raise ValueError(f"{layer_name(self)}: expected at least one input")
        xs = [check_float(self, x, f"input {i}") for i, x in enumerate(xs)]
        nd = xs[0].ndim
        if not -nd <= self.dim < nd:
            raise ValueError(f"{layer_name(self)}: dim {self.dim} out of range for inputs "
                             f"of shape {tuple(xs[0].shape)}")
        d = self.dim % nd
        for i, x in enumerate(xs[1:], 1):
            rest, rest0 = x.shape[:d] + x.shape[d + 1:], xs[0].shape[:d] + xs[0].shape[d + 1:]
            if x.ndim != nd or rest != rest0:
                raise ValueError(f"{layer_name(self)}: inputs must have the same shape except "
                                 f"along dim {self.dim}, got input 0 {tuple(xs[0].shape)} and "
                                 f"input {i} {tuple(x.shape)}")
        sizes = [x.shape[d] for x in xs]
        if self.recording:
            self.save_for_backward(ConcatCache(
                sizes=sizes, dim=d, y_shape=xs[0].shape[:d] + (sum(sizes),) + xs[0].shape[d + 1:]))
        return np.concatenate(xs, axis=d)

    def backward(self, grad_out):
        c = self.pop_saved()
        g = np.asarray(grad_out)
        if g.shape != c.y_shape:
            raise ValueError(f"{layer_name(self)}.backward: expected grad_out of shape "
                             f"{tuple(c.y_shape)} (the output's), got {tuple(g.shape)}")
        parts = np.split(g, np.cumsum(c.sizes)[:-1], axis=c.dim)
        parts = [p.copy() for p in parts]
        return parts[0] if len(parts) == 1 else tuple(parts)


def _norm(norm_layer):
    if norm_layer is None:
        return BatchNorm2d
    return norm_layer


def projection(inplanes, outplanes, stride, norm_layer=None):
    """The projection shortcut: 1x1 convolution with ``stride`` followed by a norm layer."""
    return Sequential(Conv2d(inplanes, outplanes, 1, stride=stride, bias=False),
                      _norm(norm_layer)(outplanes))


class BasicBlock(Module):
    r"""Residual block of ResNet-18/34: two 3x3 convolutions and a shortcut.

        h = relu1(bn1(conv1(x)))          conv1: 3x3, stride, inplanes -> planes
        F = bn2(conv2(h))                 conv2: 3x3, planes -> planes
        S = x, or downsample(x)           1x1 conv (stride) + BN when the shape changes
        y = relu2(F + S)

    x (N, inplanes, H, W) -> y (N, planes, ceil(H/stride), ceil(W/stride)).

    Backward (g = dL/dy): g' = relu2.backward(g); the sum sends g' to both branches;
    dL/dx = conv1ᵀ(bn1ᵀ(relu1ᵀ(conv2ᵀ(bn2ᵀ(g'))))) + (g' or downsampleᵀ(g')).

    ``norm_layer`` (default BatchNorm2d) builds the norm layers; ``nn.Identity`` removes
    them. ``residual=False`` drops the shortcut (a "plain" block, for comparisons).
    """
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, norm_layer=None,
                 residual=True):
        super().__init__()
        norm = _norm(norm_layer)
        self.inplanes, self.planes, self.stride = int(inplanes), int(planes), int(stride)
        self.residual = bool(residual)
        self.conv1 = Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = norm(planes)
        if downsample is None and self.residual and (stride != 1 or inplanes != planes):
            downsample = projection(inplanes, planes, stride, norm_layer)
        self.downsample = downsample
        self.relu2 = ReLU()

    def extra_repr(self):
        return f"{self.inplanes}, {self.planes}, stride={self.stride}" + \
            ("" if self.residual else ", residual=False")

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        if self.residual:
            shortcut = x if self.downsample is None else self.downsample(x)
            if shortcut.shape != out.shape:
                raise ValueError(f"{layer_name(self)}: residual branch {tuple(out.shape)} and "
                                 f"shortcut {tuple(shortcut.shape)} differ in shape")
            out = out + shortcut
        return self.relu2(out)

    def backward(self, grad_out):
        g = self.relu2.backward(grad_out)                  # dL/d(F + S)
        g_branch = self.conv1.backward(self.bn1.backward(self.relu1.backward(
            self.conv2.backward(self.bn2.backward(g)))))   # through F
        if not self.residual:
            return g_branch
        g_short = g if self.downsample is None else self.downsample.backward(g)
        return g_branch + g_short                          # x fanned out: sum


class Bottleneck(Module):
    r"""Residual block of ResNet-50/101/152 (torchvision's v1.5: the stride on the 3x3).

        h1 = relu1(bn1(conv1(x)))        1x1, inplanes -> planes
        h2 = relu2(bn2(conv2(h1)))       3x3, stride, planes -> planes
        F  = bn3(conv3(h2))              1x1, planes -> planes * 4
        y  = relu3(F + S(x))             S = identity or 1x1 conv (stride) + BN

    x (N, inplanes, H, W) -> y (N, 4 planes, ceil(H/stride), ceil(W/stride)).
    Backward: the chain rule through F in reverse, plus the shortcut's gradient (summed).
    """
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, norm_layer=None,
                 residual=True):
        super().__init__()
        norm = _norm(norm_layer)
        out = planes * self.expansion
        self.inplanes, self.planes, self.stride = int(inplanes), int(planes), int(stride)
        self.residual = bool(residual)
        self.conv1 = Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.relu2 = ReLU()
        self.conv3 = Conv2d(planes, out, 1, bias=False)
        self.bn3 = norm(out)
        if downsample is None and self.residual and (stride != 1 or inplanes != out):
            downsample = projection(inplanes, out, stride, norm_layer)
        self.downsample = downsample
        self.relu3 = ReLU()

    def extra_repr(self):
        return f"{self.inplanes}, {self.planes}, stride={self.stride}" + \
            ("" if self.residual else ", residual=False")

    def forward(self, x):
        h = self.relu1(self.bn1(self.conv1(x)))
        h = self.relu2(self.bn2(self.conv2(h)))
        out = self.bn3(self.conv3(h))
        if self.residual:
            shortcut = x if self.downsample is None else self.downsample(x)
            if shortcut.shape != out.shape:
                raise ValueError(f"{layer_name(self)}: residual branch {tuple(out.shape)} and "
                                 f"shortcut {tuple(shortcut.shape)} differ in shape")
            out = out + shortcut
        return self.relu3(out)

    def backward(self, grad_out):
        g = self.relu3.backward(grad_out)
        h = self.conv3.backward(self.bn3.backward(g))
        h = self.conv2.backward(self.bn2.backward(self.relu2.backward(h)))
        g_branch = self.conv1.backward(self.bn1.backward(self.relu1.backward(h)))
        if not self.residual:
            return g_branch
        g_short = g if self.downsample is None else self.downsample.backward(g)
        return g_branch + g_short
