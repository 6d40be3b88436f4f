"""The engine's optimiser update: SGD with momentum (no weight decay, no Nesterov) as one
compiled pass per parameter, ``buf = mu * buf + g; p -= lr * buf``, the same float
operations in the same order as ``scratchcnn.nn.optim.SGD`` (three NumPy passes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..nn.optim import SGD
from . import modes


def optimizer_update(opt: Any) -> Callable[[np.ndarray, np.ndarray, dict], None] | None:
    """The compiled update ``f(p, g, state)`` for ``opt``, or None (its own ``_update``)."""
    if type(opt) is not SGD or not opt.momentum or opt.weight_decay or opt.nesterov:
        return None
    if modes.active() is None:
        return None

    def update(p: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> None:
        fast = modes.for_dtype(p.dtype)
        if fast and p.flags.c_contiguous and g.flags.c_contiguous and g.dtype == p.dtype:
            t = p.dtype.type  # the scalars in p's dtype, as NumPy's arithmetic takes them
            buf = state["momentum_buffer"]
            fast.sgd_momentum(
                p.reshape(-1), g.reshape(-1), buf.reshape(-1), t(opt.lr), t(opt.momentum)
            )
        else:
            opt._update(p, g, state)

    return update
