"""The contenders of an inference benchmark: scratchcnn's model, its torch twin and an
onnxruntime session on the same batch (and, for an A/B, scratchcnn without its inference
plan). Shared by torchvision_import.py and small_nets_onnxruntime.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def layer_by_layer(model: Any, x: np.ndarray) -> object:
    """``model.forward(x)`` without the inference plan: every layer's route in turn, as a
    training pass runs them."""
    from scratchcnn.engine import inference

    inference.INFERENCE_PLAN = False
    try:
        return model.forward(x)
    finally:
        inference.INFERENCE_PLAN = True


def contenders(model: Any, net: torch.nn.Module, sess: Any, feed: str, x: np.ndarray,
               ab: bool = False) -> dict[str, Callable[[], object]]:  # fmt: skip
    """{name: one inference call} on batch ``x`` (eval mode throughout); ``ab`` adds
    ``scratchcnn-layers``, the same model layer by layer."""
    xt = torch.from_numpy(x)

    def torch_step() -> object:
        with torch.inference_mode():
            return net(xt)

    steps = {
        "scratchcnn": lambda: model.forward(x),
        "torch": torch_step,
        "onnxruntime": lambda: sess.run(None, {feed: x}),
    }
    if ab:
        steps["scratchcnn-layers"] = lambda: layer_by_layer(model, x)
    return steps
