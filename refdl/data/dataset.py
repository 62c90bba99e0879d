"""Datasets: ``Dataset``, ``TensorDataset``, ``Subset`` and ``random_split`` (torch.utils.data).

A dataset is anything with ``__len__`` and ``__getitem__(i)`` returning one example (a
tuple such as ``(x, y)``). A dataset whose ``__getitem__`` also accepts an integer array of
indices and returns the whole batch at once sets ``batch_indexable = True``; the
DataLoader then fetches a batch with one fancy-indexing call instead of a Python loop.
"""
import numbers

import numpy as np

from ..random import get_rng

__all__ = ["Dataset", "TensorDataset", "Subset", "random_split"]


class Dataset:
    """Base class: subclasses define ``__len__`` and ``__getitem__``."""

    batch_indexable = False

    def __len__(self):
        raise NotImplementedError

    def __getitem__(self, index):
        raise NotImplementedError


class TensorDataset(Dataset):
    """Example ``i`` is ``tuple(a[i] for a in arrays)``; all arrays share their first dimension.

    >>> ds = TensorDataset(x, y)      # x: (N, ...), y: (N,)
    >>> xb, yb = ds[np.array([0, 5, 7])]
    """

    batch_indexable = True

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("TensorDataset: give at least one array")
        arrays = tuple(np.asarray(a) for a in arrays)
        n = arrays[0].shape[0] if arrays[0].ndim else None
        for i, a in enumerate(arrays):
            if a.ndim == 0 or a.shape[0] != n:
                raise ValueError(
                    f"TensorDataset: every array needs the same first dimension; array 0 has "
                    f"shape {arrays[0].shape}, array {i} has shape {a.shape}")
        self.arrays = arrays

    def __len__(self):
        return int(self.arrays[0].shape[0])

    def __getitem__(self, index):
        return tuple(a[index] for a in self.arrays)


class Subset(Dataset):
    """The examples ``dataset[indices[i]]``."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_indexable = getattr(dataset, "batch_indexable", False)

    def __len__(self):
        return int(self.indices.size)

    def __getitem__(self, index):
        return self.dataset[self.indices[index]]


def random_split(dataset, lengths, generator=None):
    """Split ``dataset`` into non-overlapping random Subsets of the given lengths.

    ``lengths`` are counts summing to ``len(dataset)``, or fractions summing to 1 (the
    remainder after flooring goes round-robin to the first subsets, as in PyTorch).
    The permutation comes from ``generator`` or refdl's default generator.
    """
    n = len(dataset)
    lengths = list(lengths)
    if lengths and all(isinstance(v, float) for v in lengths) and abs(sum(lengths) - 1) < 1e-9:
        counts = [int(np.floor(n * f)) for f in lengths]
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
        lengths = counts
    if any(not isinstance(v, numbers.Integral) or v < 0 for v in lengths):
        raise ValueError(f"random_split: lengths must be non-negative ints or fractions "
                         f"summing to 1, got {lengths}")
    if sum(lengths) != n:
        raise ValueError(f"random_split: the lengths {lengths} sum to {sum(lengths)}, "
                         f"but the dataset has {n} examples")
    perm = get_rng(generator).permutation(n)
    out, start = [], 0
    for length in lengths:
        out.append(Subset(dataset, perm[start:start + length]))
        start += length
    return out
