"""Per-channel scaling, channel slicing and channel shuffling: layers that treat the channel
axis (axis 1) of (N, C, ...) as their unit."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ConfigError, DTypeError, ShapeError
from .base import Layer, check_array, check_grad, positive_int, resolve_dtype


def _check_channels(x: Any, who: str, channels: int | None = None) -> np.ndarray:
    x = check_array(x, who)
    if x.ndim < 2:
        raise ShapeError(f"{who} expects a batch (N, C, ...), got shape {x.shape}")
    if channels is not None and x.shape[1] != channels:
        raise ShapeError(f"{who} expects {channels} channels, got {x.shape[1]} (shape {x.shape})")
    if x.shape[0] == 0:
        raise ShapeError(f"{who}: the batch is empty (input shape {x.shape})")
    return x


class ChannelScale(Layer):
    """y[n, c, ...] = weight[c] * x[n, c, ...]: a learned scale per channel (ConvNeXt's
    "layer scale", any Mul by a per-channel constant of an imported graph).

    dL/dx = dy * weight[c];  dL/dweight[c] = sum over every axis but 1 of dy * x."""

    def __init__(self, num_features: int, init: float = 1.0, dtype: Any = np.float32) -> None:
        super().__init__()
        self.num_features = positive_int(num_features, "num_features")
        self.dtype = resolve_dtype(dtype)
        self.params["weight"] = np.full(self.num_features, init, dtype=self.dtype)
        self.grads = {"weight": np.zeros_like(self.params["weight"])}

    def config(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "dtype": self.dtype.name}

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        return {"weight": (positive_int(config["num_features"], "num_features"),)}

    def extra_repr(self) -> str:
        return f"{self.num_features}" + self._repr_suffix()

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _check_channels(x, f"ChannelScale({self.num_features})", self.num_features)
        if x.dtype != self.dtype:
            raise DTypeError(f"ChannelScale holds {self.dtype} weights but got a {x.dtype} input")
        self._cache = x
        return x * self.params["weight"].reshape((1, -1) + (1,) * (x.ndim - 2))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self._require_cache()
        dy = check_grad(dy, x.shape, x.dtype, "ChannelScale")
        self.grads["weight"] = (dy * x).sum(axis=(0, *range(2, x.ndim)))
        return dy * self.params["weight"].reshape((1, -1) + (1,) * (x.ndim - 2))


class ChannelShuffle(Layer):
    """ShuffleNet's channel shuffle, torch's ``nn.ChannelShuffle(groups)``: the C channels,
    read as a (groups, C / groups) table, are written out column by column:

        y = x.reshape(N, g, C / g, ...).swapaxes(1, 2).reshape(N, C, ...)

    A permutation of the channels; backward applies the inverse one to dy (the same
    reshape with g and C / g exchanged)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = positive_int(groups, "groups")

    def config(self) -> dict[str, Any]:
        return {"groups": self.groups}

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        return {}

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        if len(shape) < 2 or shape[1] % self.groups:
            raise ShapeError(
                f"ChannelShuffle({self.groups}): {shape[1] if len(shape) > 1 else 0} channels "
                f"do not split into {self.groups} groups (input shape {tuple(shape)})"
            )

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_shape(tuple(input_shape))
        return tuple(input_shape)

    @staticmethod
    def _shuffle(x: np.ndarray, rows: int) -> np.ndarray:
        n, c, *rest = x.shape
        return np.ascontiguousarray(x.reshape(n, rows, c // rows, *rest).swapaxes(1, 2)).reshape(
            x.shape
        )

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _check_channels(x, f"ChannelShuffle({self.groups})")
        self._check_shape(x.shape)
        self._cache = (x.shape, x.dtype)
        return self._shuffle(x, self.groups)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        shape, dtype = self._require_cache()
        dy = check_grad(dy, shape, dtype, "ChannelShuffle")
        return self._shuffle(dy, shape[1] // self.groups)


class ChannelSlice(Layer):
    """y = x[:, start:stop]: channels start .. stop - 1 (ONNX's Slice or one output of Split
    on axis 1). ShuffleNetV2's unit splits the channels in two halves: a ``Parallel`` whose
    branches start with ``ChannelSlice(0, C/2)`` and ``ChannelSlice(C/2, C)``.

    dL/dx is dy in those channels and 0 in the others."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
            raise ConfigError(f"ChannelSlice: start must be an int >= 0, got {start!r}")
        self.start = int(start)
        self.stop = positive_int(stop, "stop")
        if self.stop <= self.start:
            raise ConfigError(f"ChannelSlice: stop {stop} must be above start {start}")

    def config(self) -> dict[str, Any]:
        return {"start": self.start, "stop": self.stop}

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        return {}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) < 2 or input_shape[1] < self.stop:
            raise ShapeError(
                f"ChannelSlice({self.start}, {self.stop}) needs at least {self.stop} channels, "
                f"got input shape {tuple(input_shape)}"
            )
        return (input_shape[0], self.stop - self.start, *input_shape[2:])

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _check_channels(x, f"ChannelSlice({self.start}, {self.stop})")
        self.output_shape(x.shape)
        self._cache = (x.shape, x.dtype)
        return np.ascontiguousarray(x[:, self.start : self.stop])

    def backward(self, dy: np.ndarray) -> np.ndarray:
        shape, dtype = self._require_cache()
        dy = check_grad(dy, self.output_shape(shape), dtype, "ChannelSlice")
        dx = np.zeros(shape, dtype=dtype)
        dx[:, self.start : self.stop] = dy
        return dx
