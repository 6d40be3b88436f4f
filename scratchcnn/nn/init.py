"""Weight initialisers and the library's random number generator.

An initialiser is a callable ``init(shape, fan_in, fan_out, rng) -> float64 array``; layers
cast the result to their dtype, so one seed gives the same weights in float32 and float64.
Fans follow PyTorch: a Dense weight (out, in) has fan_in = in, fan_out = out; a Conv2D weight
(O, C, KH, KW) has fan_in = C*KH*KW, fan_out = O*KH*KW.

Named initialisers (pass the name or a callable to ``weight_init`` / ``bias_init``):

=================  ==========================================================
``"default"``      U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for
                   Conv2d/Linear weights and biases, and the LeNet tutorial's
``"he_uniform"``   U(-sqrt(6/fan_in), +sqrt(6/fan_in))      (Kaiming, for ReLU)
``"he_normal"``    N(0, 2/fan_in)
``"glorot_uniform"`` U(-sqrt(6/(fan_in+fan_out)), +...)     (Xavier, for tanh)
``"glorot_normal"``  N(0, 2/(fan_in+fan_out))
``"lecun_uniform"`` U(-sqrt(3/fan_in), +sqrt(3/fan_in))     (for SELU/linear)
``"lecun_normal"``  N(0, 1/fan_in)
``"tutorial"``     N(0, 1)/fan_in: the digit tutorial's filters (N(0,1)/9 for 3x3)
``"zeros"``, ``"ones"``
=================  ==========================================================

``uniform(low, high)``, ``normal(mean, std)`` and ``constant(value)`` build others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ConfigError

Initializer = Callable[[tuple[int, ...], int, int, np.random.Generator], np.ndarray]

_global_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator used by layers created without an explicit ``rng``."""
    global _global_rng
    _global_rng = np.random.default_rng(seed)


def get_rng(rng: np.random.Generator | int | None = None) -> np.random.Generator:
    """``rng`` itself, a new generator seeded with it, or the global one for ``None``."""
    if rng is None:
        return _global_rng
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:
            raise ConfigError(f"a seed must be a non-negative int, got {rng}")
        return np.random.default_rng(int(rng))
    raise ConfigError(f"rng must be a numpy Generator, an int seed or None, got {rng!r}")


def uniform(low: float, high: float) -> Initializer:
    """U(low, high)."""
    return lambda shape, fan_in, fan_out, rng: rng.uniform(low, high, size=shape)


def normal(mean: float = 0.0, std: float = 1.0) -> Initializer:
    """N(mean, std^2)."""
    return lambda shape, fan_in, fan_out, rng: rng.normal(mean, std, size=shape)


def constant(value: float) -> Initializer:
    """Every entry equal to ``value``."""
    return lambda shape, fan_in, fan_out, rng: np.full(shape, float(value))


def _bounded(bound: Callable[[int, int], float]) -> Initializer:
    def init(shape, fan_in, fan_out, rng):
        b = bound(fan_in, fan_out)
        return rng.uniform(-b, b, size=shape)

    return init


def _gauss(std: Callable[[int, int], float]) -> Initializer:
    return lambda shape, fan_in, fan_out, rng: rng.normal(0.0, std(fan_in, fan_out), size=shape)


INITIALIZERS: dict[str, Initializer] = {
    "default": _bounded(lambda fi, fo: 1.0 / np.sqrt(fi)),
    "he_uniform": _bounded(lambda fi, fo: np.sqrt(6.0 / fi)),
    "he_normal": _gauss(lambda fi, fo: np.sqrt(2.0 / fi)),
    "glorot_uniform": _bounded(lambda fi, fo: np.sqrt(6.0 / (fi + fo))),
    "glorot_normal": _gauss(lambda fi, fo: np.sqrt(2.0 / (fi + fo))),
    "lecun_uniform": _bounded(lambda fi, fo: np.sqrt(3.0 / fi)),
    "lecun_normal": _gauss(lambda fi, fo: np.sqrt(1.0 / fi)),
    "tutorial": lambda shape, fi, fo, rng: rng.standard_normal(shape) / fi,
    "zeros": constant(0.0),
    "ones": constant(1.0),
}


def initialize(
    init: str | Initializer,
    shape: tuple[int, ...],
    fan_in: int,
    fan_out: int,
    rng: np.random.Generator,
    dtype: np.dtype,
) -> np.ndarray:
    """Draw an array of ``shape`` with ``init`` (a name from INITIALIZERS or a callable)."""
    fn: Any = init
    if isinstance(init, str):
        fn = INITIALIZERS.get(init)
        if fn is None:
            raise ConfigError(
                f"unknown initializer {init!r}; choose one of {', '.join(INITIALIZERS)}"
            )
    elif not callable(init):
        raise ConfigError(f"an initializer must be a name or a callable, got {init!r}")
    values = np.asarray(fn(tuple(shape), fan_in, fan_out, rng), dtype=np.float64)
    if values.shape != tuple(shape):
        raise ConfigError(f"initializer returned shape {values.shape}, expected {tuple(shape)}")
    return np.ascontiguousarray(values, dtype=dtype)
