r"""VGG-style networks (Simonyan & Zisserman, 2015): stacks of 3x3 convolutions + ReLU
separated by 2x2 max-pooling, then fully connected layers.

A configuration is a list: an int is a 3x3 convolution (padding 1) to that many channels
(followed by BatchNorm2d with ``batch_norm=True``, then ReLU), "M" a 2x2 max-pool.
With BatchNorm the convolutions have no bias (BatchNorm subtracts the mean, so a bias
before it has gradient exactly 0; torchvision's vgg*_bn keep the unused bias).
torchvision's VGG-11 is ``cfgs["A"]``. Backward: the chain rule through ``features`` and
``classifier`` in reverse.
"""
from .. import nn
from ..nn.validate import check_float, layer_name

__all__ = ["VGG", "vgg11", "VGGSmall", "cfgs"]

cfgs = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M"],
    "small": [16, 16, "M", 32, 32, "M"],
}


class VGG(nn.Module):
    """``features`` from ``cfg``, then flatten - Linear(hidden) - ReLU - ... - Linear(classes).

    ``input_shape`` = (C, H, W) sets the classifier's input size (no adaptive pooling);
    ``hidden`` the widths of the hidden fully connected layers.
    """

    def __init__(self, cfg="small", num_classes=10, input_shape=(3, 32, 32), batch_norm=False,
                 hidden=(64,)):
        super().__init__()
        cfg = cfgs[cfg] if isinstance(cfg, str) else list(cfg)
        c, h, w = (int(v) for v in input_shape)
        self.input_shape = (c, h, w)
        layers = []
        for v in cfg:
            if v == "M":
                if h < 2 or w < 2:
                    raise ValueError(f"VGG: input {input_shape} is too small for {cfg}")
                layers.append(nn.MaxPool2d(2, stride=2))
                h, w = h // 2, w // 2
            else:
                layers.append(nn.Conv2d(c, v, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(v))
                layers.append(nn.ReLU())
                c = v
        self.features = nn.Sequential(*layers)
        head = [nn.Flatten(1)]
        width = c * h * w
        for hid in hidden:
            head += [nn.Linear(width, hid), nn.ReLU()]
            width = hid
        head.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*head)

    def extra_repr(self):
        return f"input_shape={self.input_shape}"

    def forward(self, x):
        x = check_float(self, x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{layer_name(self)}: expected input of shape (N, "
                             f"{', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        return self.classifier(self.features(x))

    accepts_input_grad = True

    def backward(self, grad_out, input_grad=True):
        """features.backward(classifier.backward(g)): the chain rule through the two stacks
        (``input_grad=False``: the first convolution skips dL/dx, which is None)."""
        return self.features.backward(self.classifier.backward(grad_out),
                                      input_grad=input_grad)


def vgg11(num_classes=1000, input_shape=(3, 224, 224), batch_norm=False):
    """VGG-11 (configuration A) with torchvision's 4096-4096 classifier."""
    return VGG("A", num_classes, input_shape, batch_norm, hidden=(4096, 4096))


def VGGSmall(num_classes=10, input_shape=(1, 8, 8), batch_norm=True):
    """Two VGG blocks (16, 16, pool, 32, 32, pool) and a 64-unit hidden layer."""
    return VGG("small", num_classes, input_shape, batch_norm, hidden=(64,))
