"""Read an ONNX file into a Sequential: validate the file, walk the graph, build the layers.

The file is untrusted. Before anything is allocated for it:

* it is at most :data:`MAX_FILE_BYTES`, parses as an ONNX ModelProto, imports the default
  opset at version >= 13, holds at most :data:`MAX_NODES` nodes and no external data files;
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
size kept symbolic. Each layer's output shape is checked against its input as the walk goes,
and the result against the graph's declared output. Any problem is one :class:`OnnxError`
line naming the node, its op and the attribute or input at fault.

The model comes back in eval mode (ONNX graphs describe inference). Training flags in the
graph (``BatchNormalization(training_mode=1)``, ``Dropout``'s ``training_mode`` input) are not
part of a scratchcnn model: ``model.train()`` / ``model.eval()`` decide.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OnnxError
from ..model import Sequential
from ._deps import require_onnx
from .export import CLASSES_KEY, MIN_OPSET

#: Files larger than this are refused (one protobuf message cannot exceed 2 GiB anyway).
MAX_FILE_BYTES = 2**31 - 1
#: Graphs with more nodes than this are refused.
MAX_NODES = 10_000
#: Largest tensor rank accepted in a file.
MAX_RANK = 8
#: Largest number of elements a folded constant (Gather, Concat ...) may have.
MAX_FOLDED_ELEMENTS = 1 << 20
#: Largest number of values per image the input may declare.
MAX_INPUT_ELEMENTS = 1 << 31

#: A symbolic batch size inside folded shape arithmetic (never a real dimension).
BATCH = np.iinfo(np.int64).min + 7


@dataclass
class Node:
    """One ONNX node, with what the error messages need."""

    index: int
    proto: Any
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    swapped: bool = False  # inputs exchanged by the walk (c + x read as x + c)

    def where(self) -> str:
        label = f'node "{self.name}"' if self.name else f"node #{self.index}"
        return f"{label} ({self.op})"

    def unsupported(self, detail: str = "") -> OnnxError:
        return OnnxError(f"{self.where()} is not supported" + (f" ({detail})" if detail else ""))

    def error(self, detail: str) -> OnnxError:
        return OnnxError(f"{self.where()}: {detail}")


@dataclass
class Graph:
    """A validated graph: the nodes in topological order and what each value is."""

    nodes: list[Node]
    producer: dict[str, Node]
    consumers: dict[str, list[Node]]
    consts: dict[str, np.ndarray]
    input_name: str
    input_shape: tuple[Any, ...]  # dims; the batch axis may be a string (symbolic)
    output_name: str
    output_dims: tuple[Any, ...]
    dtype: np.dtype
    opset: int
    metadata: dict[str, str] = field(default_factory=dict)
    # Shapes the file declares for intermediate values (value_info), checked by the walk.
    declared: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # Per value: "act" (depends on the input), "shape" (derived from an activation's shape)
    # or "const".
    kind: dict[str, str] = field(default_factory=dict)


# --- reading the file ------------------------------------------------------------------------
def _read(path: Path) -> bytes:
    try:
        if not path.exists():
            raise OnnxError(f"{path}: no such ONNX file")
        if path.is_dir():
            raise OnnxError(f"{path}: is a directory, not an ONNX file")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise OnnxError(f"{path}: {size:,} bytes is larger than an ONNX file can be (2 GiB)")
        data = path.read_bytes()
    except OSError as exc:
        raise OnnxError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
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


_FLOAT_TYPES = {1: np.float32, 11: np.float64, 10: np.float16}
_INT_TYPES = {7: np.int64, 6: np.int32, 9: np.bool_, 3: np.int8, 2: np.uint8}


def _tensor(onnx: Any, t: Any, what: str) -> np.ndarray:
    """An initializer or Constant value as an array, after checking that the file holds
    exactly the bytes its dims declare (nothing is allocated from the dims alone)."""
    if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
        raise OnnxError(
            f"{what} is stored in an external data file; scratchcnn reads single-file "
            "models only (save with onnx.save(..., save_as_external_data=False))"
        )
    if t.segment.begin or t.segment.end:
        raise OnnxError(f"{what} is a segment of a tensor; not supported")
    np_type = _FLOAT_TYPES.get(t.data_type) or _INT_TYPES.get(t.data_type)
    if np_type is None:
        name = (
            onnx.TensorProto.DataType.Name(t.data_type)
            if t.data_type in (onnx.TensorProto.DataType.values())
            else str(t.data_type)
        )
        raise OnnxError(f"{what} has data type {name}; scratchcnn reads float and int tensors")
    dims = [int(d) for d in t.dims]
    if len(dims) > MAX_RANK or any(d < 0 for d in dims):
        raise OnnxError(f"{what} has bad dims {dims}")
    count = math.prod(dims)
    itemsize = np.dtype(np_type).itemsize
    if t.HasField("raw_data") or t.raw_data:
        held, need = len(t.raw_data), count * itemsize
        unit = "bytes"
    else:
        fields = {
            1: t.float_data,
            11: t.double_data,
            7: t.int64_data,
            6: t.int32_data,
            10: t.int32_data,
            9: t.int32_data,
            3: t.int32_data,
            2: t.int32_data,
        }
        held, need, unit = len(fields[t.data_type]), count, "values"
    if held != need:
        raise OnnxError(f"{what} declares dims {dims} ({need:,} {unit}) but holds {held:,} {unit}")
    try:
        arr = onnx.numpy_helper.to_array(t)
    except (ValueError, TypeError) as exc:
        raise OnnxError(f"{what} cannot be read: {exc}") from exc
    arr = np.asarray(arr)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return arr.reshape(dims)


def _dims(onnx: Any, value_info: Any, what: str) -> tuple[tuple[Any, ...], int]:
    """(dims, elem_type) of a graph input/output; unknown dims are strings."""
    t = value_info.type
    if t.WhichOneof("value") != "tensor_type":
        raise OnnxError(f"{what} is not a tensor")
    tt = t.tensor_type
    if not tt.HasField("shape"):
        return (), tt.elem_type
    dims: list[Any] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            if d.dim_value < 0:
                raise OnnxError(f"{what} has a negative dimension {d.dim_value}")
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    if len(dims) > MAX_RANK:
        raise OnnxError(f"{what} has rank {len(dims)} (at most {MAX_RANK})")
    return tuple(dims), tt.elem_type


def _constant_node(onnx: Any, node: Node) -> np.ndarray:
    """The value of a Constant node."""
    attrs = node.proto.attribute
    if len(attrs) != 1:
        raise node.unsupported("it must have exactly one value attribute")
    a = attrs[0]
    if a.name == "value":
        return _tensor(onnx, a.t, f"{node.where()} value")
    if a.name == "value_float":
        return np.array(a.f, dtype=np.float32)
    if a.name == "value_floats":
        return np.array(list(a.floats), dtype=np.float32)
    if a.name == "value_int":
        return np.array(a.i, dtype=np.int64)
    if a.name == "value_ints":
        return np.array(list(a.ints), dtype=np.int64)
    raise node.unsupported(f"attribute {a.name}")


def read_graph(onnx: Any, proto: Any) -> Graph:
    """Validate a ModelProto's structure and return the :class:`Graph`."""
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
    for t in g.initializer:
        if not t.name or t.name in consts:
            raise OnnxError(f"initializer {t.name!r} is unnamed or defined twice")
        consts[t.name] = _tensor(onnx, t, f"initializer {t.name!r}")
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
    in_dims, in_elem = _dims(onnx, in_vi, f"graph input {in_vi.name!r}")
    out_dims, _ = _dims(onnx, out_vi, f"graph output {out_vi.name!r}")
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
    if math.prod(in_dims[1:]) > MAX_INPUT_ELEMENTS:
        raise OnnxError(f"graph input {in_vi.name!r} has shape {list(in_dims)}: too large")

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
    order = _topological(nodes, producer)
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
    )
    for vi in g.value_info:
        if vi.type.WhichOneof("value") == "tensor_type":
            graph.declared[vi.name] = _dims(onnx, vi, f"value {vi.name!r}")[0]
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


