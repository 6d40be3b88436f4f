"""Run folders (``scratchcnn train --out D``): every file name in them, the run's settings
(defaults, recipes, the one ``run.json`` reader), starting over safely, and resuming only
the run that ``run.json`` describes.

A run folder holds ``model.npz`` (the checkpoint), ``metrics.jsonl`` (one JSON object per
epoch) and ``run.json`` (the settings); ``train --plot`` and ``scratchcnn plot`` add the
pictures, ``--tensorboard`` the event files.

* ``--overwrite`` renames the whole folder ``D`` to a sibling ``D.old-N`` (the first free N)
  in one atomic ``rename`` and starts ``D`` empty, before anything of the new run is
  written. Nothing of the old run is deleted, and a new run killed at any instant can never
  be resumed from the old run's weights and optimiser: they are no longer in ``D``.
* ``--resume`` reads the checkpoint's recorded settings (``extra["run"]``, written by
  ``train``) and refuses to go on unless they are the run's settings (``run.json``; only
  ``--epochs`` may differ), so a checkpoint is never continued under other settings.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._json import json_line
from ..checkpoint import Checkpoint, atomic_write_bytes, load_checkpoint, read_regular_file
from ..data import DATASETS
from ..errors import CheckpointError, ConfigError, DataError, FileWriteError, os_reason
from ..nn.zoo import MODELS, RECIPES
from .datasets import FOLDER

CHECKPOINT_NAME = "model.npz"
METRICS_NAME = "metrics.jsonl"
RUN_CONFIG = "run.json"
#: Largest run.json / metrics.jsonl read (a run of thousands of epochs stays far below).
MAX_RUN_FILE_BYTES = 64 * 1024**2

#: The settings of ``scratchcnn train`` with no options: LeNet-5 on the embedded MNIST
#: subset, tuned to reach >= 96 % test accuracy in well under a minute on 2 cores. A model's
#: recipe (``scratchcnn.models.RECIPES``) replaces some of them for that model.
RUN_DEFAULTS: dict[str, Any] = {
    "model": "lenet5",
    "dataset": "mnist-5k",
    "epochs": 12,
    "batch_size": 32,
    "optimizer": "sgd",
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": "cosine",
    "clip": None,
    "seed": 0,
    "dtype": "float32",
    "limit": None,
    "tensorboard": False,
    "init": None,
    # With --init: a fresh head for the data's classes, and the first layers kept fixed.
    "num_classes": None,
    "freeze": None,
    "augment": False,
    "checkpoint_every": None,
    "checkpoint_minutes": None,
    # An image folder's (--data-dir PATH of class folders; training.datasets):
    "image_size": None,
    "channels": None,
    "val_split": 0.1,
    "skip_bad_images": False,
}

#: With ``--init`` and no ``--lr``, the learning rate is the recipe's times this.
FINE_TUNE_LR_FACTOR = 0.1

#: Settings a resumed run may change (``--epochs``: train longer; ``--tensorboard`` and
#: ``--checkpoint-*``: event files and how often checkpoints are written, which shape nothing
#: in the training).
RESUMABLE_CHANGES = frozenset({"epochs", "tensorboard", "checkpoint_every", "checkpoint_minutes"})


# --- the settings: run.json -------------------------------------------------------------
def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


#: Every key run.json may hold, with the test its value must pass.
RUN_FIELDS = {
    "model": lambda v: v is None or v in MODELS,
    "dataset": lambda v: v in DATASETS or v == FOLDER,
    "epochs": lambda v: _count(v, 1),
    "batch_size": lambda v: _count(v, 1),
    "optimizer": lambda v: v in ("sgd", "adam", "adamw"),
    "lr": _number,
    "momentum": _number,
    "weight_decay": _number,
    "schedule": lambda v: v in ("none", "step", "cosine"),
    "clip": lambda v: v is None or _number(v),
    "seed": lambda v: _count(v, 0),
    "dtype": lambda v: v in ("float32", "float64"),
    "limit": lambda v: v is None or _count(v, 1),
    "augment": lambda v: isinstance(v, bool),
    "data_dir": lambda v: v is None or isinstance(v, str),
    "tensorboard": lambda v: isinstance(v, bool),
    "init": lambda v: v is None or isinstance(v, str),
    "num_classes": lambda v: v is None or (_count(v, 1) and v <= 1_000_000),
    "freeze": lambda v: v is None or (isinstance(v, str) and 0 < len(v) <= 64),
    "world_size": lambda v: _count(v, 1),
    "checkpoint_every": lambda v: v is None or _count(v, 1),
    "checkpoint_minutes": lambda v: v is None or (_number(v) and v > 0),
    "image_size": lambda v: (
        v is None
        or (isinstance(v, list) and len(v) == 2 and all(_count(d, 1) and d <= 1024 for d in v))
    ),
    "channels": lambda v: v is None or (v in (1, 3) and not isinstance(v, bool)),
    "val_split": lambda v: _number(v) and 0 <= v < 1,
    "skip_bad_images": lambda v: isinstance(v, bool),
}


def _read_text(path: Path, kind: str, what: str) -> str:
    """A run folder's text file, through the one bounded reader (``kind`` names the file in
    its errors, ``what`` its content)."""
    data = read_regular_file(path, MAX_RUN_FILE_BYTES, kind, DataError)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: cannot read {what} ({exc})") from exc


def read_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """A run's settings (run.json), checked key by key: a damaged or hand-edited file is a
    one-line ``DataError``, not a crash halfway through training."""
    path = Path(path)
    text = _read_text(path, "run.json file", "the run's settings")
    try:
        saved = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{path}: cannot read the run's settings ({exc})") from exc
    if not isinstance(saved, dict):
        raise DataError(f"{path}: the run's settings must be a JSON object, got {saved!r:.40}")
    for key, value in saved.items():
        if key not in RUN_FIELDS:
            raise DataError(f"{path}: unknown setting {key!r} in the run's settings")
        if not RUN_FIELDS[key](value):
            raise DataError(f"{path}: bad value {value!r} for {key!r} in the run's settings")
    return saved


def write_run_config(out: Path, run: dict[str, Any]) -> Path:
    """Write ``run`` as ``out/run.json`` (atomically)."""
    text = json.dumps(run, indent=2) + "\n"
    atomic_write_bytes(out / RUN_CONFIG, lambda fh: fh.write(text.encode()))
    return out / RUN_CONFIG


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


def write_metrics(path: Path, epochs: list[EpochMetrics]) -> None:
    """Write ``metrics.jsonl`` (atomically): one JSON object per epoch."""
    text = "".join(json_line(asdict(m)) + "\n" for m in epochs)
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


#: The numeric fields of a metrics record (each a number or null).
METRIC_KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds", "lr")


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl``: one JSON object per line with an integer ``epoch`` and
    numbers (or null) for the losses and accuracies. Blank lines are skipped. DataError for a
    missing file, an empty one, or a malformed line (naming the line number)."""
    path = Path(path)
    if not os.path.lexists(path):  # anything else there is named by the reader
        raise DataError(f"{path}: no metrics.jsonl (written by `scratchcnn train --out RUN_DIR`)")
    text = _read_text(path, "metrics.jsonl file", "it")
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{path}: line {number} is not valid JSON ({exc})") from exc
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise DataError(
                f"{path}: line {number} is not a metrics record (a JSON object with an "
                "integer 'epoch')"
            )
        for key in METRIC_KEYS:
            value = record.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise DataError(f"{path}: line {number}: {key!r} must be a number or null")
        norms = record.get("grad_norms")
        if norms is not None and not (
            isinstance(norms, dict)
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in norms.values())
        ):
            raise DataError(
                f"{path}: line {number}: 'grad_norms' must be an object of numbers or null"
            )
        records.append(record)
    if not records:
        raise DataError(f"{path}: no epochs recorded yet (the file is empty)")
    return records


