"""Checkpoints: architecture, weights, optimiser and RNG state in one .npz file, never pickle.

File layout (a plain, uncompressed NumPy .npz, i.e. a zip of .npy arrays, that ``np.load``
reads too):

* ``__meta__``: UTF-8 JSON as a uint8 array — format name and version, the model's
  ``config()`` (so ``load`` rebuilds it without code), epoch, optimiser type and
  hyper-parameters, scheduler, RNG states, free-form ``extra``, and the SHA-256 of every
  array below;
* ``model/<key>``: every parameter and buffer, keys as in ``Sequential.state_dict()``;
* ``optim/<param key>/<buffer>``: optimiser buffers (momentum, Adam moments);
* the zip comment, the last bytes of the file: ``scratchcnn-sha256:`` and the SHA-256 (64 hex
  digits) of every byte before those digits, so that any change to the file — one flipped
  bit, a cut-off end — is detected before anything in it is used.

Writes are atomic: the whole file is built in memory, written to a temporary file
``.NAME.PID.XXXXXXXX.tmp`` in the same folder, flushed and fsynced, then renamed over the
target with ``os.replace`` and the folder is fsynced, so the file on disk is always the
previous complete checkpoint or the new complete one. Temporary files left behind by a
writer that was killed (its PID is gone) are removed by the next successful write.

Reads never unpickle (object arrays are refused) and check, in order: the file-wide
SHA-256, the zip structure and CRCs, that every entry is a plain numeric ``.npy`` array
whose size matches its header, the format name and version, the metadata's types, the
SHA-256 of every array, and that the arrays fit the architecture. Any problem raises one
``CheckpointError`` line naming the file and the problem.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import CheckpointError, FileWriteError, ScratchCNNError
from .model import Sequential

FORMAT = "scratchcnn-checkpoint"
VERSION = 1
META_KEY = "__meta__"
#: The zip comment that ends every checkpoint: this prefix, then the SHA-256 (64 hex digits)
#: of every byte of the file before the digits.
SEAL_PREFIX = b"scratchcnn-sha256:"
_DIGEST_LEN = 64
_SEAL_LEN = len(SEAL_PREFIX) + _DIGEST_LEN
_EOCD_LEN = 22  # a zip's end-of-central-directory record, without its comment
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed entry timestamps: same state, same bytes
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _reason(exc: BaseException) -> str:
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).strip()


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the existence check (POSIX)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, owned by someone else
        return True
    return True


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files ``.NAME.PID.XXXXXXXX.tmp`` that writers of ``path`` killed
    mid-write left next to it (those whose PID no longer runs); returns what was removed.

    POSIX only (elsewhere there is no safe way to ask whether a PID runs): returns []."""
    if os.name != "posix":
        return []
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[A-Za-z0-9_]+\.tmp")
    removed = []
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    except OSError:
        return []
    for tmp in candidates:
        match = pattern.fullmatch(tmp.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            tmp.unlink()
        except OSError:
            continue
        removed.append(tmp)
    return removed


def atomic_write_bytes(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then atomically replace
    ``path`` with it (after flush + fsync), fsync the folder, and remove temporary files that
    killed writers of ``path`` left behind. On any error the temporary file is removed and
    ``path`` is untouched; an ``OSError`` (disk full, file too large, permission denied)
    becomes a one-line :class:`FileWriteError` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
        )
    except OSError as exc:
        raise FileWriteError(f"{path}: cannot write it ({_reason(exc)})") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, ScratchCNNError):
            raise FileWriteError(
                f"{path}: cannot write it ({_reason(exc)}); the file on disk, if any, is unchanged"
            ) from exc
        raise
    _fsync_dir(path.parent)
    remove_stale_temp_files(path)


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
    """Bit-generator states of layers that own one (Dropout), keyed by the layer's prefix in
    ``named_layers()`` ("4", or "3.body.2" inside a block)."""
    return {
        prefix: _jsonable(layer.rng.bit_generator.state)
        for prefix, layer in model.named_layers()
        if isinstance(getattr(layer, "rng", None), np.random.Generator)
    }


