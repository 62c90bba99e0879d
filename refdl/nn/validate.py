"""Input checks for layers, refdl's and yours: clear errors before any arithmetic.

Every message names the layer, what it expected and what it got, e.g.
``Linear(in_features=4, out_features=3): expected input of shape (N, 4) or (*, 4), got (2, 5)``.
A layer of your own uses them the same way (docs/new-layer.md)::

    from refdl.nn.validate import check_float, check_grad, layer_name
"""
import numpy as np

__all__ = ["layer_name", "check_float", "check_ndim", "check_dim", "check_same_shape",
           "check_grad"]


def layer_name(layer):
    """``Linear(in_features=4, ...)`` for a module, the string itself for a string."""
    if isinstance(layer, str):
        return layer
    extra = layer.extra_repr() if hasattr(layer, "extra_repr") else ""
    return f"{type(layer).__name__}({extra})"


def check_float(layer, x, what="input"):
    """Return ``x`` as an ndarray, refusing non-arrays of numbers and non-float dtypes."""
    if not isinstance(x, np.ndarray):
        if isinstance(x, (list, tuple, float, int, np.number)):
            x = np.asarray(x)
        else:
            raise TypeError(f"{layer_name(layer)}: expected {what} to be a numpy array, "
                            f"got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{layer_name(layer)}: expected a floating-point {what} "
                        f"(float32 or float64), got dtype {x.dtype}")
    return x


def check_ndim(layer, x, ndims, what="input", shape_hint=None):
    """Refuse ``x`` unless ``x.ndim`` is one of ``ndims``."""
    if isinstance(ndims, int):
        ndims = (ndims,)
    if x.ndim not in ndims:
        hint = f" {shape_hint}" if shape_hint else ""
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{layer_name(layer)}: expected a {want} {what}{hint}, "
                         f"got shape {tuple(x.shape)}")


def check_dim(layer, x, axis, size, what="input", shape_hint=None):
    """Refuse ``x`` unless ``x.shape[axis] == size``."""
    if x.ndim == 0 or x.shape[axis] != size:
        hint = f" {shape_hint}" if shape_hint else f" with size {size} along axis {axis}"
        raise ValueError(f"{layer_name(layer)}: expected {what} of shape{hint}, "
                         f"got {tuple(x.shape)}")


def check_same_shape(layer, a, b, what_a="input", what_b="target"):
    if a.shape != b.shape:
        raise ValueError(f"{layer_name(layer)}: {what_a} and {what_b} must have the same "
                         f"shape, got {what_a} {tuple(a.shape)} and {what_b} {tuple(b.shape)}")


def check_grad(layer, grad, expected_shape, what="grad_out"):
    """Refuse an upstream gradient whose shape is not the output's."""
    grad = check_float(layer, grad, what)
    if grad.shape != tuple(expected_shape):
        raise ValueError(f"{layer_name(layer)}.backward: expected {what} of shape "
                         f"{tuple(expected_shape)} (the output's), got {tuple(grad.shape)}")
    return grad
