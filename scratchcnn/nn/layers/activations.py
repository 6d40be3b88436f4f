"""Element-wise activations and Softmax. They hold no parameters and keep the input dtype."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ConfigError, ShapeError
from .base import Layer, check_array, check_grad, finite_float


class _Elementwise(Layer):
    """Shape-preserving layers: validate input, remember shape and dtype for backward."""

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        return {}  # no parameters or buffers

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def _check(self, x: Any) -> np.ndarray:
        x = check_array(x, type(self).__name__)
        if x.ndim == 0:
            raise ShapeError(f"{type(self).__name__} expects a batch (N, ...), got a scalar")
        return x

    def _check_dy(self, dy: Any, like: np.ndarray) -> np.ndarray:
        return check_grad(dy, like.shape, like.dtype, type(self).__name__)


class ReLU(_Elementwise):
    """y = max(x, 0);  dL/dx = dy * [x > 0]  (the derivative at 0 is taken as 0).

    The output is the cache: y > 0 exactly where x > 0."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        y = np.maximum(x, x.dtype.type(0))  # NaN stays NaN, as in PyTorch
        self._cache = y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self._require_cache()
        return self._check_dy(dy, y) * (y > 0)


class LeakyReLU(_Elementwise):
    """y = x if x > 0 else a*x;  dL/dx = dy * (1 if x > 0 else a)."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = finite_float(negative_slope, "negative_slope")

    def config(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        scale = np.where(x > 0, x.dtype.type(1), x.dtype.type(self.negative_slope))
        self._cache = scale
        return x * scale

    def backward(self, dy: np.ndarray) -> np.ndarray:
        scale = self._require_cache()
        return self._check_dy(dy, scale) * scale


class Sigmoid(_Elementwise):
    """y = 1 / (1 + exp(-x)), computed without overflow;  dL/dx = dy * y * (1 - y)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = sigmoid(self._check(x))
        self._cache = y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self._require_cache()
        return self._check_dy(dy, y) * y * (1 - y)


class Tanh(_Elementwise):
    """y = tanh(x);  dL/dx = dy * (1 - y^2)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = np.tanh(self._check(x))
        self._cache = y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self._require_cache()
        return self._check_dy(dy, y) * (1 - y * y)


class Softmax(_Elementwise):
    """y = exp(x - max) / sum(exp(x - max)) along ``axis`` (default 1, the class axis).

    dL/dx = y * (dy - sum(dy * y)).  For training, prefer CrossEntropyLoss on the logits: it
    fuses softmax and log and never overflows. Softmax is for turning logits into probabilities.
    """

    def __init__(self, axis: int = 1) -> None:
        super().__init__()
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise ConfigError(f"{type(self).__name__} axis must be an int, got {axis!r}")
        self.axis = int(axis)

    def config(self) -> dict[str, Any]:
        return {"axis": self.axis}

    def _check_axis(self, x: Any) -> np.ndarray:
        x = self._check(x)
        if not -x.ndim <= self.axis < x.ndim:
            raise ShapeError(
                f"{type(self).__name__}(axis={self.axis}) needs an input with more axes, "
                f"got {x.shape}"
            )
        return x

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = softmax(self._check_axis(x), self.axis)
        self._cache = y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self._require_cache()
        dy = self._check_dy(dy, y)
        return y * (dy - (dy * y).sum(axis=self.axis, keepdims=True))


class LogSoftmax(Softmax):
    """y = x - max - log(sum(exp(x - max))) along ``axis`` (log-probabilities).

    dL/dx = dy - softmax(x) * sum(dy).  Log-softmax is idempotent, so CrossEntropyLoss on
    its output gives the same loss and gradients as on the logits (ONNX models often end
    with it).
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_axis(x)
        z = x - x.max(axis=self.axis, keepdims=True)
        z -= np.log(np.exp(z).sum(axis=self.axis, keepdims=True))
        self._cache = z
        return z

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self._require_cache()
        dy = self._check_dy(dy, y)
        return dy - np.exp(y) * dy.sum(axis=self.axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, exact for large |x|: exp is only ever taken of -|x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax along ``axis`` with the max subtracted first, so exp never overflows."""
    z = x - x.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z
