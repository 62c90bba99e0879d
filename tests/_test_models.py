"""A registry builder for the command-line tests: an MLP of another width, so that a
checkpoint from it does not fit the default MLP."""
from refdl.models.mlp import MLP


def WideMLP(num_classes=10, input_shape=(64,)):
    return MLP(num_classes, input_shape, hidden=(32,))
