"""The ``train`` command's job: from settings to a trained run folder.

The command line parses the arguments into the settings given explicitly and calls
:func:`train_run`; everything after that happens here, in this order, and each input is read
once and passed on:

1. the run's settings (``runs.resolve_run``: defaults, recipe, a resumed run's run.json);
2. the checkpoint to resume, read and verified once (``runs.resumed_checkpoint``), its
   number of MPI processes checked against this run's;
3. the data, the model (a zoo model, or ``--init``'s checkpoint), optimiser and schedule;
4. the run folder (the old run set aside with ``--overwrite``, the checkpoint's settings
   checked with ``--resume``) and run.json;
5. ``fit``, given the checkpoint already read.

It reports through ``say`` (one line at a time); the command line prints, and draws the
pictures of ``--plot`` afterwards (``TrainedRun``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..nn.zoo import build_model
from ..parallel import mpi as distributed
from .datasets import (
    FOLDER,
    RunData,
    check_folder_settings,
    load_run_data,
    with_normalisation,
)
from .evaluate import check_data_fits, default_loss
from .finetune import check_transfer_settings, folder_defaults, init_model, read_init
from .loop import History, fit, make_optimizer, make_scheduler
from .midepoch import resume_point
from .runs import (
    FINE_TUNE_LR_FACTOR,
    RUN_DEFAULTS,
    EpochMetrics,
    prepare_run_folder,
    record_world_size,
    resolve_run,
    resumed_checkpoint,
    write_run_config,
)


@dataclass
class TrainedRun:
    """What ``train_run`` did: the history ``fit`` returned, the run's settings, its folder."""

    history: History
    run: dict[str, Any]
    out: Path


def train_run(
    explicit: dict[str, Any],
    *,
    out: Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    threads: int | None = None,
    world: distributed.World | None = None,
    say: Callable[[str], None] = print,
) -> TrainedRun:
    """Train as ``scratchcnn train`` does (see the module docstring); ``explicit`` holds
    the settings given on the command line (``RUN_DEFAULTS``' keys, and ``data_dir``)."""
    world = world or distributed.init()
    run, out = resolve_run(explicit, out, resume=resume, overwrite=overwrite)
    checkpoint = resumed_checkpoint(out, resume=resume)
    record_world_size(run, checkpoint, world.size)
    dtype = np.dtype(run["dtype"])
    check_folder_settings(run, explicit)
    check_transfer_settings(run)
    pretrained = read_init(run["init"]) if run["init"] else None
    if pretrained is not None:
        folder_defaults(run, explicit, pretrained)
    data = load_run_data(run, progress=False if quiet else None)
    train, test = data.train, data.test
    if run["limit"]:
        train = train[: run["limit"]]
    changes: list[str] = []
    if pretrained is not None:
        model, changes = init_model(
            pretrained,
            run["init"],
            run["model"],
            dtype,
            train,
            num_classes=run["num_classes"],
            freeze=run["freeze"],
            seed=run["seed"],
        )
    else:
        model = _zoo_model(run, data, dtype)
        _check_fits(model, train, run)
    opt = make_optimizer(
        run["optimizer"], model, run["lr"], run["momentum"], run["weight_decay"], run["clip"]
    )
    sched = make_scheduler(run["schedule"], opt, run["epochs"])
    aside = None
    if world.rank == 0:  # the only process that writes the run folder
        aside = prepare_run_folder(
            out,
            run,
            resume=resume,
            overwrite=overwrite,
            defaults={**RUN_DEFAULTS, "world_size": 1},
            checkpoint=checkpoint,
        )
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(out, run)
    if not quiet:
        if aside is not None:
            say(f"moved the previous run in {out} to {aside}")
        if checkpoint is not None:
            say(f"resuming the run in {out} {resume_point(checkpoint)}")
            end = (checkpoint.scheduler_state or {}).get("T_max")
            if isinstance(end, int) and end < run["epochs"] and checkpoint.epoch is not None:
                say(
                    f"its cosine schedule was made for {end} epochs: stretched to "
                    f"{run['epochs']} (the rate goes on from where the longer curve is at "
                    f"epoch {checkpoint.epoch}, never from the bottom)"
                )
        elif resume:
            say(f"no checkpoint in {out} yet; starting the run from the beginning")
        if data.folder is not None:
            say(f"images: {data.description}")
        tested = f"{len(test):,} test" if test is not None else "no test"
        say(
            f"training {run['model'] or run['init']} ({_shape(model.input_shape)} -> "
            f"{_count(len(train.classes), 'class', 'classes')}, "
            f"{_parameters(model):,} parameters) on {_data_name(run)} ({len(train):,} train "
            f"/ {tested} images) for {_count(run['epochs'], 'epoch')}, batch "
            f"{run['batch_size']}, {run['optimizer']} lr {run['lr']:g}{_lr_note(run, explicit)}; "
            f"writing to {out}"
        )
        if changes:
            say(f"from {run['init']}: " + "; ".join(changes))
    done = checkpoint.epoch if checkpoint is not None else 0
    board = _tensorboard(model, out, done or 0) if run["tensorboard"] else None

    def report(m: EpochMetrics) -> None:
        if board is not None:
            board(m)
        if not quiet:
            tested = (
                f"test loss {m.test_loss:.4f} acc {m.test_accuracy:6.2%}"
                if m.test_loss is not None
                else "no test split"
            )
            say(
                f"epoch {m.epoch:>3}/{run['epochs']}  train loss {m.train_loss:.4f} "
                f"acc {m.train_accuracy:6.2%}  {tested}  {m.seconds:5.1f}s"
                f"{eval_gap_hint(model, m)}"
            )

    history = fit(
        model,
        train,
        test_data=test,
        epochs=run["epochs"],
        batch_size=run["batch_size"],
        optimizer=opt,
        scheduler=sched,
        seed=run["seed"],
        out_dir=out,
        resume=resume,
        resume_from=checkpoint,
        progress=False if quiet else None,
        on_epoch_end=report,
        extra=_extra(run, train, data),
        augment=run["augment"],
        checkpoint_every=run["checkpoint_every"],
        checkpoint_minutes=run["checkpoint_minutes"],
        world=world,
        threads=threads,
    )
    if board is not None:  # events are flushed every epoch; this closes the file
        board.close()
    if history.resumed_from_epoch >= run["epochs"] and not quiet:
        say(f"the run in {out} already finished {run['epochs']} epochs; raise --epochs to go on")
    last = history.last if history.epochs else None
    if last is not None and last.test_accuracy is None:
        say(f"train accuracy {last.train_accuracy:.2%} after {_count(last.epoch, 'epoch')}")
    elif last is not None:
        say(
            f"test accuracy {last.test_accuracy:.2%} (loss {last.test_loss:.4f}) after "
            f"{_count(last.epoch, 'epoch')}{eval_gap_hint(model, last)}"
        )
    say(f"checkpoint: {history.checkpoint}")
    say(f"metrics:    {history.metrics_file}")
    return TrainedRun(history, run, out)


