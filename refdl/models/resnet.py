r"""ResNets (He et al., 2016) with torchvision's layout and state_dict keys.

    stem:    conv1 (7x7, stride 2) - bn1 - relu - maxpool (3x3, stride 2)      "imagenet"
             conv1 (3x3, stride 1) - bn1 - relu                               "cifar"
    stages:  layer1 .. layerK, each a run of residual blocks (BasicBlock or Bottleneck);
             the first block of a stage halves the resolution (stride 2, except layer1)
             and changes the width, with a 1x1 projection shortcut
    head:    avgpool (AdaptiveAvgPool2d(1)) - flatten - fc (Linear)

Backward is the chain rule through the same list in reverse; each block adds its
shortcut's gradient to its branch's (refdl/nn/blocks.py).

Builders: ``resnet18/34/50`` (ImageNet layout), ``ResNet20`` style CIFAR nets via
``ResNet(BasicBlock, [3, 3, 3], widths=(16, 32, 64), stem="cifar")`` and
``ResNetSmall(num_classes=10, input_shape=(1, 8, 8))`` for the 8x8 digits and 32x32 images.
"""
from .. import nn
from ..nn.validate import check_float, layer_name
from ..nn.blocks import BasicBlock, Bottleneck

__all__ = ["ResNet", "resnet18", "resnet34", "resnet50", "ResNetSmall", "BasicBlock",
           "Bottleneck"]


class ResNet(nn.Module):
    """A residual network: stem, ``len(layers)`` stages of residual blocks, pooled head.

    ``block``: BasicBlock or Bottleneck; ``layers``: blocks per stage; ``widths``: the
    ``planes`` of each stage (output channels = planes * block.expansion); ``stem``:
    "imagenet" or "cifar"; ``norm_layer``: BatchNorm2d by default (``nn.Identity`` for
    none); ``residual=False`` builds the same net without shortcuts (a "plain" net).
    Input (N, in_channels, H, W) -> logits (N, num_classes).
    """

    def __init__(self, block=BasicBlock, layers=(2, 2, 2, 2), num_classes=1000,
                 in_channels=3, widths=(64, 128, 256, 512), stem="imagenet",
                 norm_layer=None, residual=True):
        super().__init__()
        if len(widths) != len(layers):
            raise ValueError(f"ResNet: widths {tuple(widths)} and layers {tuple(layers)} "
                             "must have the same length")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"ResNet: stem must be 'imagenet' or 'cifar', got {stem!r}")
        norm = norm_layer or nn.BatchNorm2d
        self.in_channels, self.num_classes, self.stem = int(in_channels), int(num_classes), stem
        w0 = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, w0, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, w0, 3, stride=1, padding=1, bias=False)
        self.bn1 = norm(w0)
        self.relu = nn.ReLU()
        order = ["conv1", "bn1", "relu"]
        if stem == "imagenet":
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            order.append("maxpool")
        inplanes = w0
        for i, (planes, n) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(block(inplanes, planes, stride=stride if j == 0 else 1,
                                    norm_layer=norm_layer, residual=residual))
                inplanes = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            order.append(f"layer{i + 1}")
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(inplanes, num_classes)
        self._order = order + ["avgpool", "flatten", "fc"]

    def extra_repr(self):
        return f"stem={self.stem!r}, num_classes={self.num_classes}"

    def forward(self, x):
        x = check_float(self, x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{layer_name(self)}: expected input of shape (N, "
                             f"{self.in_channels}, H, W), got {tuple(x.shape)}")
        for name in self._order:
            x = getattr(self, name)(x)
        return x

    accepts_input_grad = True

    def backward(self, grad_out, input_grad=True):
        """The chain rule in reverse through stem, stages, pooling and head (each block sums the
        gradients of its residual branch and its shortcut, see nn.blocks);
        ``input_grad=False``: the stem skips dL/dx, which is None."""
        return nn.backward_chain([getattr(self, name) for name in self._order], grad_out,
                                 input_grad)


def resnet18(num_classes=1000, in_channels=3):
    """ResNet-18: BasicBlock, [2, 2, 2, 2], widths 64..512, ImageNet stem (11.7M params)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


def resnet34(num_classes=1000, in_channels=3):
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels)


def resnet50(num_classes=1000, in_channels=3):
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)


def ResNetSmall(num_classes=10, input_shape=(1, 8, 8), blocks_per_stage=1, widths=None,
                norm_layer=None, residual=True):
    """A small CIFAR-style ResNet (3x3 stem, no max-pool) for small images.

    ``input_shape`` = (C, H, W) of one example. Stages: widths (16, 32) for inputs under
    32 pixels (8x8 -> 8x8 -> 4x4), (16, 32, 64) from 32 pixels on (32 -> 32 -> 16 -> 8,
    ResNet-20's layout with ``blocks_per_stage=3``).
    """
    c, h, w = input_shape
    if widths is None:
        widths = (16, 32, 64) if min(h, w) >= 32 else (16, 32)
    return ResNet(BasicBlock, [blocks_per_stage] * len(widths), num_classes, c,
                  widths=widths, stem="cifar", norm_layer=norm_layer, residual=residual)
