"""The layer protocol and the input checks every layer shares.

A layer is a small object with

* ``params``: dict name -> trainable array (``"weight"``, ``"bias"``), shapes as in PyTorch;
* ``grads``: dict name -> dL/dparam, same shapes, overwritten by every ``backward``;
* ``buffers``: dict name -> non-trainable state saved with the model (BatchNorm's running
  statistics);
* ``forward(x)``: computes the output and caches exactly what ``backward`` needs;
* ``backward(dy)``: takes dL/dy, fills ``grads`` and returns dL/dx;
* ``train()`` / ``eval()``: switch behaviour of Dropout and BatchNorm;
* ``config()``: the constructor arguments, JSON-serialisable, so a saved model can be rebuilt
  without code.

Subclass :class:`Layer`, implement ``forward`` and ``backward`` (and ``config`` if the
constructor takes arguments), and the layer works in ``Sequential``, the optimisers,
``gradcheck`` and checkpoints.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np

from ...errors import ConfigError, DTypeError, ShapeError, StateError

#: Float types a layer may hold. float32 is the default everywhere.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: Registry of layer classes by name, filled by ``Layer.__init_subclass__``; used to rebuild
#: models from their saved configuration without unpickling anything. Built-in layers
#: (classes defined inside the scratchcnn package) are keyed by their bare name ("ReLU");
#: any other layer by "module.QualName" ("mylib.layers.Scale"), so a user's class can never
#: shadow a built-in. Private classes (a name part starting with "_") are not registered.
LAYER_TYPES: dict[str, type[Layer]] = {}


def is_builtin_layer(cls: type) -> bool:
    """True for a class defined inside the scratchcnn package."""
    module = getattr(cls, "__module__", "") or ""
    return module == "scratchcnn" or module.startswith("scratchcnn.")


def layer_type_name(cls: type) -> str:
    """The name a layer class is saved and registered under: the bare class name for a
    built-in, ``"module.QualName"`` for any other class."""
    if is_builtin_layer(cls):
        return cls.__name__
    return f"{cls.__module__}.{cls.__qualname__}"


def layer_spec(layer: Layer) -> dict[str, Any]:
    """``{"type": ..., "config": ...}``: what a model's config holds for one layer."""
    return {"type": layer_type_name(type(layer)), "config": layer.config()}


def _is_private(qualname: str) -> bool:
    return any(part.startswith("_") for part in qualname.split("."))


def resolve_layer_type(name: Any) -> type[Layer]:
    """The registered class saved as ``name``; a ConfigError naming the problem if none.

    A bare name is a built-in; for checkpoints written before user layers were saved under
    their qualified name, a bare name that no built-in has is accepted when exactly one
    registered custom class has it as its class name."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a layer type must be a non-empty string, got {name!r}")
    cls = LAYER_TYPES.get(name)
    if cls is not None:
        return cls
    if "." not in name and not name.startswith("_"):
        matches = [c for key, c in LAYER_TYPES.items() if "." in key and c.__name__ == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            names = ", ".join(sorted(layer_type_name(c) for c in matches))
            raise ConfigError(f"layer type {name!r} is ambiguous: it could be {names}")
    if "." in name and _is_private(name.rpartition(".")[2]):
        raise ConfigError(
            f"unknown layer type {name!r}: a private class (its name starts with '_') is not "
            "registered, so a model holding it cannot be saved and loaded; give the class a "
            "public name"
        )
    if "." in name:
        raise ConfigError(
            f"unknown layer type {name!r}: a custom layer must be imported before loading "
            "(import the module that defines it)"
        )
    builtins = sorted(k for k in LAYER_TYPES if "." not in k)
    raise ConfigError(
        f"unknown layer type {name!r}; built-in types: {', '.join(builtins)}"
        " (a custom layer must be imported before loading)"
    )


def resolve_dtype(dtype: Any) -> np.dtype:
    """Return ``np.dtype(dtype)`` if it is float32 or float64, else raise ConfigError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise ConfigError(f"dtype must be float32 or float64, got {dt.name}")
    return dt


