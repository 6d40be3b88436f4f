"""Sequential: a list of layers run in order, with the state-dict and summary of a model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ...errors import ConfigError, DTypeError, ShapeError
from .. import dispatch
from .activations import sigmoid, softmax
from .base import (
    Layer,
    accepts_input_grad,
    layer_from_config,
    layer_spec,
    leaf_dtype,
    leaf_parameters,
    leaves,
    resolve_dtype,
)
from .conv import Conv2D
from .dense import Dense


class Parameters(list):
    """A model's trainable arrays (a plain list), with the model they belong to as
    ``owner``: what an optimiser needs to find their gradients."""

    def __init__(self, arrays: Iterable[np.ndarray], owner: Any) -> None:
        super().__init__(arrays)
        self.owner = owner


class Sequential:
    """Layers applied in order: y = layers[-1](...layers[0](x)).

    ``backward(dy)`` runs the layers' backward passes in reverse, filling every layer's
    ``grads``, and returns dL/dx (or None with ``input_grad=False``, which lets the first
    Conv2D/Dense skip that work during training). ``state_dict()`` keys follow
    torch.nn.Sequential: ``"<index>.<name>"``, e.g. ``"0.weight"``, ``"3.running_mean"``.

    Layers are given as arguments, ``Sequential(conv, relu, pool)``, or as one list,
    ``Sequential([conv, relu, pool])``. ``input_shape`` (C, H, W) is optional; when given,
    ``summary()`` needs no argument and ``predict`` knows what size images the model takes.

    ``forward`` runs the layers one after another, as written, unless the engine
    (``scratchcnn.engine``) has a plan for them: faster routes for the same layers, tested
    equal to them (``SCRATCHCNN_KERNELS=numpy`` turns the engine off).
    """

    def __init__(
        self, *layers: Layer | Iterable[Layer], input_shape: tuple[int, ...] | None = None
    ) -> None:
        self.layers: list[Layer] = []
        # Sequential([a, b]) as before, or Sequential(a, b) as in torch.nn.Sequential.
        if len(layers) == 1 and not hasattr(layers[0], "forward"):
            layers = tuple(layers[0])  # type: ignore[arg-type]
        for layer in layers:
            self.add(layer)  # type: ignore[arg-type]
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape else None
        self.training = True
        #: how many leading layers are frozen (``freeze``): 0 = every layer trains
        self.frozen = 0
        self._ran: Any = None  # the engine's plan the last forward ran, for backward

    def add(self, layer: Layer) -> Sequential:
        """Append a layer; returns self."""
        for attr in ("forward", "backward", "params", "grads"):
            if not hasattr(layer, attr):
                raise ConfigError(
                    f"Sequential: {layer!r} is not a layer (it has no {attr!r}); layers "
                    "subclass scratchcnn.Layer"
                )
        self.layers.append(layer)
        return self

    # --- running ----------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        plan = self._ran = dispatch.plan(self)  # the engine's way to run these layers, if any
        if plan is not None:
            return plan.forward(x)
        for layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward

    def backward(self, dy: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Backpropagate dL/d(output); returns dL/dx, or None when ``input_grad`` is False."""
        plan = getattr(self, "_ran", None)
        # Frozen layers (``freeze``) need no gradient: training (input_grad=False) stops at
        # the first layer that learns, which skips its own dL/dx too.
        start = 0 if input_grad else min(self.frozen, len(self.layers))
        if plan is not None:  # the plan the last forward ran
            return plan.backward(dy, input_grad, start)
        layers = self.layers[start:]
        for layer in reversed(layers[1:]):
            dy = layer.backward(dy)
        if not layers:
            return None if start else dy
        first = layers[0]
        if not input_grad and accepts_input_grad(first):
            first.backward(dy, input_grad=False)  # nobody needs dL/dx of the input
            return None
        dx = first.backward(dy)
        return dx if input_grad else None

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The model's outputs (for a classifier: the logits) in eval mode, in batches.
        Integer images (uint8) are scaled to [0, 1]; other inputs are cast to the model's
        dtype. Restores the previous mode afterwards. Class probabilities:
        :meth:`predict_proba`."""
        x = np.asarray(x)
        if x.dtype.kind in "ui":
            x = x.astype(self.dtype) / 255
        elif x.dtype.kind == "f":
            x = x.astype(self.dtype, copy=False)
        else:
            raise DTypeError(f"predict: input must be numeric, got dtype {x.dtype}")
        if self.input_shape and x.ndim == len(self.input_shape):
            x = x[None]
        if x.ndim == 0 or len(x) == 0:
            raise ShapeError(f"predict: no images to predict (input shape {x.shape})")
        was_training = self.training
        self.eval()
        try:
            # BLAS threads as the command line chooses them (one for LeNet-sized work)
            with dispatch.threads(self, min(batch_size, len(x))):
                outs = [self.forward(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        finally:
            self.train(was_training)
        return np.concatenate(outs)

    def predict_proba(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities, (N, classes), rows summing to 1: the softmax of
        :meth:`predict`'s logits, or for a one-output (binary) model the two columns
        P(class 0) = 1 - sigmoid(z) and P(class 1) = sigmoid(z)."""
        z = self.predict(x, batch_size)
        z = z.reshape(len(z), -1)
        if z.shape[1] == 1:
            p1 = sigmoid(z[:, 0])
            return np.stack([1 - p1, p1], axis=1)
        return softmax(z, axis=1)

    def train(self, mode: bool = True) -> Sequential:
        """Training mode (BatchNorm uses and updates batch statistics, Dropout drops) or,
        with ``mode=False``, eval mode. Frozen layers (``freeze``) always run as in eval mode:
        BatchNorm keeps its running statistics, Dropout passes everything."""
        self.training = bool(mode)
        for i, layer in enumerate(self.layers):
            layer.train(bool(mode) and i >= self.frozen)
        return self

    def eval(self) -> Sequential:
        return self.train(False)

    # --- parameters and state ---------------------------------------------------------
    def named_layers(self, prefix: str = "") -> Iterator[tuple[str, Layer]]:
        """(prefix, layer) for every leaf layer, depth-first in forward order; blocks
        (Residual, Parallel) are walked into: "0", "1", "3.body.0", "3.shortcut.1", ..."""
        return leaves(((str(i), la) for i, la in enumerate(self.layers)), prefix)

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        """(key, array) for each trainable tensor, as torch's ``named_parameters()``; the key
        as in ``state_dict`` ("0.weight", "3.body.1.bias")."""
        for key, layer, name in self.named_leaf_parameters():
            yield key, layer.params[name]

    def named_leaf_parameters(self) -> Iterator[tuple[str, Layer, str]]:
        """(key, leaf layer, name) for each trainable tensor: where it lives, so that its
        gradient (``layer.grads[name]``, replaced by every backward) can be found too."""
        return leaf_parameters(self.named_layers())

    def parameters(self) -> Parameters:
        """The trainable arrays, in ``state_dict`` order. The list knows its model, so an
        optimiser takes it as torch's do: ``SGD(model.parameters(), lr=0.01)``."""
        return Parameters(
            (layer.params[name] for _, layer, name in self.named_leaf_parameters()), self
        )

    def named_trainable_parameters(self) -> Iterator[tuple[str, Layer, str]]:
        """As ``named_leaf_parameters``, without the frozen layers' (``freeze``): what an
        optimiser updates and what a backward in training fills."""
        live = ((str(i), la) for i, la in enumerate(self.layers) if i >= self.frozen)
        return leaf_parameters(leaves(live))

    def gradients(self) -> list[np.ndarray]:
        """dL/dparam of the last backward, in the order of ``parameters()``."""
        return [layer.grads[name] for _, layer, name in self.named_leaf_parameters()]

    def num_params(self) -> int:
        return int(sum(p.size for p in self.parameters()))

    def zero_grad(self) -> None:
        for layer in self.layers:
            layer.zero_grad()

    @property
    def dtype(self) -> np.dtype:
        """The float type of the first layer that has one (float32 if none has)."""
        return leaf_dtype(self.named_layers())

    def astype(self, dtype: Any) -> Sequential:
        """Convert every layer's parameters and buffers to ``dtype`` in place; returns self."""
        resolve_dtype(dtype)
        for layer in self.layers:
            layer.astype(dtype)
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, keyed as torch keys the same modules:
        ``"0.weight"``, ``"3.body.1.running_mean"``."""
        return {
            f"{prefix}.{name}": np.array(arr, copy=True)
            for prefix, layer in self.named_layers()
            for name, arr in layer.named_tensors()
        }

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into the model, all or nothing: every value is checked (keys, shapes,
        dtypes, finiteness after the cast) before any tensor is written. With ``strict`` every
        key must match; the error lists missing, unexpected and mis-shaped keys together.
        Float tensors take float, int or bool values (cast to the tensor's dtype; a value
        that the cast makes non-finite, like 1e300 into float32, is refused); integer buffers
        take only integers that fit their dtype."""
        if not isinstance(state, dict):
            raise DTypeError(f"load_state_dict: expected a dict, got {type(state).__name__}")
        targets: dict[str, tuple[dict[str, np.ndarray], str]] = {}
        for prefix, layer in self.named_layers():
            for store in (layer.params, layer.buffers):
                for name in store:
                    targets[f"{prefix}.{name}"] = (store, name)
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        misshaped = []
        for key, (store, name) in targets.items():
            if key in state and np.shape(state[key]) != store[name].shape:
                misshaped.append(
                    f"{key}: checkpoint {tuple(np.shape(state[key]))} vs model {store[name].shape}"
                )
        problems = []
        if missing and strict:
            problems.append("missing keys: " + ", ".join(missing))
        if unexpected and strict:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if misshaped:
            problems.append("mis-shaped: " + "; ".join(misshaped))
        if problems:
            raise ShapeError("load_state_dict: " + " | ".join(problems))
        staged = [
            (store, name, _cast_value(key, state[key], store[name].dtype))
            for key, (store, name) in targets.items()
            if key in state
        ]
        for store, name, value in staged:  # nothing is written until everything passed
            store[name][...] = value

    # --- transfer learning --------------------------------------------------------------
    def freeze(self, until: int | str) -> Sequential:
        """Keep layers ``0 .. until`` (inclusive; an index as ``info`` and ``summary`` number
        the top-level layers, negative from the end) fixed while the rest trains; returns
        self. Frozen layers run as in eval mode (BatchNorm keeps its running statistics,
        Dropout is off), optimisers leave their parameters untouched (bit for bit), and a
        training backward stops at the first layer that learns, so no gradient is computed
        below it. ``unfreeze()`` undoes it; ``frozen`` holds the count."""
        index = self.layer_index(until, "freeze")
        if index == len(self.layers) - 1 or not any(
            la.num_params() for la in self.layers[index + 1 :]
        ):
            raise ConfigError(
                f"freeze: until={until!r} leaves no parameter to train (the last layer with "
                f"parameters is {self._last_with_params()}); freeze fewer layers"
            )
        self.frozen = index + 1
        self._ran = None
        return self.train(self.training)

    def unfreeze(self) -> Sequential:
        """Let every layer train again (undoes ``freeze``); returns self."""
        self.frozen = 0
        self._ran = None
        return self.train(self.training)

    def layer_index(self, which: int | str, who: str = "layer") -> int:
        """The index of a top-level layer given as an int (negative from the end) or as its
        key in ``info``/``summary`` ("7", "-2")."""
        n = len(self.layers)
        index: Any = which
        if isinstance(which, str) and which.strip().lstrip("-").isdigit():
            index = int(which.strip())
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            hint = ""
            if isinstance(which, str) and "." in which:
                hint = (
                    f"; {which!r} is inside block {which.split('.')[0]}: layers are frozen "
                    "whole, by their top-level number"
                )
            raise ConfigError(
                f"{who}: expected a layer number from 0 to {n - 1} (or negative from the end), "
                f"got {which!r}{hint}"
            )
        if not -n <= int(index) < n:
            raise ConfigError(f"{who}: layer {index} does not exist (the model has {n} layers)")
        return int(index) % n

    def _last_with_params(self) -> str:
        found = [i for i, la in enumerate(self.layers) if la.num_params()]
        return str(found[-1]) if found else "none: the model has no parameters"

    def head_index(self) -> int:
        """The index of the classifier head: the last top-level layer with parameters, when
        it is a Dense or a 1x1 Conv2D (torchvision's SqueezeNet ends in one)."""
        found = [i for i, la in enumerate(self.layers) if la.num_params()]
        if found:
            layer = self.layers[found[-1]]
            if isinstance(layer, Dense) or (
                isinstance(layer, Conv2D) and layer.kernel_size == (1, 1) and layer.groups == 1
            ):
                return found[-1]
            what = f"layer {found[-1]} is {type(layer).__name__}"
        else:
            what = "the model has no parameters"
        raise ConfigError(
            f"replace_head: the model's last layer with parameters must be a Dense or a 1x1 "
            f"Conv2D (the classifier head), but {what}"
        )

    def replace_head(
        self, num_classes: int, rng: np.random.Generator | int | None = None
    ) -> Sequential:
        """Put a fresh classifier head with ``num_classes`` outputs in place of the last
        Dense (or 1x1 Conv2D) layer: same inputs, same bias setting, the layer's default
        initialisation (from ``rng``, or numpy's global generator as every new layer), the
        model's dtype. The head is never frozen. Returns self. This is how a pretrained
        model is fitted to new classes: ``model.replace_head(5).freeze(until=-3)``."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
            raise ConfigError(f"replace_head: num_classes must be an int, got {num_classes!r}")
        if not 1 <= int(num_classes) <= 1_000_000:
            raise ConfigError(f"replace_head: num_classes must be 1 to 1000000, got {num_classes}")
        i = self.head_index()
        old = self.layers[i]
        bias = "bias" in old.params
        if isinstance(old, Dense):
            new: Layer = Dense(old.in_features, int(num_classes), bias=bias, rng=rng)
        else:
            new = Conv2D(
                old.in_channels,
                int(num_classes),
                1,
                stride=old.stride,
                padding=old.padding,
                bias=bias,
                rng=rng,
                dilation=old.dilation,
            )
        new.astype(self.dtype)
        self.layers[i] = new
        if self.frozen > i:
            self.frozen = i
        self._ran = None
        self.train(self.training)
        if self.input_shape is not None:
            self.output_shapes()  # one clear error if a later layer needed the old count
        return self

    # --- description ------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The architecture as plain JSON data; ``Sequential.from_config`` rebuilds it."""
        config: dict[str, Any] = {
            "layers": [layer_spec(la) for la in self.layers],
            "input_shape": list(self.input_shape) if self.input_shape else None,
        }
        if self.frozen:  # only when set, so other models' configs read as before
            config["frozen"] = self.frozen
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Sequential:
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ConfigError("a model config must be a dict with a 'layers' list")
        model = cls(
            [layer_from_config(spec) for spec in config["layers"]],
            input_shape=config.get("input_shape"),
        )
        frozen = config.get("frozen", 0)
        if isinstance(frozen, bool) or not isinstance(frozen, int):
            raise ConfigError(f"a model config's 'frozen' must be an int, got {frozen!r}")
        if frozen:
            model.freeze(frozen - 1)
        return model

    def output_shapes(self, input_shape: tuple[int, ...] | None = None) -> list[tuple[int, ...]]:
        """Output shape after each layer for a batch of one of ``input_shape`` (C, H, W)."""
        shape_in = input_shape or self.input_shape
        if shape_in is None:
            raise ConfigError("give input_shape, e.g. summary((1, 28, 28))")
        shape = (1, *tuple(shape_in))
        shapes: list[tuple[int, ...]] = []
        for i, layer in enumerate(self.layers):
            try:
                shape = tuple(layer.output_shape(shape))
            except ShapeError as exc:
                raise ShapeError(f"layer {i} ({layer!r}) cannot take input {shape}: {exc}") from exc
            shapes.append(shape)
        return shapes

    def summary(self, input_shape: tuple[int, ...] | None = None) -> str:
        """A table: layer, output shape (batch shown as N), parameter count, and the totals.
        Blocks show their own row, then their sub-layers indented under it."""
        shape_in = input_shape or self.input_shape
        self.output_shapes(input_shape)  # one clear error naming the layer, if any
        rows = [("#", "layer", "output shape", "params")]
        shape = (1, *tuple(shape_in))
        for i, layer in enumerate(self.layers):
            first = len(rows)
            shape = _summary_rows(layer, str(i), shape, 0, rows)
            if i < self.frozen:  # mark the layer (and what it holds) as frozen
                rows[first:] = [(*r, "frozen") for r in rows[first:]]
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        line = "-" * (sum(widths) + 6 + (8 if self.frozen else 0))

        def fmt(r: tuple[str, ...]) -> str:
            w = widths
            text = f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}"
            return text + (f"  {r[4]}" if len(r) > 4 else "")

        text = [fmt(rows[0]), line, *(fmt(r) for r in rows[1:]), line]
        text.append(f"input (N, {', '.join(str(d) for d in shape_in)}), dtype {self.dtype.name}")
        text.append(f"total parameters: {self.num_params():,}")
        if self.frozen:
            fixed = sum(la.num_params() for la in self.layers[: self.frozen])
            text.append(
                f"frozen: layers 0-{self.frozen - 1} ({fixed:,} parameters kept fixed, "
                f"{self.num_params() - fixed:,} trained)"
            )
        return "\n".join(text)

    # --- container protocol -----------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __repr__(self) -> str:
        inner = "".join(
            f"\n  ({i}): " + repr(la).replace("\n", "\n  ") for i, la in enumerate(self.layers)
        )
        return f"Sequential({inner}\n)"

    # --- files (scratchcnn.checkpoint, reached through nn.dispatch) --------------------
    def save(self, path: Any, **state: Any) -> Any:
        """Write the model (architecture and weights) as a checkpoint, like ``sc.save(model,
        path, **state)`` (``optimizer=``, ``epoch=``, ... as there); returns the path.
        ``Sequential.load(path)`` reads it back."""
        return dispatch.storage().save(self, path, **state)

    @classmethod
    def load(cls, path: Any) -> Sequential:
        """The model saved at ``path`` by :meth:`save` (or ``scratchcnn train``), checked
        before anything in the file is used."""
        return dispatch.storage().load(path)

    def save_weights(self, path: Any) -> None:
        """Write ``state_dict()`` to ``path`` (str or os.PathLike) as a safetensors file, which
        loads into the same network in torch; see :mod:`scratchcnn.checkpoint.safetensors`."""
        dispatch.storage().save_weights(self, path)

    def load_weights(self, path: Any, strict: bool = True) -> None:
        """Load a safetensors file (ours or ``safetensors.torch.save_file``'s) in place; with
        ``strict`` the file's keys and the model's must match."""
        dispatch.storage().load_weights(self, path, strict=strict)


