"""Data sets and batching: the embedded MNIST subset, MNIST and Fashion-MNIST
from IDX files (local, Debian package, cache or download), the generated
cross-vs-rectangle toy set, and a seeded, resumable mini-batch loader.

See docs/data.md for where each data set comes from and its licence.
"""

from __future__ import annotations

from scratchcnn.data.idx import read_idx, write_idx
from scratchcnn.data.loader import DataLoader, Dataset
from scratchcnn.data.shapes import make_shapes
from scratchcnn.data.sources import DATASETS, default_cache_dir, load_dataset

__all__ = [
    "DATASETS",
    "DataLoader",
    "Dataset",
    "default_cache_dir",
    "load_dataset",
    "make_shapes",
    "read_idx",
    "write_idx",
]
