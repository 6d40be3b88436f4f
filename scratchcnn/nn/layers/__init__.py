"""Layers: one small class each, with hand-written backward passes, and the containers
(Sequential, Residual, Parallel) that hold them."""

from .activations import LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .base import LAYER_TYPES, Layer, layer_from_config
from .blocks import Parallel, Residual
from .conv import Conv2D
from .dense import Dense, Flatten
from .normalization import BatchNorm1D, BatchNorm2D, Dropout
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .preprocessing import Normalize, Rescale
from .sequential import Sequential

__all__ = [
    "LAYER_TYPES",
    "AvgPool2D",
    "BatchNorm1D",
    "BatchNorm2D",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAvgPool2D",
    "Layer",
    "LeakyReLU",
    "LogSoftmax",
    "MaxPool2D",
    "Normalize",
    "Parallel",
    "ReLU",
    "Rescale",
    "Residual",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "layer_from_config",
]
