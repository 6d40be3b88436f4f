"""The model zoo: the networks of the tutorials, built from the public layers.

Every model takes images in [0, 1] (what ``scratchcnn.data.DataLoader`` yields) and outputs
logits; pair it with ``CrossEntropyLoss`` (or ``BCEWithLogitsLoss`` for ``shapes_net``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import ConfigError
from .init import get_rng, uniform
from .layers import (
    AvgPool2D,
    Conv2D,
    Dense,
    Flatten,
    MaxPool2D,
    ReLU,
    Rescale,
)
from .model import Sequential


def tiny_cnn(num_classes: int = 10, dtype: Any = np.float32, seed: int | None = None) -> Sequential:
    """The digit tutorial's network: Conv 3x3 x8 (valid, no bias) -> MaxPool 2 -> Dense 1352->10.

    Input (N, 1, 28, 28) in [0, 1], shifted to [-0.5, 0.5] by a leading Rescale as in the
    tutorial; filters N(0,1)/9 and dense weights N(0,1)/1352 ("tutorial" init), zero bias.
    No activation between the layers, exactly as the tutorial.
    """
    rng = get_rng(seed) if seed is not None else None
    return Sequential(
        [
            Rescale(1.0, -0.5),
            Conv2D(1, 8, 3, bias=False, dtype=dtype, weight_init="tutorial", rng=rng),
            MaxPool2D(2),
            Flatten(),
            Dense(
                13 * 13 * 8,
                num_classes,
                dtype=dtype,
                weight_init="tutorial",
                bias_init="zeros",
                rng=rng,
            ),
        ],
        input_shape=(1, 28, 28),
    )


def lenet5(
    num_classes: int = 10,
    pool: str = "max",
    dtype: Any = np.float32,
    seed: int | None = None,
    in_channels: int = 1,
) -> Sequential:
    """LeNet-5 for 28x28 inputs: the first convolution pads 28x28 to 32x32.

    Conv 5x5 x6 (pad 2) -> ReLU -> pool 2 -> Conv 5x5 x16 -> ReLU -> pool 2 -> Flatten 400
    -> Dense 120 -> ReLU -> Dense 84 -> ReLU -> Dense 10. ``pool="max"`` (the tutorial) or
    ``"avg"`` (the 1998 paper's subsampling). Weights U(+-1/sqrt(fan_in)) as in the tutorial
    and PyTorch.
    """
    pools: dict[str, Callable[[], Any]] = {"max": lambda: MaxPool2D(2), "avg": lambda: AvgPool2D(2)}
    if pool not in pools:
        raise ConfigError(f"lenet5: pool must be 'max' or 'avg', got {pool!r}")
    rng = get_rng(seed) if seed is not None else None
    return Sequential(
        [
            Conv2D(in_channels, 6, 5, padding=2, dtype=dtype, rng=rng),
            ReLU(),
            pools[pool](),
            Conv2D(6, 16, 5, dtype=dtype, rng=rng),
            ReLU(),
            pools[pool](),
            Flatten(),
            Dense(400, 120, dtype=dtype, rng=rng),
            ReLU(),
            Dense(120, 84, dtype=dtype, rng=rng),
            ReLU(),
            Dense(84, num_classes, dtype=dtype, rng=rng),
        ],
        input_shape=(in_channels, 28, 28),
    )


def shapes_net(dtype: Any = np.float32, seed: int | None = None) -> Sequential:
    """The cross-vs-rectangle toy: Conv 3x3 (weights U(0,1), bias 1) -> ReLU ->
    MaxPool 2x2 stride 1 (3x3 -> 2x2) -> Flatten 4 -> Dense 4->1, one logit per image
    (train with BCEWithLogitsLoss; sigmoid of the logit is P(rectangle))."""
    rng = get_rng(seed) if seed is not None else None
    return Sequential(
        [
            Conv2D(1, 1, 3, dtype=dtype, weight_init=uniform(0.0, 1.0), bias_init="ones", rng=rng),
            ReLU(),
            MaxPool2D(2, stride=1),
            Flatten(),
            Dense(4, 1, dtype=dtype, rng=rng),
        ],
        input_shape=(1, 5, 5),
    )


#: name -> builder, for the command line and checkpoints.
MODELS: dict[str, Callable[..., Sequential]] = {
    "tiny_cnn": tiny_cnn,
    "lenet5": lenet5,
    "lenet5_avg": lambda **kw: lenet5(pool="avg", **kw),
    "shapes_net": shapes_net,
}


def build_model(name: str, **kwargs: Any) -> Sequential:
    """Build a zoo model by name (``tiny_cnn``, ``lenet5``, ``lenet5_avg``, ``shapes_net``)."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