#: Test accuracy this far (absolute) below the training accuracy, with BatchNorm in the
#: model, gets a word of explanation.
EVAL_GAP = 0.2


def eval_gap_hint(model: Any, m: EpochMetrics) -> str:
    """Why the test accuracy (eval mode) can be far below the training accuracy (batch
    statistics) early in a run with BatchNorm: its running statistics have not settled."""
    if m.test_accuracy is None or m.train_accuracy - m.test_accuracy < EVAL_GAP:
        return ""
    tracked = [
        int(layer.buffers["num_batches_tracked"])
        for _, layer in model.named_layers()
        if "num_batches_tracked" in getattr(layer, "buffers", {})
    ]
    if not tracked:
        return ""
    return (
        f"  (test far below train: in eval mode BatchNorm normalises with its running "
        f"statistics, which have seen {min(tracked):,} steps; they settle over a few hundred "
        "more)"
    )


def _lr_note(run: dict[str, Any], explicit: dict[str, Any]) -> str:
    """Why the rate is what it is, when it is not the recipe's."""
    if run["init"] and "lr" not in explicit:
        return f" (fine-tuning: {FINE_TUNE_LR_FACTOR:g} x the recipe's rate; --lr sets another)"
    return ""


def _zoo_model(run: dict[str, Any], data: RunData, dtype: np.dtype) -> Any:
    """The zoo model for the data's image shape and classes, normalised when the data has
    per-channel statistics (image folders, CIFAR)."""
    classes = len(data.classes)
    if run["model"] == "shapes_net" or (run["dataset"] == "shapes" and classes == 2):
        # one logit for two classes (BCEWithLogitsLoss), as the toy was built
        model = build_model(run["model"], dtype=dtype, seed=run["seed"])
        return with_normalisation(model, data)
    model = build_model(
        run["model"],
        dtype=dtype,
        seed=run["seed"],
        num_classes=classes,
        input_shape=data.input_shape,
    )
    return with_normalisation(model, data)


def _extra(run: dict[str, Any], train: Any, data: RunData) -> dict[str, Any]:
    """What the checkpoint keeps beside the weights: the settings, the class names, and for
    an image folder what was read (size, channels, split, statistics, skipped files)."""
    extra: dict[str, Any] = {"run": run, "classes": list(train.classes)}
    if data.folder is not None:
        extra["images"] = {k: v for k, v in data.folder.items() if k != "classes"}
    return extra


def _parameters(model: Any) -> int:
    return sum(int(p.size) for _, p in model.named_parameters())


def _shape(shape: Any) -> str:
    return "x".join(str(d) for d in shape) if shape is not None else "?"


def _data_name(run: dict[str, Any]) -> str:
    return f"the images in {run['data_dir']}" if run["dataset"] == FOLDER else run["dataset"]


def _count(n: int, what: str, plural: str | None = None) -> str:
    """ "1 epoch", "3 epochs" ("1 class", "10 classes" with ``plural``)."""
    return f"{n:,} {what if n == 1 else plural or what + 's'}"


def _tensorboard(model: Any, out: Path, done: int) -> Any:
    """The TensorBoard writer for ``train --tensorboard`` (tensorboardX imported only now)."""
    from .tensorboard import TensorBoardLogger

    return TensorBoardLogger(model, out, resume_epoch=done)


def _check_fits(model: Any, data: Any, run: dict[str, Any], hint: str = "--model") -> None:
    """``check_data_fits``, with the command line's hint."""
    try:
        check_data_fits(model, data, default_loss(model), "data set")
    except ConfigError as exc:
        raise ConfigError(f"{exc} (model {run['model']}); pick a matching {hint}") from exc
