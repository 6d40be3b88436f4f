"""Inference plans: a model in eval mode run as one flat list of steps.

Inference (every layer in eval mode) needs no cache for a backward, and every layer's
parameters are fixed for the pass. ``InferencePlan`` uses both, for one model, one input
shape and one dtype (made on the first call with them, kept until the model's structure
changes):

* **One flat list of steps.** Nested Sequentials are spliced in, blocks (Residual,
  Parallel, Gate, DenseConcat) hold their children's steps; shapes, paddings and kernel
  choices are worked out once, so a call runs no checks, no shape arithmetic and no
  dispatch per layer. At batch 1 that per-layer Python was most of the time (mobilenet_v2,
  90 layers: BENCHMARKS.md, issue 27).
* **Fused epilogues.** A Conv2D or Dense writes its own output; the bias, a BatchNorm after
  it (eval: y = x * scale + shift per channel, scale = weight / sqrt(var + eps), shift =
  bias - mean * scale) and the activation after that are applied to it in place in one
  compiled pass (``_numba.affine_act``; float32 SiLU and Sigmoid by
  ``_numba.affine_sigmoid32``, whose exp vectorises) instead of three sweeps with three new
  arrays. A Residual's add takes the activation that follows it the same way.
* **Activations as (C, N, H, W)**, which for one image is NCHW itself. A 1x1 stride-1
  convolution is one GEMM on x as it is; others gather the layer's own im2col matrix for
  the whole batch (``_numba.im2col_cn``, no padded copy) and multiply by the weight in
  torch's order (no reordered copy of the weight): one GEMM per layer, not per image;
  grouped ones batch it over the groups; depthwise ones (groups = C = O) run a direct
  kernel (``_numba.depthwise_planes``, or ``depthwise_hwc`` for small planes), max pooling
  too (``_numba.maxpool_planes``).

With the BLAS given two or more threads, a wide model's batch runs as one part per thread
side by side (each part a plan of its own, its GEMMs on one thread; the compiled kernels
and NumPy release the GIL), so the plan's own kernels use every core, not only the GEMMs.

Every other layer (pooling, Softmax, preprocessing, channel layers, ...) runs its engine
route or its own forward, as in a plain pass. Each step returns a new array (or, for
Flatten and eval-mode Dropout, a view), so nothing the caller holds is ever written to.

When it runs (``Plan.forward``): ``INFERENCE_PLAN`` is on, the compiled kernels load, and at
call time every layer is in eval mode with no hook (an instance whose ``forward`` or
``backward`` was replaced), the input is a float ndarray of the parameters' dtype, and the
structure (every list of layers, every block's children) is what the plan was made from.
Otherwise the pass runs as before, layer by layer, and raises the layers' own errors. A
``backward`` after an inference pass (saliency or Grad-CAM in eval mode) first runs the
forward again layer by layer on the same input array, for the caches backward needs.

Tested equal to the reference layers (``SCRATCHCNN_KERNELS=numpy``) in
tests/engine/test_inference_plan.py.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .._blas import blas_threads, current_blas_threads
from ..errors import ShapeError
from ..nn.layers.activations import (
    GELU,
    Clip,
    Hardsigmoid,
    Hardswish,
    LeakyReLU,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Tanh,
)
from ..nn.layers.blocks import DenseConcat, Gate, Parallel, Residual
from ..nn.layers.conv import Conv2D
from ..nn.layers.dense import Dense, Flatten
from ..nn.layers.normalization import BatchNorm1D, BatchNorm2D, Dropout
from ..nn.layers.pooling import GlobalAvgPool2D, MaxPool2D
from . import modes

#: Run eval-mode passes through an InferencePlan (see the module docstring); False runs
#: them layer by layer like training passes (benchmarks/torchvision_import.py --ab).
INFERENCE_PLAN = True

#: Batches of at most this many images always run the plan; larger ones only for wide
#: models (``WIDE_CHANNELS``). Measured (BENCHMARKS.md, issue 27), plan / layer by layer:
#: LeNet-5, the CIFAR-shaped net and resnet8 (6-128 channels) 1.9-3.0x at batch 1, even at
#: 4, 0.34-0.97x at 16-256, where the routes' batch-innermost layout runs every copy and
#: pool over long vectors and the plan's (C, N, H, W) over rows of 8-32; torchvision's
#: models (up to 512-1280 channels, the GEMMs dominate) 1.1-1.5x at 16 and 1.0-1.5x at 64.
ALWAYS_UP_TO = 4
#: A model is wide when one of its Conv2D layers has at least this many output channels.
WIDE_CHANNELS = 256

#: SiLU and Sigmoid in float32 by the vectorised exp of ``_numba.affine_sigmoid32``, fused
#: with the bias and BatchNorm before them (False: NumPy's exp, in several passes).
EXP32 = True

#: The largest im2col matrix a convolution gathers at once, in values (128 MiB of
#: float32): a larger batch is gathered and multiplied a few images at a time, so a plan
#: never holds much more memory than the layer-by-layer pass.
MAX_COLS = 2**25

#: With the BLAS given T >= 2 threads, a wide model's batch of N >= 2 images runs as
#: min(T, N) parts side by side (``InferencePlan._run_split``). False: one pass, where only
#: the GEMMs use the other threads.
SPLIT = True

#: Plans kept per model (one per input shape and dtype; e.g. predict's full batches and
#: its last, shorter one).
MAX_SHAPES = 4

#: Depthwise convolutions with at most this many output pixels run with the channels
#: innermost (``_numba.depthwise_hwc``); larger planes run plane by plane
#: (``_numba.depthwise_planes``). Measured per layer at batch 1: 8x8 and smaller planes
#: 1.1-4.5x faster channels-innermost, 16x16 and larger 1.3-3.5x slower.
DEPTHWISE_HWC_PIXELS = 64

_NO_ARRAY: dict[np.dtype, np.ndarray] = {}


def _empty(dtype: np.dtype) -> np.ndarray:
    a = _NO_ARRAY.get(dtype)
    if a is None:
        a = _NO_ARRAY[dtype] = np.empty(0, dtype)
    return a


class Unsupported(Exception):
    """A model (or input) the plan does not take: the pass runs layer by layer."""


class DTypeMismatch(Unsupported):
    """A parameter whose dtype is not the input's."""


