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

Writes are atomic (``files.atomic_write_bytes``): the whole file is built in memory, written
to a temporary file in the same folder and renamed over the target, so the file on disk is
always the previous complete checkpoint or the new complete one.

Reads treat the file as untrusted and never unpickle (object arrays are refused). They
check, in order: that it is a regular file within the size cap (``safezip``), the file-wide
SHA-256, the zip structure, parsed here rather than by ``zipfile`` so that entries cannot
overlap or lie about their sizes (``safezip``), and CRCs, that every entry is a plain numeric
``.npy`` array whose size matches its header, the format name and version, every metadata
field's type and range (``schema``), the SHA-256 of every array, that the arrays are exactly
the tensors the config implies (each layer's ``state_shapes``, before any layer is built),
and that every layer's output fits the recorded input shape. Any problem raises one
``CheckpointError`` line naming the file and the problem. Memory stays within about twice
the file's size.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, ScratchCNNError
from ..nn.layers.base import resolve_layer_type
from ..nn.layers.sequential import Sequential
from .files import atomic_write_bytes, check_output_path, read_regular_file
from .safezip import MAX_CHECKPOINT_BYTES, MAX_ENTRIES, stored_entries
from .schema import MAX_INPUT_ELEMENTS, check_metadata

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
#: Largest metadata (the ``__meta__`` JSON) read: parsed JSON takes many times its size.
MAX_META_BYTES = 4 * 1024**2


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


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
        "model": model.config(),  # custom layers under their qualified names
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
    path = check_output_path(path)
    # What we write, we can read: the loader's every check, run on these bytes first.
    try:
        _parse(path, data, MAX_ENTRIES)
    except CheckpointError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise CheckpointError(
            f"{path}: not written: the checkpoint could not be loaded back ({reason})"
        ) from exc
    atomic_write_bytes(path, lambda fh: fh.write(data))
    return path


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
            if st.get("type") != type(scheduler).__name__:
                raise CheckpointError(
                    f"{self.path}: scheduler state is for {st.get('type')!r}, not "
                    f"{type(scheduler).__name__}"
                )
            try:
                scheduler.load_state_dict(st)
            except (ScratchCNNError, KeyError, TypeError, ValueError, OverflowError) as exc:
                raise CheckpointError(f"{self.path}: bad scheduler state: {exc}") from exc


def _read_file(path: Path, max_bytes: int) -> bytes:
    data = read_regular_file(
        path, max_bytes, limit_hint=" (load_checkpoint(path, max_bytes=...) raises it)"
    )
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


#: numpy refuses .npy headers longer than this by default; none of ours comes close.
_NPY_HEADER_MAX = 10_000


def _read_npy(path: Path, name: str, body: memoryview) -> np.ndarray:
    """One entry's bytes as an array, without pickle and without trusting its sizes."""
    fh = BytesIO(body[: _NPY_HEADER_MAX + 16].tobytes())
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise CheckpointError(f"{path}: entry {name!r} has .npy format version {version}")
    except (ValueError, EOFError, SyntaxError, TypeError, OverflowError) as exc:
        raise CheckpointError(f"{path}: entry {name!r} is not a valid .npy array ({exc})") from exc
    if dtype.hasobject:
        raise CheckpointError(
            f"{path}: entry {name!r} is an object array, which only pickle could load; "
            "refusing to load it"
        )
    if dtype.kind not in "fiub" or dtype.fields is not None or dtype.subdtype is not None:
        raise CheckpointError(f"{path}: entry {name!r} has unsupported dtype {dtype}")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if fh.tell() + nbytes != len(body):
        raise CheckpointError(
            f"{path}: entry {name!r} holds {len(body) - fh.tell()} bytes of data but "
            f"its header declares {dtype} {shape} ({nbytes} bytes)"
        )
    arr = np.frombuffer(body, dtype=dtype, count=count, offset=fh.tell())
    arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    return arr.copy()


def _read_arrays(path: Path, data: bytes, max_entries: int) -> dict[str, np.ndarray]:
    """Every entry as an array: at most the file's size in all (see ``safezip``)."""
    return {
        name[: -len(".npy")]: _read_npy(path, name, body)
        for name, body in stored_entries(path, data, max_entries)
    }


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _check_state_shapes(path: Path, config: dict[str, Any], arrays: dict[str, Any]) -> None:
    """The tensors the config implies (each layer's ``state_shapes``) against the arrays in the
    file, before a layer is built: a config cannot make us allocate what the file lacks.
    Layers whose class does not say (custom layers without ``state_shapes``) are skipped."""
    expected: dict[str, tuple[int, ...]] = {}
    unknown: set[str] = set()
    for i, spec in enumerate(config["layers"]):
        cls = resolve_layer_type(spec["type"])
        try:
            shapes = cls.state_shapes(spec.get("config", {}))
        except (ScratchCNNError, KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CheckpointError(
                f"{path}: cannot rebuild the model: layer {i} ({spec['type']}) has a bad "
                f"config: {exc}"
            ) from exc
        if shapes is None:
            unknown.add(str(i))
        else:
            expected.update({f"{i}.{k}": tuple(v) for k, v in shapes.items()})
    have = {k[len("model/") :]: v.shape for k, v in arrays.items() if k.startswith("model/")}
    missing = [k for k in expected if k not in have]
    unexpected = [k for k in have if k not in expected and k.split(".")[0] not in unknown]
    misshaped = [
        f"{k}: file {have[k]} vs config {expected[k]}"
        for k in expected
        if k in have and have[k] != expected[k]
    ]
    problems = [
        f"{what}: {', '.join(keys) if what != 'mis-shaped' else '; '.join(keys)}"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("mis-shaped", misshaped),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"{path}: cannot rebuild the model: the arrays in the file do not fit its config "
            f"({' | '.join(problems)})"
        )


def _check_activations(path: Path, model: Sequential) -> None:
    """With a recorded input shape, every layer's output must exist and stay within
    ``MAX_INPUT_ELEMENTS`` values per image: running the model stays bounded too."""
    if model.input_shape is None:
        return
    try:
        shapes = model.output_shapes()
    except (ScratchCNNError, ValueError, TypeError, IndexError, OverflowError) as exc:
        raise CheckpointError(f"{path}: the model cannot run on its input shape: {exc}") from exc
    for i, shape in enumerate(shapes):
        if math.prod(shape[1:]) > MAX_INPUT_ELEMENTS:
            raise CheckpointError(
                f"{path}: layer {i} ({model.layers[i]!r}) would output {shape[1:]} per image, "
                f"more than {MAX_INPUT_ELEMENTS:,} values"
            )


def load_checkpoint(
    path: str | os.PathLike,
    *,
    max_bytes: int = MAX_CHECKPOINT_BYTES,
    max_entries: int = MAX_ENTRIES,
) -> Checkpoint:
    """Read and verify a checkpoint; rebuild the model with its weights.

    Files larger than ``max_bytes`` (default 2 GiB) or with more than ``max_entries`` arrays
    are refused before they are parsed."""
    path = Path(path)
    return _parse(path, _read_file(path, max_bytes), max_entries)


def _parse(path: Path, data: bytes, max_entries: int) -> Checkpoint:
    """Everything :func:`load_checkpoint` checks, on the bytes of a file (``save`` runs it on
    what it is about to write)."""
    sealed = _check_seal(path, data)
    arrays = _read_arrays(path, data, max_entries)
    raw = arrays.pop(META_KEY, None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path}: not a scratchcnn checkpoint (no {META_KEY} entry)")
    if raw.size > MAX_META_BYTES:
        raise CheckpointError(
            f"{path}: checkpoint metadata of {raw.size:,} bytes is more than the "
            f"{MAX_META_BYTES:,}-byte limit"
        )
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
    try:
        check_metadata(meta)
    except ScratchCNNError as exc:
        raise CheckpointError(f"{path}: malformed checkpoint metadata: {exc}") from exc
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
    _check_state_shapes(path, meta["model"], arrays)
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
    _check_activations(path, model)
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
