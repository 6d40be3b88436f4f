"""Split one batch over several threads: each runs a replica of the model on its slice.

Why: most of a small CNN's step is single-threaded NumPy work (element-wise passes,
copies, Python dispatch), and the GEMMs of narrow layers (6 or 16 channels) gain little
from a second BLAS thread — OpenBLAS's second core mostly spins. Running two halves of the
batch side by side, each with single-threaded BLAS, keeps both cores busy with real work.
NumPy releases the GIL inside its loops and BLAS calls, so plain Python threads suffice.

The math is the whole batch's: for a loss that averages over the batch (``reduction=
"mean"``), L = sum_k (n_k / n) L_k over slices k of n_k items, so each replica's upstream
gradient is scaled by n_k / n and the parameter gradients are summed,
dL/dtheta = sum_k dL_k'/dtheta. The replicas share the model's parameter and buffer arrays
(an optimiser step updates all of them at once) and own only their gradients and caches.
The slices and the order of the sum are fixed, so results are deterministic for a given
number of threads; they differ from a single-threaded step in the last bits only (float
sums in another order).

BatchNorm2D/BatchNorm1D in training use the statistics of the *whole* batch, not of each
slice: the split passes each slice's thread a totaller (``SliceSync``: a barrier per sum,
the slices' parts added in slice order, the same bits in every thread) through
``scratchcnn.engine.batch_statistics``, and the engine's BatchNorm routes total their
per-channel sums through it before they normalise, and again for the two sums of their
backward pass. The step is then the whole-batch step, up to float rounding. (Every replica
must reach its BatchNorm layers in the same order, which holds for any model whose layers
do not branch on the data; an exception in one slice aborts the barrier, so it never
hangs.) Models whose layers draw random numbers (Dropout: its masks come from one
generator), and models with BatchNorm when the engine is off (``SCRATCHCNN_KERNELS=numpy``:
the reference layers see only their slice), are not split in training mode: ``BatchSplit``
then runs the model whole, in the calling thread, so results never change meaning. In eval
mode every model can be split.
"""

from __future__ import annotations

import copy
import itertools
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import engine
from ..errors import ConfigError
from ..nn import init as _init
from ..nn.layers.base import Layer, leaf_layers
from ..nn.layers.sequential import Sequential
from ..nn.losses import Loss
from . import procsplit
from .procsplit import SplitStartError
from .threads import blas_threads, check_threads

#: Smallest slice worth a thread: below this the hand-off (tens of microseconds) and the
#: smaller GEMMs cost more than the second core gives back.
MIN_ITEMS_PER_THREAD = 8


def _leaves(model: Sequential) -> Iterator[Layer]:
    return (layer for _, layer in leaf_layers(model))


def splittable_in_training(model: Sequential) -> bool:
    """Whether a training step of ``model`` can be split without changing its meaning: no
    layer draws random numbers (Dropout's masks come from one generator), and BatchNorm
    layers, if any, can total their statistics over the slices (``engine``)."""
    random = any(isinstance(getattr(la, "rng", None), np.random.Generator) for la in _leaves(model))
    return not random and engine.splits_batch_norm(model)


def _replica(model: Sequential) -> Sequential:
    """A model of the same architecture whose layers share ``model``'s parameters and
    buffers (the same arrays) but have their own gradients and caches."""
    # Building draws initial weights; keep the global generator where it was so that
    # splitting never changes what later code (new layers, Dropout seeds) draws.
    state = _init.get_rng(None).bit_generator.state
    try:
        twin = Sequential.from_config(model.config())
    finally:
        _init.get_rng(None).bit_generator.state = state
    pairs = list(zip(_leaves(twin), _leaves(model), strict=True))
    for mine, theirs in pairs:
        mine.params = theirs.params
        mine.buffers = theirs.buffers
        mine.grads = {k: np.zeros_like(v) for k, v in theirs.params.items()}
    return twin


class SliceSync:
    """Sums of per-channel vectors over the ``parts`` slices of one split batch.

    Thread k's BatchNorm layers call ``member(k).total(v)`` with their slice's sums; each
    call returns sum_k v_k to every thread, added in slice order. One barrier per call: the
    slots alternate between two sets, so a thread that races ahead to its next call cannot
    overwrite a slot that another thread is still reading. ``abort()`` (a thread failed)
    wakes every waiting thread with ``threading.BrokenBarrierError``.
    """

    def __init__(self, parts: int) -> None:
        self._barrier = threading.Barrier(parts)
        self._slots: list[list[Any]] = [[None] * parts, [None] * parts]

    def member(self, k: int) -> _SliceMember:
        return _SliceMember(self, k)

    def abort(self) -> None:
        self._barrier.abort()


