"""Grad mode: whether a forward records what its backward needs.

A module's training-mode forward records one cache per call (see :class:`refdl.nn.Module`);
these switches change that, with PyTorch's names:

``refdl.no_grad()``
    Nothing is recorded, in any mode: inference, validation batches, a generator's fakes
    for the critic's step. Memory stays flat however many calls run, and caches already
    pending from earlier training-mode forwards are left untouched.
``refdl.enable_grad()``
    Record even in ``eval()`` mode (and inside ``no_grad()``): saliency maps, Grad-CAM or
    adversarial inputs on a model whose Dropout and BatchNorm are in evaluation mode.
``refdl.set_grad_enabled(mode)``
    ``False`` is ``no_grad()``; ``True`` restores the default (training-mode forwards
    record, eval-mode forwards do not).

Each works as a context manager and as a function decorator (``@refdl.no_grad()`` or
``@refdl.no_grad``). The mode belongs to the thread, as in PyTorch.
"""
import functools
import threading

__all__ = ["no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled"]

AUTO, OFF, ON = "auto", "off", "on"


class _State(threading.local):
    def __init__(self):
        self.mode = AUTO          # AUTO: a module records when module.training is True
        self.collector = None     # a list receiving (module, cache) pairs, or None
        self.depth = 0            # nesting of Module.__call__ (0: no module is running)
        self.stale_warned = False # a StaleCacheWarning was given in this outermost call


state = _State()


def is_grad_enabled():
    """False inside ``no_grad()`` (or after ``set_grad_enabled(False)``), else True."""
    return state.mode != OFF


def records(training):
    """Whether a module in the given training mode records a cache now."""
    mode = state.mode
    return training if mode == AUTO else mode == ON


class _GradModeContext:
    """Base of the context managers: sets ``state.mode`` on entry, restores it on exit."""

    _mode = AUTO

    def __new__(cls, *args):
        # ``@refdl.no_grad`` without parentheses: the class is called with the function
        if cls is not set_grad_enabled and len(args) == 1 and callable(args[0]):
            return cls()(args[0])
        return super().__new__(cls)

    def __enter__(self):
        self._prev = state.mode
        state.mode = self._mode
        return self

    def __exit__(self, *exc):
        state.mode = self._prev
        return False

    def __call__(self, func):
        mode = self._mode

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            prev, state.mode = state.mode, mode
            try:
                return func(*args, **kwargs)
            finally:
                state.mode = prev
        return wrapper

    def __repr__(self):
        return f"refdl.{type(self).__name__}()"


class no_grad(_GradModeContext):
    """Context manager and decorator: forwards inside record nothing (PyTorch's name)."""

    _mode = OFF


class enable_grad(_GradModeContext):
    """Context manager and decorator: forwards inside record, even in eval() mode."""

    _mode = ON


class set_grad_enabled(_GradModeContext):
    """``set_grad_enabled(False)`` is ``no_grad()``; ``True`` restores the default.

    Like PyTorch's, it takes effect when called (as a function) and, used as a context
    manager, restores the previous mode on exit.
    """

    def __init__(self, mode):
        if not isinstance(mode, bool):
            raise TypeError(f"set_grad_enabled: expected a bool, got {type(mode).__name__}")
        self._mode = AUTO if mode else OFF
        self._prev = state.mode
        state.mode = self._mode

    def __enter__(self):
        return self

    def __repr__(self):
        return f"refdl.set_grad_enabled({self._mode != OFF})"
