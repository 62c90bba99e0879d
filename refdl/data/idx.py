"""MNIST and Fashion-MNIST from their IDX files in a local folder (never fetched implicitly).

The IDX format (LeCun's): two zero bytes, a type byte (0x08 ubyte, 0x09 byte, 0x0B short,
0x0C int, 0x0D float, 0x0E double), a byte with the number of dimensions d, then d
big-endian uint32 sizes, then the data in row-major order, big-endian. Files may be
gzip-compressed (``.gz``). A file that breaks any of this (wrong magic, truncated header or
data, trailing bytes, a corrupt gzip stream) raises :class:`IDXError` naming the file and
what is wrong.

``download=True`` fetches the four files of a set into a cache folder (default
``~/.cache/refdl/<name>``) when a network is present; it is opt-in and never used by the
tests.
"""
import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDXError", "read_idx", "write_idx", "load_mnist", "load_fashion_mnist",
           "DATASET_FILES", "default_cache_dir"]

_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
          0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _TYPES.items()}

DATASET_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}


class IDXError(ValueError):
    """An IDX file is missing, truncated or not an IDX file."""


def read_idx(path):
    """Read one IDX file (optionally gzip-compressed) into a native-endian ndarray."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise IDXError(f"{path}: no such file") from None
    except OSError as e:
        raise IDXError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise IDXError(f"{path}: corrupt or truncated gzip data ({e})") from None
    if len(raw) < 4:
        raise IDXError(f"{path}: truncated IDX header ({len(raw)} bytes, need at least 4)")
    z0, z1, code, ndim = raw[:4]
    if z0 != 0 or z1 != 0 or code not in _TYPES:
        raise IDXError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()}, expected "
                       f"0000 followed by a type code in {sorted(hex(c) for c in _TYPES)})")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise IDXError(f"{path}: truncated IDX header ({len(raw)} bytes, the {ndim} "
                       f"dimension sizes need {head})")
    shape = struct.unpack(f">{ndim}I", raw[4:head])
    dtype = _TYPES[code]
    # Python ints: a crafted header (e.g. four sizes of 2**32 - 1) must not wrap around
    # in int64 and pass the size check by accident
    need = math.prod(shape) * dtype.itemsize
    got = len(raw) - head
    if need >= 2 ** 62:
        raise IDXError(f"{path}: IDX header sizes {shape} describe {need} bytes of "
                       f"{dtype.name}, more than any file can hold (corrupt header?); the "
                       f"file has {got} bytes of data")
    if got < need:
        raise IDXError(f"{path}: truncated IDX data: shape {shape} of {dtype.name} needs "
                       f"{need} bytes, the file has {got}")
    if got > need:
        raise IDXError(f"{path}: {got - need} unexpected bytes after the IDX data of shape "
                       f"{shape}")
    return np.frombuffer(raw, dtype=dtype, count=need // dtype.itemsize,
                         offset=head).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array, compress=None):
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in .gz)."""
    array = np.asarray(array)
    dt = array.dtype.newbyteorder("=")
    if dt not in _CODES:
        raise TypeError(f"write_idx: dtype {array.dtype} has no IDX type code")
    code = _CODES[dt]
    data = (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(_TYPES[code]).tobytes())
    path = Path(path)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def default_cache_dir(name):
    base = os.environ.get("REFDL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "refdl")
    return Path(base) / name


def _find(root, stem):
    for cand in (root / stem, root / (stem + ".gz"), root / stem.replace("-idx", ".idx"),
                 root / (stem.replace("-idx", ".idx") + ".gz")):
        if cand.is_file():
            return cand
    return None


def _download(name, root):
    import urllib.request

    root.mkdir(parents=True, exist_ok=True)
    for stems in DATASET_FILES.values():
        for stem in stems:
            if _find(root, stem):
                continue
            url = _URLS[name] + stem + ".gz"
            tmp = root / (stem + ".gz.part")
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                f.write(r.read())
            os.replace(tmp, root / (stem + ".gz"))


def _load(name, root, train, download):
    if root is None:
        root = default_cache_dir(name)
    root = Path(root)
    if download:
        _download(name, root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{name}: data folder {root} does not exist; put the four IDX files "
            f"({', '.join(s + '[.gz]' for v in DATASET_FILES.values() for s in v)}) there, "
            f"or pass download=True")
    for sub in (root, root / name, root / name.replace("-", "_"), root / "raw"):
        img_stem, lab_stem = DATASET_FILES["train" if train else "test"]
        img, lab = _find(sub, img_stem), _find(sub, lab_stem)
        if img and lab:
            break
    else:
        raise FileNotFoundError(f"{name}: {root} has no {img_stem}[.gz] and {lab_stem}[.gz]")
    x = read_idx(img)
    y = read_idx(lab)
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise IDXError(f"{name}: images {img.name} have shape {x.shape} and labels {lab.name} "
                       f"shape {y.shape}; expected (N, H, W) and (N,)")
    if x.shape[0] == 0:
        raise IDXError(f"{img}: the file holds 0 images (shape {x.shape}); a data set "
                       f"needs at least one")
    if x.dtype != np.uint8:
        raise IDXError(f"{img}: expected unsigned-byte pixels, got {x.dtype}")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise IDXError(f"{lab}: labels must be 0..9, found {int(y.min())}..{int(y.max())}")
    x = (x.astype(np.float32) / np.float32(255.0))[:, None]
    return x, y.astype(np.int64)


def load_mnist(root=None, train=True, download=False):
    """``(x, y)``: images (N, 1, 28, 28) float32 in [0, 1], labels (N,) int64.

    ``root`` is the folder holding ``train-images-idx3-ubyte[.gz]``, ... (also looked for in
    ``root/mnist``). ``train=False`` gives the 10,000 test images. ``download=True``
    fetches missing files into ``root`` (default ``~/.cache/refdl/mnist``).
    """
    return _load("mnist", root, train, download)


def load_fashion_mnist(root=None, train=True, download=False):
    """Fashion-MNIST, exactly like :func:`load_mnist` (same file names and shapes)."""
    return _load("fashion-mnist", root, train, download)
