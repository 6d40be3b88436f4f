"""How many BLAS threads the command line uses, chosen per workload.

OpenBLAS starts one thread per core and its idle workers spin. On LeNet-sized work (a batch
of 32 28x28 images is a few small matrix products per layer) a second thread gains nothing,
and when anything else runs on the machine the spinning workers make training 4-18x slower
(BENCHMARKS.md, "BLAS threads"). So the command line runs such work on one thread and only
gives a step big enough to share more threads (see :func:`auto_threads`).

The choice depends only on the model, the batch size and the BLAS's own setting, never on
the machine's current load: the thread count changes how matrix products sum (the last
bits of the results), and an exact ``--resume`` needs the same count as the first run.

Order of precedence: ``--threads N``, then ``$SCRATCHCNN_NUM_THREADS``, then the automatic
choice, which never exceeds what the BLAS was started with (``OPENBLAS_NUM_THREADS``,
``OMP_NUM_THREADS`` ... keep working as a ceiling).
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError
from ..nn.layers.sequential import Sequential

__all__ = [
    "MACS_PER_THREAD",
    "auto_threads",
    "model_macs",
    "resolve_threads",
    "set_blas_threads",
]

#: Multiply-adds per training step (batch x per-image MACs) that one more thread needs to
#: pay for its synchronisation; below it, one thread. LeNet-5 (0.42 M MACs per image) stays
#: on one thread up to batch ~1,200. Chosen conservatively (BENCHMARKS.md, "BLAS threads"):
#: measured on the default job, not on models large enough to cross it.
MACS_PER_THREAD = 5e8
#: Most threads the automatic choice uses: matrix products of these sizes stop scaling.
MAX_AUTO_THREADS = 4
ENV_VAR = "SCRATCHCNN_NUM_THREADS"


def model_macs(model: Sequential) -> int:
    """Multiply-adds of one forward pass for one image, counted over Conv2D and Dense (the
    layers that call BLAS), inside blocks too; 0 if the model does not know its input shape."""
    if model.input_shape is None:
        return 0
    total, shape = 0, (1, *model.input_shape)
    for layer in model.layers:
        macs, shape = _layer_macs(layer, shape)
        total += macs
    return total


def _layer_macs(layer: Any, shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(multiply-adds, output shape) of ``layer`` for an input of ``shape``. A block's
    children (a Residual's body and shortcut, a Parallel's branches) all take its input."""
    out = tuple(layer.output_shape(shape))
    children = layer.named_children() if hasattr(layer, "named_children") else None
    if children is not None:
        total = 0
        for _, child in children:
            sub = shape
            for inner in getattr(child, "layers", [child]):
                macs, sub = _layer_macs(inner, sub)
                total += macs
        return total, out
    weight = getattr(layer, "params", {}).get("weight")
    if weight is None or weight.ndim not in (2, 4):
        return 0, out
    per_output = int(weight[0].size)  # C/groups*KH*KW for a conv, in_features for Dense
    outputs = 1
    for d in out[1:]:
        outputs *= int(d)
    return per_output * outputs, out


def auto_threads(model: Sequential, batch_size: int, available: int | None = None) -> int:
    """One thread per MACS_PER_THREAD multiply-adds of a training step (forward + backward
    is about 3x the forward), at least 1, at most ``available`` and MAX_AUTO_THREADS."""
    available = available or os.cpu_count() or 1
    step = 3 * model_macs(model) * max(1, batch_size)
    return max(1, min(int(step // MACS_PER_THREAD), available, MAX_AUTO_THREADS))


def resolve_threads(requested: int | None, model: Sequential, batch_size: int) -> int:
    """The thread count to use: ``requested`` (``--threads``), else $SCRATCHCNN_NUM_THREADS,
    else :func:`auto_threads` capped at the BLAS's current setting."""
    if requested is None:
        text = os.environ.get(ENV_VAR, "").strip()
        if text:
            try:
                requested = int(text)
            except ValueError:
                requested = 0
            if requested < 1:
                raise ConfigError(f"{ENV_VAR}={text!r}: expected a positive integer")
    if requested is not None:
        return requested
    return auto_threads(model, batch_size, _current_blas_threads())


def _current_blas_threads() -> int | None:
    from threadpoolctl import threadpool_info

    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return min(counts) if counts else None


def set_blas_threads(n: int) -> None:
    """Limit the BLAS to ``n`` threads from now on in this process (threadpoolctl). The
    command line calls it once, before the work; a library never changes it behind its
    caller's back (Python code uses ``threadpoolctl.threadpool_limits`` itself)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n, user_api="blas")
