"""``DataLoader`` and the samplers: mini-batches from a dataset (torch.utils.data).

Shuffling draws one permutation per epoch (per ``iter(loader)``) from ``generator``, or,
when it is None, from refdl's default generator at the moment the epoch starts, so
``refdl.manual_seed(s)`` makes the batch order repeat. Random transforms draw from the
same generator. A ``sampler`` (an iterable of indices, e.g. :class:`WeightedRandomSampler`
for an imbalanced data set) or a ``batch_sampler`` (an iterable of index lists) replaces
the built-in order, as in PyTorch.
"""
import math

import numpy as np

from ..random import get_rng

__all__ = ["DataLoader", "default_collate", "Sampler", "SequentialSampler", "RandomSampler",
           "SubsetRandomSampler", "WeightedRandomSampler", "BatchSampler"]


class Sampler:
    """Base class: an iterable of dataset indices with a length."""

    def __iter__(self):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError


class SequentialSampler(Sampler):
    """0, 1, ..., len(data_source) - 1."""

    def __init__(self, data_source):
        self.data_source = data_source

    def __iter__(self):
        return iter(range(len(self.data_source)))

    def __len__(self):
        return len(self.data_source)


class RandomSampler(Sampler):
    """A random permutation each epoch, or ``num_samples`` draws with ``replacement``."""

    def __init__(self, data_source, replacement=False, num_samples=None, generator=None):
        self.data_source, self.replacement, self.generator = data_source, bool(replacement), \
            generator
        self._num_samples = num_samples
        if num_samples is not None and (not isinstance(num_samples, (int, np.integer))
                                        or num_samples <= 0):
            raise ValueError(f"RandomSampler: num_samples must be a positive int, got "
                             f"{num_samples!r}")

    @property
    def num_samples(self):
        return len(self.data_source) if self._num_samples is None else int(self._num_samples)

    def __iter__(self):
        rng, n = get_rng(self.generator), len(self.data_source)
        if self.replacement:
            return iter(rng.integers(0, n, self.num_samples).tolist())
        reps = -(-self.num_samples // n) if n else 0
        order = np.concatenate([rng.permutation(n) for _ in range(reps)]) if reps else []
        return iter(np.asarray(order, dtype=np.int64)[:self.num_samples].tolist())

    def __len__(self):
        return self.num_samples


class SubsetRandomSampler(Sampler):
    """The given indices in a random order each epoch (a validation split's sampler)."""

    def __init__(self, indices, generator=None):
        self.indices, self.generator = list(indices), generator

    def __iter__(self):
        perm = get_rng(self.generator).permutation(len(self.indices))
        return iter([self.indices[i] for i in perm])

    def __len__(self):
        return len(self.indices)


class WeightedRandomSampler(Sampler):
    """``num_samples`` indices drawn with probability proportional to ``weights``."""

    def __init__(self, weights, num_samples, replacement=True, generator=None):
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) \
                or w.sum() <= 0:
            raise ValueError("WeightedRandomSampler: weights must be a non-empty 1-D sequence "
                             "of finite non-negative numbers with a positive sum")
        if not isinstance(num_samples, (int, np.integer)) or num_samples <= 0:
            raise ValueError(f"WeightedRandomSampler: num_samples must be a positive int, "
                             f"got {num_samples!r}")
        if not replacement and num_samples > np.count_nonzero(w):
            raise ValueError(f"WeightedRandomSampler: cannot draw {num_samples} samples "
                             f"without replacement from {np.count_nonzero(w)} non-zero weights")
        self.weights, self.num_samples = w, int(num_samples)
        self.replacement, self.generator = bool(replacement), generator

    def __iter__(self):
        p = self.weights / self.weights.sum()
        idx = get_rng(self.generator).choice(len(p), self.num_samples,
                                             replace=self.replacement, p=p)
        return iter(idx.tolist())

    def __len__(self):
        return self.num_samples


