"""STOPGAP until the interop-layers branch (which owns GlobalAvgPool2D in pooling.py) is
merged: delete this file at that merge and import theirs instead."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ShapeError
from .base import Layer, check_grad, check_input


class GlobalAvgPool2D(Layer):
    """(N, C, H, W) -> (N, C, 1, 1): y[n, c] = mean over (h, w) of x[n, c], like torch's
    AdaptiveAvgPool2d(1). dL/dx[n, c, h, w] = dy[n, c] / (H * W)."""

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        return {}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 4:
            raise ShapeError(f"GlobalAvgPool2D expects (N, C, H, W), got {tuple(input_shape)}")
        return (input_shape[0], input_shape[1], 1, 1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = check_input(x, "GlobalAvgPool2D", 4, "(N, C, H, W)")
        self._cache = (x.shape, x.dtype)
        return x.mean(axis=(2, 3), keepdims=True)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        shape, dtype = self._require_cache()
        dy = check_grad(dy, (*shape[:2], 1, 1), dtype, "GlobalAvgPool2D")
        scale = dtype.type(1.0 / (shape[2] * shape[3]))
        return np.broadcast_to(dy * scale, shape).copy()
