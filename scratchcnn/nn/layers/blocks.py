"""Residual, Parallel, Gate and DenseConcat: layers that hold layers (skip connections,
branches, gates).

A block's children are layers or ``Sequential`` chains (a list of layers becomes one). The
block owns no tensors itself; its leaves do, and their state-dict keys are the ones torch
gives modules with the same attribute names: ``body``, ``shortcut`` (for ``Residual``) and
``branches`` (a ModuleList, for ``Parallel``), e.g. ``"3.body.0.weight"``,
``"3.shortcut.1.running_mean"``, ``"5.branches.1.0.weight"``.

``config()`` nests specs: a child that is one layer is ``{"type": ..., "config": ...}``, a
chain is a list of such specs; the constructors accept these specs back, so
``layer_from_config`` rebuilds a nested model without code or pickle.

The gradient through a skip: for y = f(x) + g(x), dL/dx = f'(x)^T dy + g'(x)^T dy, i.e. the
upstream gradient goes unchanged into both paths and the two input gradients are summed
(with the identity shortcut g(x) = x, dy itself is added: the "gradient highway").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ...errors import ConfigError, DTypeError, ShapeError
from .base import (
    LAYER_TYPES,
    Layer,
    check_array,
    check_grad,
    layer_from_config,
    layer_spec,
    leaf_dtype,
    leaf_parameters,
    leaves,
    resolve_dtype,
)
from .sequential import Sequential

#: Deepest nesting of blocks a config may ask for (a crafted checkpoint must not be able to
#: exhaust Python's recursion limit).
MAX_DEPTH = 32

MERGES = ("concat", "add")


def _depth(spec: Any) -> int:
    """How many layer specs (dicts with a "type") deep ``spec`` nests, without recursion."""
    deepest, stack = 0, [(spec, 0)]
    while stack and deepest <= MAX_DEPTH:
        value, d = stack.pop()
        if isinstance(value, dict):
            d += "type" in value
            deepest = max(deepest, d)
            stack.extend((v, d) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, d) for v in value)
    return deepest


def _check_depth(value: Any, who: str) -> None:
    if _depth(value) > MAX_DEPTH:
        raise ConfigError(f"{who}: blocks nested deeper than {MAX_DEPTH} levels")


def _as_layer(obj: Any, who: str) -> Layer:
    if isinstance(obj, dict):
        return layer_from_config(obj)
    if isinstance(obj, Layer):
        return obj
    raise ConfigError(f"{who}: expected a layer or a layer spec, got {type(obj).__name__}")


def as_child(obj: Any, who: str) -> Any:
    """A block's child: a Layer, a Sequential, or a list of layers / specs -> Sequential."""
    if isinstance(obj, Sequential):
        return obj
    if isinstance(obj, (list, tuple)):
        if not obj:
            raise ConfigError(f"{who}: an empty list of layers (use None for the identity)")
        return Sequential([_as_layer(o, who) for o in obj])
    return _as_layer(obj, who)


def child_config(child: Any) -> Any:
    """The spec of a child: ``{"type", "config"}`` for a layer, a list of specs for a chain."""
    if hasattr(child, "layers"):
        return [layer_spec(la) for la in child.layers]
    return layer_spec(child)


def _prefixed(shapes: dict[str, Any] | None, prefix: str) -> dict[str, Any] | None:
    return None if shapes is None else {f"{prefix}{k}": v for k, v in shapes.items()}


def child_state_shapes(spec: Any) -> dict[str, tuple[int, ...]] | None:
    """``state_shapes`` of a child spec (list = chain, keys "0.weight"); None if unknown."""
    if isinstance(spec, (list, tuple)):
        out: dict[str, tuple[int, ...]] = {}
        for i, sub in enumerate(spec):
            shapes = _prefixed(child_state_shapes(sub), f"{i}.")
            if shapes is None:
                return None
            out.update(shapes)
        return out
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ConfigError(f"a layer spec must be a dict with a 'type' key, got {spec!r}")
    cls = LAYER_TYPES.get(spec["type"])
    method = getattr(cls, "state_shapes", None)
    config = spec.get("config", {})
    if method is None or not isinstance(config, dict):
        return None
    return method(config)


