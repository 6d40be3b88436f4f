"""Export a Sequential to an ONNX file.

One ONNX node (or a short fixed pattern) per layer, in forward order:

==================  ===========================================================
Conv2D              Conv (pads, strides, dilations, group)
MaxPool2D           MaxPool (pads, strides, ceil_mode, dilations)
AvgPool2D           AveragePool (pads, strides, ceil_mode, count_include_pad)
GlobalAvgPool2D     GlobalAveragePool
Dense               Gemm (transB=1), like torch.nn.Linear
ReLU / LeakyReLU    Relu / LeakyRelu (alpha)
Sigmoid / Tanh      Sigmoid / Tanh
Softmax             Softmax (axis)
LogSoftmax          LogSoftmax (axis)
Flatten             Flatten (axis=1), or Reshape to (N, d1, ..., -1) for start_dim > 1
BatchNorm2D         BatchNormalization with the running statistics (inference)
Dropout             nothing: inference graphs drop it
Rescale             Mul (scale) then Add (offset), each left out when it does nothing
Normalize           Sub (mean) then Div (std), by (C, 1, 1) constants
Residual            the body and shortcut, then Add
Parallel            the branches, then Concat (axis 1) or Sum
Gate                the body, then Mul(x, body(x))
DenseConcat         the body, then Concat(x, body(x)) on axis 1
Clip / ReLU6        Clip (bounds as inputs)
Hardsigmoid         HardSigmoid (alpha, beta)
Hardswish           HardSwish (opset >= 14; x * HardSigmoid(x) at 13)
SiLU                Sigmoid, Mul
GELU                Gelu (opset >= 20); before: Div, Erf, Add, Mul, Mul (exact form only)
LayerNorm2D         Transpose, LayerNormalization (axis -1), Transpose (opset >= 17)
ChannelScale        Mul by a (C, 1, 1) constant
ChannelSlice        Slice on axis 1
ChannelShuffle      Reshape (N, g, C/g, -1), Transpose, Reshape to Shape(x)
==================  ===========================================================

The graph input is named ``input`` with a symbolic batch axis ``N``, the output ``output``;
initializers carry the ``state_dict`` keys (``"0.weight"``); tensors have the model's dtype.
The model is validated with ``onnx.checker.check_model(full_check=True)`` before the file is
written (atomically).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import atomic_write_bytes
from ..errors import ConfigError, OnnxError
from ..nn.layers.sequential import Sequential
from ._deps import require_onnx

#: The opset written by default: supported by every onnxruntime since 1.12.
DEFAULT_OPSET = 17
#: The oldest opset scratchcnn writes or reads.
MIN_OPSET = 13
#: The key under which ``export(..., classes=...)`` stores the class names (JSON list).
CLASSES_KEY = "scratchcnn.classes"
_PROTOBUF_LIMIT = 2**31 - 1


class _Builder:
    """Collects nodes and initializers; hands out unique value names."""

    def __init__(self, onnx: Any, dtype: np.dtype, opset: int = DEFAULT_OPSET) -> None:
        self.onnx = onnx
        self.dtype = dtype
        self.opset = opset
        self.shape: tuple[int, ...] = ()  # the input shape of the layer being emitted
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = {"input"}

    def const(self, name: str, value: Any, dtype: Any = None) -> str:
        arr = np.asarray(value, dtype=dtype or self.dtype)
        name = self._unique(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def need(self, opset: int, what: str) -> None:
        if self.opset < opset:
            raise OnnxError(f"export: {what} needs opset {opset} or newer (asked for {self.opset})")

    def node(self, op: str, prefix: str, inputs: list[str], **attrs: Any) -> str:
        name = self._unique(f"/{prefix}/{op}")
        out = self._unique(f"{name}_output_0")
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def _unique(self, name: str) -> str:
        base, n = name, 1
        while name in self._names:
            name, n = f"{base}_{n}", n + 1
        self._names.add(name)
        return name


def _pads(pad: Any) -> list[int]:
    """((top, bottom), (left, right)) -> ONNX's [top, left, bottom, right]."""
    (t, b), (l, r) = pad
    return [int(t), int(l), int(b), int(r)]


