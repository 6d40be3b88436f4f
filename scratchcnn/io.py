"""Checkpoints: architecture, weights, optimiser and RNG state in one .npz file, never pickle.

File layout (a plain, uncompressed NumPy .npz, i.e. a zip of .npy arrays):

* ``__meta__``: UTF-8 JSON as a uint8 array — format name and version, the model's
  ``config()`` (so ``load`` rebuilds it without code), epoch, optimiser type and
  hyper-parameters, scheduler, RNG states, free-form ``extra``, and the SHA-256 of every
  array below;
* ``model/<key>``: every parameter and buffer, keys as in ``Sequential.state_dict()``;
* ``optim/<param key>/<buffer>``: optimiser buffers (momentum, Adam moments).

Writes are atomic: a temporary file in the same folder is written, flushed and fsynced,
then renamed over the target with ``os.replace`` and the folder is fsynced, so the file on
disk is always the previous complete checkpoint or the new complete one. Reads use
``allow_pickle=False`` and check the zip CRCs, the SHA-256 of every array, the format
version and the shapes; any problem raises one ``CheckpointError`` line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError, ScratchCNNError
from .model import Sequential

FORMAT = "scratchcnn-checkpoint"
VERSION = 1
META_KEY = "__meta__"


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then atomically replace
    ``path`` with it (after flush + fsync). On any error the temporary file is removed and
    ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays inside RNG states and configs -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def layer_rng_states(model: Sequential) -> dict[str, Any]:
    """Bit-generator states of layers that own one (Dropout), keyed by layer index."""
    return {
        str(i): _jsonable(layer.rng.bit_generator.state)
        for i, layer in enumerate(model.layers)
        if isinstance(getattr(layer, "rng", None), np.random.Generator)
    }


def save(
    model: Sequential,
    path: str | os.PathLike,
    *,
    optimizer: Any = None,
    scheduler: Any = None,
    epoch: int | None = None,
    rng: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (and optionally training state) to ``path`` atomically; returns the path.

    ``rng`` holds other generator states to restore on resume (the data loader's); layers'
    own generators (Dropout) are saved automatically. ``extra`` is any JSON-serialisable dict.
    """
    if not isinstance(model, Sequential):
        raise CheckpointError(f"save expects a Sequential model, got {type(model).__name__}")
    arrays: dict[str, np.ndarray] = {f"model/{k}": v for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.config(),
        "epoch": epoch,
        "layer_rng": layer_rng_states(model),
        "rng": _jsonable(rng or {}),
        "extra": _jsonable(extra or {}),
        "optimizer": None,
        "scheduler": None,
    }
    if optimizer is not None:
        state = optimizer.state_dict()
        meta["optimizer"] = {k: _jsonable(state[k]) for k in ("type", "hyper", "steps")}
        arrays.update({f"optim/{k}": v for k, v in state["buffers"].items()})
    if scheduler is not None:
        meta["scheduler"] = _jsonable(scheduler.state_dict())
    meta["sha256"] = {k: _digest(v) for k, v in arrays.items()}
    try:
        blob = json.dumps(meta, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: checkpoint metadata is not JSON-serialisable: {exc}"
        ) from exc
    arrays[META_KEY] = np.frombuffer(blob, dtype=np.uint8)
    atomic_write_bytes(path, lambda fh: np.savez(fh, **arrays))
    return Path(path)


@dataclass
class Checkpoint:
    """Everything a checkpoint holds, as read by :func:`load_checkpoint`."""

    path: Path
    model: Sequential
    meta: dict[str, Any]
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    epoch: int | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def restore_training_state(self, optimizer: Any = None, scheduler: Any = None) -> None:
        """Load saved optimiser/scheduler state into the given objects."""
        if optimizer is not None and self.optimizer_state is not None:
            try:
                optimizer.load_state_dict(self.optimizer_state)
            except ScratchCNNError as exc:
                raise CheckpointError(f"{self.path}: optimizer state does not fit: {exc}") from exc
        if scheduler is not None and self.scheduler_state is not None:
            scheduler.load_state_dict(self.scheduler_state)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a scratchcnn checkpoint (not an .npz archive; truncated, or another "
            "format such as a pickle)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise CheckpointError(
                f"{path}: holds an object array that only pickle could load; refusing to load it"
            ) from exc
        raise CheckpointError(f"{path}: corrupt checkpoint ({exc})") from exc
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, zipfile.LargeZipFile) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({exc})") from exc


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a checkpoint; rebuild the model with its weights."""
    path = Path(path)
    arrays = _read_arrays(path)
    raw = arrays.pop(META_KEY, None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path}: not a scratchcnn checkpoint (no {META_KEY} entry)")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a scratchcnn checkpoint (format {meta.get('format')!r})"
        )
    version = meta.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this scratchcnn "
            f"supports ({VERSION}); upgrade scratchcnn to load it"
        )
    digests = meta.get("sha256", {})
    if set(digests) != set(arrays):
        missing = sorted(set(digests) - set(arrays))
        unexpected = sorted(set(arrays) - set(digests))
        raise CheckpointError(
            f"{path}: checkpoint arrays do not match its index (missing {missing}, "
            f"unexpected {unexpected})"
        )
    for name, arr in arrays.items():
        if arr.dtype.kind not in "fiub":
            raise CheckpointError(f"{path}: array {name!r} has unsupported dtype {arr.dtype}")
        if _digest(arr) != digests[name]:
            raise CheckpointError(f"{path}: array {name!r} is corrupt (SHA-256 mismatch)")
    try:
        model = Sequential.from_config(meta["model"])
        model.load_state_dict(
            {k[len("model/") :]: v for k, v in arrays.items() if k.startswith("model/")}
        )
    except (ScratchCNNError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model: {exc}") from exc
    for idx, state in meta.get("layer_rng", {}).items():
        try:
            model.layers[int(idx)].rng.bit_generator.state = state
        except (IndexError, AttributeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: bad RNG state for layer {idx}: {exc}") from exc
    opt_state = None
    if meta.get("optimizer"):
        opt_state = dict(meta["optimizer"])
        opt_state["buffers"] = {
            k[len("optim/") :]: v for k, v in arrays.items() if k.startswith("optim/")
        }
    return Checkpoint(
        path=path,
        model=model,
        meta=meta,
        optimizer_state=opt_state,
        scheduler_state=meta.get("scheduler"),
        epoch=meta.get("epoch"),
        rng=meta.get("rng") or {},
        extra=meta.get("extra") or {},
    )


def load(path: str | os.PathLike) -> Sequential:
    """Rebuild a model (architecture and weights) from a checkpoint written by :func:`save`."""
    return load_checkpoint(path).model
