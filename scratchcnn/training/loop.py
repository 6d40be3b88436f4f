"""The training loop: fit, evaluate, metrics, checkpoints and exact resume.

``fit`` trains a ``Sequential`` on a ``Dataset`` for some epochs. With ``out_dir`` it writes,
at the end of every epoch and atomically,

* ``out_dir/model.npz``: weights, architecture, optimiser, scheduler, data-loader and
  Dropout RNG states and the history (see ``scratchcnn.io``);
* ``out_dir/metrics.jsonl``: one JSON object per epoch with ``epoch``, ``train_loss``,
  ``train_accuracy``, ``test_loss``, ``test_accuracy``, ``seconds``, ``lr`` and
  ``grad_norms`` (per parameter, the mean over the epoch's steps of its gradient's L2 norm).

``resume=True`` continues from ``out_dir/model.npz``. Everything that shapes the future
of a run is in the checkpoint, so with the same seed and the same number of BLAS threads a
run that was killed and resumed ends with bit-identical weights to one that never stopped.

Models with one output are binary classifiers (``BCEWithLogitsLoss``, prediction
logit > 0); others use ``CrossEntropyLoss`` with the argmax as prediction.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .. import engine
from .._json import json_line
from ..checkpoint import atomic_write_bytes, load_checkpoint, remove_stale_temp_files, save
from ..data import DataLoader, Dataset
from ..errors import CheckpointError, ConfigError, ScratchCNNError, TrainingDiverged
from ..nn.layers.sequential import Sequential
from ..nn.losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss
from ..nn.optim import SGD, Adam, AdamW, CosineAnnealingLR, LRScheduler, Optimizer, StepLR
from ..parallel import mpi as distributed
from ..parallel.allocator import tune_allocator
from ..parallel.split import BatchSplit
from .gradnorms import GradNormMeter
from .midepoch import CheckpointClock, Position, read_position

CHECKPOINT_NAME = "model.npz"
METRICS_NAME = "metrics.jsonl"


@dataclass
class EpochMetrics:
    """One line of metrics.jsonl."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float | None
    test_accuracy: float | None
    seconds: float
    lr: float
    #: state_dict key -> the L2 norm of that parameter's gradient, averaged over the epoch's
    #: steps (None in records written before it existed).
    grad_norms: dict[str, float] | None = None


@dataclass
class EvalResult:
    """Loss, accuracy and confusion matrix (rows: true class, columns: predicted) on a set."""

    loss: float
    accuracy: float
    n: int
    confusion: np.ndarray
    predictions: np.ndarray = field(repr=False)


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


def is_binary(model: Sequential) -> bool:
    """True for a one-logit model (a binary classifier)."""
    if model.input_shape is not None:
        return model.output_shapes()[-1][-1] == 1
    outs = [la.out_features for la in model.layers if hasattr(la, "out_features")]
    return bool(outs) and outs[-1] == 1


def default_loss(model: Sequential) -> Loss:
    return BCEWithLogitsLoss() if is_binary(model) else CrossEntropyLoss()


def _targets(loss_fn: Loss, logits: np.ndarray, y: np.ndarray) -> Any:
    """Labels as the loss wants them: class indices, or 0/1 floats shaped like the logit."""
    if isinstance(loss_fn, BCEWithLogitsLoss):
        return y.reshape(logits.shape).astype(logits.dtype)
    return y


