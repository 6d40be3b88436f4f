"""The model zoo: the networks of the tutorials, built from the public layers.

Every model takes images in [0, 1] (what ``scratchcnn.data.DataLoader`` yields) and outputs
logits; pair it with ``CrossEntropyLoss`` (or ``BCEWithLogitsLoss`` for ``shapes_net``).

Each builder takes ``num_classes`` and ``input_shape`` (C, H, W), so the same network builds
for grey 28x28 digits, colour 32x32 CIFAR images or a folder of 64x64 photos:
``build_model("lenet5", input_shape=(3, 32, 32), num_classes=100)``. Layers whose size
depends on the image (LeNet's first dense layer, the tiny CNN's softmax layer) are sized
from it; the ResNets end in global average pooling and take any size.
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


def _input(input_shape: Any, in_channels: int | None, default: tuple[int, int, int], who: str):
    """(C, H, W) from ``input_shape`` (or the default, with ``in_channels`` if given)."""
    if input_shape is None:
        c, h, w = default
        shape = (c if in_channels is None else in_channels, h, w)
    else:
        shape = tuple(input_shape)
        if len(shape) != 3:
            raise ConfigError(f"{who}: input_shape must be (C, H, W), got {input_shape!r}")
        if in_channels is not None and in_channels != shape[0]:
            raise ConfigError(f"{who}: in_channels={in_channels} but input_shape={shape}")
    c, h, w = (positive_int_arg(v, f"{who} input_shape") for v in shape)
    return c, h, w


def _too_small(who: str, shape: tuple[int, int, int], need: int) -> ConfigError:
    return ConfigError(
        f"{who}: images of {shape[1]}x{shape[2]} are too small (at least {need}x{need}); "
        "pass a larger --image-size or pick resnet8/resnet20"
    )


def tiny_cnn(
    num_classes: int = 10,
    dtype: Any = np.float32,
    seed: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
    in_channels: int | None = None,
) -> Sequential:
    """The digit tutorial's network: Conv 3x3 x8 (valid, no bias) -> MaxPool 2 -> Dense
    (8 * 13 * 13 = 1352 for 28x28) -> classes.

    Input (N, 1, 28, 28) in [0, 1] by default, shifted to [-0.5, 0.5] by a leading Rescale
    as in the tutorial; filters N(0,1)/9 and dense weights N(0,1)/fan_in ("tutorial" init),
    zero bias. No activation between the layers, exactly as the tutorial.
    """
    c, h, w = _input(input_shape, in_channels, (1, 28, 28), "tiny_cnn")
    if min(h, w) < 4:
        raise _too_small("tiny_cnn", (c, h, w), 4)
    rng = get_rng(seed) if seed is not None else None
    return Sequential(
        [
            Rescale(1.0, -0.5),
            Conv2D(c, 8, 3, bias=False, dtype=dtype, weight_init="tutorial", rng=rng),
            MaxPool2D(2),
            Flatten(),
            Dense(
                8 * ((h - 2) // 2) * ((w - 2) // 2),
                num_classes,
                dtype=dtype,
                weight_init="tutorial",
                bias_init="zeros",
                rng=rng,
            ),
        ],
        input_shape=(c, h, w),
    )


def lenet5(
    num_classes: int = 10,
    pool: str = "max",
    dtype: Any = np.float32,
    seed: int | None = None,
    in_channels: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> Sequential:
    """LeNet-5; for 28x28 inputs the first convolution pads 28x28 to 32x32.

    Conv 5x5 x6 (pad 2) -> ReLU -> pool 2 -> Conv 5x5 x16 -> ReLU -> pool 2 -> Flatten
    (16 * 5 * 5 = 400 for 28x28, 16 * 6 * 6 = 576 for 32x32) -> Dense 120 -> ReLU -> Dense 84
    -> ReLU -> Dense classes. ``pool="max"`` (the tutorial) or ``"avg"`` (the 1998 paper's
    subsampling). Weights U(+-1/sqrt(fan_in)) as in the tutorial and PyTorch.
    """
    pools: dict[str, Callable[[], Any]] = {"max": lambda: MaxPool2D(2), "avg": lambda: AvgPool2D(2)}
    if pool not in pools:
        raise ConfigError(f"lenet5: pool must be 'max' or 'avg', got {pool!r}")
    c, h, w = _input(input_shape, in_channels, (1, 28, 28), "lenet5")
    fh, fw = ((h // 2) - 4) // 2, ((w // 2) - 4) // 2  # after pool, 5x5 conv, pool
    if min(fh, fw) < 1:
        raise _too_small("lenet5", (c, h, w), 12)
    rng = get_rng(seed) if seed is not None else None
    return Sequential(
        [
            Conv2D(c, 6, 5, padding=2, dtype=dtype, rng=rng),
            ReLU(),
            pools[pool](),
            Conv2D(6, 16, 5, dtype=dtype, rng=rng),
            ReLU(),
            pools[pool](),
            Flatten(),
            Dense(16 * fh * fw, 120, dtype=dtype, rng=rng),
            ReLU(),
            Dense(120, 84, dtype=dtype, rng=rng),
            ReLU(),
            Dense(84, num_classes, dtype=dtype, rng=rng),
        ],
        input_shape=(c, h, w),
    )


def shapes_net(
    dtype: Any = np.float32,
    seed: int | None = None,
    num_classes: int = 2,
    input_shape: tuple[int, int, int] | None = None,
    in_channels: int | None = None,
) -> Sequential:
    """The cross-vs-rectangle toy: Conv 3x3 (weights U(0,1), bias 1) -> ReLU ->
    MaxPool 2x2 stride 1 (3x3 -> 2x2) -> Flatten 4 -> Dense 4->1, one logit per image
    (train with BCEWithLogitsLoss; sigmoid of the logit is P(rectangle)). It is built for its
    own data only: two classes of 1x5x5 images."""
    shape = _input(input_shape, in_channels, (1, 5, 5), "shapes_net")
    if shape != (1, 5, 5) or num_classes != 2:
        raise ConfigError(
            f"shapes_net is the 5x5 cross-vs-rectangle toy (1x5x5 images, 2 classes), not "
            f"for {shape[0]}x{shape[1]}x{shape[2]} images and {num_classes} classes; pick "
            "lenet5, resnet8 or resnet20"
        )
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


def _cifar_resnet(
    blocks: int,
    num_classes: int,
    dtype: Any,
    seed: int | None,
    shape: tuple[int, int, int],
    widths: tuple[int, int, int],
) -> Sequential:
    """He et al.'s CIFAR ResNets (6n + 2 layers): a 3x3 stem, three stages of ``blocks``
    basic blocks at ``widths`` channels (strides 1, 2, 2), global average pooling, Dense."""
    rng = get_rng(seed) if seed is not None else None
    w1, w2, w3 = (positive_int_arg(w, "widths") for w in widths)
    layers: list[Layer] = [
        Conv2D(shape[0], w1, 3, padding=1, bias=False, dtype=dtype, rng=rng),
        BatchNorm2D(w1, dtype=dtype),
        ReLU(),
    ]
    for cin, cout, stride in ((w1, w1, 1), (w1, w2, 2), (w2, w3, 2)):
        for b in range(blocks):
            first = b == 0
            layers += [
                _basic_block(cin if first else cout, cout, stride if first else 1, dtype, rng),
                ReLU(),
            ]
    layers += [GlobalAvgPool2D(), Flatten(), Dense(w3, num_classes, dtype=dtype, rng=rng)]
    return Sequential(layers, input_shape=shape)


def resnet8(
    num_classes: int = 10,
    dtype: Any = np.float32,
    seed: int | None = None,
    in_channels: int | None = None,
    widths: tuple[int, int, int] = (16, 32, 64),
    input_shape: tuple[int, int, int] | None = None,
) -> Sequential:
    """A small ResNet (He et al. 2016, the CIFAR family, one block a stage), 1x28x28 by
    default, any size (it ends in global average pooling).

    Stem: 3x3 conv x16 -> BN -> ReLU; three stages of one basic block at 16, 32, 64 channels
    (28x28, 14x14, 7x7; stride-2 1x1 conv + BN projection shortcuts), ReLU after each sum;
    global average pooling -> Flatten -> Dense to the classes. 7 convolutions + 1 dense = 8
    weight layers (the projections not counted), 78k parameters. Convolutions have no bias
    (BN follows each); every weight is PyTorch's default init U(+-1/sqrt(fan_in)).
    """
    shape = _input(input_shape, in_channels, (1, 28, 28), "resnet8")
    return _cifar_resnet(1, num_classes, dtype, seed, shape, widths)


def resnet20(
    num_classes: int = 10,
    dtype: Any = np.float32,
    seed: int | None = None,
    in_channels: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> Sequential:
    """ResNet-20 for CIFAR-10 (He et al. 2016, section 4.2: 8.75 % test error), 3x32x32 by
    default: a 3x3 stem at 16 channels, three stages of three basic blocks at 16, 32 and 64
    channels (32x32, 16x16, 8x8), global average pooling, Dense to the classes; 19
    convolutions + 1 dense = 20 weight layers.

    One difference from the paper: where a stage changes the shape, the shortcut is a 1x1
    convolution + BN projection (the paper's option B) rather than option A's zero-padded
    identity, as torchvision's ResNets do; it adds 2 of those convolutions and about 3k
    parameters (0.27 M in all).
    """
    shape = _input(input_shape, in_channels, (3, 32, 32), "resnet20")
    return _cifar_resnet(3, num_classes, dtype, seed, shape, (16, 32, 64))


#: name -> builder, for the command line and checkpoints.
MODELS: dict[str, Callable[..., Sequential]] = {
    "tiny_cnn": tiny_cnn,
    "lenet5": lenet5,
    "lenet5_avg": lambda **kw: lenet5(pool="avg", **kw),
    "shapes_net": shapes_net,
    "resnet8": resnet8,
    "resnet20": resnet20,
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
    # The paper's (He et al. 2016, 4.2): SGD momentum 0.9, weight decay 1e-4, batch 128, lr
    # 0.1, crop + flip; its 64k steps (~164 epochs of 45k images) with steps at 32k and 48k
    # become a cosine schedule over 164 epochs. That is a day of CPU time here: --epochs
    # shortens it.
    "resnet20": {
        "epochs": 164,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "schedule": "cosine",
        "augment": True,
    },
}


def build_model(name: str, **kwargs: Any) -> Sequential:
    """Build a zoo model by name (``tiny_cnn``, ``lenet5``, ``lenet5_avg``, ``shapes_net``,
    ``resnet8``, ``resnet20``); ``num_classes=``, ``input_shape=(C, H, W)``, ``dtype=`` and
    ``seed=`` go to the builder."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
