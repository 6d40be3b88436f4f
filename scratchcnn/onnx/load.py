"""Read an ONNX file into a Sequential: validate the file, walk the graph, build the layers.

The file is untrusted. Before anything is allocated for it:

* it is a regular file (read by ``read_regular_file``: non-blocking, checked with ``fstat``
  on the open descriptor, so a FIFO or ``/dev/zero`` is refused unread) of at most
  :data:`MAX_FILE_BYTES`, parses as an ONNX ModelProto, imports the default opset at version
  >= 13, holds at most :data:`MAX_NODES` nodes; weights stored in external data files beside
  it are read only from regular files inside its own folder, bounded by their size and
  checked against the declared shapes (``graph.ExternalData``);
* every tensor (initializer or Constant) holds exactly the bytes its dims declare (so the
  arrays together are never larger than the file), rank <= 8, a numeric type;
* every node input is a graph input, an initializer or the output of a node, every value is
  produced once, and the nodes form no cycle.

Then the graph is walked from its one input along the data flow. The values that depend on
the input ("activations") must form a chain of supported nodes, each with one activation
input; a fork whose branches meet again at an ``Add`` or ``Concat`` becomes a ``Residual`` or
``Parallel`` block (when scratchcnn has those layers). Values that do not depend on the input
(initializers, ``Constant`` nodes, and the ``Shape -> Gather -> Concat`` arithmetic that
``torch.onnx.export`` writes for ``x.view(x.size(0), -1)``) are evaluated here, with the batch
size kept symbolic; each computed constant is sized from its inputs' shapes and refused
before it is allocated beyond ``graph.MAX_FOLDED_ELEMENTS`` (one value) or
``graph.MAX_FOLDED_TOTAL`` (all of them). Each layer's output shape is checked against its
input as the walk goes (at most ``graph.MAX_INPUT_ELEMENTS`` values per image, kernels,
strides and paddings at most ``graph.MAX_WINDOW``: the checkpoint's own limits), and the
result against the graph's declared output. Every weight and every folded scale must be a
finite value of the model's type (float64 weights of 1e300 are not read into float32). Any
problem is one :class:`OnnxError` line naming the node, its op and the attribute or input at
fault.

The model comes back in eval mode (ONNX graphs describe inference). A
``BatchNormalization(training_mode=1)`` is not part of a scratchcnn model: ``model.train()``
/ ``model.eval()`` decide. A ``Dropout`` whose ``training_mode`` input is true drops units at
inference: it is refused in one line, never read as the identity.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint.files import read_regular_file
from ..checkpoint.schema import MAX_FLOAT, SchemaError, check_class_names
from ..errors import OnnxError
from ..nn.layers.sequential import Sequential
from ._deps import require_onnx
from .export import CLASSES_KEY, MIN_OPSET
from .graph import (
    MAX_FILE_BYTES,
    MAX_INPUT_ELEMENTS,
    MAX_NODES,
    ExternalData,
    Graph,
    Node,
    check_declared,
    read_tensor,
    topological,
    value_dims,
)
from .ops import Walker
from .patterns import rewrite_concats


# --- reading the file ------------------------------------------------------------------------
def _read(path: Path) -> bytes:
    """The file's bytes, through the one bounded reader: a regular file (a FIFO cannot block,
    ``/dev/zero`` or a folder is refused before a byte is read) of at most
    :data:`MAX_FILE_BYTES`, checked on the open descriptor."""
    data = read_regular_file(
        path,
        MAX_FILE_BYTES,
        "ONNX file",
        OnnxError,
        limit_hint=" (one protobuf message cannot exceed 2 GiB)",
    )
    if not data:
        raise OnnxError(f"{path}: empty file, not an ONNX model")
    return data


def _parse(onnx: Any, data: bytes) -> Any:
    from google.protobuf.message import DecodeError

    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise OnnxError(
            f"not an ONNX model, or a truncated one (protobuf cannot parse it: {exc})"
        ) from None
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise OnnxError("not an ONNX model (no graph or no IR version in the file)")
    return proto


def read_graph(onnx: Any, proto: Any, folder: Path | None = None) -> Graph:
    """Validate a ModelProto's structure and return the :class:`Graph`; tensors in external
    data files are read from ``folder`` (the model's own; None refuses them)."""
    opset = None
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            opset = int(entry.version)
    if opset is None:
        raise OnnxError("the model imports no version of the default ONNX operator set")
    if opset < MIN_OPSET:
        raise OnnxError(
            f"opset {opset} is older than {MIN_OPSET}, the oldest scratchcnn reads; convert it "
            f"with onnx.version_converter.convert_version(model, {MIN_OPSET})"
        )
    g = proto.graph
    if len(g.node) > MAX_NODES:
        raise OnnxError(
            f"the graph has {len(g.node):,} nodes; scratchcnn reads at most {MAX_NODES:,}"
        )
    if len(g.sparse_initializer):
        raise OnnxError("the graph has sparse initializers; not supported")
    consts: dict[str, np.ndarray] = {}
    external = ExternalData(folder)
    for t in g.initializer:
        if not t.name or t.name in consts:
            raise OnnxError(f"initializer {t.name!r} is unnamed or defined twice")
        consts[t.name] = read_tensor(onnx, t, f"initializer {t.name!r}", external)
    inputs = [vi for vi in g.input if vi.name not in consts]
    if len(inputs) != 1:
        names = ", ".join(repr(vi.name) for vi in inputs) or "none"
        raise OnnxError(
            f"the graph must have exactly one input (the images); it has {len(inputs)}: {names}"
        )
    if len(g.output) != 1:
        names = ", ".join(repr(vi.name) for vi in g.output)
        raise OnnxError(f"the graph must have exactly one output; it has {len(g.output)}: {names}")
    in_vi, out_vi = inputs[0], g.output[0]
    in_dims, in_elem = value_dims(onnx, in_vi, f"graph input {in_vi.name!r}")
    out_dims, _ = value_dims(onnx, out_vi, f"graph output {out_vi.name!r}")
    if in_elem not in (1, 11):
        name = (
            onnx.TensorProto.DataType.Name(in_elem)
            if in_elem in (onnx.TensorProto.DataType.values())
            else str(in_elem)
        )
        raise OnnxError(
            f"graph input {in_vi.name!r} has type {name}; scratchcnn models take float32 or float64"
        )
    if len(in_dims) < 2:
        raise OnnxError(
            f"graph input {in_vi.name!r} has shape {list(in_dims)}; scratchcnn models take a "
            "batch (N, ...) with at least 2 axes"
        )
    unknown = [d for d in in_dims[1:] if not isinstance(d, int)]
    if unknown or 0 in in_dims[1:]:
        raise OnnxError(
            f"graph input {in_vi.name!r} has shape {list(in_dims)}; every axis but the batch "
            "must have a fixed positive size"
        )
    if len(in_dims) > 4 or math.prod(in_dims[1:]) > MAX_INPUT_ELEMENTS:
        raise OnnxError(
            f"graph input {in_vi.name!r} has shape {list(in_dims)}: too large (a checkpoint "
            f"records inputs (N, C, H, W) or (N, features) of at most {MAX_INPUT_ELEMENTS:,} "
            "values per image)"
        )

    nodes: list[Node] = []
    producer: dict[str, Node] = {}
    for i, p in enumerate(g.node):
        node = Node(i, p, p.op_type, p.name, list(p.input), list(p.output))
        if p.domain not in ("", "ai.onnx"):
            raise node.unsupported(f"operator domain {p.domain!r}")
        for out in node.outputs:
            if not out:
                continue
            if out in producer or out in consts or out == in_vi.name:
                raise node.error(f"value {out!r} is defined twice")
            producer[out] = node
        nodes.append(node)
    known = set(producer) | set(consts) | {in_vi.name}
    for node in nodes:
        for v in node.inputs:
            if v and v not in known:
                raise node.error(f"input {v!r} is not defined anywhere in the graph")
    if out_vi.name not in known:
        raise OnnxError(f"graph output {out_vi.name!r} is not computed by any node")
    order = topological(nodes, producer)
    consumers: dict[str, list[Node]] = {}
    for node in order:
        for v in dict.fromkeys(node.inputs):
            if v:
                consumers.setdefault(v, []).append(node)
    metadata = {p.key: p.value for p in proto.metadata_props}
    graph = Graph(
        nodes=order,
        producer=producer,
        consumers=consumers,
        consts=consts,
        input_name=in_vi.name,
        input_shape=in_dims,
        output_name=out_vi.name,
        output_dims=out_dims,
        dtype=np.dtype(np.float32 if in_elem == 1 else np.float64),
        opset=opset,
        metadata=metadata,
        external=external,
    )
    for vi in g.value_info:
        if vi.type.WhichOneof("value") == "tensor_type":
            graph.declared[vi.name] = value_dims(onnx, vi, f"value {vi.name!r}")[0]
    graph.kind[in_vi.name] = "act"
    for name in consts:
        graph.kind[name] = "const"
    for node in order:
        kinds = {graph.kind[v] for v in node.inputs if v}
        kind = "act" if "act" in kinds else "shape" if "shape" in kinds else "const"
        if node.op == "Shape":
            kind = "shape" if kind != "const" else "const"
        for out in node.outputs:
            if out:
                graph.kind[out] = kind
    return graph


# --- building the model ------------------------------------------------------------------------
def load(path: str | os.PathLike) -> Sequential:
    """Read an ONNX file into a :class:`~scratchcnn.Sequential` (in eval mode).

    Supported: graphs written by ``torch.onnx.export`` (both exporters, opset 13 and later,
    the weights inside the file or in external data files beside it) and hand-built graphs
    whose nodes form a chain (or residual, parallel, gate and dense-concat blocks) of Conv,
    MaxPool, AveragePool, GlobalAveragePool, Gemm, MatMul (+ Add), Flatten, Reshape to
    (N, -1), BatchNormalization, LayerNormalization, Dropout, Identity, Relu, LeakyRelu,
    Sigmoid, Tanh, Clip, HardSigmoid, HardSwish, Gelu, Softmax, LogSoftmax, Mul/Add/Sub/Div
    by a scalar or per-channel constant, channel Split/Slice, channel shuffle, and
    channels-last Transpose; see ``docs/onnx.md``. Anything else raises one
    :class:`~scratchcnn.OnnxError` line naming the node, its op and the attribute.
    """
    return load_with_graph(path)[0]


def load_with_graph(path: str | os.PathLike) -> tuple[Sequential, Graph]:
    """:func:`load`, also returning the validated :class:`Graph` (opset, metadata)."""
    path = Path(path)
    onnx = require_onnx()
    data = _read(path)
    try:
        return model_from_proto(onnx, _parse(onnx, data), folder=path.parent)
    except OnnxError as exc:
        raise OnnxError(f"{path}: {exc}") from None
    except RecursionError:
        raise OnnxError(f"{path}: the graph is nested too deeply") from None


def model_from_proto(onnx: Any, proto: Any, folder: Path | None = None) -> tuple[Sequential, Graph]:
    """Build the Sequential of a parsed ModelProto; also returns the validated graph.
    ``folder`` is where its external data files are (the model's own folder), if any."""

    graph = read_graph(onnx, proto, folder)
    rewrite_concats(onnx, graph)
    layers, out_shape = Walker(onnx, graph).run()
    check_declared(graph.output_dims, out_shape, f"graph output {graph.output_name!r}")
    model = Sequential(layers, input_shape=tuple(graph.input_shape[1:]))
    _check_representable(model, graph.dtype)
    model.eval()
    return model, graph


def _numbers(value: Any) -> list[float]:
    """The floats in a layer config value (a number, or a list of them)."""
    if isinstance(value, float):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _numbers(item)]
    return []


