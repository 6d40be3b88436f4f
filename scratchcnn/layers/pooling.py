"""MaxPool2D, AvgPool2D and GlobalAvgPool2D, on the same window helper as Conv2D."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import kernels
from ..errors import ConfigError, ShapeError
from ..windows import (
    Padding,
    as_padding,
    as_pair,
    first_inside,
    from_memory_order,
    pad2d,
    spatial_view,
    window_counts,
    window_output_shape,
    window_views,
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
        self._last_hw: tuple[tuple[int, ...], tuple[int, int]] | None = None

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
        oh, ow = self._out_hw(input_shape[2:], repr(self))
        return (input_shape[0], input_shape[1], oh, ow)

    def _out_hw(self, hw: tuple[int, ...], who: str) -> tuple[int, int]:
        """(OH, OW) for input size ``hw``, remembered for the last size seen (it counts at
        batch 1)."""
        last = self._last_hw
        if last is not None and last[0] == hw:
            return last[1]
        out = window_output_shape(
            hw, self.kernel_size, self.stride, self.pad, who, self.dilation, self.ceil_mode
        )
        self._last_hw = (tuple(hw), out)
        return out

    def _padded(self, hw: tuple[int, ...], out_hw: tuple[int, int]) -> Padding:
        """The padding, plus (in ceil mode) the rows/columns that the last window hangs over."""
        (pt, pb), (pl, pr) = self.pad
        extra = [
            max(0, (o - 1) * s + d * (k - 1) + 1 - (n + sum(p)))
            for o, s, d, k, n, p in zip(
                out_hw, self.stride, self.dilation, self.kernel_size, hw, self.pad, strict=True
            )
        ]
        return ((pt, pb + extra[0]), (pl, pr + extra[1]))

    def _input(self, x: np.ndarray, pad_value: float) -> tuple[np.ndarray, tuple[int, int]]:
        """Validated, padded input and the output size (OH, OW)."""
        who = type(self).__name__
        x = check_input(x, who, 4, "(N, C, H, W)")
        oh, ow = self._out_hw(x.shape[2:], who)
        pad = self._padded(x.shape[2:], (oh, ow)) if self.ceil_mode else self.pad
        return pad2d(x, pad, pad_value), (oh, ow)

    def _views(self, xp: np.ndarray, out_hw: tuple[int, int]):
        return window_views(xp, self.kernel_size, self.stride, out_hw, dilation=self.dilation)

    @property
    def _overlapping(self) -> bool:
        return (
            self.kernel_size[0] > self.stride[0]
            or self.kernel_size[1] > self.stride[1]
            or self.dilation != (1, 1)
        )

    def _unpad(self, dxp: np.ndarray, x_shape: tuple[int, ...]) -> np.ndarray:
        (pt, _), (pl, _) = self.pad
        return dxp[:, :, pt : pt + x_shape[2], pl : pl + x_shape[3]]


class MaxPool2D(_Pool2D):
    """Max over each KHxKW window: y[n,c,i,j] = max_{u,v} xpad[n,c,i*SH+u, j*SW+v] (pad = -inf).

    stride defaults to kernel_size; overlapping windows (stride < kernel) work; ``dilation``
    spaces the taps: xpad[n,c, i*SH + u*DH, j*SW + v*DW].
    Backward: each window's dy goes to the one position that held its maximum, chosen as
    PyTorch does: the first in row-major order on ties, the last NaN if the window holds NaN,
    and the first tap inside the input if every value is -inf. Overlapping windows accumulate.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self._tiles and kernels.active():
            x = check_input(x, "MaxPool2D", 4, "(N, C, H, W)")
            fast = kernels.for_dtype(x.dtype)
            view = spatial_view(x) if fast else None
            # The kernels vectorise over the innermost memory axis (the batch, after a
            # Conv2D); shorter than MIN_VECTOR they run branchy scalar code, slower than
            # NumPy, except the branch-free 2x2 kernel made for that case. That one still
            # loses to NumPy on plain NCHW memory, (N*C, H, 1, W, 1), where every row of
            # windows is short (measured 1.4x forward, 6x backward at 64x6x28x28).
            if view is not None and (
                view[0].shape[4] >= kernels.MIN_VECTOR
                or (self.kernel_size == (2, 2) and view[0].shape[2] * view[0].shape[4] > 1)
            ):
                return self._forward_compiled(fast, x, *view)
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
        self._cache = (better if self.training else None, x.shape, x.dtype, xp, best)
        return best

    def _better(self, xp: np.ndarray, out_hw: tuple[int, int]) -> list[np.ndarray]:
        """The forward's ``better`` masks by PyTorch's full rule, for windows holding NaN:
        offset k replaces the running winner if it is larger or NaN (so the last NaN wins)."""
        views = self._views(xp, out_hw)
        _, best = next(views)
        better = []
        for _, view in views:
            better.append((view > best) | np.isnan(view))
            best = np.maximum(best, view)
        return better

    # --- compiled path: windows that tile the input (stride = kernel, no padding) ---------
    # One pass finds each window's maximum and the offset that won (u*KW + v, as uint8);
    # backward writes dy at that offset and 0 elsewhere, in x's own memory layout.

    @property
    def _tiles(self) -> bool:
        return (
            self.stride == self.kernel_size
            and self.pad == ((0, 0), (0, 0))
            and self.dilation == (1, 1)
            and not self.ceil_mode
            and self.kernel_size[0] * self.kernel_size[1] <= 256
        )

    def _forward_compiled(
        self, fast: Any, x: np.ndarray, x5: np.ndarray, order: tuple[int, ...]
    ) -> np.ndarray:
        kh, kw = self.kernel_size
        oh, ow = self._out_hw(x.shape[2:], "MaxPool2D")
        p, _, q, _, r = x5.shape
        y5 = np.empty((p, oh, q, ow, r), dtype=x.dtype)
        idx = np.empty(y5.shape, dtype=np.uint8)
        if (kh, kw) == (2, 2) and r % fast.LANES == 0:
            fast.maxpool2x2_lanes(x5, y5, idx)
        elif (kh, kw) == (2, 2) and r < kernels.MIN_VECTOR:
            fast.maxpool2x2_short(x5, y5, idx)
        elif (kh, kw) == (2, 2):
            fast.maxpool2x2(x5, y5, idx)
        else:
            fast.maxpool(x5, kh, kw, y5, idx)
        out_shape = (x.shape[0], x.shape[1], oh, ow)
        self._cache = ("compiled", idx, order, x.shape, x5.shape, x.dtype)
        return from_memory_order(y5, order, out_shape)

    def _backward_compiled(self, dy: np.ndarray) -> np.ndarray:
        _, idx, order, x_shape, x5_shape, dtype = self._require_cache()
        out_shape = (*x_shape[:2], idx.shape[1], idx.shape[3])
        dy = check_grad(dy, out_shape, dtype, "MaxPool2D")
        dy5 = np.ascontiguousarray(dy.transpose(order)).reshape(idx.shape)
        dx5 = np.empty(x5_shape, dtype=dy.dtype)
        fast = kernels.compiled()
        if self.kernel_size == (2, 2) and idx.shape[4] % fast.LANES == 0:
            fast.maxpool2x2_grad_lanes(dy5, idx, dx5)
        else:
            fast.maxpool_grad(dy5, idx, self.kernel_size[0], self.kernel_size[1], dx5)
        return from_memory_order(dx5, order, x_shape)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._require_cache()[0] == "compiled":
            return self._backward_compiled(dy)
        better, x_shape, dtype, xp, y = self._require_cache()
        out_hw = y.shape[2:]
        # After an eval-mode forward (rare: gradients of a frozen model) recompute the masks;
        # NaN windows (where a strict ">" is not PyTorch's rule) too.
        if better is None or np.isnan(y.max()):  # max propagates NaN: one cheap reduction
            better = self._better(xp, out_hw)
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
        if kk > 1 and (self.pad[0][0] or self.pad[1][0]):  # only leading padding can win
            self._all_minus_inf_to_first_inside(wins, out_hw)
        tiled = (
            self.dilation == (1, 1)
            and self.kernel_size == self.stride
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

    def _all_minus_inf_to_first_inside(self, wins: list[Any], out_hw: tuple[int, int]) -> None:
        """Offset 0 wins a window only when nothing later beat it; if offset 0 is padding,
        every value inside is -inf, and PyTorch picks the window's first tap inside the input
        (the first real row and column). Move those wins there, one offset at a time."""
        (pt, _), (pl, _) = self.pad
        u0 = first_inside(out_hw[0], self.stride[0], pt, self.dilation[0])
        v0 = first_inside(out_hw[1], self.stride[1], pl, self.dilation[1])
        first = u0[:, None] * self.kernel_size[1] + v0[None, :]  # (OH, OW)
        if not first.any():
            return
        moved = wins[0] & (first > 0)
        wins[0] = wins[0] & (first == 0)
        for k in np.unique(first[first > 0]):
            wins[k] = wins[k] | (moved & (first == k))


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

    def _scale(self, hw: tuple[int, ...], out_hw: tuple[int, ...], dtype: np.dtype) -> Any:
        """1 / divisor: one number when every window is whole, else an (OH, OW) map."""
        if self.count_include_pad and not self.ceil_mode:
            return dtype.type(1 / (self.kernel_size[0] * self.kernel_size[1]))
        rows, cols = (
            window_counts(n, k, s, p, o, self.count_include_pad)
            for n, k, s, p, o in zip(
                hw, self.kernel_size, self.stride, self.pad, out_hw, strict=True
            )
        )
        return (1 / (rows[:, None] * cols[None, :])).astype(dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        xp, out_hw = self._input(x, 0.0)
        views = self._views(xp, out_hw)
        _, first = next(views)
        total = first.copy(order="K")
        for _, view in views:
            total += view
        total *= self._scale(x.shape[2:], out_hw, x.dtype)
        self._cache = (total.shape, x.shape, x.dtype, xp)
        return total

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y_shape, x_shape, dtype, xp = self._require_cache()
        dy = check_grad(dy, y_shape, dtype, "AvgPool2D")
        share = dy * self._scale(x_shape[2:], y_shape[2:], dtype)
        dxp = np.zeros_like(xp)
        for _, view in self._views(dxp, y_shape[2:]):
            if self._overlapping:
                view += share
            else:
                view[...] = share
        return self._unpad(dxp, x_shape)


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
