r"""Embedding: a lookup table of learned vectors (PyTorch's ``nn.Embedding``)."""
from typing import NamedTuple

import numpy as np

from .. import init
from .validate import check_grad, layer_name
from .module import Module, Parameter

__all__ = ["Embedding"]


class EmbeddingCache(NamedTuple):
    """One call of Embedding: the looked-up indices idx (the scatter-add's targets)."""
    idx: np.ndarray


class Embedding(Module):
    r"""Row lookup  y[..., :] = W[idx[...], :].

    ``Embedding(num_embeddings, embedding_dim, padding_idx=None)``.
    Shapes: idx (*) integers in [0, num_embeddings), W (num_embeddings, embedding_dim)
    -> y (*, embedding_dim).  Equivalent to one_hot(idx) @ W.

    Backward, with g = dL/dy: a scatter-add (an index that appears twice gets both rows)
        dL/dW[k] = sum_{positions p with idx[p] = k} g[p]        (np.add.at)
    and dL/dW[padding_idx] = 0: the padding row is never trained. The indices are not
    differentiable; ``backward`` returns None.
    Initialisation (PyTorch's): W ~ N(0, 1), the padding row set to zero.
    A training-mode forward records ``EmbeddingCache(idx)``. docs/derivations/embedding.md
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=np.float32,
                 generator=None):
        super().__init__()
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        if self.num_embeddings <= 0 or self.embedding_dim <= 0:
            raise ValueError(f"Embedding: num_embeddings and embedding_dim must be positive, "
                             f"got ({num_embeddings}, {embedding_dim})")
        if padding_idx is not None:
            padding_idx = int(padding_idx)
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"Embedding: padding_idx must be within num_embeddings "
                                 f"({self.num_embeddings}), got {padding_idx}")
            padding_idx %= self.num_embeddings
        self.padding_idx = padding_idx
        self.weight = Parameter(np.empty((self.num_embeddings, self.embedding_dim),
                                         dtype=dtype))
        self.reset_parameters(generator)

    def reset_parameters(self, generator=None):
        init.normal_(self.weight, 0.0, 1.0, generator=generator)
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    @classmethod
    def from_pretrained(cls, embeddings, freeze=True, padding_idx=None):
        """An Embedding whose weight is a copy of ``embeddings`` (frozen by default)."""
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2:
            raise ValueError(f"Embedding.from_pretrained: expected a 2-D array, got shape "
                             f"{embeddings.shape}")
        m = cls(*embeddings.shape, padding_idx=padding_idx, dtype=embeddings.dtype)
        m.weight.data[...] = embeddings
        m.weight.requires_grad = not freeze
        return m

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        return s

    def forward(self, input):
        idx = np.asarray(input)
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"{layer_name(self)}: expected integer indices, got dtype "
                            f"{idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            bad = idx.min() if idx.min() < 0 else idx.max()
            raise IndexError(f"{layer_name(self)}: index {int(bad)} is out of range "
                             f"[0, {self.num_embeddings}) (input shape {tuple(idx.shape)})")
        if self.recording:
            self.save_for_backward(EmbeddingCache(idx=idx))
        return self.weight.data[idx]

    def backward(self, grad_out):
        idx = self.pop_saved().idx
        g = check_grad(self, grad_out, idx.shape + (self.embedding_dim,))
        if self.weight.requires_grad:
            flat = idx.reshape(-1)
            g2 = g.reshape(-1, self.embedding_dim)
            if self.padding_idx is not None:
                keep = flat != self.padding_idx
                flat, g2 = flat[keep], g2[keep]
            np.add.at(self.weight.grad, flat, g2)
        return None
