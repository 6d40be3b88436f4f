"""Windows: im2col, col2im and the sliding windows that convolution and pooling read.

A window operation with kernel (KH, KW), stride (SH, SW), dilation (DH, DW) and padding
((PT, PB), (PL, PR)) reads, for every output pixel (i, j), the patch

    xpad[n, c, i*SH + u*DH, j*SW + v*DW]      for u < KH, v < KW,

and its output size is OH = (H + PT + PB - DH*(KH - 1) - 1) // SH + 1 (likewise OW).

* ``windows(xp)`` is that patch for every output pixel at once: a strided *view* of the
  padded input as (N, C, KH, KW, OH, OW), no copy.
* ``im2col(x)`` lays the windows out as one matrix, (C*KH*KW, N*OH*OW): column (n, i, j)
  is the window under output pixel (i, j) of image n. A convolution is then one matrix
  product with the kernels as the rows of a matrix (``Conv2D``).
* ``fold_windows`` is the adjoint of ``windows``: it adds every window's values back onto
  the pixels the window read (overlapping windows add up). ``col2im`` is the adjoint of
  ``im2col``, through it. The loop runs over the KH*KW kernel offsets only; each step is
  one vectorised add over every image, channel and window.

Pooling reads the same ``windows`` and reduces over the taps (``MaxPool2D``,
``AvgPool2D``). The engine (``scratchcnn.engine``) has faster ways to do all of this for
the machine; these are the ones to read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..errors import ConfigError, ShapeError

Pair = tuple[int, int]
Padding = tuple[Pair, Pair]  # ((top, bottom), (left, right))


# --- the arguments ----------------------------------------------------------------------
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


# --- output sizes -----------------------------------------------------------------------
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


def ceil_padding(
    hw: tuple[int, ...],
    out_hw: tuple[int, int],
    kernel: Pair,
    stride: Pair,
    padding: Padding,
    dilation: Pair = (1, 1),
) -> Padding:
    """``padding`` plus the rows/columns that the last window of a ceil-mode pool hangs over
    (at the bottom and right), so that every window lies inside the padded input."""
    extra = [
        max(0, (o - 1) * s + d * (k - 1) + 1 - (n + sum(p)))
        for o, s, d, k, n, p in zip(out_hw, stride, dilation, kernel, hw, padding, strict=True)
    ]
    (pt, pb), (pl, pr) = padding
    return ((pt, pb + extra[0]), (pl, pr + extra[1]))


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


# --- padding ----------------------------------------------------------------------------
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


def unpad2d(xp: np.ndarray, padding: Padding, hw: tuple[int, ...]) -> np.ndarray:
    """The (H, W) interior of a padded NCHW array: the inverse of ``pad2d``."""
    (pt, _), (pl, _) = padding
    return xp[:, :, pt : pt + hw[0], pl : pl + hw[1]]


# --- the windows ------------------------------------------------------------------------
def windows(
    xp: np.ndarray, kernel: Pair, stride: Pair, out_hw: tuple[int, int], dilation: Pair = (1, 1)
) -> np.ndarray:
    """Every window of the padded NCHW ``xp`` at once, as a read-only view
    (N, C, KH, KW, OH, OW): view[n, c, u, v, i, j] = xp[n, c, i*SH + u*DH, j*SW + v*DW].
    Nothing is copied: the six axes are six strides over xp's memory."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    sn, sc, s_h, s_w = xp.strides
    return as_strided(
        xp,
        shape=(xp.shape[0], xp.shape[1], kh, kw, *out_hw),
        strides=(sn, sc, s_h * dh, s_w * dw, s_h * sh, s_w * sw),
        writeable=False,
    )


def fold_windows(
    win: np.ndarray,
    padded_hw: tuple[int, int],
    stride: Pair,
    dilation: Pair = (1, 1),
) -> np.ndarray:
    """The adjoint of :func:`windows`: ``win`` is (N, C, KH, KW, OH, OW); returns the
    (N, C, Hp, Wp) array in which every pixel holds the sum of the window values that were
    read from it. One vectorised add per kernel offset (u, v)."""
    n, c, kh, kw, oh, ow = win.shape
    (sh, sw), (dh, dw) = stride, dilation
    xp = np.zeros((n, c, *padded_hw), dtype=win.dtype)
    for u in range(kh):
        for v in range(kw):
            rows = slice(u * dh, u * dh + sh * (oh - 1) + 1, sh)
            cols = slice(v * dw, v * dw + sw * (ow - 1) + 1, sw)
            xp[:, :, rows, cols] += win[:, :, u, v]
    return xp


def im2col(
    x: np.ndarray, kernel: Pair, stride: Pair, padding: Padding, dilation: Pair = (1, 1)
) -> np.ndarray:
    """The (C*KH*KW, N*OH*OW) matrix of every window of NCHW ``x``: row (c, u, v), column
    (n, i, j) holds xpad[n, c, i*SH + u*DH, j*SW + v*DW]. Rows are ordered like a weight
    (O, C, KH, KW) reshaped to (O, C*KH*KW), so ``W @ im2col(x)`` is the convolution."""
    n, c = x.shape[:2]
    (kh, kw), (oh, ow) = (
        kernel,
        window_output_shape(x.shape[2:], kernel, stride, padding, "im2col", dilation),
    )
    win = windows(pad2d(x, padding), kernel, stride, (oh, ow), dilation)
    # (N, C, KH, KW, OH, OW) -> (C, KH, KW, N, OH, OW): the reshape makes the one copy.
    return win.transpose(1, 2, 3, 0, 4, 5).reshape(c * kh * kw, n * oh * ow)


def col2im(
    cols: np.ndarray,
    x_shape: tuple[int, ...],
    kernel: Pair,
    stride: Pair,
    padding: Padding,
    dilation: Pair = (1, 1),
) -> np.ndarray:
    """The adjoint of :func:`im2col`: ``cols`` is (C*KH*KW, N*OH*OW); returns the NCHW array
    of ``x_shape`` in which every pixel holds the sum of the entries of ``cols`` that
    ``im2col`` copied from it (padding cropped away)."""
    n, c, h, w = x_shape
    (kh, kw), (oh, ow) = (
        kernel,
        window_output_shape((h, w), kernel, stride, padding, "col2im", dilation),
    )
    win = cols.reshape(c, kh, kw, n, oh, ow).transpose(3, 0, 1, 2, 4, 5)
    padded = (h + sum(padding[0]), w + sum(padding[1]))
    return unpad2d(fold_windows(win, padded, stride, dilation), padding, (h, w))
