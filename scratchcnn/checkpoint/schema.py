"""The one schema of a checkpoint's metadata: every field's type and range, checked before
anything in a checkpoint is used.

:func:`check_metadata` walks the JSON object that ``scratchcnn.save`` writes (``__meta__``)
and raises :class:`SchemaError` with one line naming the first bad field. The rules:

* ``model``: the architecture. ``layers`` is a list of ``{"type", "config"}`` specs whose
  type is a registered, public layer name (never ``_Elementwise``/``_Pool2D``); configs are
  plain JSON, ``dtype`` only ``"float32"``/``"float64"``, sizes, kernels, strides and
  paddings within sane ranges; a config value that is a spec or a list of specs (a block's
  ``body``, ``branches``) is checked the same way, at most :data:`MAX_DEPTH` deep and
  :data:`MAX_LAYERS` layers in all. ``input_shape`` is (C, H, W), positive, at most
  :data:`MAX_INPUT_ELEMENTS` values per image.
* RNG states (``layer_rng``, ``rng``): a known bit generator and its integer fields, each of
  the right size (PCG64's 128-bit state, MT19937's 624 32-bit words, ...).
* ``optimizer``: hyper-parameters in the ranges the optimisers' constructors accept (lr > 0,
  momentum and betas in [0, 1), weight decay >= 0, eps > 0, ...) and a step count.
* ``scheduler``: epoch, base_lr and the schedule's own settings (``T_max``, ``step_size``,
  ``gamma``, ``eta_min``).
* ``extra``: ``history`` entries hold finite, bounded numbers (accuracy in [0, 1]),
  ``classes`` are at most :data:`MAX_CLASSES` strings of at most :data:`MAX_CLASS_NAME`
  characters (:func:`check_class_names`), ``run`` maps names to plain values; anything else
  is bounded JSON (finite numbers, 64-bit integers).

A field added to the format needs a line in :data:`META_FIELDS`; unknown fields are refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from ..errors import ScratchCNNError
from ..nn.layers.base import resolve_layer_type

#: Deepest nesting of layer specs inside layer configs (blocks in blocks ...).
MAX_DEPTH = 32
#: Most layers a model config may describe, nested ones included.
MAX_LAYERS = 10_000
#: Most values per image in ``input_shape`` (C * H * W), and in any layer's output.
MAX_INPUT_ELEMENTS = 2**24
#: Largest channel / feature count a layer config may name.
MAX_FEATURES = 2**24
#: Largest kernel size, stride, dilation or padding a layer config may name.
MAX_WINDOW = 4096
#: Bound on every float in the metadata (finite and far from overflow when printed or scaled).
MAX_FLOAT = 1e300
#: Most class names ``extra.classes`` may hold (one per output of the model at most).
MAX_CLASSES = MAX_FEATURES
#: Longest class name (characters) ``extra.classes`` may hold; ``scratchcnn import
#: --classes`` and the names an ONNX file carries are held to it before anything is written.
MAX_CLASS_NAME = 256
_INT64 = 2**63
_U32, _U64, _U128 = 2**32, 2**64, 2**128
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: A table of field name -> (what it must be, in words; the check).
Rules = dict[str, tuple[str, Callable[[Any], bool]]]
_LAYER_KEY = re.compile(r"\d{1,9}(\.[A-Za-z0-9_]{1,64}){0,64}")


class SchemaError(ScratchCNNError, ValueError):
    """A metadata field has the wrong type or is out of range (the message names it)."""


def _fail(where: str, what: str, value: Any) -> SchemaError:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return SchemaError(f"{where} must be {what}, got {text}")


def is_int(value: Any, low: int = -_INT64, high: int = _INT64 - 1) -> bool:
    """An int (not a bool) in [low, high]."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_number(value: Any, low: float = -MAX_FLOAT, high: float = MAX_FLOAT) -> bool:
    """A finite int or float (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value) and low <= value <= high
    except OverflowError:  # an int beyond the float range
        return False


def _count(where: str, value: Any, high: int = 2**53) -> None:
    if not is_int(value, 0, high):
        raise _fail(where, "a non-negative integer", value)


def check_json(where: str, value: Any, depth: int = 0) -> None:
    """Plain, bounded JSON: finite bounded numbers, 64-bit integers, nesting <= MAX_DEPTH."""
    if depth > MAX_DEPTH:
        raise SchemaError(f"{where} is nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if not is_int(value):
            raise _fail(where, "a 64-bit integer", value)
    elif isinstance(value, float):
        if not is_number(value):
            raise _fail(where, f"a finite number of magnitude <= {MAX_FLOAT:g}", value)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_json(f"{where}[{i}]", item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_json(f"{where}[{key!r}]", item, depth + 1)
    else:
        raise _fail(where, "plain JSON", value)


# --- random generator states ---------------------------------------------------------------
def _uint(bound: int) -> Callable[[Any], bool]:
    return lambda v: is_int(v, 0, bound - 1)


def _uints(n: int, bound: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and len(v) == n and all(is_int(x, 0, bound - 1) for x in v)


_BIT = _uint(2)
_PCG = {
    "state": {"state": _uint(_U128), "inc": _uint(_U128)},
    "has_uint32": _BIT,
    "uinteger": _uint(_U32),
}
#: The fields of every bit generator's ``state`` (after a JSON round trip), all required.
RNG_STATES: dict[str, dict[str, Any]] = {
    "PCG64": _PCG,
    "PCG64DXSM": _PCG,
    "MT19937": {"state": {"key": _uints(624, _U32), "pos": lambda v: is_int(v, 0, 624)}},
    "Philox": {
        "state": {"counter": _uints(4, _U64), "key": _uints(2, _U64)},
        "buffer": _uints(4, _U64),
        "buffer_pos": lambda v: is_int(v, 0, 4),
        "has_uint32": _BIT,
        "uinteger": _uint(_U32),
    },
    "SFC64": {"state": {"state": _uints(4, _U64)}, "has_uint32": _BIT, "uinteger": _uint(_U32)},
}


def _match(where: str, value: Any, rule: Any) -> None:
    if isinstance(rule, dict):
        if not isinstance(value, dict) or set(value) != set(rule):
            fields = ", ".join(sorted(rule))
            raise _fail(where, f"an object with exactly the fields {fields}", value)
        for key, sub in rule.items():
            _match(f"{where}.{key}", value[key], sub)
    elif not rule(value):
        raise _fail(where, "an integer field of the right size", value)


def check_rng_state(where: str, state: Any) -> None:
    """A bit generator's state: a known generator and integer fields of the right size."""
    if not isinstance(state, dict):
        raise _fail(where, "a random generator state (a JSON object)", state)
    name = state.get("bit_generator")
    if not isinstance(name, str) or name not in RNG_STATES:
        raise _fail(f"{where}.bit_generator", f"one of {', '.join(RNG_STATES)}", name)
    _match(where, {k: v for k, v in state.items() if k != "bit_generator"}, RNG_STATES[name])


