"""refdl.data: datasets, the DataLoader and transforms (torch.utils.data's names).

Nothing here is fetched at import time or in the tests:

* ``load_digits()``: scikit-learn's bundled 1,797 8x8 digits (no download);
* ``load_mnist(root)``, ``load_fashion_mnist(root)``: IDX files in a local folder
  (``download=True`` is opt-in);
* generated sets: ``make_spirals``, ``make_moons``, ``make_ring`` (8 Gaussians on a circle),
  ``make_grid`` (25 Gaussians), ``make_gaussian_mixture``;
* ``TensorDataset``, ``Subset``, ``random_split``, ``DataLoader`` (seeded shuffling,
  ``drop_last``, a batch ``transform``);
* transforms: ``Normalize``, ``RandomCrop``, ``RandomHorizontalFlip``, ``Compose``.
"""
from .dataset import Dataset, Subset, TensorDataset, random_split
from .digits import load_digits
from .idx import IDXError, load_fashion_mnist, load_mnist, read_idx, write_idx
from .loader import DataLoader, default_collate
from .synthetic import make_gaussian_mixture, make_grid, make_moons, make_ring, make_spirals
from .transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip

__all__ = [
    "Dataset", "TensorDataset", "Subset", "random_split", "DataLoader", "default_collate",
    "load_digits", "load_mnist", "load_fashion_mnist", "read_idx", "write_idx", "IDXError",
    "make_spirals", "make_moons", "make_gaussian_mixture", "make_ring", "make_grid",
    "Compose", "Normalize", "RandomCrop", "RandomHorizontalFlip",
]

# ---- data sets written by other helpers (the integrator adds their imports here) ------
# refdl/data/shapes.py     (helper autograd): images of shapes with known boxes
# refdl/data/video.py      (helper norm):     moving-shapes video
# refdl/data/sequences.py  (helper rnn):      sequence tasks
# e.g.  from .shapes import *  ;  __all__ += shapes.__all__
# ----------------------------------------------------------------------------------------