def child_output_shape(child: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    for layer in getattr(child, "layers", [child]):
        shape = tuple(layer.output_shape(shape))
    return shape


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")


class _Block(Layer):
    """Base of the blocks: a layer whose tensors live in child layers / Sequentials.

    Subclasses list their children in ``named_children()``; everything that walks tensors
    (state dicts, optimisers, gradcheck, astype, train/eval) goes through the leaves."""

    def named_children(self) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def named_layers(self, prefix: str = "") -> Iterator[tuple[str, Layer]]:
        """(key prefix, leaf layer) depth-first in forward order, e.g. ("body.0", Conv2D)."""
        return leaves(self.named_children(), prefix)

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        """(key, array) for each trainable tensor, keys like "body.0.weight"."""
        for key, layer, name in self.named_leaf_parameters():
            yield key, layer.params[name]

    def named_leaf_parameters(self) -> Iterator[tuple[str, Layer, str]]:
        """(key, leaf layer, name) for each trainable tensor (see Sequential's)."""
        return leaf_parameters(self.named_layers())

    def named_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        for prefix, layer in self.named_layers():
            for name, arr in layer.named_tensors():
                yield f"{prefix}.{name}", arr

    def num_params(self) -> int:
        return int(sum(layer.num_params() for _, layer in self.named_layers()))

    def train(self, mode: bool = True) -> _Block:
        self.training = bool(mode)
        for _, child in self.named_children():
            child.train(mode)
        return self

    def zero_grad(self) -> None:
        for _, child in self.named_children():
            child.zero_grad()

    def astype(self, dtype: Any) -> _Block:
        resolve_dtype(dtype)
        for _, child in self.named_children():
            child.astype(dtype)
        self._cache = None
        return self

    @property
    def dtype(self) -> np.dtype:
        """The float type of the first leaf that has one (float32 if none has)."""
        return leaf_dtype(self.named_layers())

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shapes = [child_output_shape(c, tuple(input_shape)) for _, c in self.named_children()]
        return self._merge_shapes(shapes)

    def _merge_shapes(self, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        raise NotImplementedError

    def __repr__(self) -> str:
        extra = self.extra_repr()
        inner = f"\n  {extra}" if extra else ""
        inner += "".join(f"\n  ({n}): {_indent(repr(c))}" for n, c in self.named_children())
        return f"{type(self).__name__}({inner}\n)"


class Residual(_Block):
    """y = body(x) + shortcut(x), shortcut None = identity (y = body(x) + x).

    Backward: dL/dx = body.backward(dy) + shortcut.backward(dy) (+ dy itself for the
    identity); the same dy reaches both paths, each fills its own layers' grads.
    """

    def __init__(self, body: Any, shortcut: Any = None) -> None:
        super().__init__()
        _check_depth([body, shortcut], "Residual")
        self.body = as_child(body, "Residual body")
        self.shortcut = None if shortcut is None else as_child(shortcut, "Residual shortcut")

    def named_children(self) -> list[tuple[str, Any]]:
        kids = [("body", self.body)]
        return kids if self.shortcut is None else [*kids, ("shortcut", self.shortcut)]

    def config(self) -> dict[str, Any]:
        return {
            "body": child_config(self.body),
            "shortcut": None if self.shortcut is None else child_config(self.shortcut),
        }

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]] | None:
        _check_depth(config, "Residual")
        out: dict[str, tuple[int, ...]] = {}
        for name in ("body", "shortcut"):
            if config.get(name) is None:
                continue
            shapes = _prefixed(child_state_shapes(config[name]), f"{name}.")
            if shapes is None:
                return None
            out.update(shapes)
        return out

    def extra_repr(self) -> str:
        return "shortcut=identity" if self.shortcut is None else ""

    def _merge_shapes(self, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        body = shapes[0]
        skip = shapes[1] if len(shapes) > 1 else None
        self._check_same(body, skip)
        return body

    def _check_same(self, body: tuple[int, ...], skip: tuple[int, ...] | None) -> None:
        if skip is not None and tuple(body) != tuple(skip):
            raise ShapeError(
                f"Residual: the body gives {tuple(body)} but the shortcut gives {tuple(skip)}; "
                "they must match (use a projection shortcut, e.g. a 1x1 Conv2D with the "
                "body's stride and output channels, then BatchNorm2D)"
            )

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        body = child_output_shape(self.body, tuple(input_shape))
        skip = (
            tuple(input_shape)
            if self.shortcut is None
            else child_output_shape(self.shortcut, tuple(input_shape))
        )
        self._check_same(body, skip)
        return body

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = check_array(x, "Residual")
        y = self.body.forward(x)
        s = x if self.shortcut is None else self.shortcut.forward(x)
        self._check_same(y.shape, s.shape)
        if y.dtype != s.dtype:
            raise DTypeError(f"Residual: the body gives {y.dtype} but the shortcut {s.dtype}")
        self._cache = (y.shape, y.dtype)
        return y + s

    def backward(self, dy: np.ndarray) -> np.ndarray:
        shape, dtype = self._require_cache()
        dy = check_grad(dy, shape, dtype, "Residual")
        dx = self.body.backward(dy)
        return dx + (dy if self.shortcut is None else self.shortcut.backward(dy))


class Parallel(_Block):
    """The same x through every branch; y = concat_c(branch_k(x)) or sum_k branch_k(x).

    Backward: each branch gets its own channel slice of dy (concat) or all of dy (add), and
    dL/dx = sum_k branch_k.backward(dy_k).
    """

    def __init__(self, branches: Any, merge: str = "concat") -> None:
        super().__init__()
        if not isinstance(branches, (list, tuple)) or not branches:
            raise ConfigError(
                f"Parallel: branches must be a non-empty list, got {type(branches).__name__}"
            )
        if merge not in MERGES:
            raise ConfigError(f"Parallel: merge must be 'concat' or 'add', got {merge!r}")
        _check_depth(branches, "Parallel")
        self.branches = [as_child(b, f"Parallel branch {i}") for i, b in enumerate(branches)]
        self.merge = merge

    def named_children(self) -> list[tuple[str, Any]]:
        return [(f"branches.{i}", b) for i, b in enumerate(self.branches)]

    def config(self) -> dict[str, Any]:
        return {"branches": [child_config(b) for b in self.branches], "merge": self.merge}

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]] | None:
        _check_depth(config, "Parallel")
        branches = config.get("branches")
        if not isinstance(branches, list):
            raise ConfigError("Parallel: config 'branches' must be a list")
        # A list of branch specs reads like a chain's list of layer specs: keys "<i>.<...>".
        return _prefixed(child_state_shapes(branches), "branches.")

    def extra_repr(self) -> str:
        return f"merge={self.merge!r}"

    def _merge_shapes(self, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        first = tuple(shapes[0])
        if self.merge == "add":
            if any(tuple(s) != first for s in shapes):
                raise ShapeError(f"Parallel(merge='add'): branch outputs differ: {shapes}")
            return first
        if len(first) < 2 or any(
            len(s) != len(first) or s[:1] + s[2:] != first[:1] + first[2:] for s in shapes
        ):
            raise ShapeError(
                f"Parallel(merge='concat'): branch outputs must agree on every axis but the "
                f"channels (axis 1): {[tuple(s) for s in shapes]}"
            )
        return (first[0], sum(s[1] for s in shapes), *first[2:])

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = check_array(x, "Parallel")
        outs = [b.forward(x) for b in self.branches]
        shape = self._merge_shapes([o.shape for o in outs])
        dtypes = {o.dtype for o in outs}
        if len(dtypes) > 1:
            raise DTypeError(f"Parallel: branches give different dtypes {sorted(map(str, dtypes))}")
        self._cache = (shape, outs[0].dtype, [o.shape[1] for o in outs])
        if self.merge == "add":
            y = outs[0].copy()
            for o in outs[1:]:
                y += o
            return y
        return np.concatenate(outs, axis=1)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        shape, dtype, channels = self._require_cache()
        dy = check_grad(dy, shape, dtype, "Parallel")
        if self.merge == "add":
            parts = [dy] * len(self.branches)
        else:
            parts = np.split(dy, np.cumsum(channels)[:-1], axis=1)
        dx = self.branches[0].backward(parts[0])
        for b, part in zip(self.branches[1:], parts[1:], strict=True):
            dx = dx + b.backward(part)
        return dx


def _broadcast_to_input(g: tuple[int, ...], x: tuple[int, ...]) -> bool:
    """True if a gate of shape ``g`` broadcasts over an input of shape ``x`` without changing
    its shape (same rank; each axis equal or 1; the batch axis equal)."""
    return (
        len(g) == len(x)
        and g[:1] == x[:1]
        and all(a == b or a == 1 for a, b in zip(g[1:], x[1:], strict=True))
    )


class _BodyBlock(_Block):
    """A block around one child, ``body`` (Gate, DenseConcat): its construction, children,
    config and state shapes; the subclass says what it does with body(x)."""

    def __init__(self, body: Any) -> None:
        super().__init__()
        name = type(self).__name__
        _check_depth([body], name)
        self.body = as_child(body, f"{name} body")

    def named_children(self) -> list[tuple[str, Any]]:
        return [("body", self.body)]

    def config(self) -> dict[str, Any]:
        return {"body": child_config(self.body)}

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]] | None:
        _check_depth(config, cls.__name__)
        return _prefixed(child_state_shapes(config.get("body")), "body.")


