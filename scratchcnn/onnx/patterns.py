"""Patterns of the ONNX import: rewrites of the graph before the walk, and fusions of the
layers after it.

Before the walk (:func:`rewrite_concats`), on the validated :class:`Graph`:

* a ``Concat`` of one value is that value (``Identity``): DenseNet's first layer writes
  ``torch.cat([x], 1)``;
* a ``Concat`` of v0 .. vk whose first inputs v0 .. vj are already concatenated by another
  ``Concat`` node reads that node's output instead: ``cat(v0, v1, v2) = cat(cat(v0, v1),
  v2)``. A dense block (each layer reads the concatenation of all earlier outputs) becomes
  a chain of ``DenseConcat`` blocks;
* a ``Concat`` whose inputs come from different forks is cut into nested ones, one per run
  of consecutive inputs that branch from the same value: the TorchScript exporter flattens
  Inception's ``cat([a, cat([b1, b2]), c])`` into one node.

Concatenation on one axis is associative, so each rewrite computes the same values; a
graph these rewrites do not make into a tree is refused by the walk as before.

After the walk (:func:`fuse`), on the layers: ``Gate(Sigmoid)`` is ``SiLU``; the exporters'
GELU, x * (1 + erf(x / sqrt 2)) / 2 written as Div, Erf, Add, Mul, Mul, is ``GELU``; ReLU
then Clip(max 6) is ``ReLU6``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..nn.layers import GELU, Clip, Gate, ReLU, ReLU6, Rescale, Sigmoid, SiLU
from ..nn.layers.activations import _Elementwise, erf
from ..nn.layers.base import Layer
from .graph import Graph, Node, topological

_AXIS_ATTR = 2  # AttributeProto.INT


def _concat_axis(node: Node) -> int | None:
    for a in node.proto.attribute:
        if a.name == "axis" and a.type == _AXIS_ATTR:
            return int(a.i)
    return None


def _new_node(onnx: Any, op: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any):
    proto = onnx.helper.make_node(op, inputs, outputs, name=name, **attrs)
    return Node(-1, proto, op, name, list(inputs), list(outputs))


def rewrite_concats(onnx: Any, g: Graph) -> None:
    """The three Concat rewrites of the module docstring, in place (nodes, consumers, order)."""
    act = {v for v, k in g.kind.items() if k == "act"}
    nodes: list[Node] = []
    by_inputs: dict[tuple[str, ...], str] = {}
    for node in g.nodes:
        ins = [v for v in node.inputs if v]
        if node.op != "Concat" or not ins or not all(v in act for v in ins):
            nodes.append(node)
            continue
        if len(ins) == 1:
            nodes.append(_new_node(onnx, "Identity", ins, node.outputs[:1], node.name))
            nodes[-1].index = node.index
            continue
        if _concat_axis(node) != 1:
            nodes.append(node)
            continue
        key = tuple(ins)
        for j in range(len(ins) - 1, 1, -1):
            prefix = by_inputs.get(tuple(ins[:j]))
            if prefix is not None:
                node.inputs = [prefix, *ins[j:]]
                break
        by_inputs.setdefault(key, node.outputs[0])
        nodes.append(node)
    _reindex(g, nodes)
    _unflatten_concats(onnx, g)


def _reindex(g: Graph, nodes: list[Node]) -> None:
    """Producers, consumers and a topological order again after nodes changed."""
    g.producer = {o: n for n in nodes for o in n.outputs if o}
    g.nodes = topological(nodes, g.producer)
    g.consumers = {}
    for node in g.nodes:
        for v in dict.fromkeys(node.inputs):
            if v:
                g.consumers.setdefault(v, []).append(node)


def _unflatten_concats(onnx: Any, g: Graph) -> None:
    act = {v for v, k in g.kind.items() if k == "act"}
    made: dict[str, str] = {}  # output of a Concat made here -> the value its run forks from
    counter = 0

    def users(v: str) -> list[Node]:
        return [n for n in g.consumers.get(v, []) if n.op != "Shape"]

    def origin(v: str) -> str:
        """The value that ``v``'s branch forks from: back along single-input nodes while
        each value has one user."""
        for _ in range(len(g.nodes) + 1):
            if v in made:
                v = made[v]
                continue
            node = g.producer.get(v)
            if node is None or len(users(v)) > 1:
                return v
            acts = [i for i in node.inputs if i in act]
            if len(acts) != 1:
                return v
            v = acts[0]
        return v

    changed = True
    while changed:
        changed = False
        for node in list(g.nodes):
            ins = node.inputs
            if node.op != "Concat" or len(ins) < 3 or not all(v in act for v in ins):
                continue
            if _concat_axis(node) != 1:
                continue
            roots = [origin(v) for v in ins]
            if len(set(roots)) == 1:
                continue
            new_inputs: list[str] = []
            i = 0
            while i < len(ins):
                j = i
                while j + 1 < len(ins) and roots[j + 1] == roots[i]:
                    j += 1
                if j > i and j - i + 1 < len(ins):
                    counter += 1
                    out = f"{node.outputs[0]}/scratchcnn_concat_{counter}"
                    inner = _new_node(onnx, "Concat", ins[i : j + 1], [out],
                                      f"{node.name or 'Concat'}/part{counter}", axis=1)  # fmt: skip
                    inner.index = max(n.index for n in g.nodes) + 1  # unique: the sort's key
                    g.nodes.append(inner)
                    g.kind[out] = "act"
                    act.add(out)
                    root = roots[i]
                    producer = g.producer.get(root)
                    up = [v for v in (producer.inputs if producer else []) if v in act]
                    made[out] = up[0] if len(up) == 1 else root
                    new_inputs.append(out)
                    changed = True
                else:
                    new_inputs.extend(ins[i : j + 1])
                i = j + 1
            node.inputs = new_inputs
        if changed:
            _reindex(g, g.nodes)


# --- after the walk ----------------------------------------------------------------------------
class _Erf(_Elementwise):
    """erf(x), only as a part of GELU (:func:`fuse`); a private class, so never saved.
    dL/dx = dy * 2 / sqrt(pi) * exp(-x^2)."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        self._cache = x
        return erf(x).astype(x.dtype, copy=False)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self._require_cache()
        return self._check_dy(dy, x) * (2 / math.sqrt(math.pi) * np.exp(-(x * x)))


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(abs(b), 1e-30)


