"""Data sets and batching: the embedded MNIST subset, MNIST and Fashion-MNIST
from IDX files (local, Debian package, cache or download), CIFAR-10 and CIFAR-100
(binary version), folders of your own images (decoded once into a memory-mapped
cache), the generated cross-vs-rectangle toy set, and a seeded, resumable
mini-batch loader.

See docs/data.md for where each data set comes from and its licence.
"""

from __future__ import annotations

from scratchcnn.data.folders import ImageFolder, ImageFolderInfo, image_folder_splits
from scratchcnn.data.idx import read_idx, write_idx
from scratchcnn.data.loader import DataLoader, Dataset
from scratchcnn.data.shapes import make_shapes
from scratchcnn.data.sources import DATASETS, default_cache_dir, load_dataset

__all__ = [
    "DATASETS",
    "DataLoader",
    "Dataset",
    "ImageFolder",
    "ImageFolderInfo",
    "default_cache_dir",
    "image_folder_splits",
    "load_dataset",
    "make_shapes",
    "read_idx",
    "write_idx",
]