def _topological(nodes: list[Node], producer: dict[str, Node]) -> list[Node]:
    """Kahn's algorithm; a cycle is an error naming one node on it."""
    deps: dict[int, set[int]] = {}
    users: dict[int, list[Node]] = {n.index: [] for n in nodes}
    for node in nodes:
        deps[node.index] = {producer[v].index for v in node.inputs if v in producer}
        for d in deps[node.index]:
            users[d].append(node)
    ready = deque(n for n in nodes if not deps[n.index])
    order: list[Node] = []
    while ready:
        node = ready.popleft()
        order.append(node)
        for user in users[node.index]:
            deps[user.index].discard(node.index)
            if not deps[user.index]:
                ready.append(user)
    if len(order) != len(nodes):
        stuck = next(n for n in nodes if deps[n.index])
        raise stuck.error("the graph has a cycle through this node")
    return order


# --- building the model ------------------------------------------------------------------------
def load(path: str | os.PathLike) -> Sequential:
    """Read an ONNX file into a :class:`~scratchcnn.Sequential` (in eval mode).

    Supported: graphs written by ``torch.onnx.export`` (both exporters, opset 13 and later)
    and hand-built graphs whose nodes form a chain (or residual/parallel blocks) of Conv,
    MaxPool, AveragePool, GlobalAveragePool, Gemm, MatMul (+ Add), Flatten, Reshape to
    (N, -1), BatchNormalization, Dropout, Identity, Relu, LeakyRelu, Sigmoid, Tanh,
    Softmax, LogSoftmax, and Mul/Add/Sub/Div by a scalar; see ``docs/onnx.md``. Anything
    else raises one :class:`~scratchcnn.OnnxError` line naming the node, its op and the
    attribute.
    """
    return load_with_graph(path)[0]