def positive_int(value: Any, name: str) -> int:
    """Validate a positive integer hyper-parameter (channels, features)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value}")
    return int(value)


def finite_float(value: Any, name: str) -> float:
    """Validate a real-valued hyper-parameter (a finite int or float, not a bool)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    if not ok or not np.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_array(x: Any, who: str, what: str = "input") -> np.ndarray:
    """Refuse anything that is not a floating-point ndarray, naming what was given."""
    if not isinstance(x, np.ndarray):
        raise DTypeError(
            f"{who}: {what} must be a numpy.ndarray, got {type(x).__name__}"
            + ("; wrap it with np.asarray(...)" if isinstance(x, (list, tuple)) else "")
        )
    if x.dtype not in FLOAT_DTYPES:
        raise DTypeError(
            f"{who}: {what} must be float32 or float64, got dtype {x.dtype}"
            + (
                "; scale integer images first, e.g. x.astype(np.float32) / 255"
                if x.dtype.kind in "uib"
                else ""
            )
        )
    return x


def check_input(
    x: Any,
    who: str,
    ndim: int,
    layout: str,
    dtype: np.dtype | None = None,
    channels: int | None = None,
    channel_name: str = "channels",
) -> np.ndarray:
    """Validate a forward input: ndarray, float dtype (the layer's own, if it has one), ndim, C.

    ``layout`` is a human description like ``"(N, C, H, W)"`` used in the message.
    """
    x = check_array(x, who)
    if x.ndim != ndim:
        raise ShapeError(f"{who} expects a {ndim}-D {layout} input, got shape {x.shape}")
    if dtype is not None and x.dtype != dtype:
        raise DTypeError(
            f"{who} holds {dtype.name} parameters but got a {x.dtype.name} input; "
            f"convert with x.astype(np.{dtype.name}) or build the layer with "
            f"dtype=np.{x.dtype.name} (no silent casts)"
        )
    if channels is not None and x.shape[1] != channels:
        raise ShapeError(
            f"{who} expects {channels} input {channel_name}, got {x.shape[1]} "
            f"(input shape {x.shape})"
        )
    if x.shape[0] == 0:
        raise ShapeError(f"{who}: the batch is empty (input shape {x.shape})")
    return x


def check_grad(dy: Any, expected_shape: tuple[int, ...], dtype: np.dtype, who: str) -> np.ndarray:
    """Validate an upstream gradient against the shape and dtype of the forward output."""
    dy = check_array(dy, who, "the upstream gradient dy")
    if dy.shape != tuple(expected_shape):
        raise ShapeError(
            f"{who}.backward: dy has shape {dy.shape} but the forward output had shape "
            f"{tuple(expected_shape)}"
        )
    if dy.dtype != dtype:
        raise DTypeError(
            f"{who}.backward: dy is {dy.dtype.name} but the forward output was {dtype}"
        )
    return dy


