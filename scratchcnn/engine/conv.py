"""The engine's Conv2D: the same correlation as ``scratchcnn.nn.layers.Conv2D``, laid out
for the machine.

Layout inside: (H, C, W, N). The batch is the innermost, contiguous axis, so every copy and
add runs over long contiguous stretches, and one GEMM call covers the whole batch. The
output is handed on as a logical NCHW view of (OH, O, OW, N) memory: the next Conv2D route
reads it without a transpose, and a reference layer still sees (N, C, H, W).

Forward, the "row im2col": gather windows along W only, R[r, c, v, j, n] =
xpad[n, c, r, j*SW + v] (a KW-fold copy, not the KH*KW-fold copy of a full im2col). For
output row i, the KH rows i*SH .. i*SH+KH-1 of R, flattened to (KH*C*KW, OW*N), are exactly
the im2col matrix of that row, and since R is contiguous they are a strided view
(``row_blocks``). One batched GEMM over the OH rows:

    Y[i] = Wr @ block_i,   Wr = W reordered to (O, KH, C, KW), Y: (OH, O, OW*N).

Backward, dL/dWr = sum_i dY_i @ block_i^T (one GEMM over all rows when a row is short),
dL/db by a compiled channel sum, and dL/dx by one of two routes:

* stride 1 (and padding < kernel, O <= 2C): dL/dx is the "full" correlation of dy with the
  kernel rotated by 180 degrees and its channel axes swapped,
      dx[n,c,h,w] = sum_{o,u,v} W[o,c,KH-1-u,KW-1-v] * dypad[n,o,h+u,w+v],
  dy padded by (KH-1-PT, KH-1-PB) rows and (KW-1-PL, KW-1-PR) columns: the forward
  computation again, one GEMM of depth KH*O*KW per row (1.2-1.65x faster than col2im for
  3x3 "same" convolutions with O <= C, measured at batch 64);
* otherwise the adjoint of the row im2col: dL/dblock_i = Wr^T @ dY_i, scattered back onto
  the rows of R and folded onto the columns (compiled in one pass, or NumPy: one kernel row
  at a time, then ``fold``).

Dilation and groups: the same layout and window buffer R, with two changes. Dilation: R
gathers the KW taps DW columns apart, and kernel row u reads rows i*SH + u*DH, which are no
longer adjacent, so instead of one row-block GEMM there is one batched GEMM per kernel row
u (a loop over KH, not over pixels). Groups: R's channels split as (G, C/G), and each GEMM
is batched over (OH, G) with the weight of kernel row u as (G, O/G, C/G*KW):

    Y[i, g] = sum_u  Wk[u, g] @ R[i*SH + u*DH, g]
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..nn.layers.base import check_grad, check_input
from ..nn.layers.conv import Conv2D
from ..nn.windows import Padding, pad2d, window_output_shape
from . import modes
from .layout import fold, row_blocks, sliding_windows
from .route import Route

#: Inference (eval mode) on one image runs the layer's own im2col and one GEMM, not the
#: row layout, for the convolutions where that is cheaper: when the weight is at least
#: about as large as the activations (output channels above half the output positions:
#: the row layout reorders the whole weight every call, the layer's GEMM reads it in
#: torch's order), for 1x1 kernels (the layer's im2col is one copy of x), and for grouped
#: ones (the row layout's grouped path batches GEMMs of one row; depthwise ones have their
#: own kernel, below). With N = 1 the row layout's batch-innermost copies also run over
#: stretches of one. torchvision models at 3x64x64, batch 1 (BENCHMARKS.md, issue 27):
#: resnet18 1.9x, mnasnet0_5 1.8x. LeNet-5 keeps the row layout (its convolutions have
#: 6 and 16 channels over 784 and 100 positions: the layer's way was 1.3x slower there).
#: Larger batches and training keep the row layout (tried: the same rule at batch 16 made
#: googlenet 15 % slower). False runs every call in the row layout
#: (benchmarks/torchvision_import.py --ab measures both ways in one process).
INFERENCE_BY_LAYER = True

#: Inference of a depthwise convolution (groups = C = O, no dilation; MobileNet, MnasNet,
#: EfficientNet) on one image by a direct compiled kernel (``_numba.depthwise_planes``): each tap
#: adds a strided stretch of an input row to an output row, no im2col and no GEMM of width
#: one. 1.3-1.5x the layer's own im2col at batch 1 (mnasnet0_5, mobilenet_v2, 3x64x64); at
#: batch 16 the row layout's grouped path is faster (its vectors run over the batch).
INFERENCE_DEPTHWISE = True

#: Depthwise convolutions (groups = C = O, no dilation) with a batch or in training run in
#: the row layout by compiled loops (``_numba.depthwise_rows`` and its two gradients), not
#: as the grouped path's GEMMs of one row each. False: the grouped path.
DEPTHWISE_ROWS = True


class Conv2DRoute(Route):
    """Runs one Conv2D in the (H, C, W, N) layout (see the module docstring)."""

    supports_input_grad_skip = True

    def __init__(self, layer: Conv2D) -> None:
        super().__init__(layer)
        self._r: np.ndarray | None = None  # window buffer, reused from step to step
        self._last_hw: tuple[tuple[int, ...], tuple[int, int]] | None = None
        # Which way the last forward ran, for backward: "rows" (the row layout), "grouped",
        # "depthwise_rows", "layer" (the layer's own im2col) or "direct" (the one-image
        # depthwise kernel, whose input ``_direct_x`` backward hands to the layer).
        self._ran = "rows"
        self._direct_x: np.ndarray | None = None

    @property
    def _plain(self) -> bool:
        """No dilation and no groups: the row-block path (asymmetric padding is fine)."""
        la = self.layer
        return la.dilation == (1, 1) and la.groups == 1

    @property
    def _depthwise(self) -> bool:
        """One filter per channel (groups = C = O > 1), no dilation: the depthwise kernels."""
        la = self.layer
        return la.dilation == (1, 1) and la.groups == la.in_channels == la.out_channels > 1

    def _wr(self) -> np.ndarray:
        """The weight as the (O, KH*C*KW) matrix matching the row-block order (u, c, v)."""
        return reorder_weight(self.layer.params["weight"], "rows")

    def _by_layer(self, x: np.ndarray, who: str) -> bool:
        """Whether this call is better run by the layer's own im2col: inference on one
        image, for the convolutions ``INFERENCE_BY_LAYER`` describes."""
        la = self.layer
        if not INFERENCE_BY_LAYER or la.training or not isinstance(x, np.ndarray):
            return False  # (not an array: the layer's check says so)
        if x.ndim != 4 or len(x) != 1:
            return False
        if not self._plain or la.kernel_size == (1, 1):
            return True
        oh, ow = self._out_hw(x.shape[2:], who)
        return 2 * la.out_channels > oh * ow

    def _direct_kernels(self, x: np.ndarray) -> Any:
        """The compiled kernels when this call is one-image inference of a depthwise
        convolution (``INFERENCE_DEPTHWISE``); else None."""
        la = self.layer
        if la.training or not INFERENCE_DEPTHWISE or not self._depthwise:
            return None
        if not (isinstance(x, np.ndarray) and x.ndim == 4 and len(x) == 1):
            return None
        return modes.for_dtype(la.dtype) if x.dtype == la.dtype else None

    def forward(self, x: np.ndarray) -> np.ndarray:
        la = self.layer
        who = f"Conv2D({la.in_channels}, {la.out_channels})"
        self._direct_x = None
        fast = self._direct_kernels(x)
        if fast is not None:
            return self._forward_depthwise(x, who, fast)
        if self._by_layer(x, who):  # the reference, which keeps its own cache for backward
            self._ran = "layer"
            return la.forward(x)
        x = check_input(x, who, 4, "(N, C, H, W)", la.dtype, la.in_channels)
        if not self._plain:
            fast = modes.for_dtype(x.dtype) if DEPTHWISE_ROWS and self._depthwise else None
            if fast:
                return self._forward_depthwise_rows(x, who, fast)
            self._ran = "grouped"
            return self._forward_grouped(x, who)
        self._ran = "rows"
        n, c = x.shape[:2]
        kw, o = la.kernel_size[1], la.out_channels
        oh, ow = self._out_hw(x.shape[2:], who)
        r = self._buffer((x.shape[2] + sum(la.pad[0]), c, kw, ow, n), x.dtype)
        y, blocks = row_correlate(x, la.pad, self._wr(), la.kernel_size, la.stride, oh, r)
        if la.use_bias:
            fast = modes.for_dtype(y.dtype)
            if fast:
                fast.channel_add(y, la.params["bias"])
            else:
                y += la.params["bias"][:, None]
        self._cache = (blocks, x.shape, (oh, ow))
        # Logical NCHW over memory (OH, O, OW, N).
        return y.reshape(oh, o, ow, n).transpose(3, 1, 0, 2)

    def _forward_depthwise(self, x: np.ndarray, who: str, fast: Any) -> np.ndarray:
        """Inference on one image by the inference plans' direct depthwise kernel
        (``_numba.depthwise_planes``: for one image, NCHW memory is the (C, N, H, W) it
        reads), NCHW out. A backward after it (saliency in eval mode) runs the layer's
        forward again for the cache its own backward needs: rare, and exact."""
        la = self.layer
        x = check_input(x, who, 4, "(N, C, H, W)", la.dtype, la.in_channels)
        oh, ow = self._out_hw(x.shape[2:], who)
        (pt, _), (pl, _) = la.pad
        c = la.out_channels
        out = np.empty((1, c, oh, ow), dtype=x.dtype)
        w = np.ascontiguousarray(la.params["weight"]).reshape(c, *la.kernel_size)
        planes = np.ascontiguousarray(x).reshape(c, 1, *x.shape[2:])
        fast.depthwise_planes(planes, w, *la.stride, pt, pl, out.reshape(c, 1, oh, ow))
        if la.use_bias:
            out += la.params["bias"][:, None, None]
        self._ran = "direct"
        self._direct_x = x
        return out

    # --- depthwise, in the row layout: compiled loops over the stretches of a row --------
    def _forward_depthwise_rows(self, x: np.ndarray, who: str, fast: Any) -> np.ndarray:
        """A depthwise convolution (one filter per channel) in the (H, C, W, N) layout by
        ``_numba.depthwise_rows``: no window copy, no GEMM of width one."""
        la = self.layer
        c = x.shape[1]
        oh, ow = self._out_hw(x.shape[2:], who)
        xh = np.ascontiguousarray(pad2d(x.transpose(2, 1, 3, 0), la.pad, axes=(0, 2), copy=True))
        w = np.ascontiguousarray(la.params["weight"].reshape(c, *la.kernel_size))
        bias = la.params["bias"] if la.use_bias else np.zeros(c, x.dtype)
        out = np.empty((oh, c, ow, x.shape[0]), dtype=x.dtype)
        fast.depthwise_rows(xh, w, bias, *la.stride, out)
        self._cache = (xh, x.shape, (oh, ow))
        self._ran = "depthwise_rows"
        return out.transpose(3, 1, 0, 2)

    def _backward_depthwise_rows(self, dy: np.ndarray, input_grad: bool) -> np.ndarray | None:
        """dW[c, u, v] = sum dy[i, c, j, n] * xh[i*SH + u, c, j*SW + v, n]; db = sum dy;
        dxh[i*SH + u, c, j*SW + v, n] += W[c, u, v] * dy[i, c, j, n], then the padding cut."""
        la = self.layer
        xh, x_shape, (oh, ow) = self._require_cache()
        n, c, h, w = x_shape
        dy = check_grad(dy, (n, c, oh, ow), la.dtype, "Conv2D")
        dyr = np.ascontiguousarray(dy.transpose(2, 1, 3, 0))  # (OH, C, OW, N)
        fast = modes.compiled()
        gw = np.empty((c, *la.kernel_size), dtype=dyr.dtype)
        fast.depthwise_rows_wgrad(xh, dyr, *la.stride, gw)
        la.grads["weight"] = gw.reshape(la.params["weight"].shape)
        if la.use_bias:
            la.grads["bias"] = fast.channel_sum(dyr.reshape(oh, c, ow * n)).astype(dyr.dtype)
        if not input_grad:
            return None
        kernel = np.ascontiguousarray(la.params["weight"].reshape(c, *la.kernel_size))
        dxh = np.zeros_like(xh)
        fast.depthwise_rows_xgrad(dyr, kernel, *la.stride, dxh)
        (pt, _), (pl, _) = la.pad
        return dxh[pt : pt + h, :, pl : pl + w].transpose(3, 1, 0, 2)

    def backward(self, dy: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        if self._ran == "depthwise_rows":
            return self._backward_depthwise_rows(dy, input_grad)
        if self._ran == "direct" and self._direct_x is not None:
            self.layer.forward(self._direct_x)  # the layer's own cache, for its backward
            self._direct_x = None
            self._ran = "layer"
        if self._ran == "layer":
            return self.layer.backward(dy, input_grad)
        if self._ran == "grouped":
            return self._backward_grouped(dy, input_grad)
        la = self.layer
        blocks, x_shape, (oh, ow) = self._require_cache()
        n, c, h, w = x_shape
        (kh, kw), (sh, sw), o = la.kernel_size, la.stride, la.out_channels
        dy = check_grad(dy, (n, o, oh, ow), la.dtype, "Conv2D")
        # (OH, O, OW*N); free when dy has the memory layout of this layer's output.
        dyr = np.ascontiguousarray(dy.transpose(2, 1, 3, 0)).reshape(oh, o, ow * n)
        fast = modes.for_dtype(dyr.dtype)
        gwr = weight_grad(dyr, blocks)
        la.grads["weight"] = reorder_weight(gwr, "back", (o, c, kh, kw))
        if la.use_bias:
            # Per channel over (OH, OW*N): compiled, in float64, 3-5x NumPy's float32 sum.
            bias = fast.channel_sum(dyr).astype(dyr.dtype) if fast else dyr.sum(axis=(0, 2))
            la.grads["bias"] = bias
        if not input_grad:
            return None
        if self._transposable:
            return self._input_grad_by_correlation(dy, x_shape)
        # dL/dblock_i = Wr^T @ dy_i, undone in two steps: row u of every block goes back onto
        # rows i*SH + u of R, then the KW window offsets fold back onto the columns.
        (pt, pb), (pl, pr) = la.pad
        if fast:  # one GEMM for all kernel rows, then both steps in one compiled pass
            wrt = np.ascontiguousarray(self._wr().T)  # small; the GEMM runs 1.25x faster
            dxh = np.empty((h, c, w, n), dtype=dyr.dtype)
            # A few output rows at a time, so the GEMM's result is still in cache when it
            # is scattered (all at once it is KH*KW times the size of dx).
            step = max(1, SCATTER_BYTES // (wrt.shape[0] * dyr.shape[2] * dyr.itemsize))
            for i0 in range(0, oh, step):
                part = np.matmul(wrt, dyr[i0 : i0 + step])
                fast.scatter_rows(part.reshape(-1, kh, c, kw, ow, n), i0, sh, sw, pt, pl, dxh)
            return dxh.transpose(3, 1, 0, 2)
        # NumPy: one kernel row at a time, so each GEMM result is added while it is still
        # in cache, then the fold.
        wr = self._wr().reshape(o, kh, c * kw)
        dr = np.zeros((h + pt + pb, c * kw, ow * n), dtype=dyr.dtype)
        part = np.empty((oh, c * kw, ow * n), dtype=dyr.dtype)
        for u in range(kh):
            np.matmul(wr[:, u].T, dyr, out=part)
            dr[u : u + sh * oh : sh] += part
        dxh = fold(dr.reshape(-1, c, kw, ow, n), w + pl + pr, sw, axis=2)  # (Hp, C, Wp, N)
        return dxh[pt : pt + h, :, pl : pl + w].transpose(3, 1, 0, 2)

    # --- stride 1: the input gradient as a correlation (module docstring) -----------------
    @property
    def _transposable(self) -> bool:
        """Stride 1, padding at most KH-1 / KW-1 on every side, O <= 2C. Where O grows
        (1->16, 3->32, 6->16) the window copy of dy holds more channels than x's, and the
        col2im route wins."""
        la = self.layer
        (kh, kw), ((pt, pb), (pl, pr)) = la.kernel_size, la.pad
        return (
            la.stride == (1, 1)
            and max(pt, pb) < kh
            and max(pl, pr) < kw
            and la.out_channels <= 2 * la.in_channels
        )

    def _input_grad_by_correlation(self, dy: np.ndarray, x_shape: tuple[int, ...]) -> np.ndarray:
        la = self.layer
        n, c, h, w = x_shape
        (kh, kw), ((pt, pb), (pl, pr)) = la.kernel_size, la.pad
        pad = ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr))
        # Wt[c, u, o, v] = W[o, c, KH-1-u, KW-1-v]: the (C, KH*O*KW) matrix of the row blocks.
        wt = reorder_weight(la.params["weight"], "flip")
        r = np.empty((h + kh - 1, la.out_channels, kw, w, n), dtype=dy.dtype)
        dx, _ = row_correlate(dy, pad, wt, la.kernel_size, (1, 1), h, r)
        return dx.reshape(h, c, w, n).transpose(3, 1, 0, 2)

    # --- dilation and groups (module docstring) ---------------------------------------------
    def _wk(self) -> np.ndarray:
        """The weight as (KH, G, O/G, C/G*KW), matching R's (group, channel, tap) order."""
        la = self.layer
        g, (kh, kw) = la.groups, la.kernel_size
        w = la.params["weight"].reshape(g, la.out_channels // g, -1, kh, kw)
        return np.ascontiguousarray(w.transpose(3, 0, 1, 2, 4)).reshape(kh, g, w.shape[1], -1)

    def _kernel_rows(self, oh: int) -> list[slice]:
        """For each kernel row u, the rows of R that it reads: i*SH + u*DH for i < OH."""
        la = self.layer
        sh, dh = la.stride[0], la.dilation[0]
        return [slice(u * dh, u * dh + sh * (oh - 1) + 1, sh) for u in range(la.kernel_size[0])]

    def _forward_grouped(self, x: np.ndarray, who: str) -> np.ndarray:
        la = self.layer
        n, c = x.shape[:2]
        kw, g, o = la.kernel_size[1], la.groups, la.out_channels
        sw, dw = la.stride[1], la.dilation[1]
        oh, ow = window_output_shape(
            x.shape[2:], la.kernel_size, la.stride, la.pad, who, la.dilation
        )
        xh = pad2d(x.transpose(2, 1, 3, 0), la.pad, axes=(0, 2), copy=True)  # (Hp, C, Wp, N)
        rows = xh.shape[0]
        r = self._buffer((rows, c, kw, ow, n), x.dtype)
        np.copyto(r, sliding_windows(xh, kw, sw, axis=2, dilation=dw))
        r4 = r.reshape(rows, g, c // g * kw, ow * n)
        wk = self._wk()
        y = np.empty((oh, g, o // g, ow * n), dtype=x.dtype)
        part = np.empty_like(y)
        for u, sel in enumerate(self._kernel_rows(oh)):
            np.matmul(wk[u], r4[sel], out=y if u == 0 else part)
            if u:
                y += part
        y = y.reshape(oh, o, ow * n)
        if la.use_bias:
            y += la.params["bias"][:, None]
        self._cache = (r4, x.shape, (oh, ow))
        return y.reshape(oh, o, ow, n).transpose(3, 1, 0, 2)

    def _backward_grouped(self, dy: np.ndarray, input_grad: bool) -> np.ndarray | None:
        la = self.layer
        r4, x_shape, (oh, ow) = self._require_cache()
        n, c, h, w = x_shape
        (kh, kw), g, o = la.kernel_size, la.groups, la.out_channels
        dy = check_grad(dy, (n, o, oh, ow), la.dtype, "Conv2D")
        dyr = np.ascontiguousarray(dy.transpose(2, 1, 3, 0)).reshape(oh, g, o // g, ow * n)
        sels = self._kernel_rows(oh)
        # dWk[u, g] = sum_i dy[i, g] @ R[i*SH + u*DH, g]^T
        gwk = np.stack([np.matmul(dyr, r4[sel].transpose(0, 1, 3, 2)).sum(axis=0) for sel in sels])
        gw = gwk.reshape(kh, g, o // g, c // g, kw).transpose(1, 2, 3, 0, 4)
        la.grads["weight"] = np.ascontiguousarray(gw).reshape(la.params["weight"].shape)
        if la.use_bias:
            la.grads["bias"] = dyr.sum(axis=(0, 3)).reshape(o)
        if not input_grad:
            return None
        (pt, _), (pl, pr) = la.pad
        wkt = self._wk().transpose(0, 1, 3, 2)  # (KH, G, C/G*KW, O/G)
        dr = np.zeros(r4.shape, dtype=dyr.dtype)
        for u, sel in enumerate(sels):
            dr[sel] += np.matmul(wkt[u], dyr)
        dxh = fold(
            dr.reshape(-1, c, kw, ow, n),
            w + pl + pr,
            la.stride[1],
            axis=2,
            dilation=la.dilation[1],
        )
        return dxh[pt : pt + h, :, pl : pl + w].transpose(3, 1, 0, 2)

    def _out_hw(self, hw: tuple[int, ...], who: str) -> tuple[int, int]:
        """(OH, OW) for input size ``hw``, remembered for the last size seen (a few us that
        count at batch 1)."""
        if self._last_hw is not None and self._last_hw[0] == hw:
            return self._last_hw[1]
        la = self.layer
        out = window_output_shape(hw, la.kernel_size, la.stride, la.pad, who)
        self._last_hw = (tuple(hw), out)
        return out

    def _buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The window buffer R, reused from step to step (same shape, same dtype)."""
        buf = self._r
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._r = np.empty(shape, dtype=dtype)
        return buf


def reorder_weight(w: np.ndarray, kind: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Conv2D's weight between torch's (O, C, KH, KW) and the row blocks' orders (a copy,
    except where NumPy's reshape finds the order already the same). "rows" gives the
    (O, KH*C*KW) matrix of the forward (k = (u, c, v)); "back" takes such a matrix (the
    weight gradient) to torch's ``shape``; "flip" gives the (C, KH*O*KW) matrix
    Wt[c, (u, o, v)] = W[o, c, KH-1-u, KW-1-v] of the input gradient."""
    o, c, kh, kw = w.shape if shape is None else shape
    fast = modes.for_dtype(w.dtype)
    if not fast:
        if kind == "rows":
            return w.transpose(0, 2, 1, 3).reshape(o, -1)
        if kind == "back":
            return np.ascontiguousarray(w.reshape(o, kh, c, kw).transpose(0, 2, 1, 3))
        return w[:, :, ::-1, ::-1].transpose(1, 2, 0, 3).reshape(c, -1)
    index = _reorder_index(kind, o, c, kh, kw)
    # Row c of the flipped matrix starts at W[0, c, 0, 0]; the others' rows are W's rows.
    rows, step = (c, kh * kw) if kind == "flip" else (o, index.size)
    out = np.empty((rows, index.size), dtype=w.dtype)
    fast.gather_cols(np.ravel(w), step, index, out)
    return out if kind != "back" else out.reshape(o, c, kh, kw)


@functools.lru_cache(maxsize=64)
def _reorder_index(kind: str, o: int, c: int, kh: int, kw: int) -> np.ndarray:
    """For ``gather_cols``: where each element of an output row of ``reorder_weight`` is,
    counted from the start of its input row (read-only, shared)."""
    if kind == "rows":  # (c, u, v) -> (u, c, v)
        index = np.arange(c * kh * kw).reshape(c, kh, kw).transpose(1, 0, 2)
    elif kind == "back":  # (u, c, v) -> (c, u, v)
        index = np.arange(kh * c * kw).reshape(kh, c, kw).transpose(1, 0, 2)
    else:  # row c of the flipped matrix: (u, o, v) -> W[o, c, KH-1-u, KW-1-v] - W[0, c, 0, 0]
        flat = np.arange(o * c * kh * kw).reshape(o, c, kh, kw)[:, 0, ::-1, ::-1]
        index = flat.transpose(1, 0, 2)
    index = np.ascontiguousarray(index, dtype=np.intp).reshape(-1)
    index.flags.writeable = False
    return index


#: Bytes of GEMM output per ``scatter_rows`` call in the input gradient (L2-sized).
SCATTER_BYTES = 256 * 1024


#: dL/dW takes one GEMM over all output rows (after a full im2col copy) instead of one per
#: row when a row holds at most this many (OW*N) columns: that shallow, the per-row GEMMs
#: run slowly and their OH partial results need a sum of their own (1.3x on the CIFAR-shaped
#: net's third convolution at batch 8, 64 columns; no gain at 128).
ONE_GEMM_MAX_COLS = 64


def weight_grad(dyr: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """dWr = sum_i dy_i @ block_i^T, the "valid" correlation of the input with dy, as the
    (O, KH*C*KW) matrix; ``dyr`` is (OH, O, OW*N), ``blocks`` the (OH, KH*C*KW, OW*N) row
    blocks."""
    oh, o, m = dyr.shape
    if m > ONE_GEMM_MAX_COLS or oh == 1:
        return np.matmul(dyr, blocks.transpose(0, 2, 1)).sum(axis=0)
    # The same sum as one GEMM of depth OH*OW*N, both operands copied to (row, column)
    # order: small copies, as a row has at most ONE_GEMM_MAX_COLS columns.
    k = blocks.shape[1]
    cols = np.empty((k, oh, m), dtype=blocks.dtype)
    np.copyto(cols, blocks.transpose(1, 0, 2))
    dyt = np.ascontiguousarray(dyr.transpose(1, 0, 2))
    return dyt.reshape(o, oh * m) @ cols.reshape(k, oh * m).T


def row_correlate(
    x: np.ndarray,
    pad: Padding,
    wr: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    oh: int,
    r: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The row-im2col correlation of NCHW ``x`` with the (O, KH*C*KW) matrix ``wr``:
    returns Y as (OH, O, OW*N) and the row blocks (a view of ``r``, the (Hp, C, KW, OW, N)
    window buffer, which this fills)."""
    (kh, kw), (sh, sw) = kernel, stride
    rows, c, _, ow, n = r.shape
    xt = x.transpose(2, 1, 3, 0)
    # The compiled copy reads along N; when N is not x's innermost axis (an NCHW network
    # input), NumPy's copy, which follows the source's memory order, is faster.
    fast = modes.for_dtype(x.dtype) if n == 1 or xt.strides[3] == x.itemsize else None
    if fast and sw == 1 and xt.flags.c_contiguous:  # each window row one contiguous run
        fast.gather_rows_s1(
            xt.reshape(xt.shape[0], c, -1), pad[0][0], pad[1][0], n, r.reshape(rows, c, kw, -1)
        )
    elif fast:  # padding, transpose and window copy in one compiled pass
        fast.gather_rows(xt, pad[0][0], pad[1][0], sw, r)
    else:
        # (Hp, C, Wp, N): one copy that transposes and pads; when x already has this memory
        # layout (the output of a Conv2D, or a ReLU/pool after one) it is a straight copy.
        xh = pad2d(xt, pad, axes=(0, 2), copy=True)
        np.copyto(r, sliding_windows(xh, kw, sw, axis=2))
    blocks = row_blocks(r.reshape(rows, c * kw, ow * n), kh, sh, oh)
    return np.matmul(wr, blocks), blocks


ROUTES = {Conv2D: Conv2DRoute}
