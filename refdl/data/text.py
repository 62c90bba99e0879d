"""Character-level text for language models: a corpus that needs no download, a character
vocabulary, train/validation windows, and the bigram baseline.

* :func:`load_text` reads ``path`` or, without one, the bundled corpus: the data-set
  descriptions scikit-learn ships with (``sklearn/datasets/descr/*.rst``, about 47,000
  characters of English prose and tables). Nothing is fetched.
* :class:`CharVocab` maps characters to integer ids and back.
* :func:`split_ids` cuts the id sequence into a training and a validation part (the last
  ``val_fraction``, so validation text is unseen, contiguous prose).
* :func:`random_windows` draws (x, y) batches of next-character targets: y is x shifted by
  one position.
* :func:`bigram_baseline` fits the count-based bigram model P(c_t | c_{t-1}) on the
  training ids and returns its validation cross-entropy (nats per character): the number a
  sequence model must beat to show that it uses more than the previous character.
"""
import glob
import os
from pathlib import Path

import numpy as np

# the window samplers live with the model that trains on them (refdl.models sits below
# refdl.data, so the training loop cannot import them from here)
from ..models.gpt import eval_windows, random_windows  # noqa: F401

__all__ = ["load_text", "bundled_text_files", "CharVocab", "split_ids", "random_windows",
           "eval_windows", "bigram_baseline"]


def bundled_text_files():
    """The .rst files of scikit-learn's data-set descriptions (sorted), or [] without it."""
    try:
        import sklearn.datasets
    except ImportError:               # pragma: no cover - scikit-learn is a core dependency
        return []
    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "descr")
    return sorted(glob.glob(os.path.join(folder, "*.rst")))


def load_text(path=None):
    """The text of ``path`` (UTF-8), or the bundled corpus when ``path`` is None.

    Raises FileNotFoundError for a missing file and ValueError for a file that is not
    UTF-8 text or is shorter than 2 characters.
    """
    if path is None:
        files = bundled_text_files()
        if not files:
            raise FileNotFoundError("no bundled text: scikit-learn's dataset descriptions "
                                    "(sklearn/datasets/descr/*.rst) were not found; pass a "
                                    "text file")
        return "\n\n".join(Path(f).read_text(encoding="utf-8") for f in files)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such text file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if len(text) < 2:
        raise ValueError(f"{path}: the text has {len(text)} character(s); a language model "
                         "needs at least 2")
    return text


class CharVocab:
    """Characters <-> ids: ``itos`` is the sorted list of distinct characters."""

    def __init__(self, chars):
        self.itos = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    @classmethod
    def from_text(cls, text):
        return cls(text)

    def __len__(self):
        return len(self.itos)

    def unknown(self, text):
        """The characters of ``text`` that are not in the vocabulary (sorted, distinct)."""
        return sorted(set(text) - set(self.stoi))

    def encode(self, text):
        bad = self.unknown(text)
        if bad:
            raise ValueError(f"CharVocab: characters not in the vocabulary: "
                             f"{''.join(bad)!r}")
        return np.array([self.stoi[c] for c in text], dtype=np.int64)

    def decode(self, ids):
        return "".join(self.itos[int(i)] for i in np.asarray(ids).reshape(-1))

    def __str__(self):
        return "".join(self.itos)


def split_ids(ids, val_fraction=0.1):
    """(train, val): the first 1 - val_fraction of ``ids`` and the rest."""
    ids = np.asarray(ids)
    n_val = int(round(len(ids) * float(val_fraction)))
    if not 0 < n_val < len(ids):
        raise ValueError(f"split_ids: val_fraction={val_fraction} of {len(ids)} ids leaves an "
                         "empty part")
    return ids[:-n_val], ids[-n_val:]


def bigram_baseline(train_ids, val_ids, vocab_size, alphas=(0.01, 0.03, 0.1, 0.3, 1.0)):
    r"""Validation cross-entropy (nats/char) of the count bigram model, and its alpha.

    P(b | a) = (count(a, b) + alpha) / (count(a) + alpha V), counted on ``train_ids``; the
    loss is -mean_t log P(val_t | val_{t-1}). ``alpha`` (add-alpha smoothing) is the one of
    ``alphas`` with the lowest validation loss, so the baseline is as strong as a bigram
    model gets here. Returns (loss, alpha).
    """
    V = int(vocab_size)
    counts = np.zeros((V, V))
    np.add.at(counts, (np.asarray(train_ids[:-1]), np.asarray(train_ids[1:])), 1.0)
    a, b = np.asarray(val_ids[:-1]), np.asarray(val_ids[1:])
    best = None
    for alpha in alphas:
        P = (counts + alpha) / (counts.sum(axis=1, keepdims=True) + alpha * V)
        loss = float(-np.mean(np.log(P[a, b])))
        if best is None or loss < best[0]:
            best = (loss, float(alpha))
    return best
