"""Reading and writing IDX files, the format MNIST and Fashion-MNIST ship in.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), then one big-endian uint32 per dimension, then the array in C order,
big-endian. The files are usually gzipped; :func:`read_idx` recognises gzip by
its magic bytes, not by the file name.

Every problem (missing file, corrupt gzip stream, bad header, wrong size) raises
:class:`scratchcnn.errors.DataError` with the path and the numbers in one line.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from scratchcnn.errors import DataError

__all__ = [
    "IDX_TYPES",
    "MNIST_IMAGES_MAGIC",
    "MNIST_LABELS_MAGIC",
    "read_idx",
    "read_mnist_pair",
    "write_idx",
]

#: IDX type code -> (big-endian numpy dtype, readable name).
IDX_TYPES: dict[int, tuple[np.dtype, str]] = {
    0x08: (np.dtype(">u1"), "unsigned byte"),
    0x09: (np.dtype(">i1"), "signed byte"),
    0x0B: (np.dtype(">i2"), "int16"),
    0x0C: (np.dtype(">i4"), "int32"),
    0x0D: (np.dtype(">f4"), "float32"),
    0x0E: (np.dtype(">f8"), "float64"),
}
_CODE_OF_KIND = {(dt.kind, dt.itemsize): code for code, (dt, _) in IDX_TYPES.items()}

#: Magic number of an MNIST image file: unsigned bytes, 3 dimensions.
MNIST_IMAGES_MAGIC = 0x0803  # 2051
#: Magic number of an MNIST label file: unsigned bytes, 1 dimension.
MNIST_LABELS_MAGIC = 0x0801  # 2049

_GZIP_MAGIC = b"\x1f\x8b"
_EXPECTED_MAGIC = {"images": MNIST_IMAGES_MAGIC, "labels": MNIST_LABELS_MAGIC}


def _read_bytes(path: Path) -> bytes:
    """Return the file's content, gunzipped when it starts with the gzip magic."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected an IDX file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt gzip stream ({exc})") from None


def read_idx(
    path: str | os.PathLike[str], expect: Literal["images", "labels"] | None = None
) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into a native-endian, writeable array.

    The header is parsed generically: any of the six IDX element types and any
    number of dimensions >= 1. The payload must hold exactly the product of the
    dimensions times the element size, no more and no less.

    ``expect="images"`` / ``"labels"`` additionally requires the MNIST magic
    numbers 2051 (unsigned bytes, 3-D) / 2049 (unsigned bytes, 1-D), so that an
    image file passed as labels (or the reverse) is caught with a clear message.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX header: {len(data)} bytes (need at least 4)")
    magic = struct.unpack(">I", data[:4])[0]
    if expect is not None:
        want = _EXPECTED_MAGIC[expect]
        if magic != want:
            raise DataError(f"{path}: bad magic number {magic} (expected {want} for {expect})")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{path}: bad magic number {magic} (an IDX file starts with two zero bytes, "
            f"found {zero0:#04x} {zero1:#04x}; is this an IDX file?)"
        )
    if code not in IDX_TYPES:
        known = ", ".join(f"{c:#04x}" for c in IDX_TYPES)
        raise DataError(
            f"{path}: bad magic number {magic} (unknown IDX type code {code:#04x}; known: {known})"
        )
    if ndim == 0:
        raise DataError(f"{path}: bad magic number {magic} (declares 0 dimensions, need >= 1)")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{path}: truncated header: {ndim} dimensions need {header_len} header bytes, "
            f"file has {len(data)}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_TYPES[code][0]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header_len
    shape_txt = "x".join(str(d) for d in dims)
    if found < expected:
        raise DataError(
            f"{path}: truncated: expected {expected} bytes of data for shape {shape_txt}, "
            f"found {found}"
        )
    if found > expected:
        raise DataError(
            f"{path}: {found - expected} extra bytes: expected {expected} bytes of data for "
            f"shape {shape_txt}, found {found}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header_len)
    # astype always copies: the result is native-endian and writeable.
    return arr.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``.

    Supported dtypes: uint8, int8, int16, int32, float32, float64 (the IDX
    types). The gzip header carries no timestamp, so equal arrays give equal
    bytes. Written to a temporary file first and renamed into place.
    """
    path = Path(path)
    arr = np.asarray(array)
    code = _CODE_OF_KIND.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None:
        raise DataError(
            f"{path}: cannot write dtype {arr.dtype} as IDX "
            "(supported: uint8, int8, int16, int32, float32, float64)"
        )
    if not 1 <= arr.ndim <= 255:
        raise DataError(f"{path}: IDX needs 1 to 255 dimensions, array has {arr.ndim}")
    if any(d >= 2**32 for d in arr.shape):
        raise DataError(f"{path}: dimension too large for IDX: shape {arr.shape}")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = np.ascontiguousarray(arr, dtype=IDX_TYPES[code][0]).tobytes()
    blob = header + payload
    if path.name.endswith(".gz"):
        blob = gzip.compress(blob, compresslevel=6, mtime=0)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write file ({exc.strerror or exc})") from None


def read_mnist_pair(
    images_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    image_size: tuple[int, int] = (28, 28),
    num_classes: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check an MNIST-style image file and label file.

    Returns ``(images, labels)``: uint8 of shape (N, H, W) and uint8 of shape
    (N,). Checks the magic numbers (2051 / 2049), the image size, that both
    files hold the same count, and that every label is below ``num_classes``.
    """
    images = read_idx(images_path, expect="images")
    labels = read_idx(labels_path, expect="labels")
    h, w = image_size
    if images.shape[1:] != (h, w):
        raise DataError(
            f"{images_path}: expected {h}x{w} images, found {images.shape[1]}x{images.shape[2]}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels"
        )
    if images.shape[0] == 0:
        raise DataError(f"{images_path}: holds 0 images")
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{labels_path}: label {int(labels[i])} at index {i} is out of range "
            f"[0, {num_classes}) ({bad.size} bad labels in all)"
        )
    return images, labels
