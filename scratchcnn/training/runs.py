"""Run folders (``scratchcnn train --out D``): starting over safely and resuming only the
run that ``run.json`` describes.

* ``--overwrite`` renames the whole folder ``D`` to a sibling ``D.old-N`` (the first free N)
  in one atomic ``rename`` and starts ``D`` empty, before anything of the new run is
  written. Nothing of the old run is deleted, and a new run killed at any instant can never
  be resumed from the old run's weights and optimiser: they are no longer in ``D``.
* ``--resume`` reads the checkpoint's recorded settings (``extra["run"]``, written by
  ``train``) and refuses to go on unless they are the run's settings (``run.json``; only
  ``--epochs`` may differ), so a checkpoint is never continued under other settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..checkpoint import load_checkpoint
from ..errors import CheckpointError, ConfigError, FileWriteError, os_reason
from .loop import CHECKPOINT_NAME

#: Settings a resumed run may change (``--epochs``: train longer; ``--tensorboard`` and
#: ``--checkpoint-*``: event files and how often checkpoints are written, which shape nothing
#: in the training).
RESUMABLE_CHANGES = frozenset({"epochs", "tensorboard", "checkpoint_every", "checkpoint_minutes"})


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
    checkpoint: Path, run: dict[str, Any], defaults: dict[str, Any]
) -> int | None:
    """Refuse to resume ``checkpoint`` unless the settings it recorded are ``run``'s (apart
    from :data:`RESUMABLE_CHANGES`); a setting missing on one side counts as its default.
    Returns the checkpoint's epoch."""
    ckpt = load_checkpoint(checkpoint)
    saved = ckpt.extra.get("run")
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"{checkpoint}: records no run settings (it was not written by `scratchcnn "
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
            f"{checkpoint}: was written with other settings than the run being resumed "
            f"({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}); --resume refuses to "
            "continue it: use --overwrite to start over, or another --out"
        )
    return ckpt.epoch


def prepare_run_folder(
    out: Path, run: dict[str, Any], *, resume: bool, overwrite: bool, defaults: dict[str, Any]
) -> tuple[Path | None, int | None]:
    """What ``train`` does to ``out`` before it writes anything: set the old run aside
    (``overwrite``) or check the checkpoint it resumes (``resume``). Returns (where the old
    run went, the epoch resumed from); each None when it does not apply."""
    if resume and overwrite:
        raise ConfigError(
            "--resume continues the run in --out and --overwrite replaces it: pick one"
        )
    checkpoint = out / CHECKPOINT_NAME
    # lexists: a dangling or looping symlink in its place is refused, not silently replaced.
    if resume and os.path.lexists(checkpoint):
        return None, check_resume_settings(checkpoint, run, defaults)
    return (set_aside_run(out) if overwrite else None), None
