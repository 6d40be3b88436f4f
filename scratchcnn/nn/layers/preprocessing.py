"""Rescale: a fixed affine map of the input, so a saved model carries its own preprocessing."""

from __future__ import annotations

from typing import Any

import numpy as np

from .activations import _Elementwise
from .base import finite_float


class Rescale(_Elementwise):
    """y = x * scale + offset (no parameters);  dL/dx = dy * scale.

    Models take images in [0, 1]; a network trained on another range (the digit tutorial
    used [-0.5, 0.5]) starts with ``Rescale(1.0, -0.5)``, like Keras' Rescaling layer.
    """

    def __init__(self, scale: float = 1.0, offset: float = 0.0) -> None:
        super().__init__()
        self.scale = finite_float(scale, "scale")
        self.offset = finite_float(offset, "offset")

    def config(self) -> dict[str, Any]:
        return {"scale": self.scale, "offset": self.offset}

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        self._cache = (x.shape, x.dtype)
        return x * x.dtype.type(self.scale) + x.dtype.type(self.offset)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        shape, dtype = self._require_cache()
        dy = self._check_dy(dy, np.empty(shape, dtype))
        return dy * dtype.type(self.scale)