def _pair(value: Any) -> list[int]:
    if isinstance(value, (int, np.integer)):
        return [int(value), int(value)]
    return [int(v) for v in value]


def _emit_conv(b: _Builder, layer: Any, key: str, x: str) -> str:
    inputs = [x, b.const(f"{key}.weight", layer.params["weight"])]
    if "bias" in layer.params:
        inputs.append(b.const(f"{key}.bias", layer.params["bias"]))
    return b.node(
        "Conv",
        key,
        inputs,
        kernel_shape=_pair(layer.kernel_size),
        strides=_pair(layer.stride),
        pads=_pads(layer.pad),
        dilations=_pair(getattr(layer, "dilation", 1)),
        group=int(getattr(layer, "groups", 1)),
    )


def _emit_pool(b: _Builder, layer: Any, key: str, x: str) -> str:
    attrs: dict[str, Any] = {
        "kernel_shape": _pair(layer.kernel_size),
        "strides": _pair(layer.stride),
        "pads": _pads(layer.pad),
        "ceil_mode": int(bool(getattr(layer, "ceil_mode", False))),
    }
    if type(layer).__name__ == "MaxPool2D":
        dilation = _pair(getattr(layer, "dilation", 1))
        if dilation != [1, 1]:
            attrs["dilations"] = dilation
        return b.node("MaxPool", key, [x], **attrs)
    attrs["count_include_pad"] = int(bool(getattr(layer, "count_include_pad", True)))
    return b.node("AveragePool", key, [x], **attrs)


def _emit_dense(b: _Builder, layer: Any, key: str, x: str) -> str:
    inputs = [x, b.const(f"{key}.weight", layer.params["weight"])]
    if "bias" in layer.params:
        inputs.append(b.const(f"{key}.bias", layer.params["bias"]))
    return b.node("Gemm", key, inputs, transB=1)


def _emit_batchnorm(b: _Builder, layer: Any, key: str, x: str) -> str:
    c = layer.num_features
    scale = layer.params.get("weight", np.ones(c))
    shift = layer.params.get("bias", np.zeros(c))
    inputs = [
        x,
        b.const(f"{key}.weight", scale),
        b.const(f"{key}.bias", shift),
        b.const(f"{key}.running_mean", layer.buffers["running_mean"]),
        b.const(f"{key}.running_var", layer.buffers["running_var"]),
    ]
    return b.node(
        "BatchNormalization",
        key,
        inputs,
        epsilon=float(layer.eps),
        momentum=float(1.0 - layer.momentum),  # ONNX keeps (1 - torch's momentum)
    )


def _emit_flatten(b: _Builder, layer: Any, key: str, x: str) -> str:
    start = int(getattr(layer, "start_dim", 1))
    if start == 1:
        return b.node("Flatten", key, [x], axis=1)
    # torch.flatten(x, start_dim) keeps the leading axes; ONNX Flatten would merge them.
    shape = b.const(f"{key}.shape", [0] * start + [-1], dtype=np.int64)
    return b.node("Reshape", key, [x, shape])


def _emit_rescale(b: _Builder, layer: Any, key: str, x: str) -> str:
    if layer.scale != 1.0:
        x = b.node("Mul", key, [x, b.const(f"{key}.scale", layer.scale)])
    if layer.offset != 0.0:
        x = b.node("Add", key, [x, b.const(f"{key}.offset", layer.offset)])
    return x


def _emit_normalize(b: _Builder, layer: Any, key: str, x: str) -> str:
    shape = (-1, *(1,) * (len(b.shape) - 2))
    x = b.node("Sub", key, [x, b.const(f"{key}.mean", np.reshape(layer.mean, shape))])
    return b.node("Div", key, [x, b.const(f"{key}.std", np.reshape(layer.std, shape))])