def _rng_map(where: str, value: Any, key_rule: re.Pattern | None = None) -> None:
    if not isinstance(value, dict):
        raise SchemaError(f"{where!r} must be a JSON object, got {type(value).__name__}")
    for key, state in value.items():
        if key_rule is not None and not key_rule.fullmatch(key):
            raise _fail(f"{where} key", "a layer index like '2' or '3.body.1'", key)
        check_rng_state(f"{where}[{key!r}]", state)


# --- model config ----------------------------------------------------------------------------
def _window(value: Any, low: int) -> bool:
    """An int in [low, MAX_WINDOW], a pair of them, or a pair of pairs ((top, bottom), ...)."""
    if is_int(value, low, MAX_WINDOW):
        return True
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(is_int(v, low, MAX_WINDOW) or _window_pair(v, low) for v in value)
    )


def _window_pair(value: Any, low: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(is_int(v, low, MAX_WINDOW) for v in value)
    )


#: Rules for config keys that built-in layers share; a key not listed is plain bounded JSON.
CONFIG_RULES: Rules = {
    "dtype": ('"float32" or "float64"', lambda v: v in ("float32", "float64")),
    **{
        key: (f"an integer in [1, {MAX_FEATURES}]", lambda v: is_int(v, 1, MAX_FEATURES))
        for key in (
            "in_channels",
            "out_channels",
            "in_features",
            "out_features",
            "num_features",
            "groups",
        )
    },
    **{
        key: (f"an integer in [1, {MAX_WINDOW}] or a pair of them", lambda v: _window(v, 1))
        for key in ("kernel_size", "stride", "dilation")
    },
    "padding": (
        f'"same", "valid", or integers in [0, {MAX_WINDOW}] (one, a pair, or pairs)',
        lambda v: v in ("same", "valid") or _window(v, 0),
    ),
    **{
        key: ("true or false", lambda v: isinstance(v, bool))
        for key in ("bias", "affine", "ceil_mode", "count_include_pad")
    },
    # ChannelSlice's channel range; Clip's bounds (null: no bound); GELU's form
    "start": (f"an integer in [0, {MAX_FEATURES}]", lambda v: is_int(v, 0, MAX_FEATURES)),
    "stop": (f"an integer in [1, {MAX_FEATURES}]", lambda v: is_int(v, 1, MAX_FEATURES)),
    **{
        key: ("null or a finite number", lambda v: v is None or is_number(v))
        for key in ("min_value", "max_value")
    },
    "approximate": ('"none" or "tanh"', lambda v: v in ("none", "tanh")),
}


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and "type" in value