def _predict(logits: np.ndarray) -> np.ndarray:
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

    ``threads``: batches are split over this many threads (``scratchcnn.parallel``; default
    None: not split)."""
    loss_fn = loss_fn or default_loss(model)
    check_data_fits(model, dataset, loss_fn, "data")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, dtype=model.dtype)
    was_training = model.training
    model.eval()
    total, preds = 0.0, []
    splitter = BatchSplit(model, loss_fn, threads)
    try:
        for x, y in tqdm(loader, desc="evaluate", leave=False, disable=_disable(progress)):
            logits = splitter.forward(x)
            total += loss_fn.forward(logits, _targets(loss_fn, logits, y)) * len(y)
            preds.append(_predict(logits))
    finally:
        splitter.close()
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


def _disable(progress: bool | None) -> bool | None:
    # tqdm's disable=None turns the bar off when stderr is not a terminal.
    return None if progress is None else not progress


def _write_metrics(path: Path, epochs: list[EpochMetrics]) -> None:
    text = "".join(json_line(asdict(m)) + "\n" for m in epochs)
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def fit(
    model: Sequential,
    train_data: Dataset,
    *,
    test_data: Dataset | None = None,
    epochs: int = 5,
    batch_size: int = 64,
    optimizer: Optimizer | None = None,
    loss_fn: Loss | None = None,
    scheduler: LRScheduler | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | None = None,
    on_epoch_end: Callable[[EpochMetrics], None] | None = None,
    extra: dict[str, Any] | None = None,
    augment: bool = False,
    checkpoint_every: int | None = None,
    checkpoint_minutes: float | None = None,
    world: distributed.World | None = None,
    threads: int | None = None,
) -> History:
    """Train ``model`` for ``epochs`` epochs of mini-batch steps; see the module docstring.

    ``augment`` applies the loader's random crop (2-pixel zero padding) and horizontal flip
    to the training batches only; evaluation and test data are never augmented.

    optimizer defaults to SGD(lr=0.01); loss_fn to the model's task's loss. ``progress``
    shows a tqdm bar with running loss and accuracy (None: only on a terminal).
    ``on_epoch_end`` receives each epoch's metrics (the command line prints them).
    ``threads``: split each batch over this many threads, each running a replica of the
    model on its slice with one BLAS thread (``scratchcnn.parallel.BatchSplit``; BatchNorm
    uses the whole batch's statistics; models with Dropout are not split in training).
    Default None: no splitting. Results are
    bit-identical for a given thread count.
    A NaN or infinite loss stops training with ``TrainingDiverged``; the checkpoint of the
    last good epoch stays on disk.

    ``checkpoint_every`` (steps) / ``checkpoint_minutes`` also write the checkpoint inside
    epochs (``scratchcnn.midepoch``). ``world`` (default ``distributed.init()``: MPI when
    started by ``mpiexec -n N``, N > 1) trains data-parallel: ``batch_size`` is the global
    batch, split over the ranks, and only rank 0 writes files or shows progress.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive int, got {epochs!r}")
    tune_allocator()  # glibc keeps a step's freed arrays mapped (parallel/allocator.py)
    optimizer = optimizer or SGD(model, lr=0.01)
    loss_fn = loss_fn or default_loss(model)
    # Every data problem is reported here, before a step is taken or a file is written.
    check_data_fits(model, train_data, loss_fn, "training data")
    if test_data is not None:
        check_data_fits(model, test_data, loss_fn, "test data")
    loader = DataLoader(
        train_data,
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        dtype=model.dtype,
        augment=augment,
    )
    world = world or distributed.init()
    _check_shards(world, len(train_data), loader.batch_size)
    writer = world.rank == 0  # only rank 0 writes files and shows progress
    progress = progress if writer else False
    clock = CheckpointClock(checkpoint_every, checkpoint_minutes)
    position: Position | None = None
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / CHECKPOINT_NAME if out else None
    metrics_path = out / METRICS_NAME if out else None
    history: list[EpochMetrics] = []
    start = 0
    if resume:
        if ckpt_path is None:
            raise ConfigError("resume needs out_dir (where the checkpoint is)")
        if writer:
            remove_stale_temp_files(ckpt_path)
        if ckpt_path.exists():
            start, history = _restore(ckpt_path, model, optimizer, scheduler, loader)
            position = _resume_position(ckpt_path, start, len(loader), world)
            if position is not None and position.epoch > epochs:
                raise ConfigError(
                    f"{ckpt_path}: the run stopped inside epoch {position.epoch}; "
                    f"ask for at least {position.epoch} epochs to finish it"
                )
            if writer:
                _write_metrics(metrics_path, history)
    if out and writer:
        out.mkdir(parents=True, exist_ok=True)
    world.checkpoint = ckpt_path
    if world.size > 1:  # every rank checks in with the state it starts from
        world.sync_start(_start_digest(model, optimizer, loader, train_data, history, position))

    def diverged(what: str, epoch: int) -> TrainingDiverged:
        last = f"epoch {epoch - 1} at {ckpt_path}" if ckpt_path and epoch > 1 else None
        return TrainingDiverged(
            f"{what} (lr {optimizer.lr:g}); "
            + (f"the last good checkpoint is {last}; " if last else "")
            + "try a lower learning rate or gradient clipping"
        )

    def after_step(pos: Position, loader_state: dict[str, Any]) -> None:
        run_step = (pos.epoch - 1) * len(loader) + pos.step
        if ckpt_path is None or pos.step >= len(loader) or not clock.due(run_step):
            return
        clock.written()
        # Weights the last step blew up are never "the last good checkpoint"; the next step's
        # loss stops the run.
        if writer and not non_finite_tensors(model):
            pos.seconds = time.perf_counter() - t0
            pos.grad_norm_sums = dict(norms.sums)
            extra_ = _checkpoint_extra(extra, history, world, pos)
            rng = {"loader": loader_state}
            kw = {"optimizer": optimizer, "scheduler": scheduler, "rng": rng, "extra": extra_}
            save(model, ckpt_path, epoch=pos.epoch - 1, **kw)

    for epoch in range(start + 1, epochs + 1):
        t0 = time.perf_counter() - (position.seconds if position else 0.0)
        # Overflow in a diverging run is reported once, as TrainingDiverged, not as warnings.
        with np.errstate(over="ignore", invalid="ignore"):
            norms = GradNormMeter(model)
            if position is not None:
                norms.restore(position.grad_norm_sums, position.step)
            train_loss, train_acc, steps = _train_epoch(
                model,
                loader,
                loss_fn,
                optimizer,
                f"epoch {epoch}/{epochs}",
                progress,
                _EpochRun(world, position or Position(epoch), after_step if clock.active else None),
                norms.update,
                threads,
            )
            position = None
            if not math.isfinite(train_loss):
                raise diverged(f"loss became {train_loss} at epoch {epoch}, step {steps}", epoch)
            # The last step of an epoch can blow the weights up after its (finite) loss was
            # computed; such weights must never become "the last good checkpoint".
            broken = non_finite_tensors(model)
            if broken:
                raise diverged(
                    f"weights became NaN or inf ({', '.join(broken[:3])}) during epoch {epoch}",
                    epoch,
                )
            lr_used = optimizer.lr
            if scheduler is not None:
                scheduler.step()
            test = (
                _evaluate(model, test_data, loss_fn, world, threads)
                if test_data is not None
                else None
            )
        if test is not None and not math.isfinite(test.loss):
            raise diverged(f"test loss became {test.loss} after epoch {epoch}", epoch)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=train_acc,
            test_loss=test.loss if test else None,
            test_accuracy=test.accuracy if test else None,
            seconds=time.perf_counter() - t0,
            lr=lr_used,
            grad_norms=norms.means(),
        )
        history.append(metrics)
        if ckpt_path is not None and writer:
            save(
                model,
                ckpt_path,
                optimizer=optimizer,
                scheduler=scheduler,
                epoch=epoch,
                rng={"loader": loader.state_dict()},
                extra=_checkpoint_extra(extra, history, world),
            )
            _write_metrics(metrics_path, history)
            clock.written()
        if on_epoch_end is not None:
            on_epoch_end(metrics)
    return History(history, ckpt_path, metrics_path, resumed_from_epoch=start)


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
        disable=_disable(progress),
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
        loss, logits = splitter.step(x, y, lambda z, labels: _targets(loss_fn, z, labels))
        if not math.isfinite(loss):  # no backward was run
            return loss, 0, 0
        if after_backward is not None:
            after_backward()
        optimizer.step()
        return loss * len(y), int(np.sum(_predict(logits) == y)), len(y)
    lo, hi = distributed.shard_range(len(y), world.rank, world.size)
    with distributed.global_batch_rngs(model, lo, hi, len(y)):
        logits = model.forward(x[lo:hi])
    route = engine.loss_route(loss_fn)
    loss = route.forward(logits, _targets(loss_fn, logits, y[lo:hi]))
    finite = math.isfinite(loss)
    if finite:
        model.backward(route.backward(), input_grad=False)
    correct = int(np.sum(_predict(logits) == y[lo:hi]))
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
        part = evaluate(model, data[lo:hi], loss_fn)
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


