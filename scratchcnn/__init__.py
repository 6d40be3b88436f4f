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

from . import init, optim
from .attribution import gradcam, saliency
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
from .gradcheck import GradcheckResult, gradcheck
from .init import manual_seed
from .io import Checkpoint, load, load_checkpoint, save
from .layers import (
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    LeakyReLU,
    LogSoftmax,
    MaxPool2D,
    Parallel,
    ReLU,
    Rescale,
    Residual,
    Sigmoid,
    Softmax,
    Tanh,
)
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss
from .model import Sequential
from .runtime import tune_allocator

__version__ = "0.1.0"

tune_allocator()

__all__ = [
    "AvgPool2D",
    "BCEWithLogitsLoss",
    "BatchNorm1D",
    "BatchNorm2D",
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "Conv2D",
    "CrossEntropyLoss",
    "DTypeError",
    "DataError",
    "Dense",
    "DistributedError",
    "Dropout",
    "FileWriteError",
    "Flatten",
    "GlobalAvgPool2D",
    "GradcheckResult",
    "Layer",
    "LeakyReLU",
    "LogSoftmax",
    "Loss",
    "MSELoss",
    "MaxPool2D",
    "MissingDependencyError",
    "OnnxError",
    "Parallel",
    "ReLU",
    "Rescale",
    "Residual",
    "ScratchCNNError",
    "Sequential",
    "ShapeError",
    "Sigmoid",
    "Softmax",
    "StateError",
    "Tanh",
    "TrainingDiverged",
    "__version__",
    "gradcam",
    "gradcheck",
    "init",
    "load",
    "load_checkpoint",
    "manual_seed",
    "optim",
    "saliency",
    "save",
]
