"""scratchcnn: convolutional neural networks on NumPy, every gradient written by hand.

import numpy as np, scratchcnn as sc
model = sc.Sequential([sc.Conv2D(1, 8, 3), sc.ReLU(), sc.MaxPool2D(2), sc.Flatten(),
                       sc.Dense(8 * 13 * 13, 10)])
loss_fn = sc.CrossEntropyLoss()
opt = sc.optim.SGD(model, lr=0.01, momentum=0.9)
loss = loss_fn.forward(model.forward(x), y)
model.backward(loss_fn.backward())
opt.step()
"""

import importlib
import sys

from . import checkpoint, engine, nn
from ._version import __version__
from .checkpoint import Checkpoint, load, load_checkpoint, save
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DistributedError,
    DTypeError,
    FileWriteError,
    MissingDependencyError,
    OnnxError,
    ScratchCNNError,
    ShapeError,
    StateError,
    TrainingDiverged,
)
from .nn import init, optim
from .nn.attribution import gradcam, saliency
from .nn.gradcheck import GradcheckResult, gradcheck
from .nn.init import manual_seed
from .nn.layers import (
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
from .nn.losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss

#: Module paths documented before the package had sub-packages, and where they live now.
#: Each old name is the same module object as its new one (not a copy), so
#: ``import scratchcnn.models`` and ``from scratchcnn.kernels import using`` keep working.
_OLD_NAMES = {
    "init": "nn.init",
    "optim": "nn.optim",
    "models": "nn.zoo",
    "kernels": "engine",
    "distributed": "parallel.mpi",
    "train": "training",
}
for _old, _new in _OLD_NAMES.items():
    _module = importlib.import_module(f".{_new}", __name__)
    sys.modules[f"{__name__}.{_old}"] = _module
    globals()[_old] = _module
del _old, _new, _module

__all__ = [
    "GELU",
    "AvgPool2D",
    "BCEWithLogitsLoss",
    "BatchNorm1D",
    "BatchNorm2D",
    "ChannelScale",
    "ChannelShuffle",
    "ChannelSlice",
    "Checkpoint",
    "CheckpointError",
    "Clip",
    "ConfigError",
    "Conv2D",
    "CrossEntropyLoss",
    "DTypeError",
    "DataError",
    "Dense",
    "DenseConcat",
    "DistributedError",
    "Dropout",
    "FileWriteError",
    "Flatten",
    "Gate",
    "GlobalAvgPool2D",
    "GradcheckResult",
    "Hardsigmoid",
    "Hardswish",
    "Layer",
    "LayerNorm2D",
    "LeakyReLU",
    "LogSoftmax",
    "Loss",
    "MSELoss",
    "MaxPool2D",
    "MissingDependencyError",
    "Normalize",
    "OnnxError",
    "Parallel",
    "ReLU",
    "ReLU6",
    "Rescale",
    "Residual",
    "ScratchCNNError",
    "Sequential",
    "ShapeError",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "StateError",
    "Tanh",
    "TrainingDiverged",
    "__version__",
    "checkpoint",
    "engine",
    "gradcam",
    "gradcheck",
    "init",
    "load",
    "load_checkpoint",
    "manual_seed",
    "nn",
    "optim",
    "saliency",
    "save",
]