class _SliceMember:
    """Thread k's side of a ``SliceSync``: the totaller its BatchNorm routes use
    (``scratchcnn.engine.batch_statistics``)."""

    def __init__(self, group: SliceSync, k: int) -> None:
        self.group, self.k, self.lead, self.calls = group, k, k == 0, 0

    def total(self, v: np.ndarray) -> np.ndarray:
        slots = self.group._slots[self.calls % 2]
        self.calls += 1
        slots[self.k] = v
        self.group._barrier.wait()
        total = slots[0].copy()
        for part in slots[1:]:
            total += part
        return total


def _builtin_only(config: Any) -> bool:
    """Whether every layer type in a model config (blocks walked into) is built in: a
    custom type's saved name is qualified with its module ("mymodule.MyLayer")."""
    if isinstance(config, dict):
        kind = config.get("type")
        if isinstance(kind, str) and "." in kind:
            return False
        return all(_builtin_only(v) for v in config.values())
    if isinstance(config, list):
        return all(_builtin_only(v) for v in config)
    return True


#: How BatchSplit runs its slices: ``SCRATCHCNN_SPLIT`` = auto (processes where they work:
#: x86-64 Linux; threads elsewhere), threads, or processes (``scratchcnn.procsplit``).
SPLIT_ENV = "SCRATCHCNN_SPLIT"
BACKENDS = ("auto", "threads", "processes")


def resolve_backend(backend: str | None = None) -> str:
    """``threads`` or ``processes``: ``backend`` if given, else ``SCRATCHCNN_SPLIT``, else
    auto (processes where ``scratchcnn.procsplit.available()``)."""
    where = "backend" if backend is not None else SPLIT_ENV
    raw = backend if backend is not None else os.environ.get(SPLIT_ENV, "auto") or "auto"
    text = str(raw).strip().lower()
    if text not in BACKENDS:
        raise ConfigError(f"{where} must be one of {', '.join(BACKENDS)}, got {raw!r}")
    if text == "processes" and not procsplit.available():
        raise ConfigError("the processes backend needs x86-64 Linux; use threads")
    if text == "auto":
        return "processes" if procsplit.available() else "threads"
    return text


class OneBlasThread:
    """Call it for a context in which BLAS runs one thread in this process: each slice of a
    split owns one core (``threads.blas_threads(1)``, through library handles found once)."""

    def __call__(self) -> Any:
        return blas_threads(1)


