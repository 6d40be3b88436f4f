"""``scratchcnn train --init CHECKPOINT``: start a new run from a checkpoint's weights.

The architecture and the weights come from the checkpoint (one written by ``train``, or by
``scratchcnn import`` from an ONNX file); the run's own settings (optimiser, learning rate,
epochs, dtype) apply from step one, with a fresh optimiser state. Nothing is trained before
the checks below pass.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..checkpoint import load_checkpoint
from ..data import Dataset
from ..errors import ConfigError, ScratchCNNError
from ..nn.layers.sequential import Sequential
from ..nn.zoo import build_model
from .evaluate import check_data_fits, default_loss


def _signature(model: Sequential) -> list[tuple[Any, ...]]:
    """What makes two models the same network: per layer, its type, its tensors' shapes and
    its output shape (so a stride or padding change shows too)."""
    shapes = model.output_shapes()
    return [
        (type(layer).__name__, tuple(a.shape for _, a in layer.named_tensors()), shape)
        for layer, shape in zip(model.layers, shapes, strict=True)
    ]


def init_model(
    path: str | os.PathLike, model_name: str | None, dtype: Any, data: Dataset
) -> Sequential:
    """The checkpoint's model, in ``dtype``, checked against ``--model`` (if given) and
    against the data (channels, image size, number of classes)."""
    model = load_checkpoint(path).model
    if model.input_shape is None:
        raise ConfigError(f"--init {path}: the model does not record its input shape")
    if model_name is not None:
        ref = build_model(model_name, dtype=np.dtype(dtype))
        if ref.input_shape != model.input_shape or _signature(ref) != _signature(model):
            raise ConfigError(
                f"--init {path} holds another network than --model {model_name} "
                f"({len(model)} layers, input {tuple(model.input_shape)}); leave --model out "
                "to train the checkpoint's own network"
            )
    model.astype(dtype)
    try:
        check_data_fits(model, data, default_loss(model), "data set")
    except ScratchCNNError as exc:
        raise ConfigError(f"--init {path}: {exc}") from exc
    return model.train()
