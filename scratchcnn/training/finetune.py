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
from .datasets import FOLDER
from .evaluate import check_data_fits, default_loss


def _signature(model: Sequential) -> list[tuple[Any, ...]]:
    """What makes two models the same network: per layer, its type, its tensors' shapes and
    its output shape (so a stride or padding change shows too)."""
    shapes = model.output_shapes()
    return [
        (type(layer).__name__, tuple(a.shape for _, a in layer.named_tensors()), shape)
        for layer, shape in zip(model.layers, shapes, strict=True)
    ]


def read_init(path: str | os.PathLike) -> Sequential:
    """``--init``'s model (read and verified once), which must record its input shape."""
    model = load_checkpoint(path).model
    if model.input_shape is None:
        raise ConfigError(f"--init {path}: the model does not record its input shape")
    return model


def folder_defaults(run: dict[str, Any], explicit: dict[str, Any], model: Sequential) -> None:
    """With ``--init`` on a folder of images, the images are read at the model's own size and
    channels unless ``--image-size`` / ``--channels`` say otherwise."""
    if run["dataset"] != FOLDER or len(model.input_shape or ()) != 3:
        return
    channels, h, w = model.input_shape
    if explicit.get("image_size") is None and run.get("image_size") is None:
        run["image_size"] = [int(h), int(w)]
    if explicit.get("channels") is None and run.get("channels") is None and channels in (1, 3):
        run["channels"] = int(channels)


def check_transfer_settings(run: dict[str, Any]) -> None:
    """``--num-classes`` and ``--freeze`` change a pretrained model: they need ``--init``."""
    given = [
        f"--{k.replace('_', '-')}" for k in ("num_classes", "freeze") if run.get(k) is not None
    ]
    if given and not run["init"]:
        raise ConfigError(
            f"{' and '.join(given)}: only with --init CHECKPOINT (a trained model to adapt)"
        )


def _outputs(model: Sequential) -> int:
    return int(np.prod(model.output_shapes()[-1][1:]))


def init_model(
    model: Sequential,
    path: str | os.PathLike,
    model_name: str | None,
    dtype: Any,
    data: Dataset,
    *,
    num_classes: int | None = None,
    freeze: str | None = None,
    seed: int = 0,
) -> tuple[Sequential, list[str]]:
    """``--init``'s model, in ``dtype``, checked against ``--model`` (if given), fitted to
    the data and ready to train; with what was changed, in words for the header.

    * The classifier head (the last Dense or 1x1 Conv2D) is replaced by a fresh one when
      ``num_classes`` is given or the model's outputs differ from the data's classes.
    * ``freeze`` keeps layers 0 .. freeze fixed (``Sequential.freeze``).
    """
    if model_name is not None:
        ref = build_model(model_name, dtype=np.dtype(dtype))
        if ref.input_shape != model.input_shape or _signature(ref) != _signature(model):
            raise ConfigError(
                f"--init {path} holds another network than --model {model_name} "
                f"({len(model)} layers, input {tuple(model.input_shape)}); leave --model out "
                "to train the checkpoint's own network"
            )
    model.astype(dtype)
    notes: list[str] = []
    classes = len(data.classes)
    if num_classes is not None and num_classes != classes:
        raise ConfigError(
            f"--num-classes {num_classes}, but the data has {classes} classes; leave "
            "--num-classes out to fit the head to the data"
        )
    try:
        outputs = _outputs(model)
    except ScratchCNNError as exc:
        raise ConfigError(f"--init {path}: {exc}") from exc
    if num_classes is not None or outputs != classes:
        try:
            model.replace_head(classes, rng=seed)
        except ScratchCNNError as exc:
            raise ConfigError(f"--init {path}: {exc}") from exc
        head = model.head_index()
        notes.append(f"new head (layer {head}): {classes} outputs in place of {outputs}")
    if freeze is not None:
        try:
            model.freeze(freeze)
        except ScratchCNNError as exc:
            raise ConfigError(f"--freeze {freeze}: {exc}") from exc
        fixed = sum(la.num_params() for la in model.layers[: model.frozen])
        notes.append(f"layers 0-{model.frozen - 1} frozen ({fixed:,} parameters fixed)")
    try:
        check_data_fits(model, data, default_loss(model), "data set")
    except ScratchCNNError as exc:
        raise ConfigError(f"--init {path}: {exc}") from exc
    return model.train(), notes
