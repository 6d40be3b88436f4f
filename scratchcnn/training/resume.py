"""Resuming a run: a checkpoint, read once, loaded into the live model, optimiser, schedule
and loader, so the run goes on exactly where it stopped (mid-epoch too: ``midepoch``).

With the same seed and the same number of BLAS threads (and of MPI processes) a run that was
killed and resumed ends with bit-identical weights to one that never stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..checkpoint import Checkpoint
from ..data import DataLoader
from ..errors import CheckpointError
from ..nn.layers.sequential import Sequential
from ..nn.optim import LRScheduler, Optimizer
from .midepoch import Position, read_position
from .runs import EpochMetrics


@dataclass
class Resumed:
    """Where a restored run stands: the epochs finished, their metrics, and the position
    inside the next epoch (None: at its start)."""

    epoch: int
    history: list[EpochMetrics]
    position: Position | None


def restore(
    ckpt: Checkpoint,
    model: Sequential,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    loader: DataLoader,
    world_size: int = 1,
) -> Resumed:
    """Load a checkpoint (already read: ``load_checkpoint`` verified it once) into the live
    objects: weights, optimiser, schedule, the loader's shuffle and the layers' generators.

    A checkpoint that does not fit (another architecture, optimiser or schedule, a damaged
    history or RNG state, a position inside an epoch that this run does not have) raises one
    ``CheckpointError`` line naming the file."""
    path = ckpt.path
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
    # Where inside the next epoch it stopped (checked before anything live is changed).
    position = read_position(path, ckpt.extra, ckpt.epoch, len(loader), world_size)
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
    return Resumed(ckpt.epoch, history, position)
