"""MaxPool2D, AvgPool2D and GlobalAvgPool2D: reductions over the same windows as Conv2D."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ConfigError, ShapeError
from ..windows import (
    Padding,
    as_padding,
    as_pair,
    ceil_padding,
    fold_windows,
    pad2d,
    unpad2d,
    window_counts,
    window_output_shape,
    windows,
)
from .base import Layer, check_grad, check_input


class _Pool2D(Layer):
    """Shared constructor, config and shape logic of the pooling layers.

    ``padding`` is an int, (ph, pw) or ((top, bottom), (left, right)); each side at most half
    the (dilated) kernel span. ``ceil_mode`` rounds the output size up, as PyTorch does: a
    last, partial window is added when it starts inside the input or the leading padding.
    ``dilation`` is MaxPool2D's (AvgPool2D has none, as in PyTorch).
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] | Padding = 0,
        ceil_mode: bool = False,
        dilation: int | tuple[int, int] = 1,
    ) -> None:
        super().__init__()
        self.kernel_size = as_pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else as_pair(stride, "stride", 1)
        self.dilation = as_pair(dilation, "dilation", 1)
        self.ceil_mode = bool(ceil_mode)
        self.pad = as_padding(padding)
        span = [d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation, strict=True)]
        if any(2 * p > s for side, s in zip(self.pad, span, strict=True) for p in side):
            # A window made only of padding would have no input to pool (PyTorch's rule too).
            raise ConfigError(
                f"{type(self).__name__}: padding {padding!r} must be at most half the kernel "
                f"size {self.kernel_size}"
                + (f" (span {tuple(span)} with dilation)" if self.dilation != (1, 1) else "")
            )
        (pt, pb), (pl, pr) = self.pad
        # Symmetric padding keeps its old (ph, pw) form; asymmetric is ((t, b), (l, r)).
        self.padding = (pt, pl) if (pt, pl) == (pb, pr) else self.pad

    def config(self) -> dict[str, Any]:
        padding = self.padding if isinstance(self.padding[0], int) else self.pad
        cfg: dict[str, Any] = {
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": [list(p) if isinstance(p, tuple) else p for p in padding],
        }
        # New arguments are recorded only when set, so old configs and new ones read alike.
        if self.ceil_mode:
            cfg["ceil_mode"] = True
        if self.dilation != (1, 1):
            cfg["dilation"] = list(self.dilation)
        return cfg

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        return {}  # no parameters or buffers

    def extra_repr(self) -> str:
        text = f"kernel_size={self.kernel_size}, stride={self.stride}"
        text += f", padding={self.padding}" if self.padding != (0, 0) else ""
        text += f", dilation={self.dilation}" if self.dilation != (1, 1) else ""
        return text + (", ceil_mode=True" if self.ceil_mode else "")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        oh, ow = window_output_shape(
            tuple(input_shape[2:]),
            self.kernel_size,
            self.stride,
            self.pad,
            repr(self),
            self.dilation,
            self.ceil_mode,
        )
        return (input_shape[0], input_shape[1], oh, ow)

    def padding_for(self, x_shape: tuple[int, ...]) -> Padding:
        """The padding of an input of ``x_shape``, with the extra rows/columns that ceil mode's
        last window hangs over."""
        if not self.ceil_mode:
            return self.pad
        out_hw = self.output_shape(x_shape)[2:]
        return ceil_padding(
            x_shape[2:], out_hw, self.kernel_size, self.stride, self.pad, self.dilation
        )

    def taps(self, xp: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
        """Every window of the padded input as (N, C, KH*KW, OH, OW): tap k = u*KW + v."""
        win = windows(xp, self.kernel_size, self.stride, out_hw, self.dilation)
        n, c, kh, kw, oh, ow = win.shape
        return win.reshape(n, c, kh * kw, oh, ow)  # a copy: the taps side by side

    def untaps(self, dtaps: np.ndarray, x_shape: tuple[int, ...]) -> np.ndarray:
        """The adjoint of ``taps`` after the padding: each tap's value added back onto the
        input pixel it was read from (overlapping windows add up), padding cropped."""
        n, c, _, oh, ow = dtaps.shape
        pad = self.padding_for(x_shape)
        padded = (x_shape[2] + sum(pad[0]), x_shape[3] + sum(pad[1]))
        win = dtaps.reshape(n, c, *self.kernel_size, oh, ow)
        return unpad2d(fold_windows(win, padded, self.stride, self.dilation), pad, x_shape[2:])


class MaxPool2D(_Pool2D):
    """Max over each KHxKW window:  y[n,c,i,j] = max_{u,v} xpad[n,c, i*SH + u*DH, j*SW + v*DW]
    with xpad padded by -inf. stride defaults to kernel_size; overlapping windows work.

    Backward: each window's dy goes to the one tap that held its maximum (its arg-max), and
    overlapping windows add up. The tap is the one PyTorch picks: the first maximum in
    row-major order on ties, the last NaN if the window holds NaN, and the first tap inside
    the input if every value is -inf.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = check_input(x, "MaxPool2D", 4, "(N, C, H, W)")
        out_hw = self.output_shape(x.shape)[2:]
        taps = self.taps(pad2d(x, self.padding_for(x.shape), -np.inf), out_hw)
        y = taps.max(axis=2)  # NaN wins, as in PyTorch
        self._cache = (x.shape, x.dtype, self._argmax(taps, x.shape))
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x_shape, dtype, winner = self._require_cache()
        n, c, oh, ow = winner.shape
        dy = check_grad(dy, (n, c, oh, ow), dtype, "MaxPool2D")
        dtaps = np.zeros((n, c, self.kernel_size[0] * self.kernel_size[1], oh, ow), dy.dtype)
        np.put_along_axis(dtaps, winner[:, :, None], dy[:, :, None], axis=2)
        return self.untaps(dtaps, x_shape)

    def _argmax(self, taps: np.ndarray, x_shape: tuple[int, ...]) -> np.ndarray:
        """The winning tap of every window, (N, C, OH, OW), by PyTorch's rule (see above)."""
        top = taps.max(axis=2, keepdims=True)
        is_max = taps == top
        pad = self.padding_for(x_shape)
        if pad != ((0, 0), (0, 0)):  # an all -inf window: its first tap inside the input
            inside = self.taps(pad2d(np.ones((1, 1, *x_shape[2:]), bool), pad), top.shape[3:])
            is_max &= inside
        winner = np.argmax(is_max, axis=2)  # the first maximum
        nan = np.isnan(top[:, :, 0])
        if nan.any():  # the last NaN
            last = taps.shape[2] - 1 - np.argmax(np.isnan(taps[:, :, ::-1]), axis=2)
            winner = np.where(nan, last, winner)
        return winner


class AvgPool2D(_Pool2D):
    """Mean over each KHxKW window: y[n,c,i,j] = (1/(KH*KW)) sum_{u,v} xpad[n,c,i*SH+u, j*SW+v].

    With ``count_include_pad=True`` (the default, as in PyTorch) zero padding counts in the
    mean; with False the mean is over the cells inside the input only. In ``ceil_mode`` a
    window hanging past the padded edge is divided by its clipped size, as PyTorch does.
    Backward: each window's dy is spread evenly, dy / (its divisor), over its cells.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] | Padding = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        if not self.count_include_pad:
            cfg["count_include_pad"] = False
        return cfg

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            "" if self.count_include_pad else ", count_include_pad=False"
        )

    def divisor(self, hw: tuple[int, ...], out_hw: tuple[int, ...]) -> Any:
        """What each window's sum is divided by: KH*KW when every window is whole, else an
        (OH, OW) map of the windows' sizes (clipped as PyTorch clips them)."""
        if self.count_include_pad and not self.ceil_mode:
            return self.kernel_size[0] * self.kernel_size[1]
        rows, cols = (
            window_counts(n, k, s, p, o, self.count_include_pad)
            for n, k, s, p, o in zip(
                hw, self.kernel_size, self.stride, self.pad, out_hw, strict=True
            )
        )
        return rows[:, None] * cols[None, :]

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = check_input(x, "AvgPool2D", 4, "(N, C, H, W)")
        out_hw = self.output_shape(x.shape)[2:]
        taps = self.taps(pad2d(x, self.padding_for(x.shape), 0.0), out_hw)
        scale = (1 / np.asarray(self.divisor(x.shape[2:], out_hw))).astype(x.dtype)
        self._cache = (x.shape, scale)
        return taps.sum(axis=2) * scale

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x_shape, scale = self._require_cache()
        n, c = x_shape[:2]
        out_hw = self.output_shape(x_shape)[2:]
        dy = check_grad(dy, (n, c, *out_hw), scale.dtype, "AvgPool2D")
        share = (dy * scale)[:, :, None]  # every tap of a window gets dy / divisor
        dtaps = np.broadcast_to(share, (n, c, self.kernel_size[0] * self.kernel_size[1], *out_hw))
        return self.untaps(dtaps, x_shape)


class GlobalAvgPool2D(Layer):
    """Mean over all of H and W, keeping 4-D like torch's AdaptiveAvgPool2d(1):
    y[n,c,0,0] = (1/(H*W)) sum_{i,j} x[n,c,i,j]; (N, C, H, W) -> (N, C, 1, 1).
    Backward: dy / (H*W) at every position. Put a Flatten after it for a Dense head.
    """

    @classmethod
    def state_shapes(cls, config: dict) -> dict[str, tuple[int, ...]]:
        return {}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 4:
            raise ShapeError(f"GlobalAvgPool2D expects (N, C, H, W), got {tuple(input_shape)}")
        return (input_shape[0], input_shape[1], 1, 1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = check_input(x, "GlobalAvgPool2D", 4, "(N, C, H, W)")
        if x.shape[2] * x.shape[3] == 0:
            raise ShapeError(f"GlobalAvgPool2D: the input has no pixels (input shape {x.shape})")
        self._cache = x  # a reference, for its shape and memory layout
        return x.mean(axis=(2, 3), keepdims=True)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        like = self._require_cache()
        n, c, h, w = like.shape
        dy = check_grad(dy, (n, c, 1, 1), like.dtype, "GlobalAvgPool2D")
        dx = np.empty_like(like)
        dx[...] = dy * like.dtype.type(1 / (h * w))
        return dx
