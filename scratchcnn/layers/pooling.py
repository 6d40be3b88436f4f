"""MaxPool2D and AvgPool2D, on the same window helper as Conv2D."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..windows import as_pair, pad2d, window_output_shape, window_views
from .base import Layer, check_grad, check_input


class _Pool2D(Layer):
    """Shared constructor, config and shape logic of the pooling layers."""

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.kernel_size = as_pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else as_pair(stride, "stride", 1)
        ph, pw = as_pair(padding, "padding", 0)
        if 2 * ph > self.kernel_size[0] or 2 * pw > self.kernel_size[1]:
            # A window made only of padding would have no input to pool (PyTorch's rule too).
            raise ConfigError(
                f"{type(self).__name__}: padding {(ph, pw)} must be at most half the kernel "
                f"size {self.kernel_size}"
            )
        self.padding = (ph, pw)
        self.pad = ((ph, ph), (pw, pw))

    def config(self) -> dict[str, Any]:
        return {
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
        }

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        return {}  # no parameters or buffers

    def extra_repr(self) -> str:
        text = f"kernel_size={self.kernel_size}, stride={self.stride}"
        return text + (f", padding={self.padding}" if self.padding != (0, 0) else "")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        oh, ow = window_output_shape(
            input_shape[2:], self.kernel_size, self.stride, self.pad, repr(self)
        )
        return (input_shape[0], input_shape[1], oh, ow)

    def _input(self, x: np.ndarray, pad_value: float) -> tuple[np.ndarray, tuple[int, int]]:
        """Validated, padded input and the output size (OH, OW)."""
        who = type(self).__name__
        x = check_input(x, who, 4, "(N, C, H, W)")
        oh, ow = window_output_shape(x.shape[2:], self.kernel_size, self.stride, self.pad, who)
        return pad2d(x, self.pad, pad_value), (oh, ow)

    def _views(self, xp: np.ndarray, out_hw: tuple[int, int]):
        return window_views(xp, self.kernel_size, self.stride, out_hw)

    @property
    def _overlapping(self) -> bool:
        return self.kernel_size[0] > self.stride[0] or self.kernel_size[1] > self.stride[1]

    def _unpad(self, dxp: np.ndarray, x_shape: tuple[int, ...]) -> np.ndarray:
        (pt, _), (pl, _) = self.pad
        return dxp[:, :, pt : pt + x_shape[2], pl : pl + x_shape[3]]


class MaxPool2D(_Pool2D):
    """Max over each KHxKW window: y[n,c,i,j] = max_{u,v} xpad[n,c,i*SH+u, j*SW+v] (pad = -inf).

    stride defaults to kernel_size; overlapping windows (stride < kernel) work.
    Backward: each window's dy goes to the one position that held its maximum (the first in
    row-major order on ties, as in PyTorch); overlapping windows accumulate.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        xp, out_hw = self._input(x, -np.inf)
        views = self._views(xp, out_hw)
        _, best = next(views)
        # Running maximum over the KH*KW offset views. better[k-1] marks where offset k beat
        # every earlier one; a strict ">" keeps the first maximum on ties, as PyTorch does.
        # Results keep the input's memory layout, so nothing is transposed.
        better = []
        for _, view in views:
            if self.training:  # only backward needs to know which offset won
                better.append(view > best)
            best = np.maximum(best, view)  # propagates NaN like torch
        if not better:
            best = best.copy(order="K")
        self._cache = (better if self.training else None, x.shape, x.dtype, xp, best.shape[2:])
        return best

    def backward(self, dy: np.ndarray) -> np.ndarray:
        better, x_shape, dtype, xp, out_hw = self._require_cache()
        if better is None:
            # After an eval-mode forward (rare: gradients of a frozen model), recompute.
            was_training = self.training
            self.training = True
            try:
                self.forward(self._unpad(xp, x_shape))
            finally:
                self.training = was_training
            better = self._cache[0]
        kk = len(better) + 1
        n, c = x_shape[:2]
        dy = check_grad(dy, (n, c, *out_hw), dtype, "MaxPool2D")
        # Offset k won a window iff it beat all earlier offsets and no later one beat it.
        wins: list[np.ndarray | None] = [None] * kk
        taken = None
        for k in range(kk - 1, 0, -1):
            b = better[k - 1]
            wins[k] = b if taken is None else b & ~taken
            taken = b.copy(order="K") if taken is None else np.logical_or(taken, b, out=taken)
        wins[0] = ~taken if taken is not None else None
        tiled = (
            self.kernel_size == self.stride
            and self.stride[0] * out_hw[0] == xp.shape[2]
            and self.stride[1] * out_hw[1] == xp.shape[3]
        )
        # When the windows tile the input exactly, every cell is written below, so no zero
        # fill is needed; with gaps between windows or rows left over, the rest must be 0.
        dxp = np.empty_like(xp) if tiled else np.zeros_like(xp)
        for k, view in self._views(dxp, out_hw):
            if wins[k] is None:
                view[...] = dy
            elif self._overlapping:
                view += dy * wins[k]
            else:
                np.multiply(dy, wins[k], out=view)
        return self._unpad(dxp, x_shape)


class AvgPool2D(_Pool2D):
    """Mean over each KHxKW window: y[n,c,i,j] = (1/(KH*KW)) sum_{u,v} xpad[n,c,i*SH+u, j*SW+v].

    Zero padding counts in the mean (PyTorch's count_include_pad=True).
    Backward: each window's dy is spread evenly, dy/(KH*KW), over its cells.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        xp, out_hw = self._input(x, 0.0)
        views = self._views(xp, out_hw)
        _, first = next(views)
        total = first.copy(order="K")
        for _, view in views:
            total += view
        total *= x.dtype.type(1 / (self.kernel_size[0] * self.kernel_size[1]))
        self._cache = (total.shape, x.shape, x.dtype, xp)
        return total

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y_shape, x_shape, dtype, xp = self._require_cache()
        dy = check_grad(dy, y_shape, dtype, "AvgPool2D")
        share = dy * dtype.type(1 / (self.kernel_size[0] * self.kernel_size[1]))
        dxp = np.zeros_like(xp)
        for _, view in self._views(dxp, y_shape[2:]):
            if self._overlapping:
                view += share
            else:
                view[...] = share
        return self._unpad(dxp, x_shape)
