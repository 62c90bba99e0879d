"""Stateless NumPy math used by the layers: arrays in, arrays out."""
from .activation import log_sigmoid, log_softmax, logsumexp, sigmoid, softmax, softplus

__all__ = ["sigmoid", "log_sigmoid", "softplus", "logsumexp", "softmax", "log_softmax"]
