"""The cross-versus-rectangle toy data set (5x5 images, two classes).

A cross is all of row 2 and all of column 2. The open rectangle is row 1 across
all five columns, then down column 4 to row 3, then row 3 back to column 1:
cells (1, 0..4), (2, 4), (3, 4), (3, 1..4). Every pixel of the shape gets its
own uniform random value in (0, 1); all other pixels are exactly 0.
"""

from __future__ import annotations

import numpy as np

from scratchcnn.errors import ConfigError

__all__ = ["CROSS_MASK", "RECTANGLE_MASK", "SHAPE_CLASSES", "make_shapes"]

SHAPE_CLASSES: tuple[str, ...] = ("cross", "rectangle")

CROSS_MASK = np.zeros((5, 5), dtype=bool)
CROSS_MASK[2, :] = True
CROSS_MASK[:, 2] = True
CROSS_MASK.flags.writeable = False

RECTANGLE_MASK = np.zeros((5, 5), dtype=bool)
RECTANGLE_MASK[1, 0:5] = True
RECTANGLE_MASK[2, 4] = True
RECTANGLE_MASK[3, 1:5] = True
RECTANGLE_MASK.flags.writeable = False

_MASKS = np.stack([CROSS_MASK, RECTANGLE_MASK])  # index = label
# Smallest positive float32 step below 1: keeps drawn values strictly inside (0, 1).
_TINY = np.float32(2.0**-24)


def make_shapes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` cross/rectangle images with ``np.random.default_rng(seed)``.

    Returns ``(images, labels)``: float32 of shape (n, 1, 5, 5) with the shape's
    pixels in (0, 1) and zeros elsewhere, and int64 labels (0 = cross,
    1 = rectangle), each class with probability 1/2. Same seed, same data.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"make_shapes: n must be an integer >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"make_shapes: seed must be an integer >= 0, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    labels = rng.integers(0, 2, size=int(n), dtype=np.int64)
    values = rng.random((int(n), 5, 5), dtype=np.float32)
    # random() is [0, 1): lift an exact 0 (probability 2**-24 per pixel) to 2**-24.
    np.maximum(values, _TINY, out=values)
    images = np.where(_MASKS[labels], values, np.float32(0.0))
    return images[:, None, :, :], labels