def _cast_value(key: str, value: Any, dtype: np.dtype) -> np.ndarray:
    """``value`` as ``dtype`` for load_state_dict, refusing what the cast would corrupt."""
    value = np.asarray(value)
    if value.dtype.kind not in "fiub":
        raise DTypeError(f"load_state_dict: {key} has non-numeric dtype {value.dtype}")
    if dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            cast = value.astype(dtype)
        if not np.all(np.isfinite(cast)):
            what = "contains NaN or inf" + (
                f" once cast to {dtype.name}" if np.all(np.isfinite(value)) else ""
            )
            raise ShapeError(f"load_state_dict: {key} {what}")
        return cast
    if value.dtype.kind not in "iu":
        raise DTypeError(
            f"load_state_dict: {key} is an integer buffer ({dtype.name}) but the value is "
            f"{value.dtype.name}"
        )
    info = np.iinfo(dtype)
    if value.size and (value.min() < info.min or value.max() > info.max):
        raise DTypeError(f"load_state_dict: {key} does not fit in {dtype.name}")
    return value.astype(dtype)


def _summary_rows(
    layer: Any, label: str, shape: tuple[int, ...], depth: int, rows: list[tuple[str, ...]]
) -> tuple[int, ...]:
    """Append ``layer``'s row (and, for a block, its children's) to ``rows``; returns the
    layer's output shape for an input of ``shape``."""
    out = tuple(layer.output_shape(shape))
    children = layer.named_children() if hasattr(layer, "named_children") else []
    name = f"{type(layer).__name__}({layer.extra_repr()})" if children else repr(layer)
    dims = "(N, " + ", ".join(str(d) for d in out[1:]) + ")"
    rows.append(("  " * depth + label, name, dims, f"{layer.num_params():,}"))
    for child_name, child in children:
        if hasattr(child, "layers"):  # a Sequential chain: its layers feed one another
            sub = shape
            for j, la in enumerate(child.layers):
                sub = _summary_rows(la, f"{label}.{child_name}.{j}", sub, depth + 1, rows)
        else:
            _summary_rows(child, f"{label}.{child_name}", shape, depth + 1, rows)
    return out