class BatchSampler(Sampler):
    """Groups the indices of ``sampler`` into lists of ``batch_size``."""

    def __init__(self, sampler, batch_size, drop_last):
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) \
                or batch_size <= 0:
            raise ValueError(f"BatchSampler: batch_size must be a positive int, got "
                             f"{batch_size!r}")
        self.sampler, self.batch_size, self.drop_last = sampler, int(batch_size), \
            bool(drop_last)

    def __iter__(self):
        batch = []
        for i in self.sampler:
            batch.append(int(i))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


def default_collate(examples):
    """Stack a list of examples (tuples of arrays/numbers) into a tuple of batch arrays."""
    first = examples[0]
    if isinstance(first, tuple):
        return tuple(np.stack([np.asarray(e[i]) for e in examples]) for i in range(len(first)))
    return np.stack([np.asarray(e) for e in examples])


class DataLoader:
    """Iterate over ``dataset`` in batches of ``batch_size`` (PyTorch's arguments).

    ``shuffle``: a new random order every epoch; ``sampler``: an iterable of indices giving
    the order instead (not with ``shuffle``); ``batch_sampler``: an iterable of index lists,
    one per batch (not with batch_size, shuffle, sampler or drop_last); ``drop_last``: skip
    a final incomplete batch; ``generator``: the ``numpy.random.Generator`` for shuffling
    and random transforms (default: refdl's, see ``refdl.manual_seed``); ``transform``:
    applied to the batch of inputs (the first array of each batch), e.g.
    ``Compose([RandomCrop(8, 1), Normalize(0.5, 0.25)])``. Each batch is a tuple of arrays,
    like the dataset's examples.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, sampler=None, batch_sampler=None,
                 drop_last=False, generator=None, transform=None, collate_fn=None):
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("DataLoader: batch_sampler option is mutually exclusive with "
                                 "batch_size, shuffle, sampler, and drop_last")
            batch_size = None
        elif not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) \
                or batch_size <= 0:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle")
        if generator is not None and not isinstance(generator, np.random.Generator):
            raise TypeError(f"DataLoader: generator must be a numpy.random.Generator, got "
                            f"{type(generator).__name__}")
        self.dataset = dataset
        self.batch_size = None if batch_size is None else int(batch_size)
        self.shuffle = bool(shuffle)
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.drop_last = bool(drop_last)
        self.generator = generator
        self.transform = transform
        self.collate_fn = collate_fn or default_collate

    def __len__(self):
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _fetch(self, idx):
        idx = np.asarray(idx, dtype=np.int64)
        if getattr(self.dataset, "batch_indexable", False):
            batch = self.dataset[idx]
        else:
            batch = self.collate_fn([self.dataset[int(i)] for i in idx])
        if self.transform is not None:
            rng = get_rng(self.generator)
            if isinstance(batch, tuple):
                batch = (self.transform(batch[0], generator=rng),) + tuple(batch[1:])
            else:
                batch = self.transform(batch, generator=rng)
        return batch

    def __iter__(self):
        if self.batch_sampler is not None:
            for idx in self.batch_sampler:
                yield self._fetch(idx)
            return
        if self.sampler is not None:
            order = np.fromiter((int(i) for i in self.sampler), dtype=np.int64)
        else:
            n = len(self.dataset)
            order = get_rng(self.generator).permutation(n) if self.shuffle else np.arange(n)
        n = len(order)
        stop = (n // self.batch_size) * self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            yield self._fetch(order[start:start + self.batch_size])

    def state_dict(self):
        """The explicit generator's state (None when the loader uses refdl's default)."""
        return {"generator": None if self.generator is None
                else self.generator.bit_generator.state}

    def load_state_dict(self, state):
        if state.get("generator") is not None:
            if self.generator is None:
                raise ValueError("DataLoader.load_state_dict: the saved loader had its own "
                                 "generator; this one uses refdl's default")
            self.generator.bit_generator.state = state["generator"]
