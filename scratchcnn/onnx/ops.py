"""The ops table of the ONNX import: one function per supported operator, and the walk.

Each converter takes the node and the shape of its activation input (batch axis first) and
returns the layers it becomes (none for Identity). Constants it needs (weights, Reshape's
shape, Dropout's ratio) come from :meth:`Walker.const`, which folds initializers, Constant
nodes and shape arithmetic. Attributes are read through :meth:`Walker.attrs`, which refuses
any attribute the converter does not understand, so nothing in a node is silently ignored.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import OnnxError, ScratchCNNError
from ..nn.layers import (
    GELU,
    AvgPool2D,
    BatchNorm2D,
    ChannelScale,
    ChannelShuffle,
    ChannelSlice,
    Clip,
    Conv2D,
    Dense,
    DenseConcat,
    Dropout,
    Flatten,
    Gate,
    Hardsigmoid,
    Hardswish,
    LayerNorm2D,
    LeakyReLU,
    LogSoftmax,
    MaxPool2D,
    Normalize,
    ReLU,
    Rescale,
    Sigmoid,
    Softmax,
    Tanh,
)
from ..nn.layers.base import LAYER_TYPES, Layer
from ..nn.layers.sequential import Sequential
from .graph import (
    BATCH,
    FLOAT_TYPES,
    INT_TYPES,
    MAX_FOLDED_ELEMENTS,
    MAX_FOLDED_TOTAL,
    MAX_INPUT_ELEMENTS,
    MAX_WINDOW,
    Graph,
    Node,
    check_declared,
    constant_node,
)
from .patterns import _Erf, fuse

Shape = tuple[int, ...]
Converter = Callable[["Walker", Node, Shape], list[Layer]]

_INT_ATTR, _FLOAT_ATTR, _STRING_ATTR, _INTS_ATTR, _FLOATS_ATTR = 2, 1, 3, 7, 6


def _accepts(cls: type, name: str) -> bool:
    """True if ``cls(...)`` takes keyword ``name`` (layer options added in later versions)."""
    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


class Walker:
    """Walks a validated :class:`Graph` from its input and converts nodes to layers."""

    def __init__(self, onnx: Any, graph: Graph) -> None:
        self.onnx = onnx
        self.g = graph
        self.values: dict[str, np.ndarray] = dict(graph.consts)
        self.shapes: dict[str, Shape] = {graph.input_name: (1, *graph.input_shape[1:])}
        self.visited: set[int] = set()
        # Activations the graph holds channels-last, (N, H, W, C): after a Transpose with
        # perm [0, 2, 3, 1] (ConvNeXt). Their shapes here are NCHW, as the layers see them.
        self.nhwc: set[str] = set()
        self._out_nhwc: bool | None = None
        # A batch size to fold shapes with, instead of the symbolic one (_fold_concrete).
        self._concrete_batch: int | None = None
        # The fixed batch size of the graph input, if it declares one.
        b = graph.input_shape[0]
        self.fixed_batch = b if isinstance(b, int) and b > 0 else None
        # Elements of every constant computed so far (MAX_FOLDED_TOTAL bounds the sum).
        self.folded_total = 0

    # --- attributes and constants ---------------------------------------------------------
    def attrs(self, node: Node, spec: dict[str, tuple[int, Any]]) -> dict[str, Any]:
        """Attribute values by name; ``spec`` maps name -> (ONNX attribute type, default).
        An attribute not in ``spec``, or of another type, is refused."""
        out = {name: default for name, (_, default) in spec.items()}
        for a in node.proto.attribute:
            if a.name not in spec:
                raise node.unsupported(f"attribute {a.name}")
            want = spec[a.name][0]
            if a.type != want:
                raise node.error(f"attribute {a.name} has the wrong type")
            if want == _INT_ATTR:
                out[a.name] = int(a.i)
            elif want == _FLOAT_ATTR:
                if not math.isfinite(a.f):
                    raise node.error(f"attribute {a.name}={a.f} is not a finite number")
                # The shortest decimal that is this float32 (1e-05, not 9.99999974e-06).
                out[a.name] = float(str(np.float32(a.f)))
            elif want == _STRING_ATTR:
                out[a.name] = a.s.decode("utf-8", "replace")
            elif want == _INTS_ATTR:
                if len(a.ints) > 16:
                    raise node.error(f"attribute {a.name} has {len(a.ints)} values")
                out[a.name] = [int(v) for v in a.ints]
            elif want == _FLOATS_ATTR:
                if len(a.floats) > 16 or not all(math.isfinite(v) for v in a.floats):
                    raise node.error(f"attribute {a.name} must be at most 16 finite numbers")
                out[a.name] = [float(v) for v in a.floats]
        return out

    def const(self, node: Node, position: int, what: str) -> np.ndarray | None:
        """The constant value of input ``position`` of ``node`` (None if absent)."""
        if position >= len(node.inputs) or not node.inputs[position]:
            return None
        name = node.inputs[position]
        if self.g.kind.get(name) == "act":
            raise node.unsupported(f"input {what} must be a constant, not computed from the input")
        return self._fold(name, node)

    def _fold(self, name: str, user: Node) -> np.ndarray:
        """Evaluate a constant or shape value, without recursion (a long chain of Identity
        nodes cannot exhaust the stack), each node once."""
        stack = [name]
        while stack:
            v = stack[-1]
            if v in self.values:
                stack.pop()
                continue
            node = self.g.producer[v]
            if node.op == "Shape":
                pending = []
            else:
                pending = [i for i in node.inputs if i and i not in self.values]
                if any(self.g.kind.get(i) == "act" for i in pending):
                    raise node.unsupported(
                        "it mixes the input with constants in a way scratchcnn cannot fold"
                    )
            if pending:
                stack.extend(pending)
                continue
            results = self._fold_node(node)
            for out, val in zip(node.outputs, results, strict=False):
                if out:
                    if val.size > MAX_FOLDED_ELEMENTS:
                        raise node.error(f"folds to {val.size:,} values; too many")
                    self.values[out] = val
            stack.pop()
        return self.values[name]

    def _room(self, node: Node, count: int) -> None:
        """Reserve ``count`` elements for a result about to be computed: refused, before
        anything is allocated, above MAX_FOLDED_ELEMENTS for one value or MAX_FOLDED_TOTAL
        for all the computed constants of the graph together."""
        if count > MAX_FOLDED_ELEMENTS:
            raise node.error(
                f"folds to {count:,} values; too many (at most {MAX_FOLDED_ELEMENTS:,} in one "
                "constant)"
            )
        if self.folded_total + count > MAX_FOLDED_TOTAL:
            raise node.error(
                f"folds to {count:,} more values, beyond the {MAX_FOLDED_TOTAL:,} that the "
                "constants computed in one graph may hold together"
            )
        self.folded_total += count

    def _fold_node(self, node: Node) -> list[np.ndarray]:
        op = node.op
        ins = [self.values.get(i) if i else None for i in node.inputs]
        try:
            if op == "Constant":
                return [constant_node(self.onnx, node, self.g.external)]
            if op == "Identity":
                self.attrs(node, {})
                return [ins[0]]
            if op == "Shape":
                a = self.attrs(node, {"start": (_INT_ATTR, 0), "end": (_INT_ATTR, None)})
                src = node.inputs[0]
                if src in self.shapes:
                    n = BATCH if self._concrete_batch is None else self._concrete_batch
                    dims = np.array((n, *self.shapes[src][1:]), dtype=np.int64)
                elif src in self.values:
                    dims = np.array(self.values[src].shape, dtype=np.int64)
                else:
                    raise node.unsupported(f"Shape of {src!r}, which is not on the main path")
                return [dims[a["start"] : a["end"]]]
            if op == "Cast":
                a = self.attrs(node, {"to": (_INT_ATTR, 1), "saturate": (_INT_ATTR, 1)})

                to = FLOAT_TYPES.get(a["to"]) or INT_TYPES.get(a["to"])
                if to is None or (np.any(ins[0] == BATCH) and to != np.int64):
                    raise node.unsupported(f"attribute to={a['to']}")
                _check_cast(node, ins[0], np.dtype(to))
                self._room(node, ins[0].size)
                with np.errstate(all="ignore"):  # checked above: nothing overflows
                    return [ins[0].astype(to)]
            if op == "Gather":
                axis = self.attrs(node, {"axis": (_INT_ATTR, 0)})["axis"]
                data, idx = ins[0], ins[1]
                if idx is None or idx.dtype.kind not in "iu":
                    raise node.error("indices must be integers")
                axis = _axis(node, axis, data.ndim, "axis")
                size = idx.size * (data.size // max(data.shape[axis], 1))
                if size > MAX_FOLDED_ELEMENTS:
                    raise node.error(f"gathers {size:,} values; too many")
                if idx.size and (idx.min() < -data.shape[axis] or idx.max() >= data.shape[axis]):
                    raise node.error("index out of range")
                self._room(node, size)
                return [np.take(data, idx, axis=axis)]
            if op in ("Unsqueeze", "Squeeze"):
                self.attrs(node, {})
                data, axes = ins[0], ins[1] if len(ins) > 1 else None
                if op == "Unsqueeze":
                    if axes is None:
                        raise node.error("needs axes")
                    rank = data.ndim + axes.size
                    axes_n = sorted(_axis(node, int(a), rank, "axes") for a in axes.ravel())
                    return [np.expand_dims(data, tuple(axes_n))]
                if axes is None:
                    return [np.squeeze(data)]
                axes_n = tuple(_axis(node, int(a), data.ndim, "axes") for a in axes.ravel())
                if any(data.shape[a] != 1 for a in axes_n):
                    raise node.error("squeezes an axis whose size is not 1")
                return [np.squeeze(data, axes_n)]
            if op == "Concat":
                axis = self.attrs(node, {"axis": (_INT_ATTR, 0)})["axis"]
                parts = [p for p in ins if p is not None]
                if not parts:
                    raise node.error("no inputs")
                axis = _axis(node, axis, parts[0].ndim, "axis")
                if any(p.ndim != parts[0].ndim for p in parts):
                    raise node.error("its inputs have different ranks")
                self._room(node, sum(p.size for p in parts))  # before np.concatenate
                return [np.concatenate(parts, axis=axis)]
            if op == "Range":
                self.attrs(node, {})
                start, limit, delta = (np.asarray(v).reshape(()) for v in ins[:3])
                if BATCH in (start, limit, delta) or delta == 0:
                    raise node.unsupported("a range over the batch size, which is not fixed")
                bounds = [v.item() for v in (start, limit, delta)]  # exact Python numbers
                if not all(math.isfinite(v) for v in bounds):
                    raise node.error("start, limit and delta must be finite numbers")
                first, stop, step = bounds
                count = max(math.ceil((stop - first) / step), 0)
                if all(isinstance(v, int) for v in bounds):
                    count = max(-((first - stop) // step), 0)  # exact for 64-bit integers
                self._room(node, count)
                return [np.arange(first, stop, step).astype(np.result_type(start, limit))]
            if op in ("Add", "Sub", "Mul", "Div"):
                self.attrs(node, {})
                a, b = ins[0], ins[1]
                if np.any(a == BATCH) or np.any(b == BATCH):
                    raise node.unsupported("arithmetic on the batch size, which is not fixed")
                if op == "Div" and a.dtype.kind in "iu":
                    if np.any(b == 0):
                        raise node.error("integer division by zero")
                    self._room(node, math.prod(np.broadcast_shapes(a.shape, b.shape)))
                    q = np.abs(a) // np.abs(b)  # ONNX: integer division truncates
                    return [(np.sign(a) * np.sign(b) * q).astype(np.result_type(a, b))]
                fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
                self._room(node, math.prod(np.broadcast_shapes(a.shape, b.shape)))
                with np.errstate(all="ignore"):
                    return [fn[op](a, b).astype(np.result_type(a, b))]
            if op == "Slice":
                self.attrs(node, {})
                data, starts, ends = ins[0], ins[1], ins[2]
                axes = ins[3] if len(ins) > 3 and ins[3] is not None else np.arange(starts.size)
                steps = ins[4] if len(ins) > 4 and ins[4] is not None else np.ones(starts.size, int)
                index = [slice(None)] * data.ndim
                for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
                    if st == 0:
                        raise node.error("a step of 0")
                    index[_axis(node, int(ax), data.ndim, "axes")] = slice(int(s), int(e), int(st))
                return [data[tuple(index)]]
        except OnnxError:
            raise
        except (ValueError, IndexError, TypeError, AttributeError, OverflowError) as exc:
            raise node.error(f"cannot evaluate it ({exc})") from None
        raise node.unsupported()

    # --- the walk ---------------------------------------------------------------------------
    def _users(self, value: str) -> list[Node]:
        return [n for n in self.g.consumers.get(value, []) if n.op != "Shape"]

    def _is_join(self, node: Node) -> bool:
        acts = [v for v in node.inputs if v and self.g.kind.get(v) == "act"]
        return len(acts) > 1

    def run(self) -> tuple[list[Layer], Shape]:
        layers, end, join = self.chain(self.g.input_name)
        if join is not None:
            raise join.unsupported(
                "it adds or joins values that do not branch from one point; scratchcnn reads "
                "chains and residual/parallel blocks"
            )
        if end != self.g.output_name:
            raise OnnxError(
                f"the graph output {self.g.output_name!r} is not at the end of the chain that "
                f"starts at the input (the chain ends at {end!r})"
            )
        for node in self.g.nodes:
            outs = [o for o in node.outputs if o]
            if outs and self.g.kind.get(outs[0]) == "act" and node.index not in self.visited:
                raise node.unsupported(
                    "its output does not lie on the path from the input to the output"
                )
        if end in self.nhwc:
            raise OnnxError(f"the graph output {end!r} is channels-last; scratchcnn ends in NCHW")
        layers = tidy(layers)
        for _, layer in Sequential(layers).named_layers():
            if isinstance(layer, _Erf):
                raise layer.node.unsupported("Erf is read only inside GELU's formula")
        return layers, self.shapes[end]

    def chain(self, value: str) -> tuple[list[Layer], str, Node | None]:
        """Layers from ``value`` until the graph output, or until a node that joins
        several activations (returned, for the caller's fork to handle)."""
        layers: list[Layer] = []
        while True:
            users = self._users(value)
            if value == self.g.output_name:
                if users:
                    raise users[0].unsupported(
                        f"it reads the graph output {value!r}; scratchcnn models have one output"
                    )
                return layers, value, None
            if not users:
                return layers, value, None
            if len(users) == 1 and users[0].op != "Split":
                node = users[0]
                if self._is_join(node):
                    return layers, value, node
                new, value = self.step(node, value)
                layers.extend(new)
                continue
            block, value = self.fork(value, users)
            layers.extend(block)

    def step(self, node: Node, x: str) -> tuple[list[Layer], str]:
        """Convert one single-activation node; returns its layers and its output value."""
        if node.index in self.visited:
            raise node.error("reached twice")
        self.visited.add(node.index)
        acts = [i for i, v in enumerate(node.inputs) if v and self.g.kind.get(v) == "act"]
        if acts == [1] and node.op in ("Add", "Mul", "Sub", "Min", "Max") and len(node.inputs) == 2:
            # c + x and c * x are x + c and x * c (min, max too); c - x is marked for
            # _elementwise.
            node = _swapped(node)
            acts = [0]
        if acts != [0]:
            raise node.unsupported("the activation must be its first input")
        convert = OPS.get(node.op)
        if convert is None:
            raise node.unsupported()
        if x in self.nhwc and node.op not in CHANNELS_LAST_OPS:
            raise node.unsupported(
                "on channels-last data (after Transpose perm=[0, 2, 3, 1]) scratchcnn reads "
                f"only {', '.join(sorted(CHANNELS_LAST_OPS))}"
            )
        shape = self.shapes[x]
        self._out_nhwc = None
        try:
            shuffle = None
            if node.op == "Reshape":
                shuffle = self._channel_shuffle(node, x) or self._flat_gather(node, x)
            if shuffle is not None:
                layers, node = shuffle
            else:
                layers = convert(self, node, shape)
            for layer in layers:
                shape = tuple(layer.output_shape(shape))
                _check_per_image(node, shape)
        except OnnxError:
            raise
        except ScratchCNNError as exc:
            raise node.error(str(exc)) from None
        except (ValueError, IndexError, TypeError, OverflowError, ZeroDivisionError) as exc:
            # an input or attribute of a form no check above foresaw: still one line
            raise node.error(f"cannot read it ({' '.join(str(exc).split())})") from None
        out = node.outputs[0]
        nhwc = (x in self.nhwc) if self._out_nhwc is None else self._out_nhwc
        if nhwc:
            self.nhwc.add(out)
        extra = [
            o
            for o in node.outputs[1:]
            if o and (self.g.consumers.get(o) or o == self.g.output_name)
        ]
        if extra:
            raise node.unsupported(
                f"its output {extra[0]!r} is used; scratchcnn keeps only the first"
            )
        if out in self.g.declared:
            check_declared(
                self.g.declared[out], _physical(shape, nhwc), f"{node.where()}: output {out!r}"
            )
        self.shapes[out] = shape
        return layers, out

    def _channel_shuffle(self, node: Node, x: str) -> tuple[list[Layer], Node] | None:
        """Reshape (N, C, H, W) -> (N, g, C/g, H, W) (or (N, g, C/g, H*W)), Transpose of axes
        1 and 2, Reshape back to (N, C, H, W): ShuffleNet's channel shuffle, three nodes read
        as one ChannelShuffle(g). None when ``node`` does not start that pattern."""
        shape = self.shapes[x]
        if len(shape) != 4 or x in self.nhwc:
            return None
        first = _resolved_target(self, node, shape)
        if first is None or len(first) not in (4, 5) or first[0] != "N":
            return None
        g, per, rest = first[1], first[2], first[3:]
        if g * per != shape[1] or math.prod(rest) != shape[2] * shape[3]:
            return None
        nxt = self._users(node.outputs[0])
        if len(nxt) != 1 or nxt[0].op != "Transpose":
            return None
        perm = self.attrs(nxt[0], {"perm": (_INTS_ATTR, None)})["perm"]
        if perm != [0, 2, 1, *range(3, len(first))]:
            return None
        last = self._users(nxt[0].outputs[0])
        if len(last) != 1 or last[0].op != "Reshape":
            return None
        moved = (shape[0], per, g, *rest)
        back = _resolved_target(self, last[0], moved)
        if back != ["N", *shape[1:]]:
            return None
        for n in (nxt[0], last[0]):
            if n.index in self.visited:
                raise n.error("reached twice")
            self.visited.add(n.index)
        return [ChannelShuffle(g)], last[0]

    def _fold_concrete(self, name: str, user: Node, batch: int) -> np.ndarray:
        """The value of ``name`` with the batch size fixed to ``batch`` (not cached)."""
        saved, self.values = self.values, dict(self.g.consts)
        self._concrete_batch = batch
        try:
            return self._fold(name, user)
        finally:
            self.values, self._concrete_batch = saved, None

    def _flat_gather(self, node: Node, x: str) -> tuple[list[Layer], Node] | None:
        """Reshape to [-1] then Gather(axis 0) of every element in order: the dynamo
        exporter's ``as_strided`` that changes nothing (ConvNeXt's classifier). Read as
        nothing, after the indices are checked to be the identity at two batch sizes."""
        shape = self.shapes[x]
        try:
            target = self.const(node, 1, "shape")
        except OnnxError:
            return None
        users = self._users(node.outputs[0])
        if target is None or [int(v) for v in np.asarray(target).ravel()] != [-1]:
            return None
        if len(users) != 1 or users[0].op != "Gather" or users[0].inputs[:1] != node.outputs[:1]:
            return None
        gather = users[0]
        if self.attrs(gather, {"axis": (_INT_ATTR, 0)})["axis"] != 0 or x in self.nhwc:
            return None
        per_image = math.prod(shape[1:])
        for batch in (2, 3):
            try:
                idx = self._fold_concrete(gather.inputs[1], gather, batch)
            except OnnxError:
                return None
            if idx.shape != (batch, *shape[1:]) or not np.array_equal(
                idx.ravel(), np.arange(batch * per_image)
            ):
                return None
        for n in (node, gather):
            self.visited.add(n.index)
        return [], gather

    def _split(self, node: Node, x: str) -> list[tuple[list[Layer], str]]:
        """A Split on the channel axis: a branch per used output, each starting with the
        ChannelSlice of its channels."""
        if node.index in self.visited:
            raise node.error("reached twice")
        self.visited.add(node.index)
        shape = self.shapes[x]
        a = self.attrs(node, {"axis": (_INT_ATTR, 0), "num_outputs": (_INT_ATTR, None),
                              "split": (_INTS_ATTR, None)})  # fmt: skip
        if x in self.nhwc or _axis(node, a["axis"], len(shape), "axis") != 1:
            raise node.unsupported(f"attribute axis={a['axis']}: only the channel axis 1")
        sizes = self.const(node, 1, "split")
        c, n = shape[1], len(node.outputs)
        if sizes is not None:
            sizes_l = [int(v) for v in np.asarray(sizes).ravel()]
        elif a["split"] is not None:
            sizes_l = list(a["split"])
        else:
            step = -(-c // n)
            sizes_l = [min(step, c - i * step) for i in range(n)]
        if len(sizes_l) != n or sum(sizes_l) != c or min(sizes_l) < 1:
            raise node.error(f"split {sizes_l} does not cut {c} channels into {n} parts")
        out: list[tuple[list[Layer], str]] = []
        start = 0
        for size, value in zip(sizes_l, node.outputs, strict=True):
            sub = (shape[0], size, *shape[2:])
            if value and (self._users(value) or value == self.g.output_name):
                if value in self.g.declared:
                    check_declared(self.g.declared[value], sub, f"{node.where()}: {value!r}")
                self.shapes[value] = sub
                out.append(([ChannelSlice(start, start + size)], value))
            start += size
        return out

    def fork(self, value: str, users: list[Node]) -> tuple[list[Layer], str]:
        """Branches that leave ``value`` (the outputs of a Split count as branches) and meet
        again at one Add/Sum/Concat/Mul node."""
        ends: dict[str, list[Layer]] = {}
        join: Node | None = None
        starts: list[tuple[Node, list[Layer], str | None]] = []
        for user in users:
            if self._is_join(user):
                starts.append((user, [], None))
            elif user.op == "Split":
                starts.extend((user, first, out) for first, out in self._split(user, value))
            else:
                first, out = self.step(user, value)
                starts.append((user, first, out))
        for user, first, out in starts:
            if out is None:
                b_layers, b_end, b_join = [], value, user
            else:
                rest, b_end, b_join = self.chain(out)
                b_layers = first + rest
            if b_join is None:
                raise user.unsupported(
                    "its branch never joins the others again; scratchcnn reads chains and "
                    "residual/parallel blocks"
                )
            if join is not None and b_join is not join:
                raise b_join.unsupported("branches from one value must all end at the same node")
            join = b_join
            if b_end in ends:
                raise b_join.unsupported("two branches end at the same value")
            ends[b_end] = b_layers
        assert join is not None
        acts = [v for v in join.inputs if v and self.g.kind.get(v) == "act"]
        if sorted(acts) != sorted(ends):
            raise join.unsupported("it joins values from different forks")
        self.visited.add(join.index)
        branches = [ends[v] for v in acts]
        if len({v in self.nhwc for v in acts}) > 1:
            raise join.unsupported("it joins channels-last and channels-first values")
        block = _block(join, branches, [self.shapes[v] for v in acts], self)
        out = join.outputs[0]
        shape = self.shapes[value]
        try:
            for layer in block:
                shape = tuple(layer.output_shape(shape))
                _check_per_image(join, shape)
        except OnnxError:
            raise
        except ScratchCNNError as exc:
            raise join.error(str(exc)) from None
        if value in self.nhwc:
            self.nhwc.add(out)
        if out in self.g.declared:
            check_declared(
                self.g.declared[out], _physical(shape, value in self.nhwc), f"{join.where()}"
            )
        self.shapes[out] = shape
        return block, out


def _swapped(node: Node) -> Node:
    """The node with its two inputs exchanged (``swapped`` tells a Sub it is c - x)."""
    return Node(node.index, node.proto, node.op, node.name, node.inputs[::-1], node.outputs, True)


def _check_per_image(node: Node, shape: Shape) -> None:
    """A layer's output must stay within the values per image a checkpoint records."""
    count = math.prod(shape[1:])
    if count > MAX_INPUT_ELEMENTS:
        dims = ", ".join(str(d) for d in shape[1:])
        raise node.unsupported(
            f"it outputs (N, {dims}): {count:,} values per image, more than the "
            f"{MAX_INPUT_ELEMENTS:,} a scratchcnn checkpoint records"
        )


def _check_window(node: Node, name: str, values: Any) -> None:
    """Kernel sizes, strides, dilations and paddings: at most MAX_WINDOW (the checkpoint's
    limit), refused here with the attribute named rather than by the writer."""
    flat = list(np.ravel(values))
    if any(v > MAX_WINDOW for v in flat):
        raise node.unsupported(
            f"{name}={[int(v) for v in flat]}: at most {MAX_WINDOW:,} (the largest a "
            "scratchcnn checkpoint records)"
        )


def _check_cast(node: Node, src: np.ndarray, to: np.dtype) -> None:
    """A Cast folded at import: refused in one line when a value has no counterpart in the
    target type (NaN or inf to an integer, a value beyond the target's range), instead of
    numpy's RuntimeWarning and an arbitrary result."""
    if src.size == 0 or to.kind == "b" or src.dtype.kind not in "fiub":
        return
    if src.dtype.kind == "f":
        finite = np.isfinite(src)
        if to.kind != "f" and not finite.all():
            raise node.error(f"casts NaN or inf to {to.name}")
        values = src if finite.all() else src[finite]
        if values.size == 0:
            return
        low, high = float(values.min()), float(values.max())
    else:
        low, high = int(src.min()), int(src.max())
    if to.kind == "f":
        top = float(np.finfo(to).max)
        fits = -top <= low and high <= top
    else:
        info = np.iinfo(to)  # a float is truncated toward zero
        fits = info.min - 1 < low and high < info.max + 1
    if not fits:
        raise node.error(f"casts values in [{low:.6g}, {high:.6g}] to {to.name}, beyond its range")


def _scalar(node: Node, value: np.ndarray, what: str) -> float:
    """A constant input that must be one number (Dropout's ratio and training_mode)."""
    if value.size != 1 or value.dtype.kind not in "fiub":
        raise node.unsupported(
            f"input {what} has shape {list(value.shape)} and type {value.dtype.name}: it must "
            "be one number"
        )
    return float(value.reshape(()))


def _axis(node: Node, axis: int, rank: int, what: str) -> int:
    if not -rank <= axis < rank:
        raise node.error(f"attribute {what}={axis} is out of range for rank {rank}")
    return axis % rank


def _child(layers: list[Layer]) -> Any:
    layers = tidy(layers)
    return layers[0] if len(layers) == 1 else Sequential(layers)


def tidy(layers: list[Any]) -> list[Layer]:
    """Fold per-channel biases into the layer before them, merge adjacent Rescales, then read
    the exporters' SiLU, GELU and ReLU6 patterns (``patterns.fuse``)."""
    return _merge_rescales(fuse(_merge_rescales(fold_biases(layers))))


def _physical(shape: Shape, nhwc: bool) -> Shape:
    """The shape as the graph holds the value: NCHW, or (N, H, W, C) when channels-last."""
    return (shape[0], *shape[2:], shape[1]) if nhwc else shape


def _resolved_target(w: Walker, node: Node, shape: Shape) -> list[Any] | None:
    """A Reshape's target shape against an input of ``shape``: "N" for the batch, 0 copied,
    -1 inferred; None when it is not a constant or does not fit."""
    try:
        allowzero = w.attrs(node, {"allowzero": (_INT_ATTR, 0)})["allowzero"]
        target = w.const(node, 1, "shape")
    except OnnxError:
        return None
    if target is None or target.ndim != 1 or target.dtype.kind not in "iu":
        return None
    out: list[Any] = []
    for i, d in enumerate(int(v) for v in target):
        if d == BATCH or (i == 0 and w.fixed_batch is not None and d == w.fixed_batch):
            out.append("N")
        elif d == 0 and not allowzero and i < len(shape):
            out.append("N" if i == 0 else shape[i])
        else:
            out.append(d)
    if out[:1] == [-1] and "N" not in out and -1 not in out[1:]:
        if math.prod(out[1:]) != math.prod(shape[1:]):
            return None
        out[0] = "N"  # (-1, C', ...) keeping the per-image size: -1 is the batch
    if out.count(-1) > 1 or "N" not in out[:1] or out.count("N") != 1:
        return None
    known = math.prod(d for d in out[1:] if d != -1)
    if -1 in out:
        rest = math.prod(shape[1:])
        if known <= 0 or rest % known:
            return None
        out[out.index(-1)] = rest // known
    return out if all(d == "N" or d > 0 for d in out) else None


def _block(join: Node, branches: list[list[Layer]], shapes: list[Shape], w: Walker) -> list[Layer]:
    """Residual / Parallel / Gate / DenseConcat from the branches that meet at ``join``."""
    op = join.op
    if op == "Add" and "Residual" in LAYER_TYPES:
        w.attrs(join, {})
        body, skip = branches
        if not body:
            body, skip = skip, body
        return [LAYER_TYPES["Residual"](_child(body), _child(skip) if skip else None)]
    if op == "Mul":
        w.attrs(join, {})
        first, second = branches
        if not first:
            first, second = second, first
        if not second:  # x * g(x): a gate (squeeze-and-excitation, SiLU, GELU)
            return [Gate(_child(first))]
        for gate, scale in ((first, second), (second, first)):
            lone = tidy(scale)
            if len(lone) == 1 and type(lone[0]) is Rescale and lone[0].offset == 0.0:
                return [Gate(_child(gate)), lone[0]]  # (c * x) * g(x)
        raise join.unsupported(
            "it multiplies two values computed from the input; scratchcnn reads x * g(x)"
        )
    if op == "Concat" and len(branches) == 2 and not branches[0] and branches[1]:
        axis = w.attrs(join, {"axis": (_INT_ATTR, None)})["axis"]
        if axis is None or _axis(join, axis, len(shapes[0]), "axis") != 1:
            raise join.unsupported(f"attribute axis={axis}: only the channel axis 1")
        return [DenseConcat(_child(branches[1]))]  # concat(x, f(x))
    if op == "Sum":
        w.attrs(join, {})
        merge = "add"
    elif op == "Concat":
        axis = w.attrs(join, {"axis": (_INT_ATTR, None)})["axis"]
        if axis is None or _axis(join, axis, len(shapes[0]), "axis") != 1:
            raise join.unsupported(f"attribute axis={axis}: only the channel axis 1")
        merge = "concat"
    else:
        raise join.unsupported("it reads two values computed from the input")
    if "Parallel" not in LAYER_TYPES:  # scratchcnn without blocks
        raise join.unsupported("residual and parallel blocks need scratchcnn's block layers")
    if any(not b for b in branches):
        raise join.unsupported("a parallel branch without layers")
    return [LAYER_TYPES["Parallel"]([_child(b) for b in branches], merge=merge)]


def _merge_rescales(layers: list[Layer]) -> list[Layer]:
    """Rescale(a1, b1) then Rescale(a2, b2) is Rescale(a1*a2, b1*a2 + b2): one layer for a
    Mul/Add (or Sub/Div) pair."""
    out: list[Layer] = []
    for layer in layers:
        if type(layer) is Rescale and out and type(out[-1]) is Rescale:
            prev = out.pop()
            layer = Rescale(prev.scale * layer.scale, prev.offset * layer.scale + layer.offset)
        out.append(layer)
    return out


# --- converters ---------------------------------------------------------------------------------
def _dtype(w: Walker) -> np.dtype:
    return w.g.dtype


def _check_rank(node: Node, shape: Shape, rank: int, what: str) -> None:
    if len(shape) != rank:
        raise node.unsupported(f"{what} needs a {rank}-D input, got {len(shape)}-D {list(shape)}")


def _pads(node: Node, a: dict[str, Any], hw: Shape, kernel: Shape, stride: Shape, dil: Shape):
    """((top, bottom), (left, right)) from pads / auto_pad."""
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(hw, kernel, stride, dil, strict=True):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pads.append((small, big) if auto == "SAME_UPPER" else (big, small))
        _check_window(node, f"the pads of auto_pad={auto}", pads)
        return tuple(pads)
    if auto == "VALID":
        return ((0, 0), (0, 0))
    if auto != "NOTSET":
        raise node.unsupported(f"attribute auto_pad={auto}")
    p = a.get("pads") or [0, 0, 0, 0]
    if len(p) != 4 or min(p) < 0:
        raise node.unsupported(f"attribute pads={p}: 2-D needs 4 non-negative values")
    _check_window(node, "attribute pads", p)
    return ((p[0], p[2]), (p[1], p[3]))


def _padding_arg(pad: Any) -> Any:
    (t, b), (l, r) = pad
    if t == b == l == r:
        return t
    return (t, l) if (t, l) == (b, r) else pad


def _pair_attr(node: Node, a: dict[str, Any], name: str, default: int) -> tuple[int, int]:
    v = a.get(name) or [default, default]
    if len(v) != 2 or min(v) < 1:
        raise node.unsupported(f"attribute {name}={v}: 2-D needs 2 positive values")
    _check_window(node, f"attribute {name}", v)
    return (v[0], v[1])


def _optional_args(node: Node, cls: type, args: dict[str, tuple[Any, Any, str]]) -> dict[str, Any]:
    """Keyword arguments whose value differs from the layer's default; refused (naming the
    ONNX attribute) when this version of the layer does not take them."""
    kwargs = {}
    for key, (value, default, attr) in args.items():
        if value == default:
            continue
        if not _accepts(cls, key):
            raise node.unsupported(f"attribute {attr}={value}")
        kwargs[key] = value
    return kwargs


def _build(node: Node, cls: type, attr: str, *args: Any, **kwargs: Any) -> Layer:
    try:
        return cls(*args, **kwargs)
    except ScratchCNNError as exc:
        raise node.unsupported(f"attribute {attr}: {exc}") from None


def _conv(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    a = w.attrs(
        node,
        {
            "auto_pad": (_STRING_ATTR, "NOTSET"),
            "dilations": (_INTS_ATTR, None),
            "group": (_INT_ATTR, 1),
            "kernel_shape": (_INTS_ATTR, None),
            "pads": (_INTS_ATTR, None),
            "strides": (_INTS_ATTR, None),
        },
    )
    _check_rank(node, shape, 4, "Conv")
    weight = w.const(node, 1, "W")
    bias = w.const(node, 2, "B")
    if weight is None or weight.ndim != 4:
        raise node.unsupported("input W: only 2-D convolutions (a 4-D weight)")
    o, cg, kh, kw = weight.shape
    _check_window(node, f"input W of shape {list(weight.shape)}: kernel", (kh, kw))
    if a["kernel_shape"] is not None and list(a["kernel_shape"]) != [kh, kw]:
        raise node.error(
            f"attribute kernel_shape={a['kernel_shape']} does not match W {list(weight.shape)}"
        )
    group = a["group"]
    if group < 1 or cg * group != shape[1] or o % group:
        raise node.error(
            f"attribute group={group}: W {list(weight.shape)} does not fit {shape[1]} input "
            "channels"
        )
    if bias is not None and bias.shape != (o,):
        raise node.error(f"input B has shape {list(bias.shape)}, expected [{o}]")
    stride = _pair_attr(node, a, "strides", 1)
    dilation = _pair_attr(node, a, "dilations", 1)
    pad = _pads(node, a, shape[2:], (kh, kw), stride, dilation)
    extra = _optional_args(
        node,
        Conv2D,
        {"dilation": (dilation, (1, 1), "dilations"), "groups": (group, 1, "group")},
    )
    layer = _build(
        node,
        Conv2D,
        f"pads={_pads_list(pad)}",
        shape[1],
        o,
        (kh, kw),
        stride=stride,
        padding=_padding_arg(pad),
        bias=bias is not None,
        dtype=_dtype(w),
        weight_init="zeros",
        bias_init="zeros",
        **extra,
    )
    _set(node, layer, "weight", weight)
    if bias is not None:
        _set(node, layer, "bias", bias)
    return [layer]


def _pads_list(pad: Any) -> list[int]:
    (t, b), (l, r) = pad
    return [t, l, b, r]


def _set(node: Node, layer: Layer, name: str, value: np.ndarray) -> None:
    target = layer.params[name] if name in layer.params else layer.buffers[name]
    if value.shape != target.shape:
        raise node.error(f"{name} has shape {list(value.shape)}, expected {list(target.shape)}")
    _assign(node, target, name, value)


def _assign(node: Node, target: np.ndarray, name: str, value: np.ndarray) -> None:
    """``target[...] = value`` once every value is a finite number that the target's type
    holds (float64 weights of 1e300, or a Gemm's alpha times its B, would become inf in a
    float32 model): else one line naming the node and the tensor."""
    if value.dtype.kind not in "fiu" or not np.all(np.isfinite(value)):
        raise node.error(f"{name} holds NaN, inf or non-numbers")
    if value.size and value.dtype.kind == "f" and value.dtype.itemsize > target.dtype.itemsize:
        top = float(np.finfo(target.dtype).max)
        big = float(np.abs(value).max())
        if big > top:
            raise node.error(
                f"{name} holds values up to {big:.3g} in magnitude, beyond the range of "
                f"{target.dtype.name} (at most {top:.3g}): they would become inf"
            )
    target[...] = value.astype(target.dtype)


def _pool(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    is_max = node.op == "MaxPool"
    spec = {
        "auto_pad": (_STRING_ATTR, "NOTSET"),
        "ceil_mode": (_INT_ATTR, 0),
        "dilations": (_INTS_ATTR, None),
        "kernel_shape": (_INTS_ATTR, None),
        "pads": (_INTS_ATTR, None),
        "strides": (_INTS_ATTR, None),
    }
    spec["storage_order" if is_max else "count_include_pad"] = (_INT_ATTR, 0)
    a = w.attrs(node, spec)
    _check_rank(node, shape, 4, node.op)
    kernel = a["kernel_shape"]
    if kernel is None or len(kernel) != 2 or min(kernel) < 1:
        raise node.unsupported(f"attribute kernel_shape={kernel}: 2-D pools need 2 sizes")
    _check_window(node, "attribute kernel_shape", kernel)
    if is_max and a["storage_order"] != 0:
        raise node.unsupported("attribute storage_order=1")
    stride = _pair_attr(node, a, "strides", 1)  # ONNX's default stride is 1, not the kernel
    dilation = _pair_attr(node, a, "dilations", 1)
    pad = _pads(node, a, shape[2:], tuple(kernel), stride, dilation)
    cls = MaxPool2D if is_max else AvgPool2D
    options: dict[str, tuple[Any, Any, str]] = {
        "ceil_mode": (bool(a["ceil_mode"]), False, "ceil_mode")
    }
    if is_max:
        options["dilation"] = (dilation, (1, 1), "dilations")
    else:
        if dilation != (1, 1):
            raise node.unsupported(f"attribute dilations={list(dilation)}")
        # Without padding (and without ceil_mode's partial windows) it makes no difference.
        include = bool(a["count_include_pad"])
        if pad == ((0, 0), (0, 0)) and not a["ceil_mode"]:
            include = True
        options["count_include_pad"] = (include, True, "count_include_pad")
    extra = _optional_args(node, cls, options)
    return [
        _build(
            node,
            cls,
            f"pads={_pads_list(pad)}",
            tuple(kernel),
            stride=stride,
            padding=_padding_arg(pad),
            **extra,
        )
    ]


def _global_pool(w: Walker, node: Node, shape: Shape, flatten: bool = False) -> list[Layer]:
    _check_rank(node, shape, 4, node.op)
    if "GlobalAvgPool2D" in LAYER_TYPES:
        layers = [LAYER_TYPES["GlobalAvgPool2D"]()]
    else:
        # Same result for this input size: one window over the whole image.
        layers = [AvgPool2D((shape[2], shape[3]))]
    return [*layers, Flatten()] if flatten else layers


def _global_average_pool(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    w.attrs(node, {})
    return _global_pool(w, node, shape)


def _reduce_mean(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    """ReduceMean over H and W: the dynamo exporter's AdaptiveAvgPool2d(1)."""
    a = w.attrs(
        node,
        {
            "axes": (_INTS_ATTR, None),
            "keepdims": (_INT_ATTR, 1),
            "noop_with_empty_axes": (_INT_ATTR, 0),
        },
    )
    axes = a["axes"]
    given = w.const(node, 1, "axes")
    if given is not None:
        axes = [int(v) for v in given.ravel()]
    if axes is None or len(shape) != 4:
        raise node.unsupported("only the mean over H and W of a 4-D input")
    if sorted(_axis(node, v, 4, "axes") for v in axes) != [2, 3]:
        raise node.unsupported(f"attribute axes={axes}: only the mean over H and W")
    return _global_pool(w, node, shape, flatten=not a["keepdims"])


def _gemm(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    """y = alpha * A' B' + beta * C, with A the activation: Dense with W = alpha * B'^T."""
    a = w.attrs(
        node,
        {
            "alpha": (_FLOAT_ATTR, 1.0),
            "beta": (_FLOAT_ATTR, 1.0),
            "transA": (_INT_ATTR, 0),
            "transB": (_INT_ATTR, 0),
        },
    )
    _check_rank(node, shape, 2, "Gemm")
    if a["transA"]:
        raise node.unsupported("attribute transA=1: the activation A must be (N, features)")
    b = w.const(node, 1, "B")
    if b is None or b.ndim != 2:
        raise node.unsupported("input B must be a 2-D constant")
    b = b.T if a["transB"] else b  # (in, out)
    if b.shape[0] != shape[1]:
        raise node.error(f"input B {list(b.shape)} does not fit {shape[1]} input features")
    with np.errstate(over="ignore"):  # an overflow shows as inf, refused by _set
        weight = np.asarray(a["alpha"] * b.T.astype(np.float64))
    bias = _row_bias(node, w.const(node, 2, "C"), b.shape[1], "input C")
    if bias is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            bias = a["beta"] * bias
    return [_dense(w, node, weight, bias)]


def _row_bias(node: Node, c: np.ndarray | None, n_out: int, what: str) -> np.ndarray | None:
    """A constant broadcast over the batch: shape (), (1,), (n_out,), (1, 1) or (1, n_out)."""
    if c is None:
        return None
    if c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1) or c.shape[-1:] not in ((), (1,), (n_out,)):
        raise node.unsupported(
            f"{what} has shape {list(c.shape)}: only a bias shared by all rows (no batch axis)"
        )
    return np.broadcast_to(c.reshape(-1), (n_out,)).astype(np.float64)


def _dense(w: Walker, node: Node, weight: np.ndarray, bias: np.ndarray | None) -> Layer:
    o, i = weight.shape
    layer = Dense(
        i, o, bias=bias is not None, dtype=_dtype(w), weight_init="zeros", bias_init="zeros"
    )
    _set(node, layer, "weight", weight)
    if bias is not None:
        _set(node, layer, "bias", bias)
    return layer


def _matmul(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    w.attrs(node, {})
    if node.inputs[0] in w.nhwc:
        # (N, H, W, C) @ (C, O): torch's Linear on channels-last data is a 1x1 convolution
        b = w.const(node, 1, "B")
        if b is None or b.ndim != 2 or b.shape[0] != shape[1]:
            got = None if b is None else list(b.shape)
            raise node.unsupported(f"input B {got}: only a ({shape[1]}, out) constant matrix")
        layer = Conv2D(shape[1], b.shape[1], 1, bias=False, dtype=_dtype(w),
                       weight_init="zeros", bias_init="zeros")  # fmt: skip
        _set(node, layer, "weight", b.T.reshape(b.shape[1], b.shape[0], 1, 1))
        return [layer]
    _check_rank(node, shape, 2, "MatMul")
    b = w.const(node, 1, "B")
    if b is None or b.ndim != 2 or b.shape[0] != shape[1]:
        got = None if b is None else list(b.shape)
        raise node.unsupported(f"input B {got}: only a ({shape[1]}, out) constant matrix")
    return [_dense(w, node, b.T.astype(np.float64), None)]


def _elementwise(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    """Add/Sub/Mul/Div of the activation and a constant: a scalar becomes a Rescale; a
    per-channel Add/Sub right after a Conv or Dense becomes (part of) its bias."""
    w.attrs(node, {})
    c = w.const(node, 1, "B")
    if c is None:
        raise node.error("needs two inputs")
    if c.dtype.kind not in "fiu" or not np.all(np.isfinite(c)):
        raise node.unsupported("input B holds NaN, inf or non-numbers")
    if node.inputs[0] in w.nhwc and c.size > 1:
        # channels-last: a per-channel constant broadcasts along the last axis
        if c.ndim > len(shape) or c.shape[-1] != shape[1] or c.size != shape[1]:
            raise node.unsupported(f"input B has shape {list(c.shape)} on channels-last data")
        c = c.reshape(shape[1], *(1,) * (len(shape) - 2))
    if c.size == 1 and c.ndim <= len(shape):
        v = float(c.reshape(()))
        op = "RSub" if node.swapped and node.op == "Sub" else node.op
        if op == "Div" and v == 0:
            raise node.unsupported("division by zero")
        scale, offset = {
            "Add": (1.0, v),
            "Sub": (1.0, -v),
            "RSub": (-1.0, v),
            "Mul": (v, 0.0),
            "Div": (1.0 / v if v else 0.0, 0.0),
        }[op]
        return [Rescale(scale, offset)]
    if node.op == "Add" or (node.op == "Sub" and not node.swapped):
        return [_BiasFold(node, c, -1.0 if node.op == "Sub" else 1.0)]  # type: ignore[list-item]
    channels = shape[1] if len(shape) >= 2 else 0
    rank = len(shape)
    # right-aligned broadcasting: (C, 1, ..., 1) with rank - 2 ones, or (1, C, 1, ..., 1)
    tail = (channels, *(1,) * (rank - 2))
    per_channel = rank >= 2 and c.shape in (tail, (1, *tail))
    if per_channel and (node.op == "Mul" or (node.op == "Div" and not node.swapped)):
        v = c.reshape(-1).astype(np.float64)
        if node.op == "Div" and np.any(v == 0):
            raise node.unsupported("division by zero")
        layer = ChannelScale(channels, dtype=_dtype(w))
        with np.errstate(over="ignore"):  # 1 / 1e-310 is inf: refused by _set
            _set(node, layer, "weight", v if node.op == "Mul" else 1.0 / v)
        return [layer]
    raise node.unsupported(
        f"input B has shape {list(c.shape)}: only a scalar, a per-channel scale, or a "
        "per-channel bias after Conv/Gemm/MatMul"
    )


class _BiasFold:
    """Placeholder for a per-channel Add: folded into the previous layer's bias by
    :func:`fold_biases` (never left in a model; not a Layer, so not in the registry)."""

    def __init__(self, node: Node, value: np.ndarray, sign: float) -> None:
        self.node, self.value, self.sign = node, value, sign

    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)


def _activation(cls: type, **attr_spec: tuple[int, Any]) -> Converter:
    def convert(w: Walker, node: Node, shape: Shape) -> list[Layer]:
        a = w.attrs(node, attr_spec)
        if cls is LeakyReLU:
            return [LeakyReLU(a["alpha"])]
        return [cls()]

    return convert


def _softmax(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    axis = _axis(node, w.attrs(node, {"axis": (_INT_ATTR, -1)})["axis"], len(shape), "axis")
    if axis == 0:
        raise node.unsupported("attribute axis=0: the batch axis")
    return [(LogSoftmax if node.op == "LogSoftmax" else Softmax)(axis=axis)]


def _flatten(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    axis = w.attrs(node, {"axis": (_INT_ATTR, 1)})["axis"]
    axis = axis + len(shape) if axis < 0 else axis  # ONNX allows -rank .. rank here
    if axis != 1:
        raise node.unsupported(f"attribute axis={axis}: only axis 1 keeps the batch axis")
    return [] if len(shape) == 2 else [Flatten()]


def _reshape(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    """Reshape that keeps the batch axis and merges the trailing ones: Flatten."""
    allowzero = w.attrs(node, {"allowzero": (_INT_ATTR, 0)})["allowzero"]
    target = w.const(node, 1, "shape")
    if target is None or target.ndim != 1 or target.dtype.kind not in "iu":
        raise node.unsupported("input shape must be a 1-D integer constant")
    dims = [int(v) for v in target]
    # Resolve each entry against the input (batch symbolic): 0 copies when allowzero=0.
    resolved: list[Any] = []
    for i, d in enumerate(dims):
        if d == BATCH:
            resolved.append("N")
        elif d == 0 and not allowzero and i < len(shape):
            resolved.append("N" if i == 0 else shape[i])
        elif i == 0 and w.fixed_batch is not None and d == w.fixed_batch:
            resolved.append("N")
        else:
            resolved.append(d)
    rest = math.prod(shape[1:])
    k = len(resolved) - 1
    ok = (
        len(resolved) >= 2
        and (resolved[0] == "N" or (resolved[0] == -1 and resolved[1:].count(-1) == 0))
        and all(r == s for r, s in zip(resolved[1:k], shape[1:k], strict=False))
        and k <= len(shape) - 1
    )
    if ok:
        tail = math.prod(shape[k:])
        last = resolved[k]
        if resolved[0] == -1:
            ok = last == tail and math.prod(resolved[1:]) == rest
        else:
            ok = last in (-1, tail)
    if not ok:
        raise node.unsupported(
            f"input shape={[('N' if d == BATCH else d) for d in dims]}: only a reshape to "
            f"(N, -1) that flattens trailing axes of {['N', *shape[1:]]}"
        )
    if k == len(shape) - 1:
        return []  # the same shape
    if k == 1:
        return [Flatten()]
    if not _accepts(Flatten, "start_dim"):
        raise node.unsupported(f"input shape={dims}: flattening from axis {k}")
    return [Flatten(start_dim=k)]  # type: ignore[call-arg]


def _batchnorm(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    a = w.attrs(
        node,
        {
            "epsilon": (_FLOAT_ATTR, 1e-5),
            "momentum": (_FLOAT_ATTR, 0.9),
            "training_mode": (_INT_ATTR, 0),
            "spatial": (_INT_ATTR, 1),
        },
    )
    if a["spatial"] != 1:
        raise node.unsupported("attribute spatial=0")
    if len(shape) == 4:
        cls: Any = BatchNorm2D
    elif len(shape) == 2 and "BatchNorm1D" in LAYER_TYPES:
        cls = LAYER_TYPES["BatchNorm1D"]
    else:
        raise node.unsupported(f"a {len(shape)}-D input")
    c = shape[1]
    names = ("weight", "bias", "running_mean", "running_var")
    values = [
        w.const(node, i + 1, n) for i, n in enumerate(("scale", "B", "input_mean", "input_var"))
    ]
    if any(v is None for v in values):
        raise node.error("needs scale, B, input_mean and input_var")
    if np.any(values[3] < 0):
        raise node.error("input_var has negative values")
    # ONNX keeps the running average's weight of the *old* value (torch's 1 - momentum) as
    # a float32 attribute: 7 significant digits are all it holds (0.1, not 0.0999...98).
    momentum = round(1.0 - a["momentum"], 7)
    if not (a["epsilon"] > 0 and 0.0 <= momentum <= 1.0):
        raise node.unsupported(f"attribute epsilon={a['epsilon']} or momentum={a['momentum']}")
    layer = cls(c, eps=a["epsilon"], momentum=momentum, dtype=_dtype(w))
    for name, value in zip(names, values, strict=True):
        _set(node, layer, name, np.asarray(value).reshape(-1) if value.size == c else value)
    return [layer]


def _dropout(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    w.attrs(node, {"seed": (_INT_ATTR, 0)})
    ratio = w.const(node, 1, "ratio")
    training = w.const(node, 2, "training_mode")
    p = 0.5 if ratio is None else _scalar(node, ratio, "ratio")
    if not 0.0 <= p < 1.0:
        raise node.unsupported(f"input ratio={p}")
    if training is not None and _scalar(node, training, "training_mode") and p > 0:
        raise node.unsupported(
            f"input training_mode=true: the graph drops units at inference (ratio {p}); "
            "export in eval mode (model.eval(); do_constant_folding=False keeps BatchNorm)"
        )
    return [Dropout(p)] if p > 0 else []


def _identity(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    w.attrs(node, {})
    return []


def _cast(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    to = w.attrs(node, {"to": (_INT_ATTR, 0), "saturate": (_INT_ATTR, 1)})["to"]
    if to != (1 if w.g.dtype == np.float32 else 11):
        raise node.unsupported(f"attribute to={to}: only a cast to the model's own type")
    return []


def _clip(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    """Clip(x, min, max) (bounds as scalar constant inputs); Min / Max with a scalar
    constant are Clip with one bound."""
    w.attrs(node, {})
    if node.op in ("Min", "Max"):
        if len(node.inputs) != 2:
            raise node.unsupported("only two inputs: the activation and a scalar constant")
        bounds = [w.const(node, 1, "B"), None]
        if node.op == "Min":
            bounds = bounds[::-1]
    else:
        bounds = [w.const(node, 1, "min"), w.const(node, 2, "max")]
    values: list[float | None] = []
    for name, b in zip(("min", "max"), bounds, strict=True):
        if b is None:
            values.append(None)
            continue
        if b.size != 1 or b.dtype.kind not in "fiu" or not np.isfinite(b).all():
            raise node.unsupported(f"input {name}: only a finite scalar constant")
        values.append(float(b.reshape(())))
    return [Clip(*values)]


def _hardsigmoid(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    a = w.attrs(node, {"alpha": (_FLOAT_ATTR, 0.2), "beta": (_FLOAT_ATTR, 0.5)})
    alpha = a["alpha"]
    if abs(alpha - 1 / 6) < 1e-7:  # torch's hardsigmoid: 1/6, stored as a float32
        alpha = 1 / 6
    return [Hardsigmoid(alpha, a["beta"])]


def _gelu(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    form = w.attrs(node, {"approximate": (_STRING_ATTR, "none")})["approximate"]
    if form not in ("none", "tanh"):
        raise node.unsupported(f"attribute approximate={form}")
    return [GELU(form)]


def _erf(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    w.attrs(node, {})
    return [_Erf(node)]  # type: ignore[list-item]


def _layer_norm(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    """LayerNormalization over the last axis of channels-last data (or of (N, C)):
    LayerNorm2D over the channels."""
    a = w.attrs(node, {"axis": (_INT_ATTR, -1), "epsilon": (_FLOAT_ATTR, 1e-5),
                       "stash_type": (_INT_ATTR, 1)})  # fmt: skip
    nhwc = node.inputs[0] in w.nhwc
    if (
        not (nhwc or len(shape) == 2)
        or _axis(node, a["axis"], len(shape), "axis") != len(shape) - 1
    ):
        raise node.unsupported(
            f"attribute axis={a['axis']}: only the channel axis (the last one of channels-last "
            "data, or of (N, C))"
        )
    c = shape[1]
    scale, bias = w.const(node, 1, "Scale"), w.const(node, 2, "B")
    if scale is None or a["epsilon"] <= 0:
        raise node.error("needs Scale and a positive epsilon")
    layer = LayerNorm2D(c, eps=a["epsilon"], dtype=_dtype(w))
    _set(node, layer, "weight", np.asarray(scale).reshape(-1) if scale.size == c else scale)
    if bias is not None:
        _set(node, layer, "bias", np.asarray(bias).reshape(-1) if bias.size == c else bias)
    return [layer]


def _transpose(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    """Into channels-last and back (perm [0, 2, 3, 1] and [0, 3, 1, 2]): nothing, the layers
    keep NCHW. Other permutations (but channel shuffle's) are refused."""
    perm = w.attrs(node, {"perm": (_INTS_ATTR, None)})["perm"]
    nhwc = node.inputs[0] in w.nhwc
    if perm == list(range(len(shape))):
        return []
    if len(shape) == 4 and not nhwc and perm == [0, 2, 3, 1]:
        w._out_nhwc = True
        return []
    if len(shape) == 4 and nhwc and perm == [0, 3, 1, 2]:
        w._out_nhwc = False
        return []
    raise node.unsupported(
        f"attribute perm={perm}: only NCHW to channels-last and back, or a channel shuffle"
    )


def _slice(w: Walker, node: Node, shape: Shape) -> list[Layer]:
    """A Slice of the input's channels (torch's chunk under the TorchScript exporter)."""
    w.attrs(node, {})
    starts, ends = w.const(node, 1, "starts"), w.const(node, 2, "ends")
    axes, steps = w.const(node, 3, "axes"), w.const(node, 4, "steps")
    if starts is None or ends is None or starts.size != 1 or ends.size != 1:
        raise node.unsupported("only a slice of one axis")
    axis = 0 if axes is None else int(np.asarray(axes).reshape(-1)[0])
    if _axis(node, axis, len(shape), "axes") != 1 or (
        steps is not None and int(np.asarray(steps).reshape(-1)[0]) != 1
    ):
        raise node.unsupported(f"axes={axis}: only a slice of the channels with step 1")
    start, stop, _ = slice(int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])).indices(shape[1])
    if stop <= start:
        raise node.unsupported(f"an empty slice of the channels ({start}:{stop})")
    return [ChannelSlice(start, stop)]


#: What the walk reads on channels-last values (ConvNeXt's blocks).
CHANNELS_LAST_OPS = frozenset(
    {
        "LayerNormalization",
        "MatMul",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Erf",
        "Gelu",
        "Relu",
        "Sigmoid",
        "Tanh",
        "Identity",
        "Cast",
        "Transpose",
        "Clip",
        "HardSwish",
        "HardSigmoid",
        "Dropout",
    }
)


OPS: dict[str, Converter] = {
    "Conv": _conv,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": _global_average_pool,
    "ReduceMean": _reduce_mean,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _elementwise,
    "Sub": _elementwise,
    "Mul": _elementwise,
    "Div": _elementwise,
    "Relu": _activation(ReLU),
    "LeakyRelu": _activation(LeakyReLU, alpha=(_FLOAT_ATTR, 0.01)),
    "Sigmoid": _activation(Sigmoid),
    "Tanh": _activation(Tanh),
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "BatchNormalization": _batchnorm,
    "Dropout": _dropout,
    "Identity": _identity,
    "Cast": _cast,
    "Clip": _clip,
    "Min": _clip,
    "Max": _clip,
    "HardSigmoid": _hardsigmoid,
    "HardSwish": _activation(Hardswish),
    "Gelu": _gelu,
    "Erf": _erf,
    "LayerNormalization": _layer_norm,
    "Transpose": _transpose,
    "Slice": _slice,
}


def fold_biases(layers: list[Layer]) -> list[Layer]:
    """Replace each per-channel Add placeholder by a bias on the Conv2D/Dense before it; one
    with no Conv2D/Dense before it (an input's normalisation, as ``Normalize`` exports it:
    Sub of the mean, then Div by the std) becomes a Normalize, which takes the per-channel
    Div (a ChannelScale) right after it in as its std."""
    out: list[Layer] = []
    for layer in layers:
        if (
            isinstance(layer, ChannelScale)
            and out
            and isinstance(out[-1], Normalize)
            and all(s == 1.0 for s in out[-1].std)
            and len(out[-1].mean) == layer.params["weight"].size
            and np.all(layer.params["weight"] > 0)
        ):
            std = (1.0 / layer.params["weight"].astype(np.float64)).tolist()
            out[-1] = Normalize(out[-1].mean, std)
            continue
        if not isinstance(layer, _BiasFold):
            out.append(layer)
            continue
        node = layer.node
        prev = out[-1] if out else None
        v = layer.value
        if not isinstance(prev, (Conv2D, Dense)) and v.shape in ((v.size, 1, 1), (1, v.size, 1, 1)):
            mean = (-layer.sign * v.reshape(-1).astype(np.float64)).tolist()
            out.append(Normalize(mean, [1.0] * v.size))
            continue
        if not isinstance(prev, (Conv2D, Dense)):
            raise node.unsupported(
                f"input B has shape {list(layer.value.shape)}: a per-channel bias must follow "
                "a Conv, Gemm or MatMul"
            )
        n_out = prev.params["weight"].shape[0]
        v = layer.value
        if isinstance(prev, Conv2D):
            # Broadcasting aligns trailing axes: only (O, 1, 1) and (1, O, 1, 1) are per channel.
            ok = v.shape in ((n_out, 1, 1), (1, n_out, 1, 1))
            bias = v.reshape(-1) if ok else None
        else:
            bias = _row_bias(node, v, n_out, "input B")
        if bias is None:
            raise node.unsupported(
                f"input B has shape {list(v.shape)}: not a per-channel bias for {n_out} channels"
            )
        if "bias" not in prev.params:
            config = prev.config()
            config.update(bias=True, weight_init="zeros", bias_init="zeros")
            fresh = type(prev)(**config)
            fresh.params["weight"][...] = prev.params["weight"]
            prev = fresh
            out[-1] = prev
        old = prev.params["bias"]
        with np.errstate(over="ignore", invalid="ignore"):  # inf is refused by _assign
            total = old.astype(np.float64) + layer.sign * bias.astype(np.float64)
        _assign(node, old, "bias", total)
    return out