def _is_chain(value: Any) -> bool:
    """A layer spec or a non-empty list of them (one child of a block)."""
    return _is_spec(value) or (
        isinstance(value, list) and bool(value) and all(_is_spec(v) for v in value)
    )


class _Walk:
    """Counts layers across one model config."""

    def __init__(self) -> None:
        self.layers = 0

    def spec(self, where: str, spec: Any, depth: int) -> None:
        if depth > MAX_DEPTH:
            top = where.split(".config", 1)[0]  # the full path would be MAX_DEPTH fields long
            raise SchemaError(
                f"{top}: layers are nested more than {MAX_DEPTH} levels deep (blocks in blocks)"
            )
        self.layers += 1
        if self.layers > MAX_LAYERS:
            raise SchemaError(f"the model has more than {MAX_LAYERS} layers")
        if not _is_spec(spec) or not set(spec) <= {"type", "config"}:
            raise _fail(where, 'a layer spec {"type": ..., "config": {...}}', spec)
        try:
            resolve_layer_type(spec["type"])
        except ScratchCNNError as exc:
            raise SchemaError(f"{where}: {exc}") from exc
        config = spec.get("config", {})
        if not isinstance(config, dict):
            raise _fail(f"{where}.config", "a JSON object", config)
        for key, value in config.items():
            self.value(f"{where}.config.{key}", key, value, depth)

    def value(self, where: str, key: str, value: Any, depth: int) -> None:
        if _is_spec(value):
            self.spec(where, value, depth + 1)
        elif isinstance(value, list) and value and all(_is_spec(v) for v in value):
            for i, item in enumerate(value):
                self.spec(f"{where}[{i}]", item, depth + 1)
        elif isinstance(value, list) and value and all(_is_chain(v) for v in value):
            # a block's list of children, each a spec or a chain (Parallel's branches)
            for i, item in enumerate(value):
                self.value(f"{where}[{i}]", key, item, depth)
        elif key in CONFIG_RULES:
            what, ok = CONFIG_RULES[key]
            if not ok(value):
                raise _fail(where, what, value)
        else:
            check_json(where, value, depth)


def check_input_shape(where: str, shape: Any) -> None:
    """None, or the shape of one input without the batch axis: (C, H, W) for images, (F,) for
    a model that starts with Dense (an imported MLP head); positive ints, at most
    MAX_INPUT_ELEMENTS values in all."""
    if shape is None:
        return
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 3
        or not all(is_int(d, 1, MAX_INPUT_ELEMENTS) for d in shape)
        or math.prod(shape) > MAX_INPUT_ELEMENTS
    ):
        raise _fail(
            where,
            f"(C, H, W) or (features,): one to three positive integers, at most "
            f"{MAX_INPUT_ELEMENTS:,} values",
            shape,
        )


def check_model_config(config: Any) -> None:
    """A ``Sequential.config()``: specs of registered public layers, bounded (see above)."""
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise SchemaError("'model' must be the model's config (a JSON object)")
    unknown = sorted(set(config) - {"layers", "input_shape", "frozen"})
    if unknown:
        raise SchemaError(f"'model' has unknown fields {unknown}")
    check_input_shape("model.input_shape", config.get("input_shape"))
    frozen = config.get("frozen", 0)
    if (
        isinstance(frozen, bool)
        or not isinstance(frozen, int)
        or not 0 <= frozen < len(config["layers"])
    ):
        raise SchemaError(
            f"'model.frozen' must be a count of leading layers, 0 to {len(config['layers']) - 1}, "
            f"got {frozen!r}"
        )
    walk = _Walk()
    for i, spec in enumerate(config["layers"]):
        walk.spec(f"model.layers[{i}]", spec, 0)


# --- optimiser, scheduler, history -------------------------------------------------------------
def _beta(v: Any) -> bool:
    return is_number(v, 0.0) and v < 1


