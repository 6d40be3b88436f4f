"""The training loop: ``fit``, one epoch, one step.

``fit`` trains a ``Sequential`` on a ``Dataset`` for some epochs. With ``out_dir`` it writes,
at the end of every epoch and atomically,

* ``out_dir/model.npz``: weights, architecture, optimiser, scheduler, data-loader and
  Dropout RNG states and the history (see ``scratchcnn.checkpoint``);
* ``out_dir/metrics.jsonl``: one JSON object per epoch with ``epoch``, ``train_loss``,
  ``train_accuracy``, ``test_loss``, ``test_accuracy``, ``seconds``, ``lr`` and
  ``grad_norms`` (per parameter, the mean over the epoch's steps of its gradient's L2 norm).

``resume=True`` continues from ``out_dir/model.npz`` (``resume_from``: a checkpoint already
read, which the command line passes on instead of reading it again; ``resume``). Everything
that shapes the future of a run is in the checkpoint, so with the same seed and the same
number of BLAS threads a run that was killed and resumed ends with bit-identical weights to
one that never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .. import engine
from ..checkpoint import Checkpoint, load_checkpoint, remove_stale_temp_files, save
from ..data import DataLoader, Dataset
from ..errors import ConfigError, TrainingDiverged
from ..nn.layers.sequential import Sequential
from ..nn.losses import Loss
from ..nn.optim import SGD, Adam, AdamW, CosineAnnealingLR, LRScheduler, Optimizer, StepLR
from ..parallel import mpi as distributed
from ..parallel.allocator import tune_allocator
from ..parallel.split import BatchSplit
from ..parallel.threads import blas_threads, resolve_threads
from .evaluate import (
    EvalResult,
    check_data_fits,
    default_loss,
    evaluate,
    predicted_classes,
    progress_off,
    targets_for,
)
from .gradnorms import GradNormMeter
from .midepoch import CheckpointClock, Position
from .resume import restore
from .runs import CHECKPOINT_NAME, METRICS_NAME, EpochMetrics, write_metrics


@dataclass
class History:
    """What ``fit`` returns: the per-epoch metrics and where things were written."""

    epochs: list[EpochMetrics]
    checkpoint: Path | None
    metrics_file: Path | None
    resumed_from_epoch: int = 0

    @property
    def last(self) -> EpochMetrics:
        return self.epochs[-1]


@dataclass
class FitSettings:
    """How ``fit`` trains: every argument but the model and the training data.

    ``epochs`` and ``batch_size`` (the global batch under MPI); ``optimizer`` (default
    SGD(lr=0.01)), ``loss_fn`` (default: the model's task's loss), ``scheduler`` (stepped
    once per epoch); ``test_data`` (evaluated after every epoch); ``seed`` (the shuffle);
    ``augment``: the loader's random crop (2-pixel zero padding) and horizontal flip of the
    training batches only; ``out_dir``: where the checkpoint and metrics go; ``resume``:
    continue from ``out_dir/model.npz``, or from ``resume_from``, a checkpoint already read;
    ``progress``: a tqdm bar with running loss and accuracy (None: only on a terminal);
    ``on_epoch_end(metrics)``: called after every epoch (the command line prints them);
    ``extra``: JSON data stored in the checkpoint; ``checkpoint_every`` (steps) /
    ``checkpoint_minutes``: also checkpoint inside epochs (``midepoch``); ``world``: the MPI
    processes training together (default ``distributed.init()``); ``threads``: the BLAS
    threads, and the slices each batch is split into over threads or processes
    (``scratchcnn.parallel.BatchSplit``); None chooses as the command line does
    (``scratchcnn.parallel.threads``: one for LeNet-sized work, or
    $SCRATCHCNN_NUM_THREADS). Results are bit-identical for a given thread count.
    """

    epochs: int = 5
    batch_size: int = 64
    optimizer: Optimizer | None = None
    loss_fn: Loss | None = None
    scheduler: LRScheduler | None = None
    test_data: Dataset | None = None
    seed: int = 0
    augment: bool = False
    out_dir: str | os.PathLike | None = None
    resume: bool = False
    resume_from: Checkpoint | None = None
    progress: bool | None = None
    on_epoch_end: Callable[[EpochMetrics], None] | None = None
    extra: dict[str, Any] | None = None
    checkpoint_every: int | None = None
    checkpoint_minutes: float | None = None
    world: distributed.World | None = None
    threads: int | None = None


def make_optimizer(
    name: str,
    model: Sequential,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = None,
) -> Optimizer:
    """``sgd``, ``adam`` or ``adamw`` with the given hyper-parameters."""
    name = name.lower()
    if name == "sgd":
        return SGD(model, lr, momentum, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
    if name in ("adam", "adamw"):
        cls = Adam if name == "adam" else AdamW
        kwargs = {"weight_decay": weight_decay} if weight_decay or name == "adam" else {}
        return cls(model, lr, max_grad_norm=max_grad_norm, **kwargs)
    raise ConfigError(f"unknown optimizer {name!r}; choose sgd, adam or adamw")


def make_scheduler(
    name: str | None, optimizer: Optimizer, epochs: int, step_size: int | None = None
) -> LRScheduler | None:
    """``none``, ``step`` (x0.1 every ``step_size`` epochs, default a third of the run) or
    ``cosine`` (to zero over ``epochs``)."""
    if name in (None, "none", "constant"):
        return None
    if name == "step":
        return StepLR(optimizer, step_size or max(1, epochs // 3), 0.1)
    if name == "cosine":
        return CosineAnnealingLR(optimizer, max(1, epochs))
    raise ConfigError(f"unknown schedule {name!r}; choose none, step or cosine")


def fit(
    model: Sequential,
    train_data: Dataset,
    settings: FitSettings | None = None,
    /,
    **keywords: Any,
) -> History:
    """Train ``model`` on ``train_data`` as ``settings`` say (a :class:`FitSettings`); each
    of its fields may also be given as a keyword, ``fit(model, data, epochs=3,
    test_data=test)``, and keywords override the settings' fields.

    A NaN or infinite loss stops training with ``TrainingDiverged``; the checkpoint of the
    last good epoch stays on disk. See the module docstring for what is written.
    """
    if settings is None:
        settings = FitSettings(**keywords)
    elif keywords:
        settings = dataclasses.replace(settings, **keywords)
    return _Fit(model, train_data, settings).run()


class _Fit:
    """One call of ``fit``: everything set up and checked before the first step."""

    def __init__(self, model: Sequential, train_data: Dataset, s: FitSettings) -> None:
        epochs = s.epochs
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"epochs must be a positive int, got {epochs!r}")
        tune_allocator()  # glibc keeps a step's freed arrays mapped (parallel/allocator.py)
        self.model, self.s = model, s
        self.optimizer = s.optimizer or SGD(model, lr=0.01)
        self.loss_fn = s.loss_fn or default_loss(model)
        # Every data problem is reported here, before a step is taken or a file is written.
        check_data_fits(model, train_data, self.loss_fn, "training data")
        if s.test_data is not None:
            check_data_fits(model, s.test_data, self.loss_fn, "test data")
        self.loader = DataLoader(
            train_data,
            batch_size=s.batch_size,
            shuffle=True,
            seed=s.seed,
            dtype=model.dtype,
            augment=s.augment,
        )
        # BLAS threads (and the batch split) as the command line chooses them: one thread
        # for LeNet-sized work, where a second gains nothing and a busy machine makes it
        # 20-40x slower; ``threads``, or $SCRATCHCNN_NUM_THREADS, decide otherwise.
        self.threads = resolve_threads(s.threads, model, s.batch_size)
        self.world = world = s.world or distributed.init()
        _check_shards(world, len(train_data), self.loader.batch_size)
        self.writer = world.rank == 0  # only rank 0 writes files and shows progress
        self.progress = s.progress if self.writer else False
        self.clock = CheckpointClock(s.checkpoint_every, s.checkpoint_minutes)
        out = Path(s.out_dir) if s.out_dir is not None else None
        self.out = out
        self.ckpt_path = out / CHECKPOINT_NAME if out else None
        self.metrics_path = out / METRICS_NAME if out else None
        self.history: list[EpochMetrics] = []
        self.start = 0
        self.position: Position | None = None
        if s.resume or s.resume_from is not None:
            self._resume(train_data)
        if out and self.writer:
            out.mkdir(parents=True, exist_ok=True)
        world.checkpoint = self.ckpt_path
        if world.size > 1:  # every rank checks in with the state it starts from
            world.sync_start(
                _start_digest(
                    model, self.optimizer, self.loader, train_data, self.history, self.position
                )
            )

    def _resume(self, train_data: Dataset) -> None:
        """Restore the checkpoint to continue from: ``resume_from`` as given, or the one in
        ``out_dir``, read once (none there yet: start from the beginning)."""
        s, ckpt = self.s, self.s.resume_from
        if ckpt is None:
            if self.ckpt_path is None:
                raise ConfigError("resume needs out_dir (where the checkpoint is)")
            if self.writer:
                remove_stale_temp_files(self.ckpt_path)
            if not self.ckpt_path.exists():
                return
            ckpt = load_checkpoint(self.ckpt_path)
        done = restore(ckpt, self.model, self.optimizer, s.scheduler, self.loader, self.world.size)
        self.start, self.history, self.position = done.epoch, done.history, done.position
        if s.scheduler is not None:
            # A schedule that ends before the epochs asked for is stretched to end with them
            # (past its end a cosine climbs back from about zero: torch's formula).
            s.scheduler.stretch(s.epochs)
        if self.position is not None and self.position.epoch > s.epochs:
            raise ConfigError(
                f"{ckpt.path}: the run stopped inside epoch {self.position.epoch}; "
                f"ask for at least {self.position.epoch} epochs to finish it"
            )
        if self.writer and self.metrics_path is not None:
            write_metrics(self.metrics_path, self.history)

    def diverged(self, what: str, epoch: int) -> TrainingDiverged:
        ckpt_path = self.ckpt_path
        last = f"epoch {epoch - 1} at {ckpt_path}" if ckpt_path and epoch > 1 else None
        return TrainingDiverged(
            f"{what} (lr {self.optimizer.lr:g}); "
            + (f"the last good checkpoint is {last}; " if last else "")
            + "try a lower learning rate or gradient clipping"
        )

    def after_step(self, pos: Position, loader_state: dict[str, Any]) -> None:
        """A mid-epoch checkpoint, when one is due."""
        loader, ckpt_path = self.loader, self.ckpt_path
        run_step = (pos.epoch - 1) * len(loader) + pos.step
        if ckpt_path is None or pos.step >= len(loader) or not self.clock.due(run_step):
            return
        self.clock.written()
        # Weights the last step blew up are never "the last good checkpoint"; the next step's
        # loss stops the run.
        if self.writer and not non_finite_tensors(self.model):
            pos.seconds = time.perf_counter() - self.t0
            pos.grad_norm_sums = dict(self.norms.sums)
            extra = _checkpoint_extra(self.s.extra, self.history, self.world, pos)
            save(
                self.model,
                ckpt_path,
                epoch=pos.epoch - 1,
                optimizer=self.optimizer,
                scheduler=self.s.scheduler,
                rng={"loader": loader_state},
                extra=extra,
            )

    def run(self) -> History:
        with blas_threads(self.threads):
            return self._epochs()

    def _epochs(self) -> History:
        s, model, optimizer, scheduler = self.s, self.model, self.optimizer, self.s.scheduler
        for epoch in range(self.start + 1, s.epochs + 1):
            position = self.position
            self.t0 = time.perf_counter() - (position.seconds if position else 0.0)
            # Overflow in a diverging run is reported once, as TrainingDiverged, not as
            # warnings.
            with np.errstate(over="ignore", invalid="ignore"):
                self.norms = norms = GradNormMeter(model)
                if position is not None:
                    norms.restore(position.grad_norm_sums, position.step)
                train_loss, train_acc, steps = _train_epoch(
                    model,
                    self.loader,
                    self.loss_fn,
                    optimizer,
                    f"epoch {epoch}/{s.epochs}",
                    self.progress,
                    _EpochRun(
                        self.world,
                        position or Position(epoch),
                        self.after_step if self.clock.active else None,
                    ),
                    norms.update,
                    self.threads,
                )
                self.position = None
                if not math.isfinite(train_loss):
                    raise self.diverged(
                        f"loss became {train_loss} at epoch {epoch}, step {steps}", epoch
                    )
                # The last step of an epoch can blow the weights up after its (finite) loss
                # was computed; such weights must never become "the last good checkpoint".
                broken = non_finite_tensors(model)
                if broken:
                    raise self.diverged(
                        f"weights became NaN or inf ({', '.join(broken[:3])}) during epoch {epoch}",
                        epoch,
                    )
                lr_used = optimizer.lr
                if scheduler is not None:
                    scheduler.step()
                test = (
                    _evaluate(model, s.test_data, self.loss_fn, self.world, self.threads)
                    if s.test_data is not None
                    else None
                )
            if test is not None and not math.isfinite(test.loss):
                raise self.diverged(f"test loss became {test.loss} after epoch {epoch}", epoch)
            metrics = EpochMetrics(
                epoch=epoch,
                train_loss=train_loss,
                train_accuracy=train_acc,
                test_loss=test.loss if test else None,
                test_accuracy=test.accuracy if test else None,
                seconds=time.perf_counter() - self.t0,
                lr=lr_used,
                grad_norms=norms.means(),
            )
            self.history.append(metrics)
            if self.ckpt_path is not None and self.writer:
                save(
                    model,
                    self.ckpt_path,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    epoch=epoch,
                    rng={"loader": self.loader.state_dict()},
                    extra=_checkpoint_extra(s.extra, self.history, self.world),
                )
                write_metrics(self.metrics_path, self.history)
                self.clock.written()
            if s.on_epoch_end is not None:
                s.on_epoch_end(metrics)
        return History(
            self.history, self.ckpt_path, self.metrics_path, resumed_from_epoch=self.start
        )


@dataclass
class _EpochRun:
    """What an epoch's loop needs besides the model: the processes training together, where
    the epoch starts (``step`` > 0 when resumed mid-epoch, with the sums so far) and what to
    do after each step (write a mid-epoch checkpoint)."""

    world: distributed.World
    position: Position
    after_step: Callable[[Position, dict[str, Any]], None] | None = None


def _train_epoch(
    model: Sequential,
    loader: DataLoader,
    loss_fn: Loss,
    optimizer: Optimizer,
    desc: str,
    progress: bool | None,
    run: _EpochRun | None = None,
    after_backward: Callable[[], None] | None = None,
    threads: int | None = None,
) -> tuple[float, float, int]:
    """One pass over the loader: forward, loss, backward, step. Returns the mean training
    loss, the accuracy and the number of steps; it stops at the first non-finite loss and
    returns that loss and the step it happened at. ``after_backward`` runs between each
    backward and its optimiser step (the gradient-norm meter)."""
    model.train()
    run = run or _EpochRun(distributed.init(), Position(0))
    pos = run.position
    splitter = BatchSplit(model, loss_fn, threads) if run.world.size == 1 else None
    loader_state = loader.state_dict()  # this epoch's shuffle comes from here
    # Resumed mid-epoch: the same permutation, without the batches already trained on.
    batches = islice(iter(loader), pos.step, None)
    bar = tqdm(
        batches,
        desc=desc,
        unit="batch",
        leave=False,
        disable=progress_off(progress),
        total=len(loader),
        initial=pos.step,
    )
    try:
        for step, (x, y) in enumerate(bar, pos.step + 1):
            loss, correct, n = _train_step(
                model, x, y, loss_fn, optimizer, run.world, after_backward, splitter
            )
            if not math.isfinite(loss):
                return loss, pos.correct / max(pos.seen, 1), step
            pos.loss_sum += loss
            pos.correct += correct
            pos.seen += n
            pos.step = step
            if step % 10 == 0 or step == len(loader):
                bar.set_postfix(
                    loss=f"{pos.loss_sum / pos.seen:.4f}", acc=f"{pos.correct / pos.seen:.3f}"
                )
            if run.after_step is not None:
                run.after_step(pos, loader_state)
    finally:
        if splitter is not None:
            splitter.close()
        bar.close()
    return pos.loss_sum / pos.seen, pos.correct / pos.seen, len(loader)


def _train_step(
    model: Sequential,
    x: np.ndarray,
    y: np.ndarray,
    loss_fn: Loss,
    optimizer: Optimizer,
    world: distributed.World,
    after_backward: Callable[[], None] | None = None,
    splitter: BatchSplit | None = None,
) -> tuple[float, int, int]:
    """One optimiser step on the global batch (x, y): returns the batch's summed loss (NaN
    or inf, and no step taken, if it is not finite), its correct predictions and its size.
    Under MPI this rank trains on its rows of the batch, and one Allreduce carries the
    gradients, the metrics' sums and a flag that stops every rank if one diverged. In one
    process, ``splitter`` (``scratchcnn.parallel.BatchSplit``) may split the batch over
    threads."""
    if world.size == 1:
        splitter = splitter or BatchSplit(model, loss_fn, 1)
        loss, logits = splitter.step(x, y, lambda z, labels: targets_for(loss_fn, z, labels))
        if not math.isfinite(loss):  # no backward was run
            return loss, 0, 0
        if after_backward is not None:
            after_backward()
        optimizer.step()
        return loss * len(y), int(np.sum(predicted_classes(logits) == y)), len(y)
    lo, hi = distributed.shard_range(len(y), world.rank, world.size)
    with distributed.global_batch_rngs(model, lo, hi, len(y)):
        logits = model.forward(x[lo:hi])
    route = engine.loss_route(loss_fn)
    loss = route.forward(logits, targets_for(loss_fn, logits, y[lo:hi]))
    finite = math.isfinite(loss)
    if finite:
        model.backward(route.backward(), input_grad=False)
    correct = int(np.sum(predicted_classes(logits) == y[lo:hi]))
    stats = [loss * (hi - lo) if finite else 0.0, correct, not finite]
    loss_sum, correct_sum, bad = distributed.allreduce_gradients(model, hi - lo, stats, world)
    if bad:
        return math.nan, 0, 0
    if after_backward is not None:  # the averaged, whole-batch gradients
        after_backward()
    optimizer.step()
    return float(loss_sum), round(correct_sum), len(y)


def _evaluate(
    model: Sequential,
    data: Dataset,
    loss_fn: Loss,
    world: distributed.World,
    threads: int | None = None,
) -> EvalResult:
    """``evaluate`` in ``fit``: under MPI every rank evaluates its part of ``data`` and the
    loss, the number of images and the confusion matrix are summed (no predictions kept)."""
    if world.size == 1:
        return evaluate(model, data, loss_fn, threads=threads)
    lo, hi = distributed.shard_range(len(data), world.rank, world.size)
    k = data.num_classes
    sums = np.zeros(2 + k * k)
    if hi > lo:
        part = evaluate(model, data[lo:hi], loss_fn, threads=threads)
        sums[:] = [part.loss * part.n, part.n, *part.confusion.ravel()]
    world.allreduce(sums)
    confusion = np.rint(sums[2:]).astype(np.int64).reshape(k, k)
    n = round(sums[1])
    return EvalResult(
        float(sums[0] / n), float(np.trace(confusion) / n), n, confusion, np.empty(0, np.int64)
    )


def _check_shards(world: distributed.World, n: int, batch_size: int) -> None:
    """Under MPI every global batch, the last short one included, must give every rank at
    least one image (a rank with none would fall out of step with the others)."""
    last = n % batch_size or batch_size
    if world.size > 1 and min(batch_size, last, n) < world.size:
        raise ConfigError(
            f"{world.size} processes need at least {world.size} images in every batch, but "
            f"batch size {batch_size} over {n} images leaves a last batch of {last}; change "
            "--batch-size or --limit"
        )


def _checkpoint_extra(
    extra: dict[str, Any] | None,
    history: list[EpochMetrics],
    world: distributed.World,
    position: Position | None = None,
) -> dict[str, Any]:
    """The checkpoint's ``extra``: the caller's, the history, the number of processes and,
    inside an epoch, the position (see ``scratchcnn.midepoch``)."""
    out = {**(extra or {}), "history": [asdict(m) for m in history], "world_size": world.size}
    if position is not None:
        out["position"] = position.to_json()
    return out


def non_finite_tensors(model: Sequential) -> list[str]:
    """Keys (as in ``state_dict``) of the float parameters and buffers holding NaN or inf."""
    return [
        f"{prefix}.{name}"
        for prefix, layer in model.named_layers()
        for name, arr in layer.named_tensors()
        if arr.dtype.kind == "f" and not np.isfinite(arr).all()
    ]


def _start_digest(
    model: Sequential,
    optimizer: Optimizer,
    loader: DataLoader,
    data: Dataset,
    history: list[EpochMetrics],
    position: Position | None,
) -> bytes:
    """What every MPI rank must agree on before the first step: weights, optimiser state,
    data, shuffle generator and the point the run starts from."""
    opt = optimizer.state_dict()
    arrays = [*model.state_dict().values(), *opt["buffers"].values(), data.images, data.labels]
    info = {
        "loader": loader.state_dict(),
        "optimizer": {k: opt[k] for k in ("type", "hyper", "steps")},
        "history": [asdict(m) for m in history],
        "position": position.to_json() if position else None,
    }
    return distributed.state_digest(arrays, info)
