"""Per-parameter gradient norms over an epoch: the ``grad_norms`` of metrics.jsonl.

After every training step, ``GradNormMeter.update`` adds each parameter's gradient L2 norm
(one dot product per tensor); ``means`` gives the average over the epoch's steps, keyed like
``state_dict`` ("0.weight"). Norms are taken before the optimiser clips anything, so a
vanishing or exploding gradient shows as it is.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class GradNormMeter:
    """Mean over steps of ||dL/dparam||_2, per parameter."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.sums: dict[str, float] = {}
        self.steps = 0

    def restore(self, sums: dict[str, float], steps: int) -> None:
        """Continue an epoch that a mid-epoch checkpoint interrupted after ``steps`` steps."""
        self.sums = dict(sums)
        self.steps = steps

    def update(self) -> None:
        for key, layer, name in self.model.named_trainable_parameters():
            g = layer.grads[name]
            self.sums[key] = self.sums.get(key, 0.0) + math.sqrt(float(np.vdot(g, g)))
        self.steps += 1

    def means(self) -> dict[str, float] | None:
        """{key: mean norm}, or None before the first step."""
        if not self.steps:
            return None
        return {key: total / self.steps for key, total in self.sums.items()}
