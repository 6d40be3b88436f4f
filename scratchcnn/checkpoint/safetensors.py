"""Model weights in the safetensors format, the weights-only file PyTorch users share.

    model.save_weights("lenet.safetensors")          # keys = model.state_dict() keys
    model.load_weights("lenet.safetensors")          # strict: every key must match

Keys and shapes are torch's (``"0.weight"``, ``"3.running_mean"``,
``"3.num_batches_tracked"``), so ``safetensors.torch.save_file(net.state_dict(), p)`` from
an ``nn.Sequential`` of the same layers loads here, and a file saved here loads into that
``nn.Sequential`` with ``load_state_dict(strict=True)``. Only weights travel: the
architecture is code on both sides (use ``scratchcnn.save`` for a full checkpoint).

Writing needs the optional ``safetensors`` package (``pip install -e '.[safetensors]'``),
imported only here and only when writing. Each array is made C-contiguous first: safetensors'
numpy writer stores an array's raw memory as if it were C-ordered
(huggingface/safetensors#825), so a Fortran-ordered or strided array would load back
scrambled. The file is written atomically.

Reading is done here, without the package, because a weights file comes from outside and is
checked before anything is allocated for it: a regular file only; the 8-byte header length
capped (100 MB, safetensors' own limit) and within the file; the JSON header parsed strictly
(no duplicate keys, no NaN); every entry's dtype known, shape a short list of non-negative
ints, and byte range inside the data, of exactly the size its dtype and shape need; ranges
neither overlapping nor leaving gaps or trailing bytes. Memory is bounded by the file's size.
The arrays then go through ``model.load_state_dict``, which checks names, shapes and values.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CheckpointError, MissingDependencyError, ScratchCNNError
from .files import atomic_write_bytes, check_output_path, read_regular_file
from .safezip import MAX_CHECKPOINT_BYTES

if TYPE_CHECKING:
    from ..nn.layers.sequential import Sequential

#: safetensors' own cap on the JSON header (its Rust reader refuses larger ones).
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: Largest weights file read (as large as a checkpoint may be).
MAX_FILE_BYTES = MAX_CHECKPOINT_BYTES
MAX_RANK = 8
MAX_DIM = 2**40
INSTALL_HINT = (
    "pip install safetensors (the [safetensors] extra: pip install -e '.[safetensors]' in a clone)"
)

#: safetensors dtype names -> little-endian numpy dtypes. BF16 has no numpy type: it is read
#: as uint16 and widened to float32 (exact: bfloat16 is the top half of a float32).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


def _safetensors_numpy() -> Any:
    try:
        import safetensors.numpy
    except ImportError:
        raise MissingDependencyError(
            f"saving safetensors weights needs the safetensors package: {INSTALL_HINT}"
        ) from None
    return safetensors.numpy


def save_weights(model: Sequential, path: str | os.PathLike) -> None:
    """Write ``model.state_dict()`` to ``path`` in safetensors format, dtypes kept."""
    writer = _safetensors_numpy()
    # Not np.ascontiguousarray: it turns 0-d arrays (num_batches_tracked) into shape (1,).
    state = {
        key: arr if arr.flags.c_contiguous else arr.copy(order="C")
        for key, arr in model.state_dict().items()
    }
    # What we write, we can read: load_weights refuses NaN and inf, so saving does too.
    bad = [k for k, a in state.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
    if bad:
        raise CheckpointError(
            f"{path}: not written: {bad[0]} contains NaN or inf, which load_weights refuses"
        )
    path = check_output_path(path)
    data = writer.save(state)
    atomic_write_bytes(path, lambda fh: fh.write(data))


def load_weights(model: Sequential, path: str | os.PathLike, strict: bool = True) -> None:
    """Load a safetensors file into ``model`` (in place) through ``model.load_state_dict``.

    With ``strict`` every key of the file and of the model must match (the error lists the
    missing and unexpected keys); values are cast to the model's dtypes."""
    state = read_safetensors(path)
    try:
        model.load_state_dict(state, strict=strict)
    except ScratchCNNError as exc:
        raise type(exc)(f"{path}: {exc}") from exc


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a numpy array, validated as described above."""
    path = Path(path)
    data = read_regular_file(path, MAX_FILE_BYTES, "safetensors file")
    entries, start = _parse_header(path, data)
    arrays = {}
    for key, (dtype_name, shape, (begin, end)) in entries.items():
        dt = DTYPES[dtype_name]
        raw = np.frombuffer(
            data, dtype=dt, count=(end - begin) // dt.itemsize, offset=start + begin
        )
        if dtype_name == "BF16":
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            arr = raw.astype(dt.newbyteorder("="))  # a native-order copy that owns its memory
        arrays[key] = arr.reshape(shape)
    return arrays


def _bad(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a valid safetensors file ({problem})")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} in the header")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} in the header")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_header(
    path: Path, data: bytes
) -> tuple[dict[str, tuple[str, tuple[int, ...], tuple[int, int]]], int]:
    """Validated entries {key: (dtype, shape, (begin, end))} and where the data starts."""
    if len(data) < 8:
        raise _bad(path, f"only {len(data)} bytes; the 8-byte header length is missing")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER_BYTES or 8 + n > len(data) or data[8:9] != b"{":
        if data[:4] == b"PK\x03\x04" or (data[:1] == b"\x80" and data[1:2] in b"\x02\x03\x04\x05"):
            raise _bad(
                path,
                "it is a zip archive or a pickle: a PyTorch .pt/.pth/.bin file or a scratchcnn "
                "checkpoint; in PyTorch save with safetensors.torch.save_file(net.state_dict(), "
                "path)",
            )
    if n > MAX_HEADER_BYTES:
        raise _bad(path, f"header length {n} is over the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > len(data):
        raise _bad(path, f"truncated: the header needs {n} bytes but only {len(data) - 8} follow")
    try:
        if data[8:9] != b"{":
            raise ValueError("the header is not a JSON object")
        header = json.loads(
            data[8 : 8 + n].decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError) as exc:
        raise _bad(path, f"unreadable header: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise _bad(path, "the header is not a JSON object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _bad(path, "__metadata__ must map strings to strings")
    size = len(data) - 8 - n
    entries = {key: _entry(path, key, spec, size) for key, spec in header.items()}
    # The tensors must tile the data exactly, as safetensors' own reader requires.
    position = 0
    for key, (_, _, (begin, end)) in sorted(entries.items(), key=lambda kv: kv[1][2]):
        if begin < position:
            raise _bad(path, f"tensor {key!r} overlaps another tensor's bytes")
        if begin > position:
            raise _bad(path, f"{begin - position} unused bytes before tensor {key!r}")
        position = end
    if position != size:
        raise _bad(path, f"{size - position} bytes after the last tensor")
    return entries, 8 + n


def _entry(
    path: Path, key: str, spec: Any, size: int
) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    """One header entry, checked: known dtype, shape, byte range inside the data."""
    if not isinstance(spec, dict) or set(spec) != _ENTRY_KEYS:
        raise _bad(path, f"tensor {key!r} must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:  # a list or object: unhashable
        known = ", ".join(DTYPES)
        raise _bad(path, f"tensor {key!r} has dtype {str(dtype)[:20]!r}; known: {known}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(_is_int(d) and 0 <= d <= MAX_DIM for d in shape)
    ):
        raise _bad(
            path,
            f"tensor {key!r}: shape must be a list of at most {MAX_RANK} sizes from 0 to {MAX_DIM}",
        )
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_int(o) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= size
    ):
        raise _bad(
            path, f"tensor {key!r}: data_offsets {str(offsets)[:60]} outside the {size} data bytes"
        )
    need = math.prod(shape) * DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != need:
        raise _bad(
            path,
            f"tensor {key!r}: {dtype} {tuple(shape)} needs {need} bytes, data_offsets give "
            f"{offsets[1] - offsets[0]}",
        )
    return dtype, tuple(shape), (offsets[0], offsets[1])
