"""The in-memory :class:`Dataset` and the mini-batch :class:`DataLoader`.

A Dataset holds every image of one split at once (MNIST's 60,000 images are
47 MB as uint8), so batching is plain NumPy indexing: no worker processes, no
per-item Python loop. The images may also be a read-only ``np.memmap`` (an image
folder's decode cache): a batch then reads its rows from the file. The loader owns a
``np.random.Generator`` whose state can be saved and restored, so a resumed training run
sees exactly the same future shuffles as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from scratchcnn.errors import CheckpointError, ConfigError, DataError

__all__ = ["DataLoader", "Dataset"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images in NCHW with integer labels, validated on construction.

    ``images`` is (N, C, H, W): uint8 in [0, 255] for image data sets, or a float
    array (float32 for the shapes set), which must be finite. ``labels`` is
    (N,) and is stored as int64. As in PyTorch, ``dataset[i]`` is one item, an
    ``(image, label)`` pair (the (C, H, W) image as stored, the label an int);
    indexing with a slice, an integer array or a boolean mask returns a new Dataset
    with the same name and classes (``dataset[:1000]``: the first 1,000 images).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        name = self.name
        images = self.images
        labels = self.labels
        if not isinstance(images, np.ndarray):
            raise DataError(
                f"dataset {name!r}: images must be a numpy array, got {type(images).__name__}"
            )
        if not isinstance(labels, np.ndarray):
            raise DataError(
                f"dataset {name!r}: labels must be a numpy array, got {type(labels).__name__}"
            )
        classes = tuple(str(c) for c in self.classes)
        if not classes:
            raise DataError(f"dataset {name!r}: needs at least one class name")
        if images.ndim != 4:
            raise DataError(
                f"dataset {name!r}: images must be 4-D (N, C, H, W), got shape {images.shape}"
            )
        if images.dtype != np.uint8 and images.dtype.kind != "f":
            raise DataError(
                f"dataset {name!r}: images must be uint8 or floating point, got {images.dtype}"
            )
        if labels.ndim != 1:
            raise DataError(f"dataset {name!r}: labels must be 1-D, got shape {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise DataError(f"dataset {name!r}: labels must be integers, got {labels.dtype}")
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"dataset {name!r}: {images.shape[0]} images but {labels.shape[0]} labels"
            )
        if images.shape[0] == 0:
            raise DataError(f"dataset {name!r} is empty")
        bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"dataset {name!r}: label {int(labels[i])} at index {i} is out of range "
                f"[0, {len(classes)}) ({bad.size} bad labels in all)"
            )
        if images.dtype.kind == "f":
            finite = np.isfinite(images)
            if not finite.all():
                i = int(np.flatnonzero(~finite.reshape(len(images), -1).all(axis=1))[0])
                raise DataError(
                    f"dataset {name!r}: image {i} contains NaN or inf "
                    f"({int(finite.size - finite.sum())} non-finite values in all)"
                )
        if labels.dtype != np.int64:
            object.__setattr__(self, "labels", labels.astype(np.int64))
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "name", str(name))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, idx: Any) -> Any:
        if isinstance(idx, (int, np.integer)) and not isinstance(idx, bool):
            n = len(self)
            if not -n <= idx < n:
                raise IndexError(f"dataset {self.name!r}: index {idx} out of range for {n} items")
            return self.images[idx], int(self.labels[idx])
        return Dataset(self.images[idx], self.labels[idx], self.classes, self.name)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"dtype={self.images.dtype}, num_classes={self.num_classes})"
        )

    @property
    def num_classes(self) -> int:
        """Number of classes (the length of ``classes``)."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image, (C, H, W)."""
        _, c, h, w = self.images.shape
        return (int(c), int(h), int(w))


