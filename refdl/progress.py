"""Progress bars that behave in a terminal, a pipe and a notebook.

``progress(...)`` returns a tqdm bar from ``tqdm.auto`` (a widget in Jupyter, a text bar on
a terminal) when one can be seen, and otherwise a quiet stand-in with the same methods
(``update``, ``set_postfix``, ``set_description``, ``write``, ``close``, iteration) that
draws nothing, so a log file or a pipe gets no carriage-return noise; with
``summary=True`` the stand-in prints one line when it closes ("training: 10/10 in 12.3 s").
tqdm is optional (the ``notebooks`` extra brings it): without it a terminal gets the
one-line summaries too.
"""
import sys
import time

__all__ = ["progress", "in_notebook"]


def in_notebook():
    """True inside a Jupyter kernel (where stderr is no terminal but a bar is visible)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def _tqdm_auto():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


class _Quiet:
    """A bar nobody can see: counts, and optionally prints one summary line at the end."""

    def __init__(self, iterable=None, total=None, desc=None, stream=None, summary=False):
        self.iterable, self.total, self.desc = iterable, total, desc
        self.stream, self.summary, self.n = stream or sys.stderr, summary, 0
        self.postfix, self.t0, self.closed = "", time.perf_counter(), False
        if total is None and hasattr(iterable, "__len__"):
            self.total = len(iterable)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n=1):
        self.n += n

    def set_postfix(self, ordered_dict=None, refresh=True, **kw):
        items = dict(ordered_dict or {}, **kw)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc=None, refresh=True):
        self.desc = desc

    def write(self, text):
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self.summary:
            total = f"/{self.total}" if self.total else ""
            post = f" ({self.postfix})" if self.postfix else ""
            self.write(f"{self.desc or 'done'}: {self.n}{total} in "
                       f"{time.perf_counter() - self.t0:.1f} s{post}")


def progress(iterable=None, total=None, desc=None, enabled=True, stream=None, leave=True,
             unit="it", summary=True):
    """A progress bar over ``iterable`` (or ``total`` manual ``update`` steps).

    A ``tqdm.auto`` bar in a notebook or when ``stream`` (default stderr) is a terminal;
    otherwise (a pipe, a file, ``enabled=False``, no tqdm) a silent stand-in that prints
    one summary line on ``close`` when ``summary`` (and ``enabled``) is true.
    """
    stream = stream or sys.stderr
    notebook = in_notebook()
    tty = bool(getattr(stream, "isatty", lambda: False)())
    tqdm = _tqdm_auto() if enabled else None
    if tqdm is None or not (notebook or tty):
        return _Quiet(iterable, total, desc, stream, summary=summary and enabled)
    kw = {} if notebook else {"file": stream, "dynamic_ncols": True}
    return tqdm(iterable, total=total, desc=desc, leave=leave, unit=unit, **kw)