#: Hyper-parameters the optimisers take, with the ranges their constructors accept.
HYPER_RULES: Rules = {
    # The rate in use, which a schedule may have brought to 0 (its setting is base_lr > 0).
    "lr": ("a number >= 0", lambda v: is_number(v, 0.0)),
    "momentum": ("a number in [0, 1)", _beta),
    "dampening": ("a number in [0, 1]", lambda v: is_number(v, 0.0, 1.0)),
    "nesterov": ("true or false", lambda v: isinstance(v, bool)),
    "weight_decay": ("a number >= 0", lambda v: is_number(v, 0.0)),
    "betas": (
        "a pair of numbers in [0, 1)",
        lambda v: isinstance(v, list) and len(v) == 2 and all(_beta(b) for b in v),
    ),
    "eps": ("a number > 0", lambda v: is_number(v) and v > 0),
    "max_grad_norm": ("null or a number > 0", lambda v: v is None or (is_number(v) and v > 0)),
}

#: Settings of the learning-rate schedules (the first three are every schedule's).
SCHEDULER_RULES: Rules = {
    "type": ("a class name", lambda v: isinstance(v, str) and v.isidentifier()),
    "epoch": ("a non-negative integer", lambda v: is_int(v, 0, 2**31)),
    "base_lr": ("a number > 0", lambda v: is_number(v) and v > 0),
    "T_max": ("a positive integer", lambda v: is_int(v, 1, 2**31)),
    "eta_min": ("a number >= 0", lambda v: is_number(v, 0.0)),
    "step_size": ("a positive integer", lambda v: is_int(v, 1, 2**31)),
    "gamma": ("a number > 0", lambda v: is_number(v) and v > 0),
}


def _check_fields(
    obj: dict[str, Any], rules: Rules, name: Callable[[str], str], other: Callable[[str, Any], None]
) -> None:
    """Each field of ``obj`` by its rule; ``other(where, value)`` for fields without one."""
    for key, value in obj.items():
        if key in rules:
            what, ok = rules[key]
            if not ok(value):
                raise _fail(name(key), what, value)
        else:
            other(name(key), value)


def check_hyper(where: str, hyper: Any) -> None:
    """Optimiser hyper-parameters: known names in range, others plain numbers."""

    def other(_: str, value: Any) -> None:
        if not (
            value is None
            or isinstance(value, bool)
            or is_number(value)
            or (isinstance(value, list) and all(is_number(x) for x in value))
        ):
            raise SchemaError(f"{where} must map names to numbers")

    if not isinstance(hyper, dict):
        raise SchemaError(f"{where} must map names to numbers")
    _check_fields(hyper, HYPER_RULES, lambda k: f"{where} {k!r}", other)


def _check_optimizer(opt: Any) -> None:
    if not isinstance(opt, dict) or not isinstance(opt.get("type"), str):
        raise SchemaError("'optimizer' must be an object with a 'type' name")
    if not opt["type"].isidentifier():
        raise _fail("optimizer 'type'", "a class name", opt["type"])
    unknown = sorted(set(opt) - {"type", "hyper", "steps"})
    if unknown:
        raise SchemaError(f"'optimizer' has unknown fields {unknown}")
    check_hyper("optimizer 'hyper'", opt.get("hyper"))
    if not is_int(opt.get("steps"), 0, 2**53):
        raise _fail("optimizer 'steps'", "a non-negative integer", opt.get("steps"))


def check_scheduler_state(where: str, sched: Any) -> None:
    """A schedule's state: the known settings in range, others plain numbers."""
    if not isinstance(sched, dict):
        raise SchemaError(f"{where} must be a JSON object")
    for key in ("type", "epoch", "base_lr"):
        if key not in sched:
            raise SchemaError(f"{where} has no {key!r}")

    def other(name: str, value: Any) -> None:
        if not (value is None or isinstance(value, bool) or is_number(value)):
            raise _fail(name, "a number", value)

    _check_fields(sched, SCHEDULER_RULES, lambda k: f"{where} {k!r}", other)


def _check_scheduler(sched: Any) -> None:
    if not isinstance(sched, dict):
        raise SchemaError("'scheduler' must be a JSON object")
    check_scheduler_state("scheduler", sched)


_FRACTION = ("a number in [0, 1]", lambda v: is_number(v, 0.0, 1.0))
_LOSS = ("a finite number", is_number)
#: Fields of one epoch in the training history (``train.EpochMetrics``), all required.
HISTORY_RULES: Rules = {
    "epoch": ("a positive integer", lambda v: is_int(v, 1, 2**31)),
    "train_loss": _LOSS,
    "train_accuracy": _FRACTION,
    "test_loss": ("null or a finite number", lambda v: v is None or is_number(v)),
    "test_accuracy": ("null or a number in [0, 1]", lambda v: v is None or is_number(v, 0, 1)),
    "seconds": ("a number >= 0", lambda v: is_number(v, 0.0)),
    "lr": ("a number >= 0", lambda v: is_number(v, 0.0)),
}


