"""refdl's source of randomness.

Every random draw in refdl (initialisers, Dropout, DataLoader shuffling, reparameterised
samples) comes from a ``numpy.random.Generator``: either one passed explicitly as
``generator=`` or the library-wide default returned by :func:`default_generator`.
``refdl.manual_seed(s)`` replaces that default with ``np.random.default_rng(s)``, so a
whole training run repeats bit for bit, like ``torch.manual_seed``.
"""
import numpy as np

_default = np.random.default_rng()


def manual_seed(seed):
    """Seed the library-wide generator; returns it (as ``torch.manual_seed`` does)."""
    global _default
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"manual_seed: expected an int seed, got {type(seed).__name__}")
    _default = np.random.default_rng(int(seed))
    return _default


def default_generator():
    """The library-wide ``numpy.random.Generator``."""
    return _default


def get_rng(generator=None):
    """``generator`` if given, else the library-wide default."""
    if generator is None:
        return _default
    if not isinstance(generator, np.random.Generator):
        raise TypeError(f"expected a numpy.random.Generator, got {type(generator).__name__}")
    return generator


def get_rng_state():
    """The default generator's state (a dict), for checkpoints."""
    return _default.bit_generator.state


def set_rng_state(state):
    """Restore a state returned by :func:`get_rng_state`."""
    _default.bit_generator.state = state


class fork_rng:
    """Context manager: inside it the default generator is ``default_rng(seed)``; on exit
    the previous generator (and its state) is back, as ``torch.random.fork_rng``."""

    def __init__(self, seed=0):
        self.seed = seed

    def __enter__(self):
        global _default
        self._saved = _default
        _default = np.random.default_rng(self.seed)
        return _default

    def __exit__(self, *exc):
        global _default
        _default = self._saved
        return False
