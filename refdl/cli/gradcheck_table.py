"""The table ``refdl gradcheck`` checks: one row per layer or loss of refdl.nn, each
(label, class name or builder, (constructor args, kwargs), inputs(rng), options).

Options: ``{"loss": True}`` checks a loss's input gradient only; ``{"wrt": []}`` checks
the parameters only (integer inputs). To add a layer, add its row to its section
(docs/new-layer.md)."""
import numpy as np


def _away(r, shape, margin=0.1):
    """Normal draws at least ``margin`` away from 0 (where ReLU-like kinks are)."""
    u = r.standard_normal(shape)
    return np.sign(u) * (margin + np.abs(u))


def _n(shape):
    """One standard-normal input of ``shape``."""
    return lambda r: [r.standard_normal(shape)]


def _int_target(n, k):
    """(logits of n examples over k classes, integer targets): a classification loss's inputs."""
    return lambda r: [r.standard_normal((n, k)), r.integers(0, k, n)]


def _sig(x):
    """The logistic sigmoid, for probabilities in (0, 1)."""
    return 1 / (1 + np.exp(-x))


def _layer_rows():
    """Rows for the simple layers: linear, shapes, activations, softmax."""
    return [
        ("Linear", "Linear", ((4, 3), {}), _n((2, 4)), {}),
        ("Identity", "Identity", ((), {}), _n((2, 3)), {}),
        ("Flatten", "Flatten", ((), {}), _n((2, 2, 3)), {}),
        ("Unflatten", "Unflatten", ((1, (2, 3)), {}), _n((2, 6)), {}),
        ("ReLU", "ReLU", ((), {}), lambda r: [_away(r, (3, 4))], {}),
        ("LeakyReLU", "LeakyReLU", ((0.1,), {}), lambda r: [_away(r, (3, 4))], {}),
        ("ELU", "ELU", ((), {}), lambda r: [_away(r, (3, 4))], {}),
        ("Sigmoid", "Sigmoid", ((), {}), _n((3, 4)), {}),
        ("Tanh", "Tanh", ((), {}), _n((3, 4)), {}),
        ("Softplus", "Softplus", ((), {}), _n((3, 4)), {}),
        ("GELU", "GELU", ((), {}), _n((3, 4)), {}),
        ("GELU(tanh)", "GELU", ((), {"approximate": "tanh"}), _n((3, 4)), {}),
        ("SiLU", "SiLU", ((), {}), _n((3, 4)), {}),
        ("Softmax", "Softmax", ((), {"dim": -1}), _n((3, 4)), {}),
        ("LogSoftmax", "LogSoftmax", ((), {"dim": -1}), _n((3, 4)), {}),
    ]


def _normalisation_and_conv_rows():
    """Rows for normalisation, dropout and convolutions."""
    return [
        ("LayerNorm", "LayerNorm", ((4,), {}), _n((2, 3, 4)), {}),
        ("Dropout", "Dropout", ((0.5,), {}), _n((3, 4)), {}),
        ("BatchNorm1d", "BatchNorm1d", ((3,), {}), _n((4, 3)), {}),
        ("BatchNorm2d", "BatchNorm2d", ((2,), {}), _n((3, 2, 3, 3)), {}),
        ("BatchNorm3d", "BatchNorm3d", ((2,), {}), _n((2, 2, 2, 2, 2)), {}),
        ("GroupNorm", "GroupNorm", ((2, 4), {}), _n((2, 4, 3)), {}),
        ("InstanceNorm1d", "InstanceNorm1d", ((2,), {"affine": True}), _n((2, 2, 5)), {}),
        ("InstanceNorm2d", "InstanceNorm2d", ((2,), {"affine": True}), _n((2, 2, 3, 3)), {}),
        ("Conv1d", "Conv1d", ((2, 3, 3), {"padding": 1}), _n((2, 2, 5)), {}),
        ("Conv2d", "Conv2d", ((2, 3, (3, 2)), {"padding": 1}), _n((2, 2, 4, 5)), {}),
        ("Conv2d(stride 2)", "Conv2d", ((2, 2, 3), {"stride": 2, "padding": 1}),
         _n((1, 2, 5, 5)), {}),
        ("Conv3d", "Conv3d", ((1, 2, 2), {}), _n((1, 1, 3, 3, 3)), {}),
        ("ConvTranspose1d", "ConvTranspose1d", ((2, 3, 3), {"stride": 2}), _n((2, 2, 4)), {}),
        ("ConvTranspose2d", "ConvTranspose2d", ((2, 3, 3), {"stride": 2}), _n((1, 2, 3, 3)), {}),
        ("ConvTranspose3d", "ConvTranspose3d", ((1, 2, 2), {"stride": 2}),
         _n((1, 1, 2, 2, 2)), {}),
    ]


