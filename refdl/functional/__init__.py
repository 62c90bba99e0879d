"""Stateless NumPy math used by the layers: arrays in, arrays out."""
from .activation import (log_sigmoid, log_softmax, logsumexp, sigmoid, softmax,
                         softmax_backward, softplus)

__all__ = ["sigmoid", "log_sigmoid", "softplus", "logsumexp", "softmax", "softmax_backward",
           "log_softmax"]

# convolution arithmetic and the pure-NumPy im2col/col2im and pooling reference (conv)
from .conv import (col2im, conv_output_size, conv_transpose_output_size, im2col,  # noqa: E402
                   pool_output_size)
from . import conv, pooling  # noqa: E402,F401

__all__ += ["im2col", "col2im", "conv_output_size", "conv_transpose_output_size",
            "pool_output_size"]
