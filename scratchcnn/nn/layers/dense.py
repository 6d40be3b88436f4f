"""Dense (fully connected) and Flatten."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ShapeError
from ..init import Initializer, get_rng, initialize
from .base import Layer, check_array, check_grad, check_input, positive_int, resolve_dtype


class Dense(Layer):
    """Affine map, like torch.nn.Linear.

    y = x W^T + b;  x: (N, in), W: (out, in), b: (out,), y: (N, out).
    Backward: dL/dW = dy^T x,  dL/db = sum_n dy,  dL/dx = dy W.
    """

    supports_input_grad_skip = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: Any = np.float32,
        weight_init: str | Initializer = "default",
        bias_init: str | Initializer = "default",
        rng: np.random.Generator | int | None = None,
    ) -> None:
        super().__init__()
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        self.use_bias = bool(bias)
        self.dtype = resolve_dtype(dtype)
        gen = get_rng(rng)
        fi, fo = self.in_features, self.out_features
        self.params["weight"] = initialize(weight_init, (fo, fi), fi, fo, gen, self.dtype)
        if self.use_bias:
            self.params["bias"] = initialize(bias_init, (fo,), fi, fo, gen, self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def config(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.use_bias,
            "dtype": self.dtype.name,
        }

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        fi = positive_int(config["in_features"], "in_features")
        fo = positive_int(config["out_features"], "out_features")
        return {"weight": (fo, fi), **({"bias": (fo,)} if config.get("bias", True) else {})}

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}" + self._repr_suffix()

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 2 or input_shape[1] != self.in_features:
            raise ShapeError(
                f"Dense({self.in_features}, {self.out_features}) expects input (N, "
                f"{self.in_features}), got {tuple(input_shape)}"
            )
        return (input_shape[0], self.out_features)

    def forward(self, x: np.ndarray) -> np.ndarray:
        who = f"Dense({self.in_features}, {self.out_features})"
        x = check_input(x, who, 2, "(N, features)", self.dtype, self.in_features, "features")
        y = x @ self.params["weight"].T
        if self.use_bias:
            y += self.params["bias"]
        self._cache = x
        return y

    def backward(self, dy: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        x = self._require_cache()
        dy = check_grad(dy, (x.shape[0], self.out_features), self.dtype, "Dense")
        self.grads["weight"] = dy.T @ x
        if self.use_bias:
            self.grads["bias"] = dy.sum(axis=0)
        return dy @ self.params["weight"] if input_grad else None


class Flatten(Layer):
    """(N, d1, ..., dk) -> (N, d1*...*dk): axes ``start_dim`` to the last merge into one, as
    torch.nn.Flatten(start_dim) does (start_dim >= 1: the batch axis stays). Backward
    reshapes dy back."""

    def __init__(self, start_dim: int = 1) -> None:
        super().__init__()
        self.start_dim = positive_int(start_dim, "start_dim")

    def config(self) -> dict[str, Any]:
        # Recorded only when set, so plain Flatten configs read as before.
        return {"start_dim": self.start_dim} if self.start_dim != 1 else {}

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}" if self.start_dim != 1 else ""

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        return {}  # no parameters or buffers

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        s = self.start_dim
        if len(input_shape) <= s:
            raise ShapeError(
                f"Flatten(start_dim={s}) expects at least {s + 1}-D input, got {tuple(input_shape)}"
            )
        return (*input_shape[:s], int(np.prod(input_shape[s:], dtype=np.int64)))

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = check_array(x, "Flatten")
        if x.ndim <= self.start_dim:
            raise ShapeError(
                f"Flatten expects at least {self.start_dim + 1}-D (N, ...) input, got shape "
                f"{x.shape}"
            )
        if x.shape[0] == 0:
            raise ShapeError(f"Flatten: the batch is empty (input shape {x.shape})")
        self._cache = (x.shape, x.dtype)
        return x.reshape(self.output_shape(x.shape))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        shape, dtype = self._require_cache()
        dy = check_grad(dy, self.output_shape(shape), dtype, "Flatten")
        return dy.reshape(shape)