class Layer:
    """Base class of every layer; see the module docstring for the protocol."""

    #: True for layers whose backward can skip dL/dx (Conv2D, Dense); Sequential uses it to
    #: avoid computing the input gradient of its first layer during training.
    supports_input_grad_skip: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not _is_private(cls.__qualname__):
            LAYER_TYPES[layer_type_name(cls)] = cls

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.training: bool = True
        self._cache: Any = None

    # --- the protocol -------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable) that rebuild this layer."""
        return {}

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]] | None:
        """Shapes of the parameters and buffers a layer built from ``config`` would hold,
        keyed like its state dict ("weight", "running_mean"; "body.0.weight" in a block),
        computed without allocating anything; None when unknown (the default).

        Checkpoint loading compares these with the arrays in the file before building the
        layer, so a tiny config cannot demand memory the file does not back."""
        return None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the output for an input of ``input_shape`` (batch axis included).

        The default runs a forward pass on zeros; built-in layers compute it directly.
        """
        dtype = getattr(self, "dtype", np.dtype(np.float32))
        was_training = self.training
        try:
            self.eval()
            return self.forward(np.zeros(input_shape, dtype=dtype)).shape
        finally:
            self.train(was_training)
            self._cache = None

    # --- conveniences -------------------------------------------------------------------
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def train(self, mode: bool = True) -> Layer:
        """Training mode (Dropout drops, BatchNorm uses batch statistics); returns self."""
        self.training = bool(mode)
        return self

    def eval(self) -> Layer:
        """Inference mode; returns self."""
        return self.train(False)

    def zero_grad(self) -> None:
        for name, g in self.grads.items():
            self.grads[name] = np.zeros_like(g)

    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def astype(self, dtype: Any) -> Layer:
        """Convert parameters and float buffers to ``dtype`` (float32 or float64) in place."""
        dt = resolve_dtype(dtype)
        for d in (self.params, self.buffers):
            for name, arr in d.items():
                if arr.dtype.kind == "f":
                    d[name] = arr.astype(dt)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        if hasattr(self, "dtype"):
            self.dtype = dt
        self._cache = None
        return self

    def named_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """Parameters then buffers, as saved in a state dict."""
        yield from self.params.items()
        yield from self.buffers.items()

    def _require_cache(self) -> Any:
        if self._cache is None:
            raise StateError(
                f"{type(self).__name__}.backward called before forward; call forward first"
            )
        return self._cache

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())

    def _repr_suffix(self) -> str:
        """``, bias=False`` and ``, dtype=float64`` where they differ from the defaults."""
        text = "" if getattr(self, "use_bias", True) else ", bias=False"
        dtype = getattr(self, "dtype", np.dtype(np.float32))
        return text + (f", dtype={dtype.name}" if dtype != np.float32 else "")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def leaves(children: Iterable[tuple[str, Any]], prefix: str = "") -> Iterator[tuple[str, Layer]]:
    """(key prefix, leaf layer) under named ``children``, depth-first in forward order,
    walking into Sequentials and blocks (anything with ``named_layers``): the one walk behind
    every ``named_layers()``, state dict, optimiser, split and checkpoint."""
    for name, child in children:
        if hasattr(child, "named_layers"):
            yield from child.named_layers(f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", child


def leaf_layers(model: Any) -> list[tuple[str, Layer]]:
    """(key prefix, leaf layer) of a model, a block or a single layer ("" for the latter)."""
    if hasattr(model, "named_layers"):
        return list(model.named_layers())
    return [("", model)]


def leaf_parameters(named: Iterable[tuple[str, Layer]]) -> Iterator[tuple[str, Layer, str]]:
    """(key, leaf layer, name) for each trainable tensor of ``named`` (prefix, layer) pairs."""
    for prefix, layer in named:
        for name in layer.params:
            yield f"{prefix}.{name}", layer, name


def leaf_dtype(named: Iterable[tuple[str, Layer]]) -> np.dtype:
    """The float type of the first leaf that has one (float32 if none has)."""
    for _, layer in named:
        if hasattr(layer, "dtype"):
            return np.dtype(layer.dtype)
    return np.dtype(np.float32)


def accepts_input_grad(layer: Any) -> bool:
    """True if ``layer.backward`` takes ``input_grad`` (layers that can skip dL/dx)."""
    if getattr(layer, "supports_input_grad_skip", False):
        return True
    backward = layer.backward
    try:
        return _takes_input_grad(getattr(backward, "__func__", backward))
    except TypeError:  # an unhashable callable: ask without remembering
        return _takes_input_grad.__wrapped__(backward)


@functools.lru_cache(maxsize=256)
def _takes_input_grad(function: Any) -> bool:
    # Asked once per training step: remember the answer per function (a signature costs
    # more than a small layer's whole backward pass at batch 1).
    try:
        return "input_grad" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def layer_from_config(spec: dict[str, Any]) -> Layer:
    """Build a layer from ``{"type": name, "config": {...}}`` using the registry."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"a layer spec must be a dict with a 'type' key, got {spec!r}")
    name = spec["type"]
    cls = resolve_layer_type(name)
    try:
        return cls(**spec.get("config", {}))
    except TypeError as exc:
        raise ConfigError(f"cannot build {name} from config {spec.get('config')!r}: {exc}") from exc
