"""The parsed form of an ONNX graph and the checks on its tensors, shared by the reader
(``load``) and the converters of its nodes (``ops``)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from ..checkpoint import schema
from ..checkpoint.files import read_regular_file
from ..errors import OnnxError

#: Files larger than this are refused (one protobuf message cannot exceed 2 GiB anyway).
MAX_FILE_BYTES = 2**31 - 1
#: Graphs with more nodes than this are refused.
MAX_NODES = 10_000
#: Largest tensor rank accepted in a file.
MAX_RANK = 8
#: Largest number of elements a folded constant (Gather, Concat ...) may have; computed
#: results are sized from their inputs' shapes and refused BEFORE they are allocated.
MAX_FOLDED_ELEMENTS = 1 << 20
#: Largest number of elements all the computed constants of one graph may have together
#: (at 8 bytes a value, 128 MiB): many nodes each under the cap above cannot add up to more.
MAX_FOLDED_TOTAL = 1 << 24
#: Largest number of values per image the input, and every layer's output, may have: the
#: checkpoint's own limit (``schema.MAX_INPUT_ELEMENTS``), so what is read can be saved.
MAX_INPUT_ELEMENTS = schema.MAX_INPUT_ELEMENTS
#: Largest kernel size, stride, dilation or padding: the checkpoint's own limit.
MAX_WINDOW = schema.MAX_WINDOW

#: Largest external data file read (weights stored beside the graph); the whole file is read
#: once, so this bounds the memory an import takes for it.
MAX_EXTERNAL_BYTES = 16 * 2**30
#: The keys of a tensor's external_data entries that ONNX defines.
EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum", "basepath"})

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
    # Where tensors stored beside the graph are read from (Constant nodes use it too).
    external: ExternalData | None = None


FLOAT_TYPES = {1: np.float32, 11: np.float64, 10: np.float16}
INT_TYPES = {7: np.int64, 6: np.int32, 9: np.bool_, 3: np.int8, 2: np.uint8}


class ExternalData:
    """Tensors stored beside the graph (``torch.onnx.export``'s default writes ``m.onnx.data``
    next to ``m.onnx``), read safely:

    * ``location`` is a relative path inside the model's own folder: not absolute, no
      ``..``, no backslash or NUL, and after resolving symlinks still inside that folder;
    * the file is a regular file (no FIFO, device or folder: ``read_regular_file``, opened
      non-blocking and checked with fstat) of at most :data:`MAX_EXTERNAL_BYTES`, read once;
    * ``offset`` and ``length`` are non-negative integers, ``length`` (when given) is exactly
      the bytes the tensor's dims and type declare, and the range lies inside the file.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.files: dict[Path, bytes] = {}

    def _file(self, location: str, what: str) -> tuple[Path, bytes]:
        if self.folder is None:
            raise OnnxError(
                f"{what} is stored in an external data file ({location!r}); read the model "
                "with load(path) so that the file beside it can be found"
            )
        pure = PurePosixPath(location)
        if (
            not location
            or "\\" in location
            or "\0" in location
            or pure.is_absolute()
            or PureWindowsPath(location).drive
            or ".." in pure.parts
        ):
            raise OnnxError(
                f"{what}: external data location {location!r} must be a relative path inside "
                "the model's folder (no '..', no absolute path)"
            )
        base = self.folder.resolve()
        path = (base / pure).resolve()
        if not path.is_relative_to(base):
            raise OnnxError(
                f"{what}: external data location {location!r} leads out of the model's folder "
                f"(to {path})"
            )
        if path not in self.files:
            self.files[path] = read_regular_file(
                path, MAX_EXTERNAL_BYTES, "external data file", OnnxError
            )
        return path, self.files[path]

    def read(self, t: Any, nbytes: int, what: str) -> bytes:
        """The ``nbytes`` bytes of tensor ``t`` from its external data file."""
        entries: dict[str, str] = {}
        for e in t.external_data:
            if e.key not in EXTERNAL_KEYS or e.key in entries:
                raise OnnxError(f"{what}: external data key {e.key!r} is unknown or repeated")
            entries[e.key] = e.value
        numbers = {}
        for key in ("offset", "length"):
            text = entries.get(key)
            if text is not None and not (text.isascii() and text.isdigit() and len(text) < 20):
                raise OnnxError(f"{what}: external data {key}={text!r} is not a byte count")
            numbers[key] = None if text is None else int(text)
        path, data = self._file(entries.get("location", ""), what)
        offset, length = numbers["offset"] or 0, numbers["length"]
        if length is not None and length != nbytes:
            raise OnnxError(
                f"{what}: external data length {length:,} is not the {nbytes:,} bytes its dims "
                "and type declare"
            )
        if offset + nbytes > len(data):
            raise OnnxError(
                f"{what}: external data bytes {offset:,} to {offset + nbytes:,} lie beyond the "
                f"end of {path.name} ({len(data):,} bytes)"
            )
        return data[offset : offset + nbytes]


def read_tensor(onnx: Any, t: Any, what: str, external: ExternalData | None = None) -> np.ndarray:
    """An initializer or Constant value as an array, after checking that the file (or the
    external data file, see :class:`ExternalData`) holds exactly the bytes its dims declare
    (nothing is allocated from the dims alone)."""
    is_external = t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data)
    if is_external and external is None:
        external = ExternalData(None)
    if t.segment.begin or t.segment.end:
        raise OnnxError(f"{what} is a segment of a tensor; not supported")
    np_type = FLOAT_TYPES.get(t.data_type) or INT_TYPES.get(t.data_type)
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
    if is_external:
        if t.data_location != onnx.TensorProto.EXTERNAL or t.raw_data:
            raise OnnxError(f"{what} has external data entries but is not marked external")
        assert external is not None
        raw = external.read(t, count * itemsize, what)
        arr = np.frombuffer(raw, dtype=np.dtype(np_type).newbyteorder("<"), count=count)
        arr = arr.astype(np.float32 if np_type == np.float16 else np_type)  # a copy
        return arr.reshape(dims)
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


def value_dims(onnx: Any, value_info: Any, what: str) -> tuple[tuple[Any, ...], int]:
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


def constant_node(onnx: Any, node: Node, external: ExternalData | None = None) -> np.ndarray:
    """The value of a Constant node."""
    attrs = node.proto.attribute
    if len(attrs) != 1:
        raise node.unsupported("it must have exactly one value attribute")
    a = attrs[0]
    if a.name == "value":
        return read_tensor(onnx, a.t, f"{node.where()} value", external)
    if a.name == "value_float":
        return np.array(a.f, dtype=np.float32)
    if a.name == "value_floats":
        return np.array(list(a.floats), dtype=np.float32)
    if a.name == "value_int":
        return np.array(a.i, dtype=np.int64)
    if a.name == "value_ints":
        return np.array(list(a.ints), dtype=np.int64)
    raise node.unsupported(f"attribute {a.name}")


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


def topological(nodes: list[Node], producer: dict[str, Node]) -> list[Node]:
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