def _gelu_of(gate: Any, after: Any) -> bool:
    """True if ``gate`` (then ``after``, a Rescale or None) is x * (1 + erf(x / sqrt 2)) / 2."""
    body = getattr(gate.body, "layers", [gate.body])
    if len(body) != 3 or not (type(body[0]) is Rescale and type(body[2]) is Rescale):
        return False
    if type(body[1]) is not _Erf or body[0].offset != 0.0:
        return False
    c = 1.0 if after is None else after.scale
    if after is not None and after.offset != 0.0:
        return False
    inner, outer = body[0], body[2]
    return (
        _close(inner.scale, 1 / math.sqrt(2))
        and _close(outer.scale * c, 0.5)
        and _close(outer.offset * c, 0.5)
    )


def fuse(layers: list[Layer]) -> list[Layer]:
    """SiLU, GELU and ReLU6 from the layers the exporters' patterns became."""
    out: list[Layer] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if type(layer) is Gate:
            body = getattr(layer.body, "layers", [layer.body])
            if len(body) == 1 and type(body[0]) is Sigmoid:
                out.append(SiLU())
                i += 1
                continue
            after = nxt if type(nxt) is Rescale else None
            if _gelu_of(layer, after):
                out.append(GELU())
                i += 2 if after is not None else 1
                continue
        if (
            type(layer) is ReLU
            and type(nxt) is Clip
            and nxt.min_value in (None, 0.0)
            and nxt.max_value == 6.0
        ):
            out.append(ReLU6())
            i += 2
            continue
        if type(layer) is Clip and layer.min_value == 0.0 and layer.max_value == 6.0:
            out.append(ReLU6())
            i += 1
            continue
        out.append(layer)
        i += 1
    return out