def _check_representable(model: Sequential, dtype: np.dtype) -> None:
    """Every number a layer computes with must be a finite value of the model's type: two
    ``Mul`` by 1e30 merge into one Rescale(1e60), which a float32 model holds as inf (every
    output inf or NaN). Refused in one line naming the layer, never written to a file."""
    top = min(float(np.finfo(dtype).max), MAX_FLOAT)
    for prefix, layer in model.named_layers():
        for key, value in layer.config().items():
            for v in _numbers(value):
                if not (math.isfinite(v) and abs(v) <= top):
                    raise OnnxError(
                        f"layer {prefix} ({type(layer).__name__}) would have {key}={v:.3g}, "
                        f"beyond the range of the model's {dtype.name} (at most "
                        f"{top:.3g}); the constants it was folded from multiply to that"
                    )
        for name, arr in {**layer.params, **layer.buffers}.items():
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise OnnxError(f"layer {prefix} ({type(layer).__name__}): {name} holds inf or NaN")


#: Longest ``scratchcnn.classes`` metadata value decoded (JSON text).
MAX_CLASSES_TEXT = 4 * 2**20


def classes_from(graph_or_meta: Graph | dict[str, str]) -> list[str] | None:
    """Class names stored by :func:`scratchcnn.onnx.export` (metadata ``scratchcnn.classes``,
    a JSON list of strings), or None when the file has none. Names a checkpoint could not
    hold (not a flat list of strings, JSON nested deeper than the decoder goes, names longer
    than ``schema.MAX_CLASS_NAME``) are one :class:`OnnxError` line, never a RecursionError;
    the text is bounded (:data:`MAX_CLASSES_TEXT`) before it is decoded."""
    meta = graph_or_meta.metadata if isinstance(graph_or_meta, Graph) else graph_or_meta
    text = meta.get(CLASSES_KEY)
    if text is None:
        return None
    where = f"metadata {CLASSES_KEY}"
    hint = " (name the classes with --classes instead)"
    if len(text) > MAX_CLASSES_TEXT:
        raise OnnxError(
            f"{where} is {len(text):,} characters, more than {MAX_CLASSES_TEXT:,}{hint}"
        )
    try:
        classes = json.loads(text)
    except RecursionError:  # [[[[...]]]] 100,000 deep
        raise OnnxError(f"{where} is JSON nested too deeply to read{hint}") from None
    except ValueError as exc:
        reason = " ".join(str(exc).split())[:120]
        raise OnnxError(f"{where} is not valid JSON ({reason}){hint}") from None
    try:
        check_class_names(where, classes)
    except SchemaError as exc:
        raise OnnxError(f"{exc}{hint}") from None
    return classes
