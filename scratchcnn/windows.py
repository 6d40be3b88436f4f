"""The one sliding-window helper, shared by convolution and pooling.

A window operation with kernel (KH, KW), stride (SH, SW) and padding
((PT, PB), (PL, PR)) reads, for every output cell (i, j), the patch

    xpad[..., i*SH + u, ..., j*SW + v, ...]      for u < KH, v < KW,

and its output size is OH = (H + PT + PB - KH) // SH + 1 (likewise OW).

Everything here is a strided view or one vectorised pass; nothing loops over pixels,
channels or batch items.

* ``sliding_windows`` views one axis as (window offset, window position): the 1-D im2col.
  ``fold`` is its adjoint (it sums window gradients back onto the positions they were read
  from), with one vectorised add per kernel offset.
* ``row_blocks`` stacks KH consecutive rows of an array into one matrix per output row,
  without copying: Conv2D gathers windows along W only (a KW-fold copy instead of the
  KH*KW-fold copy of a full im2col) and lets this view supply the H direction.
* ``window_views`` yields, for each 2-D kernel offset, the strided view that holds that
  offset of every window: pooling reduces over these KH*KW views.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .errors import ConfigError, ShapeError

Pair = tuple[int, int]
Padding = tuple[Pair, Pair]  # ((top, bottom), (left, right))


def as_pair(value: int | tuple[int, int], name: str, minimum: int) -> Pair:
    """Return ``(value, value)`` for an int, or the validated pair; ``minimum`` bounds both."""
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, (int, np.integer)):
        pair = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ConfigError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    return pair


def as_padding(value: Any, name: str = "padding") -> Padding:
    """int, (ph, pw) or ((top, bottom), (left, right)) -> ((top, bottom), (left, right))."""
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (tuple, list)) for v in value)
    ):
        try:
            return (as_pair(value[0], name, 0), as_pair(value[1], name, 0))
        except ConfigError:
            raise ConfigError(
                f"{name} must be an int, a pair (ph, pw) or ((top, bottom), (left, right)) of "
                f"non-negative ints, got {value!r}"
            ) from None
    ph, pw = as_pair(value, name, 0)
    return ((ph, ph), (pw, pw))


def output_size(
    size: int, kernel: int, stride: int, pad: Pair, dilation: int = 1, ceil_mode: bool = False
) -> int:
    """Number of window positions along one axis: (size + pad - span) // stride + 1, where
    span = dilation * (kernel - 1) + 1. ``ceil_mode`` rounds up instead (PyTorch's pooling
    rule), but the last window must still start inside the input or the leading padding."""
    room = size + pad[0] + pad[1] - dilation * (kernel - 1) - 1
    if not ceil_mode:
        return room // stride + 1
    out = -(-room // stride) + 1
    if (out - 1) * stride >= size + pad[0]:
        out -= 1
    return out


def window_output_shape(
    hw: tuple[int, int],
    kernel: Pair,
    stride: Pair,
    padding: Padding,
    who: str,
    dilation: Pair = (1, 1),
    ceil_mode: bool = False,
) -> tuple[int, int]:
    """(OH, OW) for an input of spatial size ``hw``; a clear error if the kernel does not fit."""
    h, w = hw
    hp, wp = h + sum(padding[0]), w + sum(padding[1])
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
    if span[0] > hp or span[1] > wp:
        what = f"kernel {kernel[0]}x{kernel[1]}"
        if tuple(dilation) != (1, 1):
            what = f"dilated {what} (dilation {tuple(dilation)}, span {span[0]}x{span[1]})"
        raise ShapeError(
            f"{who}: {what} is larger than the padded input "
            f"{hp}x{wp} (input {h}x{w}, padding {padding[0]}, {padding[1]})"
        )
    return (
        output_size(h, kernel[0], stride[0], padding[0], dilation[0], ceil_mode),
        output_size(w, kernel[1], stride[1], padding[1], dilation[1], ceil_mode),
    )


def window_counts(
    size: int, kernel: int, stride: int, pad: Pair, out: int, include_pad: bool
) -> np.ndarray:
    """Cells of each of the ``out`` windows along one axis that a mean divides by: the window
    clipped to the padded input (``include_pad``) or to the input itself, as PyTorch counts
    them (a ceil-mode window hanging past the padded edge is clipped, not counted in full)."""
    start = np.arange(out, dtype=np.int64) * stride - pad[0]
    end = np.minimum(start + kernel, size + pad[1])
    if not include_pad:
        start, end = np.maximum(start, 0), np.minimum(end, size)
    return end - start


def first_inside(size_out: int, stride: int, pad_before: int, dilation: int) -> np.ndarray:
    """For each window along one axis, the index of its first kernel tap inside the input
    (taps before it read the leading padding)."""
    start = np.arange(size_out, dtype=np.int64) * stride - pad_before
    return -(np.minimum(start, 0) // dilation)


def _index(ndim: int, items: dict[int, slice | int]) -> tuple:
    return tuple(items.get(a, slice(None)) for a in range(ndim))


def pad2d(
    x: np.ndarray,
    padding: Padding,
    value: float = 0.0,
    axes: tuple[int, int] = (2, 3),
    copy: bool = False,
) -> np.ndarray:
    """Pad the two spatial ``axes`` (H, W) with ``value``.

    The result is C-contiguous (one copy, which also lays out a transposed view) unless there
    is no padding and ``copy`` is False, in which case ``x`` itself is returned.
    """
    (pt, pb), (pl, pr) = padding
    if pt == pb == pl == pr == 0 and not copy:
        return x
    ah, aw = axes
    shape = list(x.shape)
    h, w = shape[ah], shape[aw]
    shape[ah] += pt + pb
    shape[aw] += pl + pr
    out = np.empty(shape, dtype=x.dtype)
    nd = x.ndim
    # Fill only the border; the interior is written once by the copy below.
    rows, cols = slice(pt, pt + h), slice(pl, pl + w)
    for region in (
        {ah: slice(0, pt)},
        {ah: slice(pt + h, None)},
        {ah: rows, aw: slice(0, pl)},
        {ah: rows, aw: slice(pl + w, None)},
    ):
        out[_index(nd, region)] = value
    out[_index(nd, {ah: rows, aw: cols})] = x
    return out


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
