"""How many BLAS threads a workload gets, chosen per workload, at every entry point.

OpenBLAS starts one thread per core and its idle workers spin. On LeNet-sized work (a batch
of 32 28x28 images is a few small matrix products per layer) a second thread gains nothing,
and when anything else runs on the machine the spinning workers make training 4-18x slower
(BENCHMARKS.md, "BLAS threads"). So the command line runs such work on one thread and only
gives a step big enough to share more threads (see :func:`auto_threads`).

The choice depends only on the model, the batch size and the BLAS's own setting, never on
the machine's current load: the thread count changes how matrix products sum (the last
bits of the results), and an exact ``--resume`` needs the same count as the first run.

Order of precedence: ``--threads N`` (``threads=N`` in Python), then
``$SCRATCHCNN_NUM_THREADS``, then the automatic choice, which never exceeds what the BLAS
was started with (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS`` ... keep working as a
ceiling). A count above the machine's cores is refused in one line (each thread of a split
batch is a worker process: 100,000 of them would exhaust the machine).

Every entry point chooses this way and applies the count for the duration of its work
only (:func:`blas_threads`, restored afterwards): the command line, ``fit``, ``evaluate``
and ``Sequential.predict`` (which reaches :func:`chosen_threads` through
``scratchcnn.nn.dispatch``). In your own loop, ``with blas_threads(1):`` does the same.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .._blas import blas_libraries as blas_libraries  # re-exported: the old home
from .._blas import blas_threads as blas_threads
from .._blas import current_blas_threads as _current_blas_threads
from ..errors import ConfigError
from ..nn.layers.sequential import Sequential

__all__ = [
    "MACS_PER_THREAD",
    "auto_threads",
    "blas_threads",
    "check_threads",
    "chosen_threads",
    "max_threads",
    "model_macs",
    "resolve_threads",
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
    layers that call BLAS), inside blocks too; 0 if the model does not know its input shape.
    Remembered per model for its current layers and input shape (``predict`` asks every
    call)."""
    if model.input_shape is None:
        return 0
    key = (tuple(map(id, model.layers)), tuple(model.input_shape))
    cached = _MACS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    total, shape = 0, (1, *model.input_shape)
    for layer in model.layers:
        macs, shape = _layer_macs(layer, shape)
        total += macs
    _MACS[model] = (key, total)
    return total


_MACS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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
    available = available or max_threads()
    step = 3 * model_macs(model) * max(1, batch_size)
    return max(1, min(int(step // MACS_PER_THREAD), available, MAX_AUTO_THREADS))


def max_threads() -> int:
    """The cores this process may run on (its CPU affinity where the OS says, else the
    machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_threads(n: Any, where: str) -> int:
    """``n`` if it is a positive int of at most :func:`max_threads`; else one line naming
    ``where`` it came from."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{where} must be a positive integer, got {n!r}")
    cores = max_threads()
    if n > cores:
        raise ConfigError(
            f"{where}: {n} threads, but this machine gives this process {cores} "
            f"core{'s' if cores != 1 else ''}; ask for at most {cores}"
        )
    return n


def resolve_threads(requested: int | None, model: Sequential, batch_size: int) -> int:
    """The thread count to use: ``requested`` (``--threads``), else $SCRATCHCNN_NUM_THREADS,
    else :func:`auto_threads` capped at the BLAS's current setting."""
    if requested is not None:
        return check_threads(requested, "threads")
    text = os.environ.get(ENV_VAR, "").strip()
    if text:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(f"{ENV_VAR}={text[:40]!r}: expected a positive integer")
        return check_threads(value, ENV_VAR)
    return auto_threads(model, batch_size, _current_blas_threads())


@contextmanager
def chosen_threads(model: Any, batch_size: int, requested: int | None = None) -> Iterator[int]:
    """:func:`resolve_threads`' count for ``model`` at ``batch_size``, applied to the BLAS
    for the duration of the block; yields the count."""
    n = resolve_threads(requested, model, batch_size)
    with blas_threads(n):
        yield n