def _check_history(history: Any) -> None:
    if not isinstance(history, list):
        raise _fail("extra.history", "a list of epochs", history)
    for i, entry in enumerate(history):
        where = f"extra.history[{i}]"
        if not isinstance(entry, dict):
            raise _fail(where, "an object", entry)
        missing = sorted(set(HISTORY_RULES) - set(entry))
        if missing:
            raise SchemaError(f"{where} lacks {missing}")
        _check_fields(entry, HISTORY_RULES, lambda k, w=where: f"{w}.{k}", check_json)


def _plain(v: Any) -> bool:
    """A run setting's value: null, a bool, a string, an integer or a number."""
    return v is None or isinstance(v, (bool, str)) or is_int(v) or is_number(v)


def check_class_names(where: str, value: Any) -> None:
    """A list of at most :data:`MAX_CLASSES` class names, each a string of at most
    :data:`MAX_CLASS_NAME` characters; else one SchemaError line naming the first bad one."""
    if not isinstance(value, list):
        raise _fail(where, "a list of class names (strings)", value)
    if len(value) > MAX_CLASSES:
        raise SchemaError(f"{where} holds {len(value):,} names, more than {MAX_CLASSES:,}")
    for i, name in enumerate(value):
        if not isinstance(name, str):
            raise _fail(f"{where}[{i}]", "a class name (a string)", name)
        if len(name) > MAX_CLASS_NAME:
            raise _fail(
                f"{where}[{i}]",
                f"a class name of at most {MAX_CLASS_NAME} characters (it has {len(name):,})",
                name,
            )


def _check_extra(extra: Any) -> None:
    if not isinstance(extra, dict):
        raise SchemaError(f"'extra' must be a JSON object, got {type(extra).__name__}")
    for key, value in extra.items():
        if key == "history":
            _check_history(value)
        elif key == "classes":
            check_class_names("extra.classes", value)
        elif key == "run":
            if not isinstance(value, dict) or not all(
                _plain(v) or (isinstance(v, list) and len(v) <= 8 and all(map(_plain, v)))
                for v in value.values()
            ):
                raise _fail("extra.run", "an object of plain settings", value)
        else:
            check_json(f"extra.{key}", value)


def _check_sha256(digests: Any) -> None:
    if not isinstance(digests, dict) or not all(
        isinstance(v, str) and _HEX64.fullmatch(v) for v in digests.values()
    ):
        raise SchemaError("'sha256' must map array names to SHA-256 hex digests")


def _check_epoch(epoch: Any) -> None:
    if epoch is not None and not is_int(epoch, 0, 2**31):
        raise SchemaError(f"'epoch' must be a non-negative integer, got {epoch!r}")


def _check_sealed(sealed: Any) -> None:
    if sealed not in (None, True, False):
        raise SchemaError(f"'sealed' must be true or false, got {sealed!r}")


def _optional(check: Callable[[Any], None]) -> Callable[[Any], None]:
    return lambda v: None if v is None else check(v)


#: Every field ``save`` writes, with its check (``format``/``version`` are checked first, by
#: the loader). Add a line here for a new field.
META_FIELDS: dict[str, Callable[[Any], None]] = {
    "format": lambda v: None,
    "version": lambda v: None,
    "sealed": _check_sealed,
    "sha256": _check_sha256,
    "model": check_model_config,
    "epoch": _check_epoch,
    "layer_rng": _optional(lambda v: _rng_map("layer_rng", v, _LAYER_KEY)),
    "rng": _optional(lambda v: _rng_map("rng", v)),
    "extra": _optional(_check_extra),
    "optimizer": _optional(_check_optimizer),
    "scheduler": _optional(_check_scheduler),
}


def check_metadata(meta: dict[str, Any]) -> None:
    """Every field of a checkpoint's metadata; SchemaError naming the first bad one."""
    unknown = sorted(set(meta) - set(META_FIELDS))
    if unknown:
        raise SchemaError(f"unknown fields {unknown}")
    for key in ("sha256", "model"):
        if key not in meta:
            raise SchemaError(f"{key!r} is missing")
    for key, check in META_FIELDS.items():
        check(meta.get(key))
