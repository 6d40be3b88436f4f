"""Training: the loop (``fit`` with its ``FitSettings``, one epoch, one step), evaluation,
resuming from a checkpoint read once (``resume``), checkpoints inside epochs
(``midepoch``), run folders and their files (``runs``), the ``train`` command's job
(``job``), fine-tuning from a checkpoint (``finetune``), gradient norms and TensorBoard
event files. ``scratchcnn.train`` is this package's old name and keeps working."""

from __future__ import annotations

from .evaluate import EvalResult, check_data_fits, default_loss, evaluate, is_binary
from .loop import (
    FitSettings,
    History,
    fit,
    make_optimizer,
    make_scheduler,
    non_finite_tensors,
)
from .runs import CHECKPOINT_NAME, METRICS_NAME, RUN_CONFIG, EpochMetrics

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "RUN_CONFIG",
    "EpochMetrics",
    "EvalResult",
    "FitSettings",
    "History",
    "check_data_fits",
    "default_loss",
    "evaluate",
    "fit",
    "is_binary",
    "make_optimizer",
    "make_scheduler",
    "non_finite_tensors",
]