# --- epilogues: what is applied in place to a step's own output ---------------------------
#: activation class -> the code of ``_numba.affine_act``
_ACT_CODES = {ReLU: 1, ReLU6: 2, Clip: 2, LeakyReLU: 3, Hardsigmoid: 4, Hardswish: 5}
#: activations applied by NumPy's vectorised exp / tanh (or GELU's compiled kernel)
_EXP_ACTS = (Sigmoid, SiLU, Tanh, GELU)


def _act_params(layer: Any) -> tuple[int, float, float]:
    code = _ACT_CODES[type(layer)]
    if code == 2:
        low, high = layer.min_value, layer.max_value
        return code, -np.inf if low is None else float(low), np.inf if high is None else high
    if code == 3:
        return code, float(layer.negative_slope), 0.0
    if code == 4:
        return code, float(layer.alpha), float(layer.beta)
    return code, 0.0, 0.0


def _sigmoid_(y: np.ndarray) -> None:
    """y = 1 / (1 + exp(-y)) in place (exp overflows to inf for y << 0: 1/inf = 0)."""
    with np.errstate(over="ignore"):
        np.negative(y, out=y)
        np.exp(y, out=y)
    y += y.dtype.type(1)
    np.reciprocal(y, out=y)


def _silu(y: np.ndarray) -> np.ndarray:
    """y / (1 + exp(-y)), as SiLU's route computes it (three NumPy passes)."""
    e = np.negative(y)
    with np.errstate(over="ignore"):
        np.exp(e, out=e)
    e += y.dtype.type(1)
    np.divide(y, e, out=y)
    return y


