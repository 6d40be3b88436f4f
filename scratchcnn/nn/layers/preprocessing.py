"""Rescale and Normalize: fixed affine maps of the input, so a saved model carries its own
preprocessing (``predict``, ``evaluate``, ``explain`` and the ONNX export then apply it
without being told)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import ConfigError, ShapeError
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


class Normalize(_Elementwise):
    """y[:, c] = (x[:, c] - mean[c]) / std[c] for each channel c (no parameters);
    dL/dx[:, c] = dy[:, c] / std[c].

    torchvision's ``transforms.Normalize`` as a layer: a model trained on an image folder or
    CIFAR starts with the training split's per-channel mean and standard deviation (of
    pixels in [0, 1]), so the saved model takes plain [0, 1] images everywhere.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if isinstance(mean, (str, bytes)) or not isinstance(mean, Sequence | np.ndarray):
            raise ConfigError(f"Normalize: mean must be a list of numbers, got {mean!r}")
        if isinstance(std, (str, bytes)) or not isinstance(std, Sequence | np.ndarray):
            raise ConfigError(f"Normalize: std must be a list of numbers, got {std!r}")
        if not 1 <= len(mean) <= 4096 or len(std) != len(mean):
            raise ConfigError(
                f"Normalize: mean and std need one value per channel (1 to 4096), got "
                f"{len(mean)} and {len(std)}"
            )
        self.mean = tuple(finite_float(m, "mean") for m in mean)
        self.std = tuple(finite_float(v, "std") for v in std)
        if min(self.std) < 1e-6 or max(map(abs, self.mean)) > 1e6 or max(self.std) > 1e6:
            raise ConfigError(
                f"Normalize: std must be in [1e-6, 1e6] and |mean| at most 1e6, got mean "
                f"{self.mean[:4]}, std {self.std[:4]}"
            )

    def config(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std)}

    def __repr__(self) -> str:
        def short(values: tuple[float, ...]) -> str:
            shown = ", ".join(f"{v:.4g}" for v in values[:4])
            return f"({shown}{', ...' if len(values) > 4 else ''})"

        return f"Normalize(mean={short(self.mean)}, std={short(self.std)})"

    def _per_channel(self, values: tuple[float, ...], x: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        if x.ndim < 2 or x.shape[1] != len(self.mean):
            raise ShapeError(
                f"Normalize: expects {len(self.mean)} channels (N, {len(self.mean)}, ...), "
                f"got {x.shape}"
            )
        self._cache = (x.shape, x.dtype)
        return (x - self._per_channel(self.mean, x)) / self._per_channel(self.std, x)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        shape, dtype = self._require_cache()
        dy = self._check_dy(dy, np.empty(shape, dtype))
        return dy / self._per_channel(self.std, dy)