class BatchSplit:
    """Forward/backward of ``model`` with each batch split over ``threads`` threads.

    ``step(x, y)`` does forward, loss and backward and leaves dL/dparam of the whole batch
    in ``model``'s ``grads`` (then call the optimiser as usual); it returns ``(loss,
    logits)``. ``forward(x)`` is inference, split the same way. BLAS runs single-threaded
    inside split calls (threadpoolctl), and at its usual setting otherwise. ``threads=None``
    or 1: no splitting, the model runs whole in the calling thread.
    """

    def __init__(
        self,
        model: Sequential,
        loss_fn: Loss,
        threads: int | None = None,
        backend: str | None = None,
    ) -> None:
        threads = check_threads(1 if threads is None else threads, "threads")
        self.backend = resolve_backend(backend)
        self._procs: Any = None
        self.model = model
        self.loss_fn = loss_fn
        self.threads = threads
        self._replicas: list[Sequential] = [model]
        self._losses: list[Loss] = [loss_fn]
        self._pool: ThreadPoolExecutor | None = None
        self._blas_limit: Any = None
        # A worker process rebuilds the model from its config: only scratchcnn's own layer
        # classes are sure to exist there (a custom layer may live in the user's __main__).
        self._rebuildable = _builtin_only(model.config())
        self._splittable: tuple[str, bool] | None = None  # (engine mode, answer)

    # --- set-up, on first use ------------------------------------------------------------
    def _ensure(self, parts: int) -> None:
        while len(self._replicas) < parts:
            self._replicas.append(_replica(self.model))
            self._losses.append(copy.copy(self.loss_fn))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="scratchcnn")
        if self._blas_limit is None:
            self._blas_limit = OneBlasThread()

    def _parts(self, n: int, training: bool) -> int:
        if training:
            mode = engine.mode()
            if self._splittable is None or self._splittable[0] != mode:
                self._splittable = (mode, splittable_in_training(self.model))
            if not self._splittable[1]:
                return 1
        return max(1, min(self.threads, n // MIN_ITEMS_PER_THREAD))

    def _process_split(self, parts: int) -> Any:
        """The process backend for ``parts`` slices (started on first use), or None."""
        if self.backend != "processes" or not self._rebuildable:
            return None
        if self._procs is None or self._procs.parts != parts:
            if self._procs is not None:
                procsplit.release(self._procs)
            self._ensure(1)  # the BLAS limiter
            self._procs = procsplit.acquire(self.model, self.loss_fn, parts)
        return self._procs

    def _fall_back(self, exc: Exception) -> None:
        """Worker processes cannot start here (no memfd, no fork/exec, a sandbox): say so
        once and split over threads from now on."""
        warnings.warn(f"{exc}; splitting over threads instead", RuntimeWarning, stacklevel=3)
        self.backend = "threads"
        if self._procs is not None:
            self._procs.close()
            self._procs = None

    def close(self) -> None:
        """Release the threads; worker processes are parked for the next BatchSplit of the
        same model (``scratchcnn.procsplit.shutdown()`` ends them at once)."""
        if self._procs is not None:
            procsplit.release(self._procs)
            self._procs = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> BatchSplit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- running ---------------------------------------------------------------------------
    def _run(self, parts: int, job: Any, slices: list[slice]) -> list[Any]:
        """``job(k, slice)`` for every slice: slice 0 in this thread, the rest in the pool."""
        self._ensure(parts)
        assert self._pool is not None
        for replica in self._replicas[1:parts]:
            replica.frozen = self.model.frozen  # the model's freeze, as it is now
            replica.train(self.model.training)
        err = np.geterr()  # np.errstate is per thread: the workers follow the caller's
        sync = SliceSync(parts)
        training = self.model.training

        def guarded(k: int, s: slice) -> Any:
            # BatchNorm in training: the whole batch's statistics, totalled through ``sync``.
            totaller = sync.member(k) if training else None
            try:
                with np.errstate(**err), engine.batch_statistics(totaller):
                    return job(k, s)
            except BaseException:
                sync.abort()  # never leave the other threads waiting at a barrier
                raise

        results, errors = [], []
        with self._blas_limit():
            futures = [self._pool.submit(guarded, k, s) for k, s in enumerate(slices) if k]
            for outcome in [lambda: guarded(0, slices[0]), *(f.result for f in futures)]:
                try:
                    results.append(outcome())
                except BaseException as exc:
                    errors.append(exc)
        if errors:  # the first real error, not the broken barrier it caused elsewhere
            first = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
            raise (first or errors)[0]
        return results

    @staticmethod
    def _slices(n: int, parts: int) -> list[slice]:
        """Slice k is items round(k*n/parts) .. round((k+1)*n/parts), halves to even (the
        edges of ``np.linspace(0, n, parts + 1).round()``, in integers: linspace took
        80 us of a 4.5 ms step)."""
        edges = []
        for k in range(parts + 1):
            q, r = divmod(k * n, parts)
            edges.append(q + (2 * r > parts or (2 * r == parts and q % 2 == 1)))
        return [slice(a, b) for a, b in itertools.pairwise(edges)]

    def step(
        self, x: np.ndarray, y: Any, targets: Callable[[np.ndarray, Any], Any] | None = None
    ) -> tuple[float, np.ndarray]:
        """Forward, loss and backward over the whole batch; returns (loss, logits).

        ``targets(logits, y)`` turns labels into what the loss takes (default: ``y`` as is).
        """
        n = len(x)
        targets = targets or (lambda logits, labels: labels)
        parts = self._parts(n, self.model.training)
        if parts == 1:
            loss_fn = engine.loss_route(self.loss_fn)
            logits = self.model.forward(x)
            loss = loss_fn.forward(logits, targets(logits, y))
            if np.isfinite(loss):
                self.model.backward(loss_fn.backward(), input_grad=False)
            return loss, logits
        procs = self._process_split(parts)
        if procs is not None:
            try:
                with self._blas_limit():
                    return procs.step(x, y, targets, self._slices(n, parts))
            except SplitStartError as exc:
                self._fall_back(exc)
        mean = self.loss_fn.reduction == "mean"

        def job(k: int, s: slice) -> tuple[float, np.ndarray]:
            replica, loss_fn = self._replicas[k], engine.loss_route(self._losses[k])
            logits = replica.forward(x[s])
            loss = loss_fn.forward(logits, targets(logits, y[s]))
            if np.isfinite(loss):
                dy = loss_fn.backward()
                if mean:
                    dy *= dy.dtype.type((s.stop - s.start) / n)
                replica.backward(dy, input_grad=False)
            return loss, logits

        slices = self._slices(n, parts)
        results = self._run(parts, job, slices)
        weights = [(s.stop - s.start) / n if mean else 1.0 for s in slices]
        loss = float(sum(w * r[0] for w, r in zip(weights, results, strict=True)))
        if np.isfinite(loss):
            for replica in self._replicas[1:parts]:
                mine = self.model.named_trainable_parameters()
                theirs = replica.named_trainable_parameters()
                for (_, a, name), (_, b, _) in zip(mine, theirs, strict=True):
                    a.grads[name] += b.grads[name]
        return loss, np.concatenate([r[1] for r in results])

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The model's output for ``x``, the batch split over the threads."""
        parts = self._parts(len(x), self.model.training)
        if parts == 1:
            return self.model.forward(x)
        slices = self._slices(len(x), parts)
        procs = self._process_split(parts)
        if procs is not None:
            try:
                with self._blas_limit():
                    return procs.forward(x, slices)
            except SplitStartError as exc:
                self._fall_back(exc)
        outs = self._run(parts, lambda k, s: self._replicas[k].forward(x[s]), slices)
        return np.concatenate(outs)
