"""refdl.nn: Parameter, Module, containers and the layers, one file per lecture topic.

Each topic file lists its public names in ``__all__``; all of them are importable from
refdl.nn, exactly as from torch.nn.
"""
from .module import CacheError, Module, Parameter, StaleCacheWarning  # noqa: F401
from .container import *       # backward_chain, Sequential, ModuleList, ModuleDict, ...
from .linear import *          # Linear, Identity, Flatten, Unflatten
from .activation import *      # ReLU, Sigmoid, Tanh, GELU, Softmax, ...
from .loss import *            # MSELoss, CrossEntropyLoss, BCEWithLogitsLoss, ...
from .normalization import *   # LayerNorm
from .batchnorm import *       # BatchNorm1d/2d/3d
from .instancenorm import *    # GroupNorm, InstanceNorm1d/2d/3d
from .dropout import *         # Dropout, Dropout1d/2d/3d
from .conv import *            # Conv1d/2d/3d, ConvTranspose1d/2d/3d
from .pooling import *         # MaxPool, AvgPool, AdaptiveAvgPool
from .upsampling import *      # Upsample
from .recurrent_cell import *  # RNNCell, LSTMCell, GRUCell: one time step
from .recurrent import *       # RNN, LSTM, GRU: multi-layer, over a sequence (BPTT)
from .embedding import *       # Embedding
from .attention import *       # scaled dot-product attention, masks, positional encodings
from .multihead_attention import *  # MultiheadAttention
from .transformer import *     # nn.Transformer, and (re-exported) the encoder, decoder, ViT pieces
from .blocks import *          # residual blocks, concatenation, addition

from .. import init  # noqa: E402,F401  (nn.init, as in torch)
from . import utils  # noqa: E402,F401  (nn.utils.clip_grad_norm_, ...)
