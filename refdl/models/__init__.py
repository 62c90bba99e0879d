"""Whole networks built from refdl.nn, and a registry of the ones ``refdl train`` knows.

Each registered model is built by ``get_model(name, num_classes=..., input_shape=...)``;
``input_shape`` is one example's shape without the batch: ``(64,)`` for a flat vector,
``(1, 8, 8)`` for an image, ``(8, 8)`` for a sequence of 8 steps of 8 features.
The registry maps a name to (module, builder, input layout, one-line description).
"""
import importlib

from . import (diffusion, gan, lenet, linear_vae, mlp, resnet, rnn,  # noqa: F401
               unet, vae, vgg, vit)
from . import gpt  # noqa: F401,E402

_REGISTRY = {
    # name: (module, builder, layout, description)
    "mlp": ("refdl.models.mlp", "MLP", "flat", "multilayer perceptron (Linear-ReLU-...)"),
    "lenet5": ("refdl.models.lenet", "LeNet5", "image", "LeNet-5 (conv-pool-conv-pool-fc-fc-fc)"),
    "resnet_small": ("refdl.models.resnet", "ResNetSmall", "image",
                     "small ResNet (BasicBlocks, BatchNorm, global average pooling)"),
    "vgg_small": ("refdl.models.vgg", "VGGSmall", "image", "small VGG-style net (3x3 convs)"),
    "vit": ("refdl.models.vit", "ViT", "image",
            "Vision Transformer: patch embedding, class token, pre-norm encoder"),
    "windowed_vit": ("refdl.models.vit", "WindowedViT", "image",
                     "windowed (Swin-like) ViT: local windows, shifted windows, patch merging"),
    "gru": ("refdl.models.rnn", "GRUClassifier", "sequence",
            "GRU over the time steps, then Linear on the last hidden state"),
    "lstm": ("refdl.models.rnn", "LSTMClassifier", "sequence",
             "LSTM over the time steps, then Linear on the last hidden state"),
    "rnn": ("refdl.models.rnn", "ElmanClassifier", "sequence",
            "Elman (tanh) RNN over the time steps, then Linear on the last hidden state"),
    "gpt": ("refdl.models.gpt", "GPT", "text",
            "small GPT: character-level decoder-only Transformer (causal self-attention, "
            "learned positions, tied embedding/head); trains on text, see refdl sample"),
}


def register(name, module, builder, layout, description):
    """Add a model to the registry (layout: 'flat', 'image', 'sequence' or 'text')."""
    _REGISTRY[name] = (module, builder, layout, description)


def available_models():
    """{name: description} of the models that can be built here."""
    return {n: v[3] for n, v in _REGISTRY.items()}


def model_layout(name):
    _check(name)
    return _REGISTRY[name][2]


def _check(name):
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")


def get_model(name, **kwargs):
    """Build the registered model ``name`` with the builder's keyword arguments."""
    _check(name)
    module, builder, _, _ = _REGISTRY[name]
    return getattr(importlib.import_module(module), builder)(**kwargs)
