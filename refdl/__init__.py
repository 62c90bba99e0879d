"""refdl: a reference deep-learning library in NumPy.

Every layer's backward is derived by hand (docstring and docs/derivations/), proved by a
numeric gradient check in tests/, and fast enough to train real networks on a laptop CPU.
"""
__version__ = "0.1.0"

# first, before anything loads NumPy and its BLAS: the BLAS workers' spin (refdl.threads)
from . import threads  # noqa: F401,I001
from . import random  # noqa: F401
from .grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled  # noqa: F401
from .random import manual_seed  # noqa: F401
from .memory import keep_freed_memory  # noqa: F401
from .threads import get_num_threads, set_num_threads  # noqa: F401
from . import functional, init, nn  # noqa: F401
from . import gradcheck  # noqa: F401
from .summary import summary  # noqa: F401
# the floors above nn, as torch exposes torch.optim and torch.autograd (about 0.3 s of
# imports together; matplotlib and scikit-learn are only imported when used)
from . import optim, autograd, data, models, interpret  # noqa: E402,F401
from . import metrics, checkpoint, train, interop  # noqa: E402,F401
from .checkpoint import load, save  # noqa: E402,F401
# PyTorch's functional names and tensor-creation helpers on autograd Tensors (the bridge)
from .nn import functional as _nn_functional  # noqa: E402,F401  (refdl.nn.functional)
from .autograd import Tensor  # noqa: E402,F401
from .autograd.creation import *  # noqa: E402,F401,F403  (refdl.tensor, zeros, cat, ...)
from .autograd import creation as _creation  # noqa: E402
from . import ext  # noqa: E402,F401  (SciPy's BLAS loads here, for the kernels)

threads._restore_blas_environment()

__all__ = ["save", "load", "manual_seed", "set_num_threads", "get_num_threads", "threads",
           "keep_freed_memory", "no_grad",
           "enable_grad", "set_grad_enabled", "is_grad_enabled", "summary", "nn", "init",
           "functional", "gradcheck", "random",
           "optim", "autograd", "data", "models", "interpret", "metrics", "checkpoint",
           "train", "Tensor"] + list(_creation.__all__)
