"""The engine's ReLU and Flatten: the reference's results, in the input's own memory layout.

ReLU runs one compiled pass over all of x's memory (forward: max(x, 0); backward: dy where
y > 0), or NumPy's ``np.maximum`` against a kept array of zeros of x's layout (against the
scalar 0 it runs several times slower). Its output is its cache: y > 0 exactly where x > 0.

Flatten hands dL/dx back in the memory layout its input had, so the layers before it (a
pool over a Conv2D route's (H, C, W, N) output) stream through memory in backward too.
"""

from __future__ import annotations

import numpy as np

from ..nn.layers.activations import ReLU
from ..nn.layers.base import check_grad
from ..nn.layers.dense import Flatten
from . import modes
from .layout import dense_flat
from .route import Route


class ReLURoute(Route):
    def __init__(self, layer: ReLU) -> None:
        super().__init__(layer)
        self._zeros: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self.layer._check(x)
        fast = modes.for_dtype(x.dtype)
        flat = dense_flat(x) if fast else None
        if flat is not None:
            y = np.empty_like(x)  # a dense x's layout is kept
            if y.strides == x.strides:
                fast.relu(flat, dense_flat(y))
                self._cache = y
                return y
        zeros = self._zeros
        if (
            zeros is None
            or zeros.shape != x.shape
            or zeros.strides != x.strides
            or (zeros.dtype != x.dtype)
        ):
            zeros = self._zeros = np.zeros_like(x)
        y = np.maximum(x, zeros)
        self._cache = y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self._require_cache()
        dy = check_grad(dy, y.shape, y.dtype, "ReLU")
        fast = modes.for_dtype(y.dtype)
        if fast and dy.strides == y.strides:
            dx = np.empty_like(y)
            flats = dense_flat(dy), dense_flat(y), dense_flat(dx)
            if all(f is not None for f in flats):
                fast.relu_grad(*flats)
                return dx
        return dy * (y > 0)


class FlattenRoute(Route):
    def forward(self, x: np.ndarray) -> np.ndarray:
        y = self.layer.forward(x)  # checks and reshapes; keeps x (a reference) for its layout
        self._cache = x
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        like = self._require_cache()
        dy = check_grad(dy, self.layer.output_shape(like.shape), like.dtype, "Flatten")
        dx = np.empty_like(like)
        dx[...] = dy.reshape(like.shape)
        return dx


ROUTES = {ReLU: ReLURoute, Flatten: FlattenRoute}