def load_with_graph(path: str | os.PathLike) -> tuple[Sequential, Graph]:
    """:func:`load`, also returning the validated :class:`Graph` (opset, metadata)."""
    path = Path(path)
    onnx = require_onnx()
    data = _read(path)
    try:
        return model_from_proto(onnx, _parse(onnx, data))
    except OnnxError as exc:
        raise OnnxError(f"{path}: {exc}") from None
    except RecursionError:
        raise OnnxError(f"{path}: the graph is nested too deeply") from None


def model_from_proto(onnx: Any, proto: Any) -> tuple[Sequential, Graph]:
    """Build the Sequential of a parsed ModelProto; also returns the validated graph."""
    from .ops import Walker

    graph = read_graph(onnx, proto)
    layers, out_shape = Walker(onnx, graph).run()
    check_declared(graph.output_dims, out_shape, f"graph output {graph.output_name!r}")
    model = Sequential(layers, input_shape=tuple(graph.input_shape[1:]))
    model.eval()
    return model, graph


def check_declared(declared: tuple[Any, ...], shape: tuple[int, ...], what: str) -> None:
    """The shape a file declares for a value must be the one the layers compute (symbolic
    or unknown dims match anything; the batch axis is not compared)."""
    if declared and (
        len(declared) != len(shape)
        or any(isinstance(d, int) and d != s for d, s in zip(declared[1:], shape[1:], strict=True))
    ):
        raise OnnxError(
            f"{what} is declared {list(declared)} but the nodes compute "
            f"(N, {', '.join(str(d) for d in shape[1:])})"
        )


def classes_from(graph_or_meta: Graph | dict[str, str]) -> list[str] | None:
    """Class names stored by :func:`scratchcnn.onnx.export`, if any and well formed."""
    meta = graph_or_meta.metadata if isinstance(graph_or_meta, Graph) else graph_or_meta
    try:
        classes = json.loads(meta.get(CLASSES_KEY, "null"))
    except ValueError:
        return None
    if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
        return classes
    return None
