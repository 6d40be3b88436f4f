"""The model zoo: the networks of the tutorials, built from the public layers.

Every model takes images in [0, 1] (what ``scratchcnn.data.DataLoader`` yields) and outputs
logits; pair it with ``CrossEntropyLoss`` (or ``BCEWithLogitsLoss`` for ``shapes_net``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ConfigError
from .init import get_rng, uniform
from .layers import (
    AvgPool2D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    MaxPool2D,
    ReLU,
    Rescale,
    Residual,
)
from .layers.base import positive_int as positive_int_arg
from .layers.sequential import Sequential


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


def _basic_block(cin: int, cout: int, stride: int, dtype: Any, rng: Any) -> Residual:
    """ResNet's basic block: [3x3 conv (stride) -> BN -> ReLU -> 3x3 conv -> BN] + shortcut,
    the shortcut a 1x1 conv (stride) + BN projection when the shape changes, else identity.
    The ReLU after the sum is the next layer in the Sequential."""

    def conv(ci: int, co: int, k: int, s: int) -> Layer:
        return Conv2D(ci, co, k, stride=s, padding=k // 2, bias=False, dtype=dtype, rng=rng)

    body = [
        conv(cin, cout, 3, stride),
        BatchNorm2D(cout, dtype=dtype),
        ReLU(),
        conv(cout, cout, 3, 1),
        BatchNorm2D(cout, dtype=dtype),
    ]
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = [conv(cin, cout, 1, stride), BatchNorm2D(cout, dtype=dtype)]
    return Residual(body, shortcut)


def resnet8(
    num_classes: int = 10,
    dtype: Any = np.float32,
    seed: int | None = None,
    in_channels: int = 1,
    widths: tuple[int, int, int] = (16, 32, 64),
) -> Sequential:
    """A small ResNet for 28x28 images (He et al. 2016, the CIFAR family, one block a stage).

    Stem: 3x3 conv x16 -> BN -> ReLU; three stages of one basic block at 16, 32, 64 channels
    (28x28, 14x14, 7x7; stride-2 1x1 conv + BN projection shortcuts), ReLU after each sum;
    global average pooling -> Flatten -> Dense to the classes. 7 convolutions + 1 dense = 8
    weight layers (the projections not counted), 78k parameters. Convolutions have no bias
    (BN follows each); every weight is PyTorch's default init U(+-1/sqrt(fan_in)).
    """
    rng = get_rng(seed) if seed is not None else None
    w1, w2, w3 = (positive_int_arg(w, "widths") for w in widths)
    layers: list[Layer] = [
        Conv2D(in_channels, w1, 3, padding=1, bias=False, dtype=dtype, rng=rng),
        BatchNorm2D(w1, dtype=dtype),
        ReLU(),
    ]
    for cin, cout, stride in ((w1, w1, 1), (w1, w2, 2), (w2, w3, 2)):
        layers += [_basic_block(cin, cout, stride, dtype, rng), ReLU()]
    layers += [GlobalAvgPool2D(), Flatten(), Dense(w3, num_classes, dtype=dtype, rng=rng)]
    return Sequential(layers, input_shape=(in_channels, 28, 28))


#: name -> builder, for the command line and checkpoints.
MODELS: dict[str, Callable[..., Sequential]] = {
    "tiny_cnn": tiny_cnn,
    "lenet5": lenet5,
    "lenet5_avg": lambda **kw: lenet5(pool="avg", **kw),
    "shapes_net": shapes_net,
    "resnet8": resnet8,
}


#: Per-model training recipes: the settings of ``scratchcnn train`` that differ from its
#: defaults (which are lenet5's). resnet8's is the benchmark's (benchmarks/resnet_fashion_mnist.py):
#: 30 epochs reach 93.35 % test accuracy on full Fashion-MNIST (PyTorch, same run: 93.22 %).
RECIPES: dict[str, dict[str, Any]] = {
    "resnet8": {
        "epochs": 30,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "augment": True,
    },
}


def build_model(name: str, **kwargs: Any) -> Sequential:
    """Build a zoo model by name (``tiny_cnn``, ``lenet5``, ``lenet5_avg``, ``shapes_net``,
    ``resnet8``)."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
