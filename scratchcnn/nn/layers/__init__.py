"""Layers: one small class each, with hand-written backward passes, and the containers
(Sequential, Residual, Parallel, Gate, DenseConcat) that hold them."""

from .activations import (
    GELU,
    Clip,
    Hardsigmoid,
    Hardswish,
    LeakyReLU,
    LogSoftmax,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from .base import LAYER_TYPES, Layer, layer_from_config
from .blocks import DenseConcat, Gate, Parallel, Residual
from .channels import ChannelScale, ChannelShuffle, ChannelSlice
from .conv import Conv2D
from .dense import Dense, Flatten
from .normalization import BatchNorm1D, BatchNorm2D, Dropout, LayerNorm2D
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .preprocessing import Normalize, Rescale
from .sequential import Sequential

__all__ = [
    "GELU",
    "LAYER_TYPES",
    "AvgPool2D",
    "BatchNorm1D",
    "BatchNorm2D",
    "ChannelScale",
    "ChannelShuffle",
    "ChannelSlice",
    "Clip",
    "Conv2D",
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
    "layer_from_config",
]
