"""Memory layouts and strided views the engine's routes work in.

The reference layers read NCHW arrays in C order. The routes keep activations in whatever
memory order is fastest for the next step (Conv2D's output lives in (H, C, W, N) memory,
the batch innermost) and hand on *logical* NCHW views of that memory, so a reference layer
after a route still sees (N, C, H, W). The helpers here move between the two views of the
same memory and build the strided views the routes gather their windows from.

Everything here is a strided view or one vectorised pass; nothing loops over pixels,
channels or batch items.

* ``sliding_windows`` views one axis as (window offset, window position): the 1-D im2col.
  ``fold`` is its adjoint (it sums window gradients back onto the positions they were read
  from), with one vectorised add per kernel offset.
* ``row_blocks`` stacks KH consecutive rows of an array into one matrix per output row,
  without copying: the Conv2D route gathers windows along W only (a KW-fold copy instead of
  the KH*KW-fold copy of a full im2col) and lets this view supply the H direction.
* ``window_views`` yields, for each 2-D kernel offset, the strided view that holds that
  offset of every window: the MaxPool2D/AvgPool2D routes reduce over these KH*KW views.
* ``memory_order``, ``spatial_view``, ``channel_view``, ``dense_flat``: an array's memory
  as the C-contiguous shape a compiled loop walks, and back (``from_memory_order``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..nn.windows import Pair


def _index(ndim: int, items: dict[int, slice | int]) -> tuple:
    return tuple(items.get(a, slice(None)) for a in range(ndim))


def first_inside(size_out: int, stride: int, pad_before: int, dilation: int) -> np.ndarray:
    """For each window along one axis, the index of its first kernel tap inside the input
    (taps before it read the leading padding)."""
    start = np.arange(size_out, dtype=np.int64) * stride - pad_before
    return -(np.minimum(start, 0) // dilation)


def sliding_windows(
    xp: np.ndarray,
    kernel: int,
    stride: int,
    axis: int,
    writeable: bool = False,
    dilation: int = 1,
) -> np.ndarray:
    """View of ``xp`` (already padded) with ``axis`` (length L) replaced by two axes
    (kernel, out): view[..., v, j, ...] = xp[..., j*stride + v*dilation, ...], where
    out = (L - dilation*(kernel - 1) - 1) // stride + 1. No data is copied."""
    size, step = xp.shape[axis], xp.strides[axis]
    out = (size - dilation * (kernel - 1) - 1) // stride + 1
    return as_strided(
        xp,
        shape=(*xp.shape[:axis], kernel, out, *xp.shape[axis + 1 :]),
        strides=(*xp.strides[:axis], step * dilation, step * stride, *xp.strides[axis + 1 :]),
        writeable=writeable,
    )


def fold(cols: np.ndarray, size: int, stride: int, axis: int, dilation: int = 1) -> np.ndarray:
    """Adjoint of :func:`sliding_windows`: ``cols`` has (kernel, out) at ``axis``, ``axis+1``;
    returns the array with those two axes replaced by one of length ``size`` where
    result[..., j*stride + v*dilation, ...] = sum of cols[..., v, j, ...] over every (v, j)
    that reads it.
    """
    kernel, out = cols.shape[axis], cols.shape[axis + 1]
    shape = (*cols.shape[:axis], size, *cols.shape[axis + 2 :])
    nd = len(shape)
    if kernel <= stride and dilation == 1:
        # Windows do not overlap: every position receives at most one value, so a single
        # strided assignment replaces the accumulation (positions no window reads stay 0).
        tiled = kernel == stride and kernel * out == size
        result = np.empty(shape, dtype=cols.dtype) if tiled else np.zeros(shape, dtype=cols.dtype)
        sliding_windows(result, kernel, stride, axis, writeable=True)[...] = cols
        return result
    result = np.zeros(shape, dtype=cols.dtype)
    for v in range(kernel):
        # One vectorised add per kernel offset.
        v0 = v * dilation
        result[_index(nd, {axis: slice(v0, v0 + stride * out, stride)})] += cols[
            _index(cols.ndim, {axis: v})
        ]
    return result


def row_blocks(r: np.ndarray, kernel: int, stride: int, out: int) -> np.ndarray:
    """View a contiguous (H, M, L) array as (out, kernel*M, L): block i is rows
    i*stride .. i*stride + kernel - 1 of ``r`` stacked, i.e. block[i, u*M + m] = r[i*stride + u, m].
    Consecutive rows of a contiguous array are adjacent in memory, so this is a plain
    strided view (no copy), with the same row stride inside every block."""
    if not r.flags.c_contiguous or r.ndim != 3:
        raise ValueError("row_blocks needs a C-contiguous 3-D array")
    s_row, s_m, s_l = r.strides
    # The ndarray constructor checks the view fits in r's memory, and costs a tenth of
    # as_strided (0.5 against 3.9 us: it matters at batch 1, two calls per convolution).
    shape = (out, kernel * r.shape[1], r.shape[2])
    return np.ndarray(shape, r.dtype, r, 0, (s_row * stride, s_m, s_l))


