"""The engine's ReLU, the other activations and Flatten: the reference's results, in the
input's own memory layout.

ReLU runs one compiled pass over all of x's memory (forward: max(x, 0); backward: dy where
y > 0), or NumPy's ``np.maximum`` against a kept array of zeros of x's layout (against the
scalar 0 it runs several times slower). Its output is its cache: y > 0 exactly where x > 0.

SiLU, GELU (both forms), Hardswish, Hardsigmoid and Clip/ReLU6 run one compiled pass each
way (``_numba.silu_grad`` ... ``clip_grad``; SiLU's forward is three NumPy passes, see
there): the formulas of their layers' docstrings, evaluated per element, with x as the
cache. Their layers spend several NumPy passes and temporaries on the same (GELU's erf
alone is a Chebyshev series of about 50 passes).

Flatten hands dL/dx back in the memory layout its input had, so the layers before it (a
pool over a Conv2D route's (H, C, W, N) output) stream through memory in backward too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..nn.layers.activations import GELU, Clip, Hardsigmoid, Hardswish, ReLU, ReLU6, SiLU
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


class _PointwiseRoute(Route):
    """One compiled pass over x's memory each way (``_forward`` / ``_backward``, given the
    kernel module and flat views); the cache is x. Where the kernels cannot run (numba off,
    an integer dtype, a layout that is not a permutation of a dense array) the layer runs."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self.layer._check(x)
        fast = modes.for_dtype(x.dtype)
        flat = dense_flat(x) if fast else None
        y = np.empty_like(x) if flat is not None else None
        if y is None or y.strides != x.strides:
            self._cache = None
            return self.layer.forward(x)
        self._forward(fast, flat, dense_flat(y))
        self._cache = x
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self._cache
        if x is None:  # the layer ran the forward (or nothing did: it says so)
            return self.layer.backward(dy)
        dy = check_grad(dy, x.shape, x.dtype, type(self.layer).__name__)
        if dy.strides != x.strides or dense_flat(dy) is None:
            laid = np.empty_like(x)
            laid[...] = dy
            dy = laid
        dx = np.empty_like(x)
        self._backward(modes.compiled(), dense_flat(dy), dense_flat(x), dense_flat(dx))
        return dx

    def _forward(self, fast: Any, x: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _backward(self, fast: Any, dy: np.ndarray, x: np.ndarray, dx: np.ndarray) -> None:
        raise NotImplementedError


class SiLURoute(_PointwiseRoute):
    def _forward(self, fast: Any, x: np.ndarray, y: np.ndarray) -> None:
        # y = x / (1 + exp(-x)) in three NumPy passes: NumPy's exp is vectorised, numba's
        # calls libm once per element (1.75x slower over a whole pass, measured on 1.5M
        # float32 values). exp(-x) overflows to inf for very negative x: y = -0, as it
        # should. The backward is one compiled pass (fast.silu_grad).
        with np.errstate(over="ignore"):
            np.negative(x, out=y)
            np.exp(y, out=y)
        y += y.dtype.type(1)
        np.divide(x, y, out=y)

    def _backward(self, fast: Any, dy: np.ndarray, x: np.ndarray, dx: np.ndarray) -> None:
        fast.silu_grad(dy, x, dx)


class GELURoute(_PointwiseRoute):
    def _forward(self, fast: Any, x: np.ndarray, y: np.ndarray) -> None:
        (fast.gelu_tanh if self.layer.approximate == "tanh" else fast.gelu)(x, y)

    def _backward(self, fast: Any, dy: np.ndarray, x: np.ndarray, dx: np.ndarray) -> None:
        tanh = self.layer.approximate == "tanh"
        (fast.gelu_tanh_grad if tanh else fast.gelu_grad)(dy, x, dx)


class HardswishRoute(_PointwiseRoute):
    def _forward(self, fast: Any, x: np.ndarray, y: np.ndarray) -> None:
        fast.hardswish(x, y)

    def _backward(self, fast: Any, dy: np.ndarray, x: np.ndarray, dx: np.ndarray) -> None:
        fast.hardswish_grad(dy, x, dx)


class HardsigmoidRoute(_PointwiseRoute):
    def _ab(self, x: np.ndarray) -> tuple[Any, Any]:
        """alpha and beta in x's dtype, as the layer computes with them."""
        return x.dtype.type(self.layer.alpha), x.dtype.type(self.layer.beta)

    def _forward(self, fast: Any, x: np.ndarray, y: np.ndarray) -> None:
        fast.hardsigmoid(x, *self._ab(x), y)

    def _backward(self, fast: Any, dy: np.ndarray, x: np.ndarray, dx: np.ndarray) -> None:
        fast.hardsigmoid_grad(dy, x, *self._ab(x), dx)


class ClipRoute(_PointwiseRoute):
    def _bounds(self, x: np.ndarray) -> tuple[Any, Any, bool, bool]:
        """The bounds in x's dtype (0 where absent) and which are there."""
        low, high = self.layer.min_value, self.layer.max_value
        t = x.dtype.type
        return t(low or 0), t(high or 0), low is not None, high is not None

    def _forward(self, fast: Any, x: np.ndarray, y: np.ndarray) -> None:
        fast.clip(x, *self._bounds(x), y)

    def _backward(self, fast: Any, dy: np.ndarray, x: np.ndarray, dx: np.ndarray) -> None:
        fast.clip_grad(dy, x, *self._bounds(x), dx)


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


ROUTES = {
    ReLU: ReLURoute,
    Flatten: FlattenRoute,
    SiLU: SiLURoute,
    GELU: GELURoute,
    Hardswish: HardswishRoute,
    Hardsigmoid: HardsigmoidRoute,
    Clip: ClipRoute,
    ReLU6: ClipRoute,
}
