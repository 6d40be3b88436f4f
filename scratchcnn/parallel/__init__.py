"""More than one core or machine: a batch split over threads or worker processes
(``split``, ``procsplit``), data-parallel training over MPI (``mpi``, with its heartbeat
and the per-rank ``supervise``-or), how many BLAS threads a workload gets (``threads``),
and glibc's allocator tuning for a training process (``allocator``).

``scratchcnn.distributed`` is the old name of ``scratchcnn.parallel.mpi`` and keeps working.
Not to be confused with the ``Parallel`` block (branches side by side inside a model).
"""

from __future__ import annotations

from ..nn import dispatch as _dispatch
from . import mpi, supervise, threads
from .allocator import tune_allocator
from .split import (
    BACKENDS,
    MIN_ITEMS_PER_THREAD,
    SPLIT_ENV,
    BatchSplit,
    OneBlasThread,
    SliceSync,
    resolve_backend,
    splittable_in_training,
)

__all__ = [
    "BACKENDS",
    "MIN_ITEMS_PER_THREAD",
    "SPLIT_ENV",
    "BatchSplit",
    "OneBlasThread",
    "SliceSync",
    "mpi",
    "resolve_backend",
    "splittable_in_training",
    "supervise",
    "threads",
    "tune_allocator",
]

_dispatch.install_threads(threads.chosen_threads)
