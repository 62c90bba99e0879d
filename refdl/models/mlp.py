"""The multilayer perceptron: Flatten, then (Linear, activation[, Dropout]) per hidden layer,
then a Linear to the class scores (logits; pair it with ``nn.CrossEntropyLoss``)."""
import numpy as np

from .. import nn

__all__ = ["MLP"]

_ACTIVATIONS = {"relu": "ReLU", "leaky_relu": "LeakyReLU", "elu": "ELU", "tanh": "Tanh",
                "sigmoid": "Sigmoid", "gelu": "GELU", "silu": "SiLU", "softplus": "Softplus"}


class MLP(nn.Sequential):
    """``MLP(num_classes=10, input_shape=(64,), hidden=(128, 64), activation='relu', dropout=0.0)``

    x (N, *input_shape) -> Flatten -> [Linear(d_{i-1}, d_i) -> act -> Dropout(p)]*
    -> Linear(d_last, num_classes) -> logits (N, num_classes).

    Image-shaped input (N, 1, 8, 8) works because the first layer flattens it. Keys of
    ``state_dict()`` follow the layer order (``1.weight`` is the first Linear's weight).
    ``backward(dL/dlogits)`` is Sequential's: the chain rule through the layers in reverse.
    ``generator`` draws the initial weights and the dropout masks (None: refdl's global RNG).
    """

    def __init__(self, num_classes=10, input_shape=(64,), hidden=(128, 64), activation="relu",
                 dropout=0.0, dtype=np.float32, generator=None):
        if isinstance(input_shape, (int, np.integer)):
            input_shape = (int(input_shape),)
        input_shape = tuple(int(s) for s in input_shape)
        if not input_shape or any(s <= 0 for s in input_shape):
            raise ValueError(f"MLP: input_shape must be positive sizes, got {input_shape}")
        if isinstance(hidden, (int, np.integer)):
            hidden = (int(hidden),)
        key = str(activation).lower()
        if key not in _ACTIVATIONS:
            raise ValueError(f"MLP: unknown activation {activation!r}; choose from "
                             f"{sorted(_ACTIVATIONS)}")
        act = getattr(nn, _ACTIVATIONS[key])
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"MLP: dropout must be in [0, 1), got {dropout}")
        layers = [nn.Flatten()]
        d = int(np.prod(input_shape))
        for h in hidden:
            layers += [nn.Linear(d, int(h), dtype=dtype, generator=generator), act()]
            if dropout > 0:
                layers.append(nn.Dropout(float(dropout), generator=generator))
            d = int(h)
        layers.append(nn.Linear(d, int(num_classes), dtype=dtype, generator=generator))
        super().__init__(*layers)
        self.input_shape = input_shape
        self.num_classes = int(num_classes)