def resolve_run(
    explicit: dict[str, Any], out: Path | None, *, resume: bool, overwrite: bool
) -> tuple[dict[str, Any], Path]:
    """The settings of a ``train`` run and its folder: the defaults, the model's recipe, a
    resumed run's saved settings (run.json) and the ``explicit`` ones, in that order.
    ``out`` None picks ``runs/MODEL-DATASET`` (or ``-2``, ``-3`` ... when that holds a run)."""
    if out is None:
        stem = Path(explicit["init"]).stem if "init" in explicit else RUN_DEFAULTS["model"]
        name = f"{explicit.get('model', stem)}-"
        dataset = explicit.get("dataset", RUN_DEFAULTS["dataset"])
        if dataset == FOLDER:  # runs/lenet5-photos for --data-dir photos/
            dataset = Path(os.path.abspath(explicit["data_dir"])).name or FOLDER
        name += dataset
        out = Path("runs") / name
        if not resume and (out / CHECKPOINT_NAME).exists() and not overwrite:
            n = 2
            while (Path("runs") / f"{name}-{n}" / CHECKPOINT_NAME).exists():
                n += 1
            out = Path("runs") / f"{name}-{n}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder; choose another --out")
    run = {**RUN_DEFAULTS, "data_dir": None}
    run.update(RECIPES.get(explicit.get("model", RUN_DEFAULTS["model"]), {}))
    if resume and (out / RUN_CONFIG).exists():
        saved = read_run_config(out / RUN_CONFIG)
        changed = [
            k for k, v in explicit.items() if k not in RESUMABLE_CHANGES and saved.get(k) != v
        ]
        if changed:
            raise ConfigError(
                f"--resume continues the run saved in {out}; it cannot change "
                f"{', '.join('--' + k.replace('_', '-') for k in changed)} (only --epochs, "
                "--tensorboard and --checkpoint-*)"
            )
        run.update(saved)
    elif (out / CHECKPOINT_NAME).exists() and not resume and not overwrite:
        raise ConfigError(
            f"{out} already holds a run ({CHECKPOINT_NAME}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    resumed = resume and (out / RUN_CONFIG).exists()
    if explicit.get("init") and "lr" not in explicit and not resumed:
        # Fine-tuning: the recipe's rate is a from-scratch rate, which undoes what the
        # weights learned (LeNet-5 on mnist-5k: 97.5 % -> 94.2 % after one epoch at 0.05).
        run["lr"] = run["lr"] * FINE_TUNE_LR_FACTOR
    run.update(explicit)
    if run["init"] and "model" not in explicit:
        run["model"] = None  # the checkpoint's network
    if run["optimizer"] != "sgd" and "momentum" in explicit:
        raise ConfigError(
            f"--momentum applies to --optimizer sgd only; {run['optimizer']} keeps its own "
            "moment estimates (leave --momentum out)"
        )
    return run, out


def record_world_size(run: dict[str, Any], checkpoint: Checkpoint | None, size: int) -> None:
    """Record the number of MPI processes in the run's settings; a checkpoint written by
    another number is refused (it would not continue exactly)."""
    saved = run.get("world_size", 1)
    if checkpoint is not None and saved != size:
        how = f"mpiexec -n {saved} scratchcnn train" if saved > 1 else "scratchcnn train"
        raise ConfigError(
            f"the run in {checkpoint.path.parent} was trained by {saved} process(es), this is "
            f"{size}; resume it with {how} ... --resume (another number would not continue "
            "it exactly)"
        )
    run["world_size"] = size


# --- the folder -------------------------------------------------------------------------
def set_aside_run(out: Path) -> Path | None:
    """Rename the run folder ``out`` to ``out.old-N`` and create ``out`` again, empty;
    returns the new name of the old run, or None when ``out`` is missing or empty."""
    try:
        if not out.exists() or not any(out.iterdir()):
            return None
    except OSError as exc:
        raise FileWriteError(f"{out}: cannot read the run folder ({os_reason(exc)})") from exc
    here, folder = Path.cwd().resolve(), out.resolve()
    if folder == here or folder in here.parents:
        raise ConfigError(
            f"--overwrite would move {out} aside, but it holds the current folder; run from "
            "outside it or choose another --out"
        )
    n = 1
    while (aside := folder.with_name(f"{folder.name}.old-{n}")).exists():
        n += 1
    try:
        os.rename(folder, aside)  # one atomic step: the old run is whole in one place or the other
        folder.mkdir()  # the resolved path: a symlinked --out keeps pointing at the new run
    except OSError as exc:
        raise FileWriteError(
            f"{out}: cannot set the previous run aside ({os_reason(exc)}); nothing was changed"
            if not aside.exists()
            else f"{out}: moved the previous run to {aside} but cannot create {out} again "
            f"({os_reason(exc)})"
        ) from exc
    return aside


def check_resume_settings(
    checkpoint: Checkpoint, run: dict[str, Any], defaults: dict[str, Any]
) -> None:
    """Refuse to resume ``checkpoint`` unless the settings it recorded are ``run``'s (apart
    from :data:`RESUMABLE_CHANGES`); a setting missing on one side counts as its default."""
    saved = checkpoint.extra.get("run")
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"{checkpoint.path}: records no run settings (it was not written by `scratchcnn "
            "train`), so --resume cannot check that it belongs to this run; use --overwrite "
            "or another --out"
        )
    pairs = {
        k: (saved.get(k, defaults.get(k)), run.get(k, defaults.get(k)))
        for k in sorted((set(saved) | set(run)) - RESUMABLE_CHANGES)
    }
    diff = [f"{k}: checkpoint {a!r}, run.json {b!r}" for k, (a, b) in pairs.items() if a != b]
    if diff:
        raise CheckpointError(
            f"{checkpoint.path}: was written with other settings than the run being resumed "
            f"({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}); --resume refuses to "
            "continue it: use --overwrite to start over, or another --out"
        )


def resumed_checkpoint(out: Path, *, resume: bool) -> Checkpoint | None:
    """The checkpoint in ``out`` that ``--resume`` continues, read (and verified) once here
    and passed on to everything that needs it; None when there is none to resume."""
    # lexists: a dangling or looping symlink in its place is refused, not silently replaced.
    if resume and os.path.lexists(out / CHECKPOINT_NAME):
        return load_checkpoint(out / CHECKPOINT_NAME)
    return None


def prepare_run_folder(
    out: Path,
    run: dict[str, Any],
    *,
    resume: bool,
    overwrite: bool,
    defaults: dict[str, Any],
    checkpoint: Checkpoint | None = None,
) -> Path | None:
    """What ``train`` does to ``out`` before it writes anything: set the old run aside
    (``overwrite``) or check the checkpoint it resumes (``resume``; ``checkpoint`` is that
    checkpoint, already read). Returns where the old run went, or None."""
    if resume and overwrite:
        raise ConfigError(
            "--resume continues the run in --out and --overwrite replaces it: pick one"
        )
    if checkpoint is not None:
        check_resume_settings(checkpoint, run, defaults)
        return None
    return set_aside_run(out) if overwrite else None