def checkpoint_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The .npz file of ``arrays`` (names without ``.npy``), sealed with its SHA-256."""
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(arr), allow_pickle=False)
        zf.comment = SEAL_PREFIX + b"0" * _DIGEST_LEN  # placeholder, replaced below
    body = buf.getvalue()[:-_DIGEST_LEN]
    return body + hashlib.sha256(body).hexdigest().encode("ascii")


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
        "sealed": True,
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
    data = checkpoint_bytes(arrays)
    atomic_write_bytes(path, lambda fh: fh.write(data))
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
            known = set(optimizer.hyperparameters())
            unknown = sorted(set(self.optimizer_state["hyper"]) - known)
            if unknown:
                raise CheckpointError(
                    f"{self.path}: optimizer state does not fit: hyper-parameters "
                    f"{unknown} are not {type(optimizer).__name__}'s ({sorted(known)})"
                )
            try:
                optimizer.load_state_dict(self.optimizer_state)
            except (ScratchCNNError, KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(f"{self.path}: optimizer state does not fit: {exc}") from exc
        if scheduler is not None and self.scheduler_state is not None:
            st = self.scheduler_state
            epoch, base_lr = st.get("epoch"), st.get("base_lr")
            if st.get("type") != type(scheduler).__name__:
                raise CheckpointError(
                    f"{self.path}: scheduler state is for {st.get('type')!r}, not "
                    f"{type(scheduler).__name__}"
                )
            if not _is_count(epoch) or not _is_number(base_lr) or base_lr <= 0:
                raise CheckpointError(
                    f"{self.path}: bad scheduler state (epoch {epoch!r}, base_lr {base_lr!r})"
                )
            scheduler.load_state_dict(st)


def _is_count(value: Any) -> bool:
    """A non-negative int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_file(path: Path) -> bytes:
    try:
        if not path.exists():
            raise CheckpointError(f"{path}: no such checkpoint file")
        if path.is_dir():
            raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({_reason(exc)})") from exc
    if not data:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise CheckpointError(
            f"{path}: is a Python pickle, not a scratchcnn checkpoint; refusing to load it "
            "(unpickling can run arbitrary code, and scratchcnn checkpoints never use pickle)"
        )
    if data.startswith(b"\x93NUMPY"):
        raise CheckpointError(
            f"{path}: is a single .npy array, not a scratchcnn checkpoint (.npz written by "
            "scratchcnn.save or `scratchcnn train`)"
        )
    if len(data) < _EOCD_LEN and b"PK\x03\x04".startswith(data[:4]):
        raise CheckpointError(f"{path}: truncated checkpoint (only {len(data)} bytes)")
    if not data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise CheckpointError(
            f"{path}: not a scratchcnn checkpoint (not an .npz archive; starts with {data[:8]!r})"
        )
    return data


def _check_seal(path: Path, data: bytes) -> bool:
    """True if the file ends with a seal and it matches; raises if it does not match."""
    if len(data) < _EOCD_LEN + _SEAL_LEN or data[-_SEAL_LEN:-_DIGEST_LEN] != SEAL_PREFIX:
        return False
    if hashlib.sha256(data[:-_DIGEST_LEN]).hexdigest().encode("ascii") != data[-_DIGEST_LEN:]:
        raise CheckpointError(
            f"{path}: corrupt checkpoint: the file's SHA-256 does not match the one it was "
            "saved with (damaged on disk or in a copy, or edited)"
        )
    return True