def _emit_branch(b: _Builder, child: Any, key: str, x: str) -> str:
    """A block's child, fed the block's input (whose shape ``b.shape`` holds)."""
    shape = b.shape
    out = _emit_all(b, _children(child, key), x)
    b.shape = shape
    return out


def _emit_residual(b: _Builder, layer: Any, key: str, x: str) -> str:
    body = _emit_branch(b, layer.body, f"{key}.body", x)
    shortcut = x
    if getattr(layer, "shortcut", None) is not None:
        shortcut = _emit_branch(b, layer.shortcut, f"{key}.shortcut", x)
    return b.node("Add", key, [body, shortcut])


def _emit_gate(b: _Builder, layer: Any, key: str, x: str) -> str:
    return b.node("Mul", key, [x, _emit_branch(b, layer.body, f"{key}.body", x)])


def _emit_dense_concat(b: _Builder, layer: Any, key: str, x: str) -> str:
    body = _emit_branch(b, layer.body, f"{key}.body", x)
    return b.node("Concat", key, [x, body], axis=1)


def _emit_clip(b: _Builder, layer: Any, key: str, x: str) -> str:
    low = "" if layer.min_value is None else b.const(f"{key}.min", layer.min_value)
    high = "" if layer.max_value is None else b.const(f"{key}.max", layer.max_value)
    inputs = [x, low, high] if high else ([x, low] if low else [x])
    return b.node("Clip", key, inputs)


def _emit_hardswish(b: _Builder, layer: Any, key: str, x: str) -> str:
    if b.opset >= 14:
        return b.node("HardSwish", key, [x])
    gate = b.node("HardSigmoid", key, [x], alpha=1 / 6, beta=0.5)  # opset 13: x * hardsigmoid
    return b.node("Mul", key, [x, gate])


def _emit_silu(b: _Builder, layer: Any, key: str, x: str) -> str:
    return b.node("Mul", key, [x, b.node("Sigmoid", key, [x])])


def _emit_gelu(b: _Builder, layer: Any, key: str, x: str) -> str:
    if b.opset >= 20:
        return b.node("Gelu", key, [x], approximate=layer.approximate)
    if layer.approximate != "none":
        b.need(20, "GELU(approximate='tanh')")
    # x * (1 + erf(x / sqrt 2)) / 2, as torch's exporters write it before opset 20
    t = b.node("Div", key, [x, b.const(f"{key}.sqrt2", np.sqrt(2.0))])
    t = b.node("Erf", key, [t])
    t = b.node("Add", key, [t, b.const(f"{key}.one", 1.0)])
    t = b.node("Mul", key, [x, t])
    return b.node("Mul", key, [t, b.const(f"{key}.half", 0.5)])


def _emit_layer_norm(b: _Builder, layer: Any, key: str, x: str) -> str:
    b.need(17, "LayerNorm2D (LayerNormalization)")
    c = layer.num_features
    scale = b.const(f"{key}.weight", layer.params.get("weight", np.ones(c)))
    inputs = [scale, b.const(f"{key}.bias", layer.params.get("bias", np.zeros(c)))]
    if len(b.shape) == 2:
        return b.node("LayerNormalization", key, [x, *inputs], axis=-1, epsilon=float(layer.eps))
    t = b.node("Transpose", key, [x], perm=[0, 2, 3, 1])
    t = b.node("LayerNormalization", key, [t, *inputs], axis=-1, epsilon=float(layer.eps))
    return b.node("Transpose", key, [t], perm=[0, 3, 1, 2])


def _emit_channel_scale(b: _Builder, layer: Any, key: str, x: str) -> str:
    w = layer.params["weight"].reshape(-1, *(1,) * (len(b.shape) - 2))
    return b.node("Mul", key, [x, b.const(f"{key}.weight", w)])