class Epilogue:
    """Per-channel affine terms (a bias, then BatchNorm's scale and shift) and one
    activation, applied in place to a step's output: (C, N, H, W), or (N, C, ...) for the
    other ranks."""

    def __init__(self) -> None:
        self.bias: Any = None  # the layer whose params["bias"] is added first
        self.norm: Any = None  # a BatchNorm in eval mode
        self.act: Any = None  # the activation layer
        self.code, self.p0, self.p1 = 0, 0.0, 0.0
        self.exp32 = False  # SiLU or Sigmoid: float32 passes take ``affine_sigmoid32``

    @property
    def empty(self) -> bool:
        return self.bias is None and self.norm is None and self.act is None

    def takes(self, layer: Any) -> bool:
        """Take ``layer`` into this epilogue if it fits (a BatchNorm before any activation,
        then one activation); True if taken."""
        kind = type(layer)
        if kind in (BatchNorm2D, BatchNorm1D) and self.norm is None and self.act is None:
            self.norm = layer
            return True
        if self.act is None and (kind in _ACT_CODES or kind in _EXP_ACTS):
            self.act = layer
            if kind in _ACT_CODES:
                self.code, self.p0, self.p1 = _act_params(layer)
            self.exp32 = kind in (SiLU, Sigmoid) and EXP32
            return True
        return False

    def _affine(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        bias = self.bias.params["bias"] if self.bias is not None else None
        norm = self.norm
        if norm is None:
            return _empty(dtype), (bias if bias is not None else _empty(dtype))
        mean = norm.buffers["running_mean"].astype(np.float64)
        var = norm.buffers["running_var"].astype(np.float64)
        scale = 1 / np.sqrt(var + norm.eps)
        shift = -mean * scale
        if norm.affine:
            w = norm.params["weight"].astype(np.float64)
            scale, shift = scale * w, shift * w + norm.params["bias"]
        if bias is not None:
            shift = shift + bias * scale
        return scale.astype(dtype), shift.astype(dtype)

    def apply(self, y: np.ndarray, fast: Any) -> np.ndarray:
        """Apply to y (fresh memory this pass owns) in place; returns y."""
        if self.norm is None:  # the common case, without a call: the bias as the shift
            scale = _empty(y.dtype)
            shift = scale if self.bias is None else self.bias.params["bias"]
        else:
            scale, shift = self._affine(y.dtype)
        act = self.act
        # channels on axis 0 of a (C, N, H, W) array, on axis 1 of an (N, F) one
        y3 = y.reshape(1, y.shape[0], -1) if y.ndim == 4 else y.reshape(*y.shape[:2], -1)
        if self.exp32 and y.dtype == np.float32:  # SiLU / Sigmoid in the same pass
            fast.affine_sigmoid32(y3, scale, shift, type(act) is SiLU)
            return y
        if shift.size or scale.size or self.code:
            fast.affine_act(y3, scale, shift, self.code, self.p0, self.p1)
        if act is not None and not self.code:
            kind = type(act)
            if kind is SiLU:
                _silu(y)
            elif kind is Sigmoid:
                _sigmoid_(y)
            elif kind is Tanh:
                np.tanh(y, out=y)
            else:  # GELU: its compiled kernel, element by element
                flat = y.reshape(-1)
                (fast.gelu_tanh if act.approximate == "tanh" else fast.gelu)(flat, flat)
        return y


# --- layout: 4-D activations are kept as (C, N, H, W) -------------------------------------
def _physical(a: np.ndarray) -> np.ndarray:
    """A logical array as the plan keeps it: 4-D as (C, N, H, W), C-contiguous (for one
    image, NCHW memory itself: no copy); others as they are."""
    return np.ascontiguousarray(a.transpose(1, 0, 2, 3) if a.ndim == 4 else a)


def _logical(a: np.ndarray) -> np.ndarray:
    """The plan's array as the layers see it (a view): 4-D back to (N, C, H, W)."""
    return a.transpose(1, 0, 2, 3) if a.ndim == 4 else a


def _channels_axis(ndim: int) -> int:
    """The channel axis of a physical array: 0 for (C, N, H, W), else 1."""
    return 0 if ndim == 4 else 1


class PlanMismatch(ShapeError):
    """A step got another shape than the plan was made for (``Plan.forward`` then runs the
    pass layer by layer and drops the plan)."""


def _check_shape(x: np.ndarray, want: tuple[int, ...], layer: Any) -> None:
    """Refuse an input of another shape than the plan was made for: the compiled kernels
    index by the plan's shapes. It happens only when a layer's ``output_shape`` disagrees
    with what its ``forward`` returns (a custom layer)."""
    if x.shape != want or not x.flags.c_contiguous:
        c, n, *hw = want
        raise PlanMismatch(
            f"inference plan: {layer!r} was planned for input {(n, c, *hw)} but got "
            f"{(x.shape[1], x.shape[0], *x.shape[2:])}; a layer before it returns another "
            "shape than its output_shape says"
        )


# --- steps --------------------------------------------------------------------------------
class Step:
    """One step of a plan: ``run(x, fast)`` returns the output. ``fresh``: the output is
    new memory of this pass (so an epilogue may write to it); False for views of x."""

    fresh = True

    def __init__(self) -> None:
        self.epilogue = Epilogue()

    def run(self, x: np.ndarray, fast: Any) -> np.ndarray:
        y = self.compute(x, fast)
        if not self.epilogue.empty:
            self.epilogue.apply(y, fast)
        return y

    def compute(self, x: np.ndarray, fast: Any) -> np.ndarray:
        raise NotImplementedError


class ConvStep(Step):
    """Conv2D, (C, N, H, W) in, (O, N, OH, OW) out (module docstring: the three ways)."""

    def __init__(self, layer: Conv2D, shape: tuple[int, ...], out: tuple[int, ...]) -> None:
        super().__init__()
        self.layer = layer
        n, c = shape[:2]
        self.input = (c, n, *shape[2:])  # what compute checks x against
        o, oh, ow = out[1:]
        (pt, _), (pl, _) = layer.pad
        kh, kw = layer.kernel_size
        g = layer.groups
        self.shape = (o, n, oh, ow)
        self.args = (kh, kw, *layer.stride, *layer.dilation, pt, pl, oh, ow)
        if layer.use_bias:
            self.epilogue.bias = layer
        if g == c == o > 1 and layer.dilation == (1, 1):
            # small planes: channels innermost (runs of C, not of a few pixels)
            self.kind = "depthwise_hwc" if oh * ow <= DEPTHWISE_HWC_PIXELS else "depthwise"
            self.dw = (*layer.stride, pt, pl)
        elif (kh, kw) == (1, 1) and layer.stride == (1, 1) and layer.pad == ((0, 0), (0, 0)):
            self.kind = "1x1"
        else:
            self.kind = "im2col"
        self.groups = g
        self.k, self.m = c * kh * kw, oh * ow  # the im2col matrix: (K, images * M)
        self.chunk = max(1, MAX_COLS // (self.k * self.m))  # images per im2col matrix

    def compute(self, x: np.ndarray, fast: Any) -> np.ndarray:
        _check_shape(x, self.input, self.layer)  # the kernels trust it: no bounds checks
        la = self.layer
        w = la.params["weight"]
        o = self.shape[0]
        y = np.empty(self.shape, x.dtype)
        if self.kind == "depthwise":
            fast.depthwise_planes(x, w.reshape(o, *la.kernel_size), *self.dw, y)
        elif self.kind == "depthwise_hwc":
            fast.depthwise_hwc(x, w.reshape(o, *la.kernel_size), *self.dw, y)
        elif self.kind == "1x1":
            np.matmul(w.reshape(o, -1), x.reshape(x.shape[0], -1), out=y.reshape(o, -1))
        elif self.chunk >= x.shape[1]:
            self._gemm(x, w, y, fast)
        else:  # a few images at a time: the im2col matrix stays under MAX_COLS values
            for b0 in range(0, x.shape[1], self.chunk):
                part = np.ascontiguousarray(x[:, b0 : b0 + self.chunk])
                out = np.empty((o, *part.shape[1:2], *y.shape[2:]), x.dtype)
                self._gemm(part, w, out, fast)
                y[:, b0 : b0 + self.chunk] = out
        return y

    def _gemm(self, x: np.ndarray, w: np.ndarray, y: np.ndarray, fast: Any) -> None:
        """y = W @ im2col(x), x (C, n, H, W) and y (O, n, OH, OW) C-contiguous."""
        o = y.shape[0]
        cols = np.empty((self.k, x.shape[1] * self.m), x.dtype)
        fast.im2col_cn(x, *self.args, cols)
        g = self.groups
        if g == 1:
            np.matmul(w.reshape(o, -1), cols, out=y.reshape(o, -1))
        else:
            wg = w.reshape(g, o // g, -1)
            m = cols.shape[1]
            np.matmul(wg, cols.reshape(g, -1, m), out=y.reshape(g, o // g, m))


class MaxPoolStep(Step):
    """MaxPool2D on (C, N, H, W) (``_numba.maxpool_planes``: no padded copy, no copy of
    the windows)."""

    def __init__(self, layer: MaxPool2D, shape: tuple[int, ...], out: tuple[int, ...]) -> None:
        super().__init__()
        (pt, _), (pl, _) = layer.pad
        self.layer = layer
        self.args = (*layer.kernel_size, *layer.stride, *layer.dilation, pt, pl)
        self.input = (shape[1], shape[0], *shape[2:])
        n, c, oh, ow = out
        self.shape = (c, n, oh, ow)

    def compute(self, x: np.ndarray, fast: Any) -> np.ndarray:
        _check_shape(x, self.input, self.layer)
        y = np.empty(self.shape, x.dtype)
        fast.maxpool_planes(x, *self.args, y)
        return y


class DenseStep(Step):
    def __init__(self, layer: Dense) -> None:
        super().__init__()
        self.layer = layer
        if layer.use_bias:
            self.epilogue.bias = layer

    def compute(self, x: np.ndarray, fast: Any) -> np.ndarray:
        return np.matmul(x, self.layer.params["weight"].T)


class CopyStep(Step):
    """Only an epilogue, on a copy of x (a BatchNorm or activation no step before could
    take)."""

    def compute(self, x: np.ndarray, fast: Any) -> np.ndarray:
        return x.copy()


class MeanStep(Step):
    """GlobalAvgPool2D: the mean over H and W, (C, N, 1, 1)."""

    def compute(self, x: np.ndarray, fast: Any) -> np.ndarray:
        c, n = x.shape[:2]
        return x.reshape(c, n, -1).mean(axis=2).reshape(c, n, 1, 1)


class ReshapeStep(Step):
    """Flatten: x in the output shape (a view where the memory allows, e.g. one image)."""

    fresh = False

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def compute(self, x: np.ndarray, fast: Any) -> np.ndarray:
        return _physical(_logical(x).reshape(self.shape))


class LayerStep(Step):
    """Any other layer: its engine route (or itself) runs as in a plain pass, on the logical
    (N, C, H, W) view. Not ``fresh``: it could hand back x itself."""

    fresh = False

    def __init__(self, runner: Any) -> None:
        super().__init__()
        self.runner = runner

    def compute(self, x: np.ndarray, fast: Any) -> np.ndarray:
        return _physical(self.runner.forward(_logical(x)))


def _run(steps: list[Step], x: np.ndarray, fast: Any) -> np.ndarray:
    for step in steps:
        x = step.run(x, fast)
    return x


def _fresh(steps: list[Step]) -> bool:
    """Whether a chain's output is new memory: some step of it made new memory (the steps
    after it only view that)."""
    return any(step.fresh for step in steps)


class ResidualStep(Step):
    def __init__(self, body: list[Step], shortcut: list[Step] | None) -> None:
        super().__init__()
        self.body, self.shortcut = body, shortcut
        self.in_place = _fresh(body)  # add onto the body's own output

    def compute(self, x: np.ndarray, fast: Any) -> np.ndarray:
        y = _run(self.body, x, fast)
        s = x if self.shortcut is None else _run(self.shortcut, x, fast)
        if self.in_place:
            y += s
            return y
        return y + s


class ParallelStep(Step):
    def __init__(self, branches: list[list[Step]], merge: str, ndim: int) -> None:
        super().__init__()
        self.branches, self.merge = branches, merge
        self.axis = _channels_axis(ndim)

    def compute(self, x: np.ndarray, fast: Any) -> np.ndarray:
        outs = [_run(b, x, fast) for b in self.branches]
        if self.merge == "concat":
            return np.concatenate(outs, axis=self.axis)
        if len(outs) == 1:
            return outs[0].copy()
        y = outs[0] + outs[1]
        for o in outs[2:]:
            y += o
        return y


class GateStep(Step):
    def __init__(self, body: list[Step]) -> None:
        super().__init__()
        self.body = body

    def compute(self, x: np.ndarray, fast: Any) -> np.ndarray:
        return x * _run(self.body, x, fast)


class DenseConcatStep(Step):
    def __init__(self, body: list[Step], ndim: int) -> None:
        super().__init__()
        self.body = body
        self.axis = _channels_axis(ndim)

    def compute(self, x: np.ndarray, fast: Any) -> np.ndarray:
        return np.concatenate([x, _run(self.body, x, fast)], axis=self.axis)


# --- building -----------------------------------------------------------------------------
class _Builder:
    """Walks a model once: the steps, and what a call checks (every node, every list)."""

    def __init__(self, dtype: np.dtype, route_for: Callable[[Any], Any]) -> None:
        self.dtype = dtype
        self.route_for = route_for
        self.nodes: list[Any] = []  # every layer, block and nested Sequential
        self.lists: list[tuple[Any, str, Any]] = []  # (object, attribute, what it held)

    def watch(self, obj: Any, attr: str) -> Any:
        value = getattr(obj, attr)
        self.lists.append((obj, attr, list(value) if isinstance(value, list) else value))
        return value

    def chain(self, layers: list[Any], shape: tuple[int, ...]) -> tuple[list[Step], tuple]:
        steps: list[Step] = []
        for layer in layers:
            shape = self.layer(layer, shape, steps)
        return steps, shape

    def child(self, child: Any, shape: tuple[int, ...]) -> tuple[list[Step], tuple]:
        if child is None:
            return [], shape
        if hasattr(child, "layers"):  # a Sequential
            self.nodes.append(child)
            return self.chain(self.watch(child, "layers"), shape)
        return self.chain([child], shape)

    def layer(self, layer: Any, shape: tuple[int, ...], steps: list[Step]) -> tuple:
        """Append ``layer``'s step to ``steps`` (or fold it into the last one's epilogue);
        returns its output shape."""
        self.nodes.append(layer)
        kind = type(layer)
        for name, arr in getattr(layer, "params", {}).items():
            if arr.dtype != self.dtype:
                raise DTypeMismatch(f"{name} of {layer!r} is {arr.dtype}")
        if hasattr(layer, "layers"):  # a nested Sequential: its layers, spliced in
            return self.chain(self.watch(layer, "layers"), shape)
        if kind is Residual:
            body, out = self.child(self.watch(layer, "body"), shape)
            short, s_out = self.child(self.watch(layer, "shortcut"), shape)
            if out != s_out:
                raise Unsupported("Residual shapes")
            steps.append(ResidualStep(body, None if layer.shortcut is None else short))
            return out
        if kind is Parallel:
            parts = [self.child(b, shape) for b in self.watch(layer, "branches")]
            steps.append(ParallelStep([p[0] for p in parts], layer.merge, len(shape)))
            return tuple(layer._merge_shapes([p[1] for p in parts]))
        if kind is Gate:
            body, g = self.child(self.watch(layer, "body"), shape)
            layer._check_gate(g, shape)
            steps.append(GateStep(body))
            return shape
        if kind is DenseConcat:
            body, b = self.child(self.watch(layer, "body"), shape)
            steps.append(DenseConcatStep(body, len(shape)))
            return tuple(layer._merge_shapes([shape, b]))
        out = tuple(layer.output_shape(shape))
        last = steps[-1] if steps else None
        if last is not None and last.fresh and last.epilogue.takes(layer):
            return out  # folded into the step before
        if kind is Conv2D:
            steps.append(ConvStep(layer, shape, out))
        elif kind is Dense:
            steps.append(DenseStep(layer))
        elif kind in (BatchNorm2D, BatchNorm1D) or kind in _ACT_CODES or kind in _EXP_ACTS:
            step = CopyStep()
            step.epilogue.takes(layer)
            steps.append(step)
        elif kind is MaxPool2D:
            steps.append(MaxPoolStep(layer, shape, out))
        elif kind is GlobalAvgPool2D:
            steps.append(MeanStep())
        elif kind is Flatten:
            steps.append(ReshapeStep(out))
        elif kind is Dropout:  # eval mode: the identity
            pass
        else:
            route = self.route_for(layer)
            steps.append(LayerStep(layer if route is None else route))
        return out


class InferencePlan:
    """One model's eval-mode pass for one input shape and dtype (module docstring)."""

    def __init__(self, layers: list[Any], shape: tuple[int, ...], dtype: np.dtype,
                 route_for: Callable[[Any], Any], part: bool = False) -> None:  # fmt: skip
        if len(shape) < 2 or shape[0] == 0 or dtype not in (np.float32, np.float64):
            raise Unsupported("input")
        b = _Builder(np.dtype(dtype), route_for)
        self.steps, _ = b.chain(layers, tuple(shape))
        wide = any(type(la) is Conv2D and la.out_channels >= WIDE_CHANNELS for la in b.nodes)
        if shape[0] > ALWAYS_UP_TO and not wide:
            raise Unsupported("a large batch for a narrow model: layer by layer is faster")
        # a wide model's batch may be split over the BLAS's threads (not a part of one)
        self.splittable = SPLIT and wide and not part and shape[0] >= 2
        self._parts: dict[int, list[tuple[int, int, InferencePlan]]] = {}
        self._make = (layers, route_for)
        self.nodes = b.nodes
        self.dicts = [node.__dict__ for node in self.nodes]  # where hooks and modes live
        self.fresh = _fresh(self.steps)
        self.lists = b.lists
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        #: one parameter, whose dtype tells whether the model was cast since (``astype``)
        self.probe = next(
            ((la, name) for la in self.nodes for name in getattr(la, "params", {})), None
        )

    def current(self) -> bool:
        """Whether the model is still what the plan was made from: every list of layers and
        every block's children the same objects, the parameters of the same dtype."""
        for obj, attr, held in self.lists:
            value = getattr(obj, attr)
            if value is not held and value != held:
                return False
        if self.probe is not None:
            layer, name = self.probe
            arr = layer.params.get(name)
            if arr is None or arr.dtype != self.dtype:
                return False
        return True

    def usable(self) -> bool:
        """Whether this call may run the plan: every node in eval mode, none hooked."""
        for own in self.dicts:
            if own.get("training", False) or "forward" in own or "backward" in own:
                return False
        return True

    def run(self, x: np.ndarray, fast: Any) -> np.ndarray:
        if self.splittable:
            threads = current_blas_threads() or 1
            if threads > 1:
                return self._run_split(x, fast, min(threads, self.shape[0]))
        y = _logical(_run(self.steps, _physical(x), fast))
        return np.ascontiguousarray(y) if self.fresh else y.copy()

    def _run_split(self, x: np.ndarray, fast: Any, k: int) -> np.ndarray:
        """The batch as ``k`` parts side by side, one per BLAS thread, each part's GEMMs on
        one thread: the plan's own kernels (and NumPy's) release the GIL, so they run in
        parallel too, where one whole pass would leave them on one core. A part is an
        inference plan of its own (made once, kept); results are each image's, whatever
        the split (tested)."""
        parts = self._parts.get(k)
        if parts is None:
            layers, route_for = self._make
            n, rest = self.shape[0], self.shape[1:]
            bounds = [n * i // k for i in range(k + 1)]
            parts = self._parts[k] = [
                (a, b, InferencePlan(layers, (b - a, *rest), self.dtype, route_for, part=True))
                for a, b in itertools.pairwise(bounds)
            ]
        with blas_threads(1):
            pending = [_pool(k - 1).submit(p.run, x[a:b], fast) for a, b, p in parts[1:]]
            a, b, first = parts[0]
            outs = [first.run(x[a:b], fast)]
            outs += [f.result() for f in pending]
        return np.concatenate(outs, axis=0)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """The threads that run the parts of a split batch (made on first use, grown when a
    split needs more)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < workers:
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scratchcnn")
        return _POOL


def plan_for(cache: dict, layers: list[Any], x: Any,
             route_for: Callable[[Any], Any]) -> InferencePlan | None:  # fmt: skip
    """The inference plan for input ``x`` (made and kept in ``cache`` on first use), or None
    when this pass must run layer by layer (module docstring)."""
    if not isinstance(x, np.ndarray):
        return None
    key = (x.shape, x.dtype)
    if key in cache:
        p = cache[key]
        if p is None:  # this model cannot be planned for this input
            return None
        if not p.current():
            del cache[key]
    if key not in cache:
        if len(cache) >= MAX_SHAPES:
            cache.clear()
        try:
            p = InferencePlan(layers, x.shape, x.dtype, route_for)
        except DTypeMismatch:  # an error the layers will raise; the model may be cast later
            return None
        except Exception:  # e.g. a layer without output_shape: layer by layer from now on
            cache[key] = None
            return None
        cache[key] = p
    return p if p.usable() else None


def fast_kernels(dtype: np.dtype) -> Any:
    """The compiled kernels for ``dtype`` when inference plans may run (else None)."""
    return modes.for_dtype(dtype) if INFERENCE_PLAN and dtype is not None else None
