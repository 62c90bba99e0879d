r"""LeNet-5 (LeCun et al., 1998), with a modern default (ReLU, max-pooling).

    features:   conv1 (C -> 6, 5x5) - act - pool 2x2 - conv2 (6 -> 16, 5x5) - act - pool 2x2
    classifier: flatten - fc (16 h w -> 120) - act - fc (120 -> 84) - act - fc (84 -> classes)

For 32x32 input the convolutions are unpadded (the original: 32 -> 28 -> 14 -> 10 -> 5);
for 28x28 (MNIST) conv1 has padding 2 (28 -> 28 -> 14 -> 10 -> 5); for small images such
as the 8x8 digits both have padding 2 (8 -> 8 -> 4 -> 4 -> 2). Backward: the chain rule
through features and classifier in reverse (two Sequentials).
"""
from .. import nn
from ..nn.validate import check_float, layer_name

__all__ = ["LeNet5"]


class LeNet5(nn.Module):
    """LeNet-5 for (N, C, H, W) images -> (N, num_classes) logits.

    ``activation``: "relu" (default) or "tanh" (the original); ``pool``: "max" (default)
    or "avg" (the original's subsampling).
    """

    def __init__(self, num_classes=10, input_shape=(1, 28, 28), activation="relu", pool="max"):
        super().__init__()
        c, h, w = (int(v) for v in input_shape)
        self.input_shape = (c, h, w)
        acts = {"relu": nn.ReLU, "tanh": nn.Tanh}
        pools = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
        if activation not in acts or pool not in pools:
            raise ValueError(f"LeNet5: activation must be 'relu' or 'tanh' and pool 'max' or "
                             f"'avg', got {activation!r}, {pool!r}")
        act, pl = acts[activation], pools[pool]
        p1 = 0 if min(h, w) >= 32 else 2
        h1, w1 = (h + 2 * p1 - 4) // 2, (w + 2 * p1 - 4) // 2
        p2 = 0 if min(h1, w1) >= 9 else 2
        h2, w2 = (h1 + 2 * p2 - 4) // 2, (w1 + 2 * p2 - 4) // 2
        if min(h2, w2) < 1:
            raise ValueError(f"LeNet5: input {input_shape} is too small")
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=p1), act(), pl(2),
            nn.Conv2d(6, 16, 5, padding=p2), act(), pl(2))
        self.classifier = nn.Sequential(
            nn.Flatten(1), nn.Linear(16 * h2 * w2, 120), act(), nn.Linear(120, 84), act(),
            nn.Linear(84, num_classes))

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
