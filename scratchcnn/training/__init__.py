"""Training: the loop (``fit``), evaluation, checkpoints inside epochs (``midepoch``), exact
resume, run folders (``runs``), fine-tuning from a checkpoint (``finetune``), gradient
norms and TensorBoard event files. ``scratchcnn.train`` is this package's old name and
keeps working."""

from __future__ import annotations

from .loop import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    EpochMetrics,
    EvalResult,
    History,
    check_data_fits,
    default_loss,
    evaluate,
    fit,
    is_binary,
    make_optimizer,
    make_scheduler,
    non_finite_tensors,
)

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "EpochMetrics",
    "EvalResult",
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
