"""The engine's MaxPool2D and AvgPool2D: the reference layers' results, in the input's own
memory layout, without the (N, C, KH*KW, OH, OW) copy of all the windows.

Both reduce over the KH*KW offset views of the padded input (``window_views``): view k
holds tap k = u*KW + v of every window, as a strided view, so the output keeps the input's
memory order (a Conv2D route's (H, C, W, N) stays as it is) and nothing is transposed.

MaxPool2D, NumPy: a running maximum over the views. ``better[k-1]`` marks where offset k
beat every earlier one; a strict ">" keeps the first maximum on ties, as PyTorch does, and
offset k won a window iff it beat all earlier offsets and no later one beat it. Windows
holding NaN (where ">" is not PyTorch's rule: the last NaN wins) and all--inf windows
over leading padding (the first tap inside the input wins) are corrected in backward.

MaxPool2D, compiled: windows that tile the input (stride = kernel, no padding, no ceil
mode, no dilation) in one pass that finds each window's maximum and the offset that won
(u*KW + v, as uint8); backward writes dy at that offset and 0 elsewhere, in x's memory
layout. The kernels vectorise over the innermost memory axis (the batch, after a Conv2D);
shorter than MIN_VECTOR they run branchy scalar code, slower than NumPy, except the
branch-free 2x2 kernel made for that case. That one still loses to NumPy on plain NCHW
memory, (N*C, H, 1, W, 1), where every row of windows is short (measured 1.4x forward, 6x
backward at 64x6x28x28). 2x2 windows over a batch that is a multiple of 8 run the 8-lane
kernels (explicit vectors; ``_numba.maxpool2x2_lanes``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..nn.layers.base import check_grad, check_input
from ..nn.layers.pooling import AvgPool2D, MaxPool2D
from ..nn.windows import pad2d, unpad2d
from . import modes
from .layout import first_inside, from_memory_order, spatial_view, window_views
from .route import Route


class _PoolRoute(Route):
    def __init__(self, layer: Any) -> None:
        super().__init__(layer)
        self._last_hw: tuple[tuple[int, ...], tuple[int, int]] | None = None

    def _out_hw(self, hw: tuple[int, ...]) -> tuple[int, int]:
        """(OH, OW) for input size ``hw``, remembered for the last size seen (it counts at
        batch 1)."""
        last = self._last_hw
        if last is not None and last[0] == hw:
            return last[1]
        out = tuple(self.layer.output_shape((1, 1, *hw))[2:])
        self._last_hw = (tuple(hw), out)
        return out

    def _input(self, x: np.ndarray, pad_value: float) -> tuple[np.ndarray, tuple[int, int]]:
        """Validated, padded input (x itself, in its own layout, when there is no padding)
        and the output size (OH, OW)."""
        la = self.layer
        x = check_input(x, type(la).__name__, 4, "(N, C, H, W)")
        out_hw = self._out_hw(x.shape[2:])
        return pad2d(x, la.padding_for(x.shape), pad_value), out_hw

    def _views(self, xp: np.ndarray, out_hw: tuple[int, int]):
        la = self.layer
        return window_views(xp, la.kernel_size, la.stride, out_hw, dilation=la.dilation)

    @property
    def _overlapping(self) -> bool:
        la = self.layer
        return (
            la.kernel_size[0] > la.stride[0]
            or la.kernel_size[1] > la.stride[1]
            or la.dilation != (1, 1)
        )


class MaxPool2DRoute(_PoolRoute):
    """MaxPool2D over offset views, or compiled over tiling windows (module docstring)."""

    @property
    def _tiles(self) -> bool:
        la = self.layer
        return (
            la.stride == la.kernel_size
            and la.pad == ((0, 0), (0, 0))
            and la.dilation == (1, 1)
            and not la.ceil_mode
            and la.kernel_size[0] * la.kernel_size[1] <= 256
        )

    def forward(self, x: np.ndarray) -> np.ndarray:
        la = self.layer
        if self._tiles:
            x = check_input(x, "MaxPool2D", 4, "(N, C, H, W)")
            fast = modes.for_dtype(x.dtype)
            view = spatial_view(x) if fast else None
            if view is not None and (
                view[0].shape[4] >= modes.MIN_VECTOR
                or (la.kernel_size == (2, 2) and view[0].shape[2] * view[0].shape[4] > 1)
            ):
                return self._forward_compiled(fast, x, *view)
        xp, out_hw = self._input(x, -np.inf)
        views = self._views(xp, out_hw)
        _, best = next(views)
        better = []
        for _, view in views:
            if la.training:  # only backward needs to know which offset won
                better.append(view > best)
            best = np.maximum(best, view)  # propagates NaN like torch
        if not better:
            best = best.copy(order="K")
        self._cache = (better if la.training else None, x.shape, x.dtype, xp, best)
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

    def _forward_compiled(
        self, fast: Any, x: np.ndarray, x5: np.ndarray, order: tuple[int, ...]
    ) -> np.ndarray:
        kh, kw = self.layer.kernel_size
        oh, ow = self._out_hw(x.shape[2:])
        p, _, q, _, r = x5.shape
        y5 = np.empty((p, oh, q, ow, r), dtype=x.dtype)
        idx = np.empty(y5.shape, dtype=np.uint8)
        if (kh, kw) == (2, 2) and r % fast.LANES == 0:
            fast.maxpool2x2_lanes(x5, y5, idx)
        elif (kh, kw) == (2, 2) and r < modes.MIN_VECTOR:
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
        fast = modes.compiled()
        kh, kw = self.layer.kernel_size
        if (kh, kw) == (2, 2) and idx.shape[4] % fast.LANES == 0:
            fast.maxpool2x2_grad_lanes(dy5, idx, dx5)
        else:
            fast.maxpool_grad(dy5, idx, kh, kw, dx5)
        return from_memory_order(dx5, order, x_shape)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._require_cache()[0] == "compiled":
            return self._backward_compiled(dy)
        la = self.layer
        better, x_shape, dtype, xp, y = self._cache
        out_hw = y.shape[2:]
        # After an eval-mode forward (gradients of a frozen model) recompute the masks;
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
        if kk > 1 and (la.pad[0][0] or la.pad[1][0]):  # only leading padding can win
            self._all_minus_inf_to_first_inside(wins, out_hw)
        tiled = (
            la.dilation == (1, 1)
            and la.kernel_size == la.stride
            and la.stride[0] * out_hw[0] == xp.shape[2]
            and la.stride[1] * out_hw[1] == xp.shape[3]
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
        return unpad2d(dxp, la.pad, x_shape[2:])

    def _all_minus_inf_to_first_inside(self, wins: list[Any], out_hw: tuple[int, int]) -> None:
        """Offset 0 wins a window only when nothing later beat it; if offset 0 is padding,
        every value inside is -inf, and PyTorch picks the window's first tap inside the input
        (the first real row and column). Move those wins there, one offset at a time."""
        la = self.layer
        (pt, _), (pl, _) = la.pad
        u0 = first_inside(out_hw[0], la.stride[0], pt, la.dilation[0])
        v0 = first_inside(out_hw[1], la.stride[1], pl, la.dilation[1])
        first = u0[:, None] * la.kernel_size[1] + v0[None, :]  # (OH, OW)
        if not first.any():
            return
        moved = wins[0] & (first > 0)
        wins[0] = wins[0] & (first == 0)
        for k in np.unique(first[first > 0]):
            wins[k] = wins[k] | (moved & (first == k))


class AvgPool2DRoute(_PoolRoute):
    """AvgPool2D as a running sum over the offset views (module docstring)."""

    def _scale(self, hw: tuple[int, ...], out_hw: tuple[int, ...], dtype: np.dtype) -> Any:
        """1 / divisor: one number when every window is whole, else an (OH, OW) map."""
        divisor = self.layer.divisor(hw, out_hw)
        if isinstance(divisor, int):
            return dtype.type(1 / divisor)
        return (1 / divisor).astype(dtype)

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
        return unpad2d(dxp, self.layer.pad, x_shape[2:])


ROUTES = {MaxPool2D: MaxPool2DRoute, AvgPool2D: AvgPool2DRoute}