def _read_npy(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One zip entry as an array, without pickle and without trusting its sizes."""
    name = info.filename
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(f"{path}: entry {name!r} is compressed; checkpoints are not")
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise CheckpointError(f"{path}: entry {name!r} has .npy format version {version}")
        if dtype.hasobject:
            raise CheckpointError(
                f"{path}: entry {name!r} is an object array, which only pickle could load; "
                "refusing to load it"
            )
        if dtype.kind not in "fiub" or dtype.fields is not None or dtype.subdtype is not None:
            raise CheckpointError(f"{path}: entry {name!r} has unsupported dtype {dtype}")
        nbytes = math.prod(shape) * dtype.itemsize
        if fh.tell() + nbytes != info.file_size:
            raise CheckpointError(
                f"{path}: entry {name!r} holds {info.file_size - fh.tell()} bytes of data but "
                f"its header declares {dtype} {shape} ({nbytes} bytes)"
            )
        raw = fh.read(nbytes)  # reading to the end checks the entry's CRC-32
    if len(raw) != nbytes:
        raise CheckpointError(f"{path}: entry {name!r} is truncated")
    arr = np.frombuffer(raw, dtype=dtype)
    arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    return arr.copy()


def _read_arrays(path: Path, data: bytes) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(BytesIO(data)) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            if any(n.endswith("data.pkl") for n in names):
                raise CheckpointError(
                    f"{path}: is a PyTorch checkpoint (pickle inside), not a scratchcnn "
                    "checkpoint; refusing to load it"
                )
            if len(set(names)) != len(names):
                raise CheckpointError(f"{path}: corrupt checkpoint (duplicate entries)")
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise CheckpointError(
                        f"{path}: not a scratchcnn checkpoint (entry {info.filename!r} is not "
                        "a .npy array)"
                    )
                arrays[info.filename[: -len(".npy")]] = _read_npy(path, zf, info)
    except CheckpointError:
        raise
    except zipfile.BadZipFile as exc:
        if "not a zip file" in str(exc):
            raise CheckpointError(
                f"{path}: truncated or corrupt checkpoint (the end of the archive is missing "
                "or damaged)"
            ) from exc
        raise CheckpointError(f"{path}: corrupt checkpoint ({exc})") from exc
    except (
        zipfile.LargeZipFile,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        NotImplementedError,
        RuntimeError,
        OverflowError,
        UnicodeDecodeError,
    ) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {exc})") from exc
    return arrays


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    """The types of every field ``save`` writes; one line naming the first bad one."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: malformed checkpoint metadata: {what}")

    digests = meta.get("sha256")
    if not isinstance(digests, dict) or not all(
        isinstance(v, str) and _HEX64.fullmatch(v) for v in digests.values()
    ):
        raise bad("'sha256' must map array names to SHA-256 hex digests")
    if not isinstance(meta.get("model"), dict):
        raise bad("'model' must be the model's config (a JSON object)")
    if meta.get("epoch") is not None and not _is_count(meta["epoch"]):
        raise bad(f"'epoch' must be a non-negative integer, got {meta['epoch']!r}")
    for key in ("layer_rng", "rng", "extra"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise bad(f"{key!r} must be a JSON object, got {type(meta[key]).__name__}")
    if meta.get("sealed") not in (None, True, False):
        raise bad(f"'sealed' must be true or false, got {meta['sealed']!r}")
    opt = meta.get("optimizer")
    if opt is not None:
        if not isinstance(opt, dict) or not isinstance(opt.get("type"), str):
            raise bad("'optimizer' must be an object with a 'type' name")
        hyper = opt.get("hyper")
        if not isinstance(hyper, dict) or not all(
            v is None
            or _is_number(v)
            or (isinstance(v, list) and all(_is_number(x) for x in v))
            or isinstance(v, bool)
            for v in hyper.values()
        ):
            raise bad("optimizer 'hyper' must map names to numbers")
        if not _is_count(opt.get("steps")):
            raise bad(f"optimizer 'steps' must be a non-negative integer, got {opt.get('steps')!r}")
    sched = meta.get("scheduler")
    if sched is not None and not isinstance(sched, dict):
        raise bad("'scheduler' must be a JSON object")


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a checkpoint; rebuild the model with its weights."""
    path = Path(path)
    data = _read_file(path)
    sealed = _check_seal(path, data)
    arrays = _read_arrays(path, data)
    raw = arrays.pop(META_KEY, None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path}: not a scratchcnn checkpoint (no {META_KEY} entry)")
    try:
        meta = json.loads(raw.tobytes().decode(), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path}: not a scratchcnn checkpoint (format {fmt!r})")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path}: unknown checkpoint format version {version!r}")
    if version > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this scratchcnn "
            f"supports ({VERSION}); upgrade scratchcnn to load it"
        )
    _check_meta(path, meta)
    if meta.get("sealed") and not sealed:
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint: its closing SHA-256 seal is missing or "
            "damaged"
        )
    digests = meta["sha256"]
    if set(digests) != set(arrays):
        missing = sorted(set(digests) - set(arrays))
        unexpected = sorted(set(arrays) - set(digests))
        raise CheckpointError(
            f"{path}: checkpoint arrays do not match its index (missing {missing}, "
            f"unexpected {unexpected})"
        )
    for name, arr in arrays.items():
        if _digest(arr) != digests[name]:
            raise CheckpointError(f"{path}: array {name!r} is corrupt (SHA-256 mismatch)")
    try:
        model = Sequential.from_config(meta["model"])
        model.load_state_dict(
            {k[len("model/") :]: v for k, v in arrays.items() if k.startswith("model/")}
        )
    except (
        ScratchCNNError,
        KeyError,
        TypeError,
        ValueError,
        IndexError,
        OverflowError,
        MemoryError,
    ) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model: {exc}") from exc
    leaves = dict(model.named_layers())
    for idx, state in (meta.get("layer_rng") or {}).items():
        try:
            layer = leaves[idx]
            if not isinstance(getattr(layer, "rng", None), np.random.Generator):
                raise ValueError("the layer has no random generator")
            layer.rng.bit_generator.state = state
        except (IndexError, AttributeError, ValueError, TypeError, KeyError) as exc:
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
