"""The engine's BatchNorm1D/2D: the reference's formulas, in x's own memory layout, in
fewer passes, and with the statistics of a batch that is split over threads or processes.

Every pass works on x's memory as a C-contiguous (A, C, B) array (``channel_view``): one
contiguous sweep each, and the output keeps x's layout (a Conv2D route's (H, C, W, N) stays
as it is). Sums accumulate in float64. Compiled: one pass for the sums, one for
y = (x - mean) * scale + bias; backward one pass for the two sums and one for

    dL/dx = a*dy - a*mean(dy) - (x - mean) * a*inv_std*mean(dy*xhat),   a = weight*inv_std,

the reference's formula rearranged so that xhat is never stored. NumPy: the same formulas,
a few more passes.

**A split batch.** When ``scratchcnn.parallel`` splits a batch over threads or processes,
each slice runs this route on its own rows, but the statistics must be the whole batch's.
The split passes in a *totaller* for the duration of its call (``batch_statistics``): an
object whose ``total(v)`` sums a per-channel vector over every slice (the same result, in
the same order, in every slice) and whose ``lead`` is True in one slice only (it updates
the running statistics, which the slices share). The route totals its sums through it
before it normalises, and again for the two sums of its backward pass.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..nn.layers.base import check_grad, check_input
from ..nn.layers.normalization import BatchNorm1D, BatchNorm2D
from . import modes
from .layout import channel_dot, channel_view, from_memory_order
from .route import Route

_local = threading.local()


@contextmanager
def batch_statistics(totaller: Any) -> Iterator[None]:
    """Within this block, in this thread, BatchNorm routes total their per-channel sums over
    the slices of a split batch through ``totaller`` (see the module docstring)."""
    old = getattr(_local, "totaller", None)
    _local.totaller = totaller
    try:
        yield
    finally:
        _local.totaller = old


def current_totaller() -> Any:
    """The totaller of the split this thread is running a slice of, or None."""
    return getattr(_local, "totaller", None)


class BatchNormRoute(Route):
    """BatchNorm1D/2D over (A, C, B) memory, with a split batch's statistics."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        la = self.layer
        who = f"{type(la).__name__}({la.num_features})"
        x = check_input(x, who, la._ndim, la._layout, la.dtype, la.num_features)
        sync = current_totaller()
        x3, order = channel_view(x)
        m = x3.size // x3.shape[1]
        fast = modes.active()
        if la.training:
            # Sums over this slice of the batch, totalled over all slices when split.
            s1 = fast.channel_sum(x3) if fast else x3.sum(axis=(0, 2))
            sums = _total(np.append(s1, m), sync)
            m = int(sums[-1])
            if m < 2:
                raise ShapeError(
                    f"{who} needs more than one value per channel in training, got input shape "
                    f"{x.shape}; use a larger batch or eval()"
                )
            mean = (sums[:-1] / m).astype(la.dtype)
            if fast:
                centered = None
                s2 = fast.channel_sqdev(x3, mean)
            else:
                centered = x3 - mean[:, None]
                s2 = channel_dot(centered, centered)
            var = (_total(s2, sync) / m).astype(la.dtype)
            if sync is None or sync.lead:  # the slices share the buffers: update once
                la.update_running_stats(mean, var, m)
        else:
            mean, var = la.buffers["running_mean"], la.buffers["running_var"]
            centered = None  # backward recomputes it from x, if it is ever called
        inv_std = (1.0 / np.sqrt(var + la.eps)).astype(la.dtype)
        scale = inv_std * la.params["weight"] if la.affine else inv_std
        bias = la.params["bias"] if la.affine else np.zeros(la.num_features, la.dtype)
        # y = (x - mean) * scale + bias: one compiled pass, or two NumPy passes.
        if fast:
            y = np.empty_like(x3)
            fast.channel_affine(x3, mean, scale, bias, y)
        elif centered is None:
            y = x3 * scale[:, None]
            y += (bias - mean * scale)[:, None]
        else:
            y = centered * scale[:, None]
            if la.affine:
                y += la.params["bias"][:, None]
        # Backward needs x - mean: kept from a NumPy training pass, else recomputed from x
        # (the compiled kernels never store it: they read x and subtract on the fly).
        kept, is_centered = (x3, False) if centered is None else (centered, True)
        self._cache = (kept, is_centered, mean, inv_std, la.training, order, x.shape, m, sync)
        return from_memory_order(y, order, x.shape)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        la = self.layer
        kept, is_centered, mean, inv_std, training, order, shape, m, sync = self._require_cache()
        dy = check_grad(dy, shape, la.dtype, type(la).__name__)
        # dy in x's memory order: free when it has that layout (what the next layer returns).
        dy3 = np.ascontiguousarray(dy.transpose(order)).reshape(kept.shape)
        a = inv_std * la.params["weight"] if la.affine else inv_std
        c = la.num_features
        fast = modes.active() if training and not is_centered else None
        if fast:
            s = fast.channel_grad_sums(dy3, kept, mean)  # float64 (sum dy, sum dy*(x-mean))
            sum_dy, sum_dy_xhat = s[0], s[1] * inv_std
            if la.affine:
                la.grads["weight"] = sum_dy_xhat.astype(la.dtype)
                la.grads["bias"] = sum_dy.astype(la.dtype)
            sums = (_total(np.concatenate([sum_dy, sum_dy_xhat]), sync) / m).astype(la.dtype)
            dx = np.empty_like(dy3)
            fast.channel_grad_input(dy3, kept, mean, a, a * inv_std * sums[c:], a * sums[:c], dx)
            return from_memory_order(dx, order, shape)
        if la.affine or training:
            # In eval mode xhat uses the running statistics.
            centered = kept if is_centered else kept - mean[:, None]
            sum_dy = dy3.sum(axis=(0, 2))
            sum_dy_xhat = channel_dot(dy3, centered) * inv_std
        if la.affine:  # this slice's share (a split adds the slices' gradients up)
            la.grads["weight"] = sum_dy_xhat
            la.grads["bias"] = sum_dy
        dx = dy3 * a[:, None]
        if training:
            # dx = a*dy - a*mean(dy) - a*xhat*mean(dy*xhat), with xhat = (x - mean)*inv_std,
            # the means over the whole batch.
            sums = (_total(np.concatenate([sum_dy, sum_dy_xhat]), sync) / m).astype(la.dtype)
            dx -= centered * (a * inv_std * sums[c:])[:, None]
            dx -= (a * sums[:c])[:, None]
        return from_memory_order(dx, order, shape)


def _total(v: np.ndarray, sync: Any) -> np.ndarray:
    """``v`` in float64, summed over the slices of a split batch."""
    v = v.astype(np.float64)
    return v if sync is None else sync.total(v)


ROUTES = {BatchNorm1D: BatchNormRoute, BatchNorm2D: BatchNormRoute}
