"""Evaluation: loss, accuracy and confusion matrix of a model on a data set, and the checks
that a data set fits a model before anything runs.

Models with one output are binary classifiers (``BCEWithLogitsLoss``, prediction
logit > 0); others use ``CrossEntropyLoss`` with the argmax as prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .. import engine
from ..data import DataLoader, Dataset
from ..errors import ConfigError, ScratchCNNError
from ..nn.layers.sequential import Sequential
from ..nn.losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss
from ..parallel.split import BatchSplit
from ..parallel.threads import chosen_threads


def progress_off(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` setting (None: only on a terminal)."""
    return None if progress is None else not progress


@dataclass
@dataclass
class EvalResult:
    """Loss, accuracy and confusion matrix (rows: true class, columns: predicted) on a set."""

    loss: float
    accuracy: float
    n: int
    confusion: np.ndarray
    predictions: np.ndarray = field(repr=False)


def is_binary(model: Sequential) -> bool:
    """True for a one-logit model (a binary classifier)."""
    if model.input_shape is not None:
        return model.output_shapes()[-1][-1] == 1
    outs = [la.out_features for la in model.layers if hasattr(la, "out_features")]
    return bool(outs) and outs[-1] == 1


def default_loss(model: Sequential) -> Loss:
    return BCEWithLogitsLoss() if is_binary(model) else CrossEntropyLoss()


def targets_for(loss_fn: Any, logits: np.ndarray, y: np.ndarray) -> Any:
    """Labels as the loss wants them: class indices, or 0/1 floats shaped like the logit."""
    if isinstance(loss_fn, BCEWithLogitsLoss):
        return y.reshape(logits.shape).astype(logits.dtype)
    return y


def predicted_classes(logits: np.ndarray) -> np.ndarray:
    """The class each row of logits predicts: logit > 0 for one output, else the argmax."""
    if logits.shape[-1] == 1:
        return (logits[:, 0] > 0).astype(np.int64)
    return logits.argmax(axis=1)


def evaluate(
    model: Sequential,
    dataset: Dataset,
    loss_fn: Loss | None = None,
    batch_size: int = 512,
    progress: bool | None = False,
    threads: int | None = None,
) -> EvalResult:
    """Loss, accuracy and confusion matrix of ``model`` on ``dataset`` in eval mode.

    ``threads``: the BLAS threads, and the slices each batch is split into
    (``scratchcnn.parallel``); None chooses as the command line does."""
    loss_fn = loss_fn or default_loss(model)
    check_data_fits(model, dataset, loss_fn, "data")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, dtype=model.dtype)
    was_training = model.training
    model.eval()
    total, preds = 0.0, []
    route = engine.loss_route(loss_fn)
    try:
        with (
            chosen_threads(model, batch_size, threads) as n,
            BatchSplit(model, loss_fn, n) as split,
        ):
            bar = tqdm(loader, desc="evaluate", leave=False, disable=progress_off(progress))
            for x, y in bar:
                logits = split.forward(x)
                total += route.forward(logits, targets_for(loss_fn, logits, y)) * len(y)
                preds.append(predicted_classes(logits))
    finally:
        model.train(was_training)
    pred = np.concatenate(preds)
    k = dataset.num_classes
    confusion = np.bincount(dataset.labels * k + pred, minlength=k * k).reshape(k, k)
    n = len(dataset)
    return EvalResult(
        loss=total / n,
        accuracy=float(np.mean(pred == dataset.labels)),
        n=n,
        confusion=confusion,
        predictions=pred,
    )


def check_data_fits(
    model: Sequential, data: Dataset, loss_fn: Loss | None = None, what: str = "data"
) -> None:
    """Refuse, before training, data the model cannot take: wrong image shape, labels the
    model has no output for, or arrays changed since the Dataset was built (NaN, inf, labels
    out of range). Raises ``ConfigError`` or ``DataError`` naming the data set."""
    if not isinstance(data, Dataset):
        raise ConfigError(f"{what} must be a scratchcnn.data.Dataset, got {type(data).__name__}")
    # Building a Dataset validates it; arrays are mutable, so validate what is there now.
    Dataset(data.images, data.labels, data.classes, data.name)
    expected = model.input_shape
    if expected is not None and tuple(expected) != data.input_shape:
        raise ConfigError(
            f"the model takes images {tuple(expected)} but {what} {data.name!r} has "
            f"{data.input_shape}"
        )
    try:
        out = model.output_shapes(data.input_shape)[-1]
    except ScratchCNNError as exc:
        raise ConfigError(
            f"{what} {data.name!r} (images {data.input_shape}) does not fit the model: {exc}"
        ) from exc
    if not isinstance(loss_fn, (CrossEntropyLoss, BCEWithLogitsLoss)):
        return
    # One output per class, no more and no fewer: a spare output would be predicted for a
    # class the confusion matrix has no row for.
    top, k = int(data.labels.max()), data.num_classes
    if isinstance(loss_fn, BCEWithLogitsLoss):
        if top > 1 or k != 2:
            raise ConfigError(
                f"the model is a binary classifier (one output) but {what} {data.name!r} has "
                f"{k} classes (largest label {top})"
            )
    elif len(out) != 2 or out[-1] != k or top >= k:
        raise ConfigError(
            f"the model has {out[-1] if len(out) == 2 else out} outputs but {what} "
            f"{data.name!r} has {k} classes (largest label {top})"
        )