def _pooling_and_recurrent_rows():
    """Rows for pooling, upsampling and recurrent layers."""
    return [
        ("MaxPool1d", "MaxPool1d", ((2,), {}), _n((2, 2, 6)), {}),
        ("MaxPool2d", "MaxPool2d", ((2,), {}), _n((2, 2, 4, 4)), {}),
        ("MaxPool3d", "MaxPool3d", ((2,), {}), _n((1, 2, 4, 4, 2)), {}),
        ("AvgPool1d", "AvgPool1d", ((2,), {}), _n((2, 2, 6)), {}),
        ("AvgPool2d", "AvgPool2d", ((2,), {}), _n((2, 2, 4, 4)), {}),
        ("AvgPool3d", "AvgPool3d", ((2,), {}), _n((1, 2, 4, 4, 2)), {}),
        ("AdaptiveAvgPool2d", "AdaptiveAvgPool2d", ((1,), {}), _n((2, 3, 3, 3)), {}),
        ("Upsample(nearest)", "Upsample", ((), {"scale_factor": 2, "mode": "nearest"}),
         _n((1, 2, 3, 3)), {}),
        ("Upsample(bilinear)", "Upsample", ((), {"scale_factor": 2, "mode": "bilinear"}),
         _n((1, 2, 3, 3)), {}),
        ("RNN", "RNN", ((3, 4), {"batch_first": True}), _n((2, 3, 3)), {}),
        ("LSTM", "LSTM", ((3, 4), {"batch_first": True}), _n((2, 3, 3)), {}),
        ("GRU", "GRU", ((3, 4), {"batch_first": True}), _n((2, 3, 3)), {}),
        ("RNNCell", "RNNCell", ((3, 4), {}), _n((2, 3)), {}),
        ("LSTMCell", "LSTMCell", ((3, 4), {}), _n((2, 3)), {}),
        ("GRUCell", "GRUCell", ((3, 4), {}), _n((2, 3)), {}),
    ]


