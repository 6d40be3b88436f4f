"""The engine's softmax cross-entropy: the loss and dL/dlogits of
``scratchcnn.nn.CrossEntropyLoss`` in one compiled pass each, instead of a dozen array
operations. The training loop and the batch split take it through ``loss_route``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ShapeError
from ..nn.losses import CrossEntropyLoss, check_labels, label_out_of_range
from . import modes


class CrossEntropyRoute:
    """``forward(logits, labels)`` and ``backward()`` of one CrossEntropyLoss, compiled."""

    def __init__(self, loss: CrossEntropyLoss) -> None:
        self.loss = loss
        self.reduction = loss.reduction
        self._cache: Any = None

    def forward(self, logits: np.ndarray, labels: Any) -> float:
        who = "CrossEntropyLoss"
        logits = self.loss._check_output(logits, "logits")
        if logits.ndim != 2:
            raise ShapeError(f"{who} expects logits of shape (N, classes), got {logits.shape}")
        fast = modes.for_dtype(logits.dtype)
        if fast is None:
            self._cache = None
            return self.loss.forward(logits, labels)
        n, k = logits.shape
        labels = check_labels(labels, n, k, who, check_range=False)
        e = np.empty_like(logits)
        total, bad = fast.softmax_xent(logits, labels, e)
        if bad >= 0:
            raise label_out_of_range(who, labels, bad, k)
        self._cache = (e, labels)
        return self.loss._reduce_total(total, n)

    __call__ = forward

    def backward(self) -> np.ndarray:
        if self._cache is None:
            return self.loss.backward()
        probs, labels = self._cache
        n = probs.shape[0]
        grad = np.empty_like(probs)
        fast = modes.compiled()
        fast.softmax_xent_grad(probs, labels, n if self.reduction == "mean" else 1, grad)
        return grad


def loss_route(loss: Any) -> Any:
    """What to call for ``loss``'s forward and backward: the compiled route for a
    CrossEntropyLoss while the engine is on, else the loss itself (also when its forward or
    backward was replaced on the instance: a hook runs as replaced)."""
    hooked = "forward" in loss.__dict__ or "backward" in loss.__dict__
    if type(loss) is CrossEntropyLoss and modes.engine_on() and not hooked:
        return CrossEntropyRoute(loss)
    return loss
