"""The formulas: layers, containers, losses, optimisers, initialisers and the model zoo,
each in plain NumPy beside its math. A learner reads here.

* ``layers``: one small class per layer (``forward`` caches what ``backward`` needs;
  ``backward`` returns dL/dx and fills ``grads``), and Sequential / Residual / Parallel;
* ``windows``: im2col, col2im and the sliding windows of convolution and pooling;
* ``losses``, ``optim``, ``init``: the training pieces, as PyTorch defines them;
* ``gradcheck``: finite differences against any layer, model or loss;
* ``attribution``: saliency, Grad-CAM and per-layer statistics, by the same backward passes;
* ``zoo``: the tutorials' networks and their recipes (also ``scratchcnn.models``).

Nothing here imports the rest of scratchcnn (only ``scratchcnn.errors``). The engine, which
makes these layers fast, and the checkpoint format, which writes them to disk, plug in
through ``dispatch``: see docs/architecture.md.
"""

from __future__ import annotations

from . import dispatch, init, optim, windows
from .layers import (
    GELU,
    AvgPool2D,
    BatchNorm1D,
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
    GlobalAvgPool2D,
    Hardsigmoid,
    Hardswish,
    Layer,
    LayerNorm2D,
    LeakyReLU,
    LogSoftmax,
    MaxPool2D,
    Normalize,
    Parallel,
    ReLU,
    ReLU6,
    Rescale,
    Residual,
    Sequential,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss

__all__ = [
    "GELU",
    "AvgPool2D",
    "BCEWithLogitsLoss",
    "BatchNorm1D",
    "BatchNorm2D",
    "ChannelScale",
    "ChannelShuffle",
    "ChannelSlice",
    "Clip",
    "Conv2D",
    "CrossEntropyLoss",
    "Dense",
    "DenseConcat",
    "Dropout",
    "Flatten",
    "Gate",
    "GlobalAvgPool2D",
    "Hardsigmoid",
    "Hardswish",
    "Layer",
    "LayerNorm2D",
    "LeakyReLU",
    "LogSoftmax",
    "Loss",
    "MSELoss",
    "MaxPool2D",
    "Normalize",
    "Parallel",
    "ReLU",
    "ReLU6",
    "Rescale",
    "Residual",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "dispatch",
    "init",
    "optim",
    "windows",
]