def _to_json(value: Any) -> Any:
    """Turn a bit-generator state into plain Python (arrays -> lists, numpy ints -> int)."""
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def crop_and_flip(x: np.ndarray, shifts: np.ndarray, flips: np.ndarray, pad: int) -> np.ndarray:
    """Random-crop augmentation: image k of ``x`` (B, C, H, W) becomes the H x W window at
    offset ``shifts[k]`` (row, col, each in 0..2*pad) of its copy padded with ``pad`` zeros,
    mirrored left-right where ``flips[k]``. One fancy-indexing gather for the whole batch."""
    b, c, h, w = x.shape
    xp = np.zeros((b, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    xp[:, :, pad : pad + h, pad : pad + w] = x
    rows = shifts[:, 0, None] + np.arange(h)  # (B, H)
    cols = shifts[:, 1, None] + np.where(flips[:, None], np.arange(w)[::-1], np.arange(w))
    return xp[
        np.arange(b)[:, None, None, None],
        np.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


class DataLoader:
    """Iterate over a :class:`Dataset` in mini-batches ``(x, y)``.

    ``x`` is ``dtype`` (float32 by default) in NCHW; uint8 images are divided by
    255 so they lie in [0, 1], float images are only cast. ``y`` is int64.
    With ``shuffle`` a fresh permutation is drawn from ``self.rng`` at the start
    of every epoch (every call to ``iter``); ``seed`` is an int or an existing
    ``np.random.Generator`` (which is then shared, not copied). ``len(loader)``
    is the number of batches per epoch; ``drop_last`` drops a final partial
    batch. ``state_dict()`` / ``load_state_dict()`` save and restore the
    generator so a resumed run draws the same future permutations.

    ``augment=True`` (for a training split only; never for test data) gives every image a
    random crop of its zero-padded copy (``pad`` pixels each side, so shifts of -pad..pad)
    and a horizontal flip with probability 1/2. The shifts and flips of a whole epoch are
    drawn from ``self.rng`` together with its permutation, so they are part of the
    resumable state, and applied to each batch in one vectorised gather.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 64,
        shuffle: bool = True,
        seed: int | np.random.Generator = 0,
        dtype: np.dtype | type = np.float32,
        drop_last: bool = False,
        augment: bool = False,
        pad: int = 2,
    ) -> None:
        if not isinstance(dataset, Dataset):
            raise ConfigError(
                f"DataLoader needs a scratchcnn.data.Dataset, got {type(dataset).__name__}"
            )
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, (int, np.integer))
            or batch_size < 1
        ):
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        try:
            np_dtype = np.dtype(dtype)
        except TypeError:
            raise ConfigError(f"DataLoader dtype must be a float type, got {dtype!r}") from None
        if np_dtype.kind != "f":
            raise ConfigError(f"DataLoader dtype must be a float type, got {np_dtype}")
        if isinstance(seed, np.random.Generator):
            rng = seed
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
            rng = np.random.default_rng(int(seed))
        else:
            raise ConfigError(
                f"DataLoader seed must be an integer >= 0 or a numpy Generator, got {seed!r}"
            )
        if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
            raise ConfigError(f"DataLoader pad must be an integer >= 0, got {pad!r}")
        _, _, h, w = dataset.images.shape
        if augment and pad >= min(h, w):
            raise ConfigError(f"DataLoader pad {pad} must be smaller than the images ({h}x{w})")
        self.augment = bool(augment)
        self.pad = int(pad)
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.dtype = np_dtype
        self.drop_last = bool(drop_last)
        self.rng = rng

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # The permutation is drawn here, eagerly, not lazily on the first next().
        n = len(self.dataset)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        draws = None
        if self.augment:
            shifts = self.rng.integers(0, 2 * self.pad + 1, size=(n, 2))
            flips = self.rng.random(n) < 0.5
            draws = (shifts, flips)
        return self._batches(order, draws)

    def _batches(
        self, order: np.ndarray, draws: tuple[np.ndarray, np.ndarray] | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        images, labels = self.dataset.images, self.dataset.labels
        scale = images.dtype == np.uint8
        bs = self.batch_size
        stop = len(self) * bs
        for start in range(0, stop, bs):
            sel = order[start : start + bs]
            x = images[sel].astype(self.dtype, copy=False)  # fancy indexing copies
            if scale:
                x /= self.dtype.type(255)
            if draws is not None:
                end = start + len(sel)
                x = crop_and_flip(x, draws[0][start:end], draws[1][start:end], self.pad)
            yield x, labels[sel]

    def state_dict(self) -> dict[str, Any]:
        """The generator's ``bit_generator.state`` as a JSON-serialisable dict."""
        return _to_json(self.rng.bit_generator.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (also after a JSON round trip)."""
        if not isinstance(state, dict) or "bit_generator" not in state:
            raise CheckpointError(
                "DataLoader state must be a dict with a 'bit_generator' key, "
                f"got {type(state).__name__}"
            )
        have = type(self.rng.bit_generator).__name__
        if state["bit_generator"] != have:
            raise CheckpointError(
                f"DataLoader state is for bit generator {state['bit_generator']!r}, "
                f"this loader's generator is {have!r}"
            )
        try:
            self.rng.bit_generator.state = state
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"invalid DataLoader state: {exc}") from None
