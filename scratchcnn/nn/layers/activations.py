"""Element-wise activations and Softmax. They hold no parameters and keep the input dtype."""

from __future__ import annotations

import math
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


class Clip(_Elementwise):
    """y = min(max(x, min_value), max_value), a bound left out when None (ONNX's Clip,
    torch's hardtanh / clamp);  dL/dx = dy * [min_value < x < max_value] (0 on a bound, as
    torch's hardtanh and relu6 give it)."""

    def __init__(self, min_value: float | None = None, max_value: float | None = None) -> None:
        super().__init__()
        self.min_value = None if min_value is None else finite_float(min_value, "min_value")
        self.max_value = None if max_value is None else finite_float(max_value, "max_value")
        if None not in (self.min_value, self.max_value) and self.min_value > self.max_value:
            raise ConfigError(f"Clip: min_value {min_value} is above max_value {max_value}")

    def config(self) -> dict[str, Any]:
        return {"min_value": self.min_value, "max_value": self.max_value}

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        inside = np.ones(x.shape, dtype=bool)
        y = x
        if self.min_value is not None:
            low = x.dtype.type(self.min_value)
            inside &= x > low
            y = np.maximum(y, low)
        if self.max_value is not None:
            high = x.dtype.type(self.max_value)
            inside &= x < high
            y = np.minimum(y, high)
        self._cache = (inside, x.dtype)
        return y if y is not x else x.copy()

    def backward(self, dy: np.ndarray) -> np.ndarray:
        inside, dtype = self._require_cache()
        dy = check_grad(dy, inside.shape, dtype, type(self).__name__)
        return dy * inside


class ReLU6(Clip):
    """y = min(max(x, 0), 6), torch's ReLU6 (MobileNetV2);  dL/dx = dy * [0 < x < 6]."""

    def __init__(self) -> None:
        super().__init__(0.0, 6.0)

    def config(self) -> dict[str, Any]:
        return {}


class Hardsigmoid(_Elementwise):
    """y = min(max(alpha * x + beta, 0), 1), ONNX's HardSigmoid; the defaults alpha = 1/6,
    beta = 1/2 are torch's Hardsigmoid, relu6(x + 3) / 6.  dL/dx = dy * alpha where
    0 < alpha * x + beta < 1 (torch: -3 < x < 3), else 0."""

    def __init__(self, alpha: float = 1 / 6, beta: float = 0.5) -> None:
        super().__init__()
        self.alpha = finite_float(alpha, "alpha")
        self.beta = finite_float(beta, "beta")

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta}

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        t = x * x.dtype.type(self.alpha) + x.dtype.type(self.beta)
        inside = (t > 0) & (t < 1)
        self._cache = (inside, x.dtype)
        return np.clip(t, 0, 1).astype(x.dtype, copy=False)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        inside, dtype = self._require_cache()
        dy = check_grad(dy, inside.shape, dtype, type(self).__name__)
        return dy * (inside * dtype.type(self.alpha))