def _emit_channel_slice(b: _Builder, layer: Any, key: str, x: str) -> str:
    def ints(name: str, v: int) -> str:
        return b.const(f"{key}.{name}", [v], dtype=np.int64)

    inputs = [x, ints("start", layer.start), ints("stop", layer.stop), ints("axes", 1)]
    return b.node("Slice", key, inputs)


def _emit_channel_shuffle(b: _Builder, layer: Any, key: str, x: str) -> str:
    g, c = layer.groups, b.shape[1]
    split = b.const(f"{key}.shape", [0, g, c // g, -1], dtype=np.int64)
    t = b.node("Reshape", key, [x, split])
    t = b.node("Transpose", key, [t], perm=[0, 2, 1, 3])
    return b.node("Reshape", key, [t, b.node("Shape", key, [x])])


def _emit_parallel(b: _Builder, layer: Any, key: str, x: str) -> str:
    outs = [
        _emit_branch(b, branch, f"{key}.branches.{i}", x) for i, branch in enumerate(layer.branches)
    ]
    if layer.merge == "concat":
        return b.node("Concat", key, outs, axis=1)
    # Sum (n-ary) rather than Add, so that import tells it from a Residual's Add.
    return b.node("Sum", key, outs)


def _simple(op: str, **attrs: Any) -> Any:
    return lambda b, layer, key, x: b.node(op, key, [x], **attrs)


_EMITTERS: dict[str, Any] = {
    "Conv2D": _emit_conv,
    "MaxPool2D": _emit_pool,
    "AvgPool2D": _emit_pool,
    "GlobalAvgPool2D": _simple("GlobalAveragePool"),
    "Dense": _emit_dense,
    "ReLU": _simple("Relu"),
    "LeakyReLU": lambda b, la, k, x: b.node("LeakyRelu", k, [x], alpha=float(la.negative_slope)),
    "Sigmoid": _simple("Sigmoid"),
    "Tanh": _simple("Tanh"),
    "Softmax": lambda b, la, k, x: b.node("Softmax", k, [x], axis=int(la.axis)),
    "LogSoftmax": lambda b, la, k, x: b.node("LogSoftmax", k, [x], axis=int(la.axis)),
    "Flatten": _emit_flatten,
    "BatchNorm2D": _emit_batchnorm,
    "BatchNorm1D": _emit_batchnorm,
    "Dropout": lambda b, layer, key, x: x,
    "Rescale": _emit_rescale,
    "Normalize": _emit_normalize,
    "Residual": _emit_residual,
    "Parallel": _emit_parallel,
    "Gate": _emit_gate,
    "DenseConcat": _emit_dense_concat,
    "Clip": _emit_clip,
    "ReLU6": _emit_clip,
    "Hardsigmoid": lambda b, la, k, x: b.node(
        "HardSigmoid", k, [x], alpha=float(la.alpha), beta=float(la.beta)
    ),
    "Hardswish": _emit_hardswish,
    "SiLU": _emit_silu,
    "GELU": _emit_gelu,
    "LayerNorm2D": _emit_layer_norm,
    "ChannelScale": _emit_channel_scale,
    "ChannelSlice": _emit_channel_slice,
    "ChannelShuffle": _emit_channel_shuffle,
}


def _children(container: Any, prefix: str) -> list[tuple[str, Any]]:
    """(key, layer) for the layers of a block's body/branch (a Sequential, list or layer)."""
    layers = getattr(container, "layers", None)
    if layers is None:
        layers = container if isinstance(container, (list, tuple)) else [container]
        if len(layers) == 1 and layers[0] is container:
            return [(prefix, container)]
    return [(f"{prefix}.{i}", layer) for i, layer in enumerate(layers)]


def _emit_all(b: _Builder, layers: Iterable[tuple[str, Any]], x: str) -> str:
    """The nodes of ``layers`` in order, from value ``x`` whose shape ``b.shape`` holds."""
    for key, layer in layers:
        kind = type(layer).__name__
        emit = _EMITTERS.get(kind)
        if emit is None:
            raise OnnxError(
                f"export: layer {key} ({kind}) has no ONNX equivalent; exportable layers: "
                f"{', '.join(sorted(_EMITTERS))}"
            )
        shape = b.shape
        x = emit(b, layer, key, x)
        b.shape = tuple(layer.output_shape(shape))
    return x


def _value_info(onnx: Any, name: str, elem: int, shape: tuple[int, ...]) -> Any:
    return onnx.helper.make_tensor_value_info(name, elem, ["N", *(int(d) for d in shape[1:])])


def to_model_proto(
    model: Sequential,
    opset: int = DEFAULT_OPSET,
    input_shape: tuple[int, ...] | None = None,
    classes: list[str] | None = None,
) -> Any:
    """The ONNX ModelProto of ``model`` (what :func:`export` writes), checked by the ONNX
    checker."""
    onnx = require_onnx()
    if not isinstance(model, Sequential):
        raise OnnxError(f"export expects a Sequential model, got {type(model).__name__}")
    newest = int(onnx.defs.onnx_opset_version())
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise ConfigError(f"export: opset must be an int, got {opset!r}")
    if not MIN_OPSET <= opset <= newest:
        raise ConfigError(
            f"export: opset {opset} is not supported; choose {MIN_OPSET} to {newest} "
            f"(default {DEFAULT_OPSET})"
        )
    shape_in = tuple(input_shape or model.input_shape or ())
    if not shape_in:
        raise ConfigError(
            "export: the model does not record its input shape; pass input_shape=(C, H, W)"
        )
    dtype = model.dtype
    elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    out_shape = model.output_shapes(shape_in)[-1] if len(model) else (1, *shape_in)
    b = _Builder(onnx, dtype, int(opset))
    b.shape = (1, *shape_in)
    out = _emit_all(b, ((str(i), layer) for i, layer in enumerate(model.layers)), "input")
    # The graph output is always a node's output named "output": rename the last value.
    if out == "input":
        b.nodes.append(onnx.helper.make_node("Identity", ["input"], ["output"], name="/Identity"))
    else:
        for node in b.nodes:
            node.input[:] = ["output" if v == out else v for v in node.input]
            node.output[:] = ["output" if v == out else v for v in node.output]
    graph = onnx.helper.make_graph(
        b.nodes,
        "scratchcnn",
        [_value_info(onnx, "input", elem, (1, *shape_in))],
        [_value_info(onnx, "output", elem, out_shape)],
        initializer=b.initializers,
    )
    opsets = [onnx.helper.make_opsetid("", int(opset))]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="scratchcnn")
    # The oldest IR version that can hold this opset, so older runtimes load the file too.
    proto.ir_version = onnx.helper.find_min_ir_version_for(opsets)
    from .._version import __version__

    proto.producer_version = __version__
    if classes is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = CLASSES_KEY, json.dumps([str(c) for c in classes])
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise OnnxError(
            f"export: the model is {proto.ByteSize():,} bytes, over the 2 GiB that one ONNX "
            "(protobuf) file can hold"
        )
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export(
    model: Sequential,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    *,
    input_shape: tuple[int, ...] | None = None,
    classes: list[str] | None = None,
) -> Path:
    """Write ``model`` to ``path`` as an ONNX file (atomically); returns the path.

    The graph computes the model in inference mode (BatchNorm's running statistics, no
    Dropout) for inputs of shape (N, *input_shape), N free; ``input_shape`` defaults to the
    model's own. ``classes`` (names of the outputs) are stored in the file's metadata
    under ``"scratchcnn.classes"``, where :func:`scratchcnn.onnx.load` finds them again.
    """
    proto = to_model_proto(model, opset, input_shape, classes)
    data = proto.SerializeToString()
    atomic_write_bytes(path, lambda fh: fh.write(data))
    return Path(path)
