"""Mid-epoch checkpoints: where a run stands inside an epoch, so ``--resume`` goes on exactly.

``fit(checkpoint_every=N)`` (every N optimiser steps, counted over the whole run) and
``fit(checkpoint_minutes=M)`` also write the checkpoint between two steps of an epoch. Such
a checkpoint, written during epoch e after s of its steps, holds

* ``epoch`` = e - 1 (the epochs finished), so older readers see a consistent run;
* ``rng["loader"]``: the loader's generator as it was at the START of epoch e: the resumed
  run draws the same permutation again and skips the s batches already used;
* the layers' generators (Dropout), the weights and the optimiser as they are after step s;
* ``extra["position"]``: :class:`Position` (e, s and the epoch's partial sums for the
  metrics), and ``extra["world_size"]``: how many MPI processes trained the run.

Together with the same number of BLAS threads (and of MPI processes) the resumed run ends
bit-identical to one that never stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import CheckpointError, ConfigError


def _count(low: int) -> Any:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _finite(low: float) -> Any:
    def ok(v: Any) -> bool:
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        return number and math.isfinite(v) and v >= low

    return ok


# ---- NEW CHECKPOINT METADATA (branch mpi): for the metadata schema validator ---------------
#: extra["position"] (absent in end-of-epoch checkpoints): field -> validator.
POSITION_FIELDS: dict[str, Any] = {
    "epoch": _count(1),  # the epoch in progress (1-based)
    "step": _count(1),  # steps of it done; < steps per epoch
    "loss_sum": _finite(0.0),  # sum over its images so far of the training loss
    "correct": _count(0),  # images of it classified right so far
    "seen": _count(1),  # images of it seen so far (every rank's)
    "seconds": _finite(0.0),  # training time of the epoch so far
    # per parameter, the sum over its steps so far of the gradient norm (metrics' grad_norms)
    "grad_norm_sums": lambda v: (
        isinstance(v, dict)
        and len(v) <= 100_000
        and all(isinstance(k, str) and len(k) <= 1024 and _finite(0.0)(x) for k, x in v.items())
    ),
}
#: Position fields a checkpoint may leave out (their defaults apply).
OPTIONAL_POSITION_FIELDS = frozenset({"grad_norm_sums"})
#: extra["world_size"] (absent in checkpoints of older versions: 1).
WORLD_SIZE_FIELD = _count(1)


def check_position_meta(extra: dict[str, Any]) -> str | None:
    """The problem with a checkpoint's ``extra["position"]`` / ``extra["world_size"]``, as a
    phrase, or None when they are valid (or absent)."""
    if "world_size" in extra and not WORLD_SIZE_FIELD(extra["world_size"]):
        return f"'world_size' must be an integer >= 1, got {extra['world_size']!r}"
    pos = extra.get("position")
    if pos is None:
        return None
    required = set(POSITION_FIELDS) - OPTIONAL_POSITION_FIELDS
    if not isinstance(pos, dict) or not required <= set(pos) <= set(POSITION_FIELDS):
        return f"'position' must be an object with the keys {sorted(POSITION_FIELDS)}"
    for key, ok in POSITION_FIELDS.items():
        if key in pos and not ok(pos[key]):
            return f"bad value {pos[key]!r} for position {key!r}"
    if pos["correct"] > pos["seen"]:
        return "position 'correct' exceeds 'seen'"
    return None


# ---------------------------------------------------------------------------------------------


@dataclass
class Position:
    """How far an epoch has gone: ``step`` steps of epoch ``epoch`` done, with the sums the
    epoch's metrics are made of (``loss_sum / seen`` is the mean training loss so far)."""

    epoch: int
    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    grad_norm_sums: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_position(
    path: Any, extra: dict[str, Any], epochs_done: int, steps_per_epoch: int, world_size: int
) -> Position | None:
    """The mid-epoch position saved in a checkpoint's ``extra`` (None: it was written at the
    end of an epoch). Refuses a position that does not fit the run being resumed."""
    problem = check_position_meta(extra)
    if problem:
        raise CheckpointError(f"{path}: malformed checkpoint metadata: {problem}")
    saved_size = extra.get("world_size", 1)
    if saved_size != world_size:
        raise CheckpointError(
            f"{path}: the run was trained by {saved_size} process(es) and this is "
            f"{world_size}; resume it with mpiexec -n {saved_size} (another number of "
            "processes would not continue it exactly)"
        )
    pos = extra.get("position")
    if pos is None:
        return None
    if pos["epoch"] != epochs_done + 1 or pos["step"] >= steps_per_epoch:
        raise CheckpointError(
            f"{path}: the checkpoint stopped at step {pos['step']} of epoch {pos['epoch']}, "
            f"which does not fit epoch {epochs_done} done and {steps_per_epoch} steps per epoch "
            "(another --batch-size or data set?)"
        )
    return Position(**pos)


class CheckpointClock:
    """When to write a mid-epoch checkpoint: after every ``every`` steps of the run and/or
    when ``minutes`` have passed since the last checkpoint."""

    def __init__(self, every: int | None = None, minutes: float | None = None) -> None:
        if every is not None and not _count(1)(every):
            raise ConfigError(f"checkpoint_every must be a positive int, got {every!r}")
        if minutes is not None and not (_finite(0.0)(minutes) and minutes > 0):
            raise ConfigError(f"checkpoint_minutes must be a positive number, got {minutes!r}")
        self.every, self.minutes = every, minutes
        self.last = time.monotonic()

    @property
    def active(self) -> bool:
        return self.every is not None or self.minutes is not None

    def due(self, run_step: int) -> bool:
        """True if a checkpoint is due after the run's ``run_step``-th step."""
        if self.every is not None and run_step % self.every == 0:
            return True
        return self.minutes is not None and time.monotonic() - self.last >= 60 * self.minutes

    def written(self) -> None:
        self.last = time.monotonic()


def resume_point(ckpt: Any) -> str:
    """Where a checkpoint's run goes on: "after epoch 3" or "at step 40 of epoch 4"."""
    pos = ckpt.extra.get("position") if check_position_meta(ckpt.extra) is None else None
    if pos:
        return f"at step {pos['step']} of epoch {pos['epoch']}"
    return f"after epoch {ckpt.epoch}"
