"""Losses: ``loss = fn.forward(output, target)`` returns a float; ``fn.backward()`` returns
dL/doutput for the last forward, in the output's dtype. All reduce by the mean (or the sum
with ``reduction="sum"``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, DTypeError, ShapeError, StateError
from .layers.activations import sigmoid
from .layers.base import check_array


class Loss:
    """Base class: reduction handling and the forward-before-backward check."""

    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in ("mean", "sum"):
            raise ConfigError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self._cache: Any = None

    def __call__(self, output: np.ndarray, target: Any) -> float:
        return self.forward(output, target)

    def forward(self, output: np.ndarray, target: Any) -> float:
        raise NotImplementedError

    def backward(self) -> np.ndarray:
        raise NotImplementedError

    def _require_cache(self) -> Any:
        if self._cache is None:
            raise StateError(f"{type(self).__name__}.backward called before forward")
        return self._cache

    def _check_output(self, output: np.ndarray, name: str) -> np.ndarray:
        """check_array, and refuse an empty batch: its mean is undefined (0 / 0)."""
        who = type(self).__name__
        output = check_array(output, who, name)
        if output.size == 0:
            raise ShapeError(
                f"{who}: empty batch ({name} of shape {output.shape}); nothing to average"
            )
        return output

    def _reduce(self, per_item: np.ndarray, count: int) -> float:
        return self._reduce_total(float(per_item.sum(dtype=np.float64)), count)

    def _reduce_total(self, total: float, count: int) -> float:
        return total / count if self.reduction == "mean" else total

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduction={self.reduction!r})"


def check_labels(
    labels: Any, n: int, num_classes: int, who: str, check_range: bool = True
) -> np.ndarray:
    """Integer class labels of shape (n,), each in [0, num_classes) (that last test left to
    the caller with ``check_range=False``: see ``label_out_of_range``)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise DTypeError(f"{who}: labels must be integers, got dtype {labels.dtype}")
    if not labels.dtype.isnative:  # e.g. read from a big-endian file: the kernels want native
        labels = labels.astype(labels.dtype.newbyteorder("="))
    if labels.ndim != 1:
        raise ShapeError(f"{who}: labels must be 1-D (N,), got shape {labels.shape}")
    if labels.shape[0] != n:
        raise ShapeError(
            f"{who}: batch size mismatch: logits have {n} rows but labels have {labels.shape[0]}"
        )
    if check_range:
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if bad.size:
            raise label_out_of_range(who, labels, int(bad[0]), num_classes)
    return labels


def label_out_of_range(who: str, labels: np.ndarray, i: int, num_classes: int) -> ShapeError:
    return ShapeError(
        f"{who}: label {int(labels[i])} at index {i} is out of range for {num_classes} "
        f"classes (valid: 0..{num_classes - 1})"
    )


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy on logits z (N, K) with integer labels y (N,).

    L = mean_n [ logsumexp(z_n) - z_n[y_n] ], with the row max subtracted before exp, so it
    never overflows. dL/dz = (softmax(z) - onehot(y)) / N.
    """

    def forward(self, logits: np.ndarray, labels: Any) -> float:
        who = "CrossEntropyLoss"
        logits = self._check_output(logits, "logits")
        if logits.ndim != 2:
            raise ShapeError(f"{who} expects logits of shape (N, classes), got {logits.shape}")
        n, k = logits.shape
        labels = check_labels(labels, n, k, who)
        top = logits.max(axis=1, keepdims=True)
        with np.errstate(over="ignore"):  # a logit far below the max: exp(-inf) = 0 is exact
            e = np.exp(logits - top)
        s = e.sum(axis=1, keepdims=True)
        # The per-item loss in float64: with float32 logits more than the float32 range apart,
        # z[label] = logit - max would overflow to -inf although the loss itself is finite.
        z_label = logits[np.arange(n), labels].astype(np.float64) - top[:, 0]
        per_item = np.log(s[:, 0], dtype=np.float64) - z_label
        e /= s
        self._cache = (e, labels)
        return self._reduce(per_item, n)

    def backward(self) -> np.ndarray:
        probs, labels = self._require_cache()
        n = probs.shape[0]
        grad = probs.copy()
        grad[np.arange(n), labels] -= 1
        if self.reduction == "mean":
            grad /= n
        return grad


class BCEWithLogitsLoss(Loss):
    """Sigmoid + binary cross-entropy on logits z and targets y in [0, 1], same shape.

    L = mean [ max(z, 0) - z*y + log(1 + exp(-|z|)) ] (stable for any z);
    dL/dz = (sigmoid(z) - y) / numel.
    """

    def forward(self, logits: np.ndarray, targets: Any) -> float:
        who = "BCEWithLogitsLoss"
        logits = self._check_output(logits, "logits")
        targets = np.asarray(targets)
        if targets.dtype.kind not in "iubf":
            raise DTypeError(f"{who}: targets must be numbers, got dtype {targets.dtype}")
        # Like torch: the same shape, no silent reshape ((N,) targets against (N, 1) logits
        # would otherwise pair them up by position only by luck).
        if targets.shape != logits.shape:
            raise ShapeError(
                f"{who}: targets shape {targets.shape} does not match logits shape {logits.shape}"
            )
        targets = targets.astype(logits.dtype, copy=False)
        if not np.isfinite(targets).all():
            raise ShapeError(f"{who}: targets hold NaN or infinite values")
        if np.any((targets < 0) | (targets > 1)):
            raise ShapeError(f"{who}: targets must lie in [0, 1]")
        per_item = np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))
        self._cache = (logits, targets)
        return self._reduce(per_item, logits.size)

    def backward(self) -> np.ndarray:
        logits, targets = self._require_cache()
        grad = sigmoid(logits) - targets
        if self.reduction == "mean":
            grad /= logits.size
        return grad


class MSELoss(Loss):
    """Mean squared error over every element (PyTorch's convention).

    L = mean (y - t)^2;  dL/dy = 2 (y - t) / numel.
    """

    def forward(self, output: np.ndarray, target: Any) -> float:
        who = "MSELoss"
        output = self._check_output(output, "output")
        target = np.asarray(target)
        if target.shape != output.shape:
            raise ShapeError(f"{who}: target shape {target.shape} != output shape {output.shape}")
        if target.dtype.kind not in "iubf":
            raise DTypeError(f"{who}: target must be numeric, got dtype {target.dtype}")
        diff = output - target.astype(output.dtype, copy=False)
        self._cache = diff
        return self._reduce(diff * diff, output.size)

    def backward(self) -> np.ndarray:
        diff = self._require_cache()
        grad = 2 * diff
        if self.reduction == "mean":
            grad /= diff.size
        return grad