def _attention_rows():
    """Rows for embeddings, attention, Transformers and positional encodings."""
    return [
        ("Embedding", "Embedding", ((10, 3), {}), lambda r: [r.integers(0, 10, (2, 4))],
         {"wrt": []}),
        ("MultiheadAttention", "MultiheadAttention", ((4, 2), {"batch_first": True}),
         lambda r: [r.standard_normal((2, 3, 4)) for _ in range(3)], {}),
        ("TransformerEncoderLayer", "TransformerEncoderLayer",
         ((), {"d_model": 4, "nhead": 2, "dim_feedforward": 8, "dropout": 0.0,
               "batch_first": True}), _n((2, 3, 4)), {}),
        ("TransformerEncoder", lambda nn: nn.TransformerEncoder(nn.TransformerEncoderLayer(
            d_model=4, nhead=2, dim_feedforward=8, dropout=0.0, batch_first=True), 2),
         ((), {}), _n((2, 3, 4)), {}),
        ("TransformerDecoderLayer", "TransformerDecoderLayer",
         ((), {"d_model": 4, "nhead": 2, "dim_feedforward": 8, "dropout": 0.0,
               "batch_first": True}),
         lambda r: [r.standard_normal((2, 3, 4)), r.standard_normal((2, 4, 4))], {}),
        ("Transformer", "Transformer",
         ((), {"d_model": 4, "nhead": 2, "num_encoder_layers": 1, "num_decoder_layers": 1,
               "dim_feedforward": 8, "dropout": 0.0, "batch_first": True}),
         lambda r: [r.standard_normal((2, 4, 4)), r.standard_normal((2, 3, 4))], {}),
        ("ScaledDotProductAttention", "ScaledDotProductAttention", ((), {}),
         lambda r: [r.standard_normal((2, 3, 4)) for _ in range(3)], {}),
        ("SinusoidalPositionalEncoding", "SinusoidalPositionalEncoding", ((4,), {}),
         _n((2, 3, 4)), {}),
        ("LearnedPositionalEncoding", "LearnedPositionalEncoding", ((5, 4), {}),
         _n((2, 3, 4)), {}),
    ]


def _block_rows():
    """Rows for patches, windows, merges and residual blocks."""
    return [
        ("PatchEmbed", "PatchEmbed", ((), {"patch_size": 2, "in_chans": 1, "embed_dim": 4}),
         _n((1, 1, 4, 4)), {}),
        ("PatchMerging", "PatchMerging", ((4,), {}), _n((1, 2, 2, 4)), {}),
        ("WindowedEncoderLayer", "WindowedEncoderLayer", ((4, 2), {"window_size": 2}),
         _n((1, 4, 4, 4)), {}),
        ("Add", "Add", ((), {}),
         lambda r: [r.standard_normal((2, 3)), r.standard_normal((2, 3))], {}),
        ("Concat", "Concat", ((), {"dim": 1}),
         lambda r: [r.standard_normal((2, 3)), r.standard_normal((2, 2))], {}),
        ("BasicBlock", "BasicBlock", ((2, 2), {}), _n((2, 2, 3, 3)), {}),
        ("Bottleneck", "Bottleneck", ((8, 2), {}), _n((1, 8, 3, 3)), {}),
    ]


def _loss_rows():
    """Rows for losses: (input, target); only the input gradient is checked."""
    return [
        ("MSELoss", "MSELoss", ((), {}), lambda r: [r.standard_normal((3, 4)),
                                                    r.standard_normal((3, 4))], {"loss": True}),
        ("L1Loss", "L1Loss", ((), {}), lambda r: [r.standard_normal((3, 4)),
                                                  r.standard_normal((3, 4))], {"loss": True}),
        ("HuberLoss", "HuberLoss", ((), {}), lambda r: [3 * r.standard_normal((3, 4)),
                                                        r.standard_normal((3, 4))], {"loss": True}),
        ("CrossEntropyLoss", "CrossEntropyLoss", ((), {}), _int_target(4, 5), {"loss": True}),
        ("CrossEntropyLoss(smooth)", "CrossEntropyLoss", ((), {"label_smoothing": 0.1}),
         _int_target(4, 5), {"loss": True}),
        ("NLLLoss", "NLLLoss", ((), {}), _int_target(4, 5), {"loss": True}),
        ("BCELoss", "BCELoss", ((), {}),
         lambda r: [_sig(r.standard_normal((3, 4))), r.integers(0, 2, (3, 4)).astype(float)],
         {"loss": True}),
        ("BCEWithLogitsLoss", "BCEWithLogitsLoss", ((), {}),
         lambda r: [r.standard_normal((3, 4)), r.integers(0, 2, (3, 4)).astype(float)],
         {"loss": True}),
    ]


GRADCHECK_TABLE = (_layer_rows() + _normalisation_and_conv_rows() + _pooling_and_recurrent_rows()
                   + _attention_rows() + _block_rows() + _loss_rows())