class Gate(_BodyBlock):
    """y = x * body(x): the input scaled by a gate computed from it.

    ``body(x)`` has x's shape or broadcasts over it: squeeze-and-excitation gives one value
    per channel, (N, C, 1, 1) (global pooling, two 1x1 convolutions, a sigmoid); SiLU is
    Gate(Sigmoid()). With g = body(x):

        dL/dx = dy * g + body.backward(dL/dg),  dL/dg = sum of dy * x over the axes g
        broadcasts (H and W for squeeze-and-excitation).
    """

    def _check_gate(self, g: tuple[int, ...], x: tuple[int, ...]) -> None:
        if not _broadcast_to_input(tuple(g), tuple(x)):
            raise ShapeError(
                f"Gate: the body gives {tuple(g)}, which does not broadcast over the input "
                f"{tuple(x)} (it must have the input's shape, or 1 on the axes it shares)"
            )

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_gate(child_output_shape(self.body, tuple(input_shape)), tuple(input_shape))
        return tuple(input_shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = check_array(x, "Gate")
        g = self.body.forward(x)
        self._check_gate(g.shape, x.shape)
        if g.dtype != x.dtype:
            raise DTypeError(f"Gate: the body gives {g.dtype} for a {x.dtype} input")
        self._cache = (x, g)
        return x * g

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, g = self._require_cache()
        dy = check_grad(dy, x.shape, x.dtype, "Gate")
        axes = tuple(i for i, (a, b) in enumerate(zip(g.shape, x.shape, strict=True)) if a != b)
        dg = (dy * x).sum(axis=axes, keepdims=True) if axes else dy * x
        return dy * g + self.body.backward(dg)


class DenseConcat(_BodyBlock):
    """y = concat_c(x, body(x)): the input kept, with what the body computes from it added
    as new channels (DenseNet's dense connection; a dense block is a chain of these).

    Backward, C the input's channels: dL/dx = dy[:, :C] + body.backward(dy[:, C:])."""

    def _merge_shapes(self, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        x, b = (tuple(s) for s in shapes)
        if len(b) != len(x) or len(x) < 2 or b[:1] + b[2:] != x[:1] + x[2:]:
            raise ShapeError(
                f"DenseConcat: the body gives {b} for an input {x}; they must agree on every "
                "axis but the channels (axis 1)"
            )
        return (x[0], x[1] + b[1], *x[2:])

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        body = child_output_shape(self.body, tuple(input_shape))
        return self._merge_shapes([tuple(input_shape), body])

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = check_array(x, "DenseConcat")
        b = self.body.forward(x)
        shape = self._merge_shapes([x.shape, b.shape])
        if b.dtype != x.dtype:
            raise DTypeError(f"DenseConcat: the body gives {b.dtype} for a {x.dtype} input")
        self._cache = (shape, x.dtype, x.shape[1])
        return np.concatenate([x, b], axis=1)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        shape, dtype, c = self._require_cache()
        dy = check_grad(dy, shape, dtype, "DenseConcat")
        return dy[:, :c] + self.body.backward(np.ascontiguousarray(dy[:, c:]))