class Hardswish(_Elementwise):
    """y = x * relu6(x + 3) / 6 (torch's Hardswish, ONNX's HardSwish).

    dL/dx = dy * 0 for x <= -3, dy * (x / 3 + 1/2) for -3 < x < 3, dy for x >= 3 (torch's
    choice at the two kinks)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        self._cache = x
        return x * (np.clip(x + x.dtype.type(3), 0, 6) / x.dtype.type(6))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self._require_cache()
        dy = self._check_dy(dy, x)
        slope = np.where(x >= 3, x.dtype.type(1), x / x.dtype.type(3) + x.dtype.type(0.5))
        return dy * np.where(x <= -3, x.dtype.type(0), slope)


class SiLU(_Elementwise):
    """y = x * sigmoid(x) (also called swish; EfficientNet's activation).

    With s = sigmoid(x): dL/dx = dy * s * (1 + x * (1 - s))."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        s = sigmoid(x)
        self._cache = (x, s)
        return x * s

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, s = self._require_cache()
        dy = self._check_dy(dy, x)
        return dy * s * (1 + x * (1 - s))


GELU_FORMS = ("none", "tanh")


class GELU(_Elementwise):
    """y = x * Phi(x), Phi the standard normal CDF, as torch's GELU (ConvNeXt):

    * ``approximate="none"``: Phi(x) = (1 + erf(x / sqrt(2))) / 2, and
      dL/dx = dy * (Phi(x) + x * phi(x)) with phi(x) = exp(-x^2 / 2) / sqrt(2 pi);
    * ``approximate="tanh"``: y = x / 2 * (1 + tanh(u)), u = sqrt(2 / pi) (x + 0.044715 x^3),
      dL/dx = dy * ((1 + t) / 2 + x / 2 * (1 - t^2) * sqrt(2 / pi) (1 + 3 * 0.044715 x^2)),
      t = tanh(u).

    NumPy has no erf: :func:`erf` evaluates it (float64, within 1e-16) by Chebyshev series.
    """

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in GELU_FORMS:
            raise ConfigError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def config(self) -> dict[str, Any]:
        return {"approximate": self.approximate}

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        x64 = x.astype(np.float64, copy=False)
        if self.approximate == "tanh":
            t = np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3))
            self._cache = (x, t)
            return (0.5 * x64 * (1 + t)).astype(x.dtype, copy=False)
        cdf = 0.5 * (1 + erf(x64 / math.sqrt(2)))
        self._cache = (x, cdf)
        return (x64 * cdf).astype(x.dtype, copy=False)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, c = self._require_cache()
        dy = self._check_dy(dy, x)
        x64 = x.astype(np.float64, copy=False)
        if self.approximate == "tanh":
            du = math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x64 * x64)
            slope = 0.5 * (1 + c) + 0.5 * x64 * (1 - c * c) * du
        else:
            slope = c + x64 * np.exp(-0.5 * x64 * x64) / math.sqrt(2 * math.pi)
        return (dy * slope).astype(x.dtype, copy=False)


def _erf_table(width: float, top: float, degree: int) -> np.ndarray:
    """Chebyshev coefficients of erf on [k * width, (k + 1) * width] for k = 0 .. top / width,
    interpolated from the standard library's erf; column j holds every interval's T_j
    coefficient (row j of the returned array)."""
    scalar = np.frompyfunc(math.erf, 1, 1)
    rows = []
    for k in range(round(top / width)):

        def on_interval(t: np.ndarray, a: float = k * width) -> np.ndarray:
            return scalar(a + (t + 1) * width / 2).astype(np.float64)

        rows.append(np.polynomial.chebyshev.chebinterpolate(on_interval, degree))
    return np.ascontiguousarray(np.array(rows).T)


_ERF_WIDTH = 0.25
_ERF_TOP = 6.0
_ERF = _erf_table(_ERF_WIDTH, _ERF_TOP, 12)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function 2/sqrt(pi) * integral_0^x exp(-t^2) dt, element-wise, in float64.

    erf is odd. On [0, 6) it is a Chebyshev series of degree 12 on each interval of width
    1/4 (coefficients interpolated from ``math.erf`` when the module loads; within 2e-15 of
    it), evaluated by Clenshaw's recurrence: a loop over the 12 terms, each step vectorised
    over x. From 6 on, erf is 1 to double precision."""
    x = np.asarray(x, dtype=np.float64)
    z = np.minimum(np.abs(x), _ERF_TOP)  # NaN stays NaN
    k = np.minimum((np.nan_to_num(z) / _ERF_WIDTH).astype(np.intp), _ERF.shape[1] - 1)
    t = np.clip((2 / _ERF_WIDTH) * (z - k * _ERF_WIDTH) - 1, -1, 1)
    b1, b2, t2 = np.zeros_like(z), np.zeros_like(z), 2 * t
    for j in range(len(_ERF) - 1, 0, -1):
        b1, b2 = t2 * b1 - b2 + _ERF[j][k], b1
    value = np.where(z >= _ERF_TOP, 1.0, t * b1 - b2 + _ERF[0][k])
    return np.copysign(value, x)


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