def window_views(
    xp: np.ndarray,
    kernel: Pair,
    stride: Pair,
    out_hw: tuple[int, int],
    axes: tuple[int, int] = (2, 3),
    dilation: Pair = (1, 1),
) -> Iterator[tuple[int, np.ndarray]]:
    """For each kernel offset (u, v), in row-major order k = u*KW + v, yield ``(k, view)``
    where view[..., i, j, ...] = xp[..., i*SH + u*DH, j*SW + v*DW, ...] (spatial OH x OW)."""
    (kh, kw), (sh, sw), (oh, ow), (dh, dw) = kernel, stride, out_hw, dilation
    ah, aw = axes
    for u in range(kh):
        for v in range(kw):
            r0, c0 = u * dh, v * dw
            rows, cols = slice(r0, r0 + sh * oh, sh), slice(c0, c0 + sw * ow, sw)
            yield u * kw + v, xp[_index(xp.ndim, {ah: rows, aw: cols})]


def memory_order(a: np.ndarray) -> tuple[int, ...]:
    """The axes of ``a`` from the largest stride to the smallest (ties keep their order):
    ``a.transpose(memory_order(a))`` walks memory forwards when ``a`` is dense."""
    if a.flags.c_contiguous:
        return tuple(range(a.ndim))
    strides = a.strides
    order = _ORDERS.get(strides)
    if order is None:
        if len(_ORDERS) >= 512:  # a network uses a handful of layouts; bound the memo anyway
            _ORDERS.clear()
        order = _ORDERS[strides] = tuple(sorted(range(a.ndim), key=lambda i: -strides[i]))
    return order


# strides -> memory order: the sort costs more than the rest of a ReLU at batch 1
_ORDERS: dict[tuple[int, ...], tuple[int, ...]] = {}


def inverse_order(order: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation that undoes ``order``."""
    inv = [0] * len(order)
    for i, o in enumerate(order):
        inv[o] = i
    return tuple(inv)


def spatial_view(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """NCHW ``x``'s memory as a C-contiguous (P, H, Q, W, R) array and the axis ``order``
    with ``x.transpose(order)`` that memory, when it has such a form: x is a permutation of a
    contiguous array in which H comes before W (P, Q, R are the products of the axes before
    H, between H and W, and after W). None otherwise. (N, C, H, W) memory gives
    (N*C, H, 1, W, 1); Conv2D's (H, C, W, N) gives (1, H, C, W, N)."""
    order = memory_order(x)
    xt = x.transpose(order)
    if not xt.flags.c_contiguous:
        return None
    ih, iw = order.index(2), order.index(3)
    if ih > iw:
        return None
    dims = xt.shape
    p = math.prod(dims[:ih])
    q = math.prod(dims[ih + 1 : iw])
    r = math.prod(dims[iw + 1 :])
    return xt.reshape(p, dims[ih], q, dims[iw], r), order


def from_memory_order(y: np.ndarray, order: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """The logical ``shape`` over the memory of ``y``, whose axes are laid out in ``order``
    (the inverse of ``x.transpose(order)`` followed by a reshape of that memory)."""
    return y.reshape([shape[i] for i in order]).transpose(inverse_order(order))


def channel_view(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """x's memory as a C-contiguous (A, C, B) array, C = axis 1 (copied to C order first if
    its axes are not a permutation of a contiguous array), and the axis ``order`` such that
    ``x.transpose(order)`` is that memory with axis 1 between A's axes and B's."""
    order = memory_order(x)
    xt = x.transpose(order)
    if not xt.flags.c_contiguous:
        order = tuple(range(x.ndim))
        xt = np.ascontiguousarray(x)
    k = order.index(1)
    a = math.prod(xt.shape[:k])
    return xt.reshape(a, x.shape[1], -1), order


def channel_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sum over A and B of a * b for (A, C, B) arrays, per channel, without a temporary."""
    if a.shape[2] >= a.shape[0]:
        return np.vecdot(a, b).sum(axis=0)
    return np.vecdot(a, b, axis=0).sum(axis=-1)


def dense_flat(a: np.ndarray) -> np.ndarray | None:
    """A 1-D view of all of ``a``'s memory, in memory order, when ``a`` is a permutation of a
    contiguous array (so element-wise work can run over it straight); else None."""
    if a.flags.c_contiguous:
        return a.reshape(-1)
    at = a.transpose(memory_order(a))
    return at.reshape(-1) if at.flags.c_contiguous else None
