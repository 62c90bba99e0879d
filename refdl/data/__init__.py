"""refdl.data: datasets, the DataLoader and transforms (torch.utils.data's names).

Nothing here is fetched at import time or in the tests:

* ``load_digits()``: scikit-learn's bundled 1,797 8x8 digits (no download);
* ``load_mnist(root)``, ``load_fashion_mnist(root)``: IDX files in a local folder
  (``download=True`` is opt-in);
* generated sets: ``make_spirals``, ``make_moons``, ``make_ring`` (8 Gaussians on a circle),
  ``make_grid`` (25 Gaussians), ``make_gaussian_mixture``; images of shapes with known
  boxes (``make_shapes``, ``ShapesDataset``); moving-shapes videos (``moving_shapes``);
  sequence tasks (``adding_problem``, ``copy_task``, ``digit_rows``);
* ``TensorDataset``, ``Subset``, ``random_split``, ``DataLoader`` (seeded shuffling,
  ``drop_last``, a batch ``transform``, a ``sampler`` or ``batch_sampler``) and the
  samplers ``SequentialSampler``, ``RandomSampler``, ``SubsetRandomSampler``,
  ``WeightedRandomSampler``, ``BatchSampler``;
* transforms: ``Normalize``, ``RandomCrop``, ``RandomHorizontalFlip``, ``Compose``.
"""
from .dataset import Dataset, Subset, TensorDataset, random_split
from .digits import load_digits
from .idx import IDXError, load_fashion_mnist, load_mnist, read_idx, write_idx
from .loader import (BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler,
                     SubsetRandomSampler, WeightedRandomSampler, default_collate)
from .synthetic import (grid_centers, make_gaussian_mixture, make_grid, make_moons, make_ring,
                        make_spirals, ring_centers)
from .transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip

__all__ = [
    "Dataset", "TensorDataset", "Subset", "random_split", "DataLoader", "default_collate",
    "Sampler", "SequentialSampler", "RandomSampler", "SubsetRandomSampler",
    "WeightedRandomSampler", "BatchSampler",
    "load_digits", "load_mnist", "load_fashion_mnist", "read_idx", "write_idx", "IDXError",
    "make_spirals", "make_moons", "make_gaussian_mixture", "make_ring", "make_grid",
    "ring_centers", "grid_centers",
    "Compose", "Normalize", "RandomCrop", "RandomHorizontalFlip",
]

# ---- data sets written by other helpers -------------------------------------------------
# shapes.py (images of shapes with known boxes), video.py (moving-shapes video),
# sequences.py (sequence tasks: adding problem, copy task, digit rows)
from . import sequences, shapes, video  # noqa: E402
from .sequences import *  # noqa: E402,F401,F403
from .shapes import *  # noqa: E402,F401,F403
from .video import *  # noqa: E402,F401,F403

__all__ += shapes.__all__ + video.__all__ + sequences.__all__