def _resume_position(
    path: Path, epochs_done: int, steps_per_epoch: int, world: distributed.World
) -> Position | None:
    """Where in the next epoch the checkpoint at ``path`` was written (None: at its start)."""
    return read_position(
        path, load_checkpoint(path).extra, epochs_done, steps_per_epoch, world.size
    )


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


def _restore(
    path: Path,
    model: Sequential,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    loader: DataLoader,
) -> tuple[int, list[EpochMetrics]]:
    """Load a checkpoint into the live objects; returns (epoch, history).

    A checkpoint that does not fit (another architecture, optimiser or schedule, a damaged
    history or RNG state) raises one ``CheckpointError`` line naming the file."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.epoch, int):
        raise CheckpointError(f"{path}: checkpoint has no epoch number; cannot resume from it")
    saved, live = ckpt.model.config()["layers"], model.config()["layers"]
    if saved != live:
        i = next(
            i for i in range(max(len(saved), len(live))) if saved[i : i + 1] != live[i : i + 1]
        )
        a = repr(ckpt.model.layers[i]) if i < len(saved) else "nothing"
        b = repr(model.layers[i]) if i < len(live) else "nothing"
        diff = f"layer {i}: checkpoint {a}, model {b}"
        if len(saved) != len(live):
            diff += f"; {len(saved)} layers vs {len(live)}"
        raise CheckpointError(
            f"{path}: the checkpoint's architecture differs from the model being trained "
            f"({diff}); use a new --out folder or the same --model"
        )
    raw_history = ckpt.extra.get("history", [])
    try:
        if not isinstance(raw_history, list):
            raise TypeError(f"expected a list, got {type(raw_history).__name__}")
        history = [EpochMetrics(**m) for m in raw_history]
    except TypeError as exc:
        raise CheckpointError(f"{path}: bad training history in the checkpoint ({exc})") from exc
    loader_state = loader.state_dict()
    try:
        if "loader" in ckpt.rng:
            loader.load_state_dict(ckpt.rng["loader"])
        ckpt.restore_training_state(optimizer, scheduler)
    except CheckpointError as exc:
        loader.load_state_dict(loader_state)
        text = str(exc)
        raise CheckpointError(text if text.startswith(str(path)) else f"{path}: {text}") from exc
    model.load_state_dict(ckpt.model.state_dict())
    live_layers = dict(model.named_layers())
    for prefix, layer in ckpt.model.named_layers():
        if hasattr(layer, "rng"):
            live_layers[prefix].rng.bit_generator.state = layer.rng.bit_generator.state
    return ckpt.epoch, history


def non_finite_tensors(model: Sequential) -> list[str]:
    """Keys (as in ``state_dict``) of the float parameters and buffers holding NaN or inf."""
    return [
        f"{prefix}.{name}"
        for prefix, layer in model.named_layers()
        for name, arr in layer.named_tensors()
        if arr.dtype.kind == "f" and not np.isfinite(arr).all()
    ]


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
