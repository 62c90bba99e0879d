"""``DataLoader``: mini-batches from a dataset, with seeded shuffling (torch.utils.data).

Shuffling draws one permutation per epoch (per ``iter(loader)``) from ``generator``, or,
when it is None, from refdl's default generator at the moment the epoch starts, so
``refdl.manual_seed(s)`` makes the batch order repeat. Random transforms draw from the
same generator.
"""
import math

import numpy as np

from ..random import get_rng

__all__ = ["DataLoader", "default_collate"]


def default_collate(examples):
    """Stack a list of examples (tuples of arrays/numbers) into a tuple of batch arrays."""
    first = examples[0]
    if isinstance(first, tuple):
        return tuple(np.stack([np.asarray(e[i]) for e in examples]) for i in range(len(first)))
    return np.stack([np.asarray(e) for e in examples])


class DataLoader:
    """Iterate over ``dataset`` in batches of ``batch_size``.

    ``shuffle``: a new random order every epoch; ``drop_last``: skip a final incomplete
    batch; ``generator``: the ``numpy.random.Generator`` for shuffling and random
    transforms (default: refdl's, see ``refdl.manual_seed``); ``transform``: applied to the
    batch of inputs (the first array of each batch), e.g. ``Compose([RandomCrop(8, 1),
    Normalize(0.5, 0.25)])``. Each batch is a tuple of arrays, like the dataset's examples.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, generator=None,
                 transform=None, collate_fn=None):
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) \
                or batch_size <= 0:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if generator is not None and not isinstance(generator, np.random.Generator):
            raise TypeError(f"DataLoader: generator must be a numpy.random.Generator, got "
                            f"{type(generator).__name__}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.generator = generator
        self.transform = transform
        self.collate_fn = collate_fn or default_collate

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _fetch(self, idx):
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
        n = len(self.dataset)
        order = get_rng(self.generator).permutation(n) if self.shuffle else np.arange(n)
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
