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
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from scratchcnn.data._files import regular_file_size
from scratchcnn.errors import DataError, os_reason

__all__ = [
    "IDX_TYPES",
    "MAX_IDX_BYTES",
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


#: Largest IDX payload read (bytes, after decompression): 1 GiB, 20 times full MNIST's
#: training images. The header's shape is checked against it before anything is allocated.
MAX_IDX_BYTES = 2**30
_CHUNK = 1 << 20


class _Reader:
    """The bytes of an IDX file, gunzipped on the fly when it starts with the gzip magic;
    never more than asked for is decompressed (a gzip bomb costs one chunk)."""

    def __init__(self, path: Path, fh: BinaryIO, size: int) -> None:
        self.path, self.fh, self.size = path, fh, size
        self.gz = fh.read(2) == _GZIP_MAGIC
        fh.seek(0)
        self._z = zlib.decompressobj(wbits=31) if self.gz else None
        self._tail = b""

    def _more(self, limit: int) -> bytes:
        """Up to ``limit`` (> 0) further bytes; b"" at the end of the data."""
        if self._z is None:
            return self.fh.read(limit)
        z = self._z
        try:
            while True:
                if not self._tail:
                    if z.eof:
                        return b""
                    self._tail = self.fh.read(_CHUNK)
                    if not self._tail:
                        raise DataError(
                            f"{self.path}: corrupt gzip stream (Compressed file ended before "
                            "the end-of-stream marker was reached)"
                        )
                out = z.decompress(self._tail, limit)
                self._tail = z.unconsumed_tail
                if z.eof and z.unused_data.strip(b"\0"):
                    raise DataError(f"{self.path}: extra data after the end of the gzip stream")
                if out:
                    return out
        except zlib.error as exc:
            raise DataError(f"{self.path}: corrupt gzip stream ({exc})") from None

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or fewer at the end of the data."""
        parts, got = [], 0
        while got < n:
            part = self._more(n - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def read_into(self, buf: memoryview) -> int:
        """Fill ``buf``; returns how many bytes there were (less than its size: the data
        ended early)."""
        if self._z is None:
            return self.fh.readinto(buf) or 0
        got = 0
        while got < len(buf):
            part = self._more(min(len(buf) - got, _CHUNK))
            if not part:
                break
            buf[got : got + len(part)] = part
            got += len(part)
        return got


def _open_regular(path: Path) -> tuple[BinaryIO, int]:
    """Open ``path`` for reading if it is a regular file; returns (file, size)."""
    size = regular_file_size(path, "an IDX file")
    try:
        return open(path, "rb"), size  # closed by read_idx
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({os_reason(exc)})") from None


def read_idx(
    path: str | os.PathLike[str], expect: Literal["images", "labels"] | None = None
) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into a native-endian, writeable array.

    The header is parsed generically: any of the six IDX element types and any
    number of dimensions >= 1. The payload must hold exactly the product of the
    dimensions times the element size, no more and no less, and at most
    :data:`MAX_IDX_BYTES`; that is checked from the header before anything is allocated,
    and a gzipped file is decompressed only as far as the header says it should go.

    ``expect="images"`` / ``"labels"`` additionally requires the MNIST magic
    numbers 2051 (unsigned bytes, 3-D) / 2049 (unsigned bytes, 1-D), so that an
    image file passed as labels (or the reverse) is caught with a clear message.
    """
    path = Path(path)
    fh, size = _open_regular(path)
    with fh:
        try:
            return _read_idx(_Reader(path, fh, size), expect)
        except OSError as exc:
            raise DataError(f"{path}: cannot read file ({os_reason(exc)})") from None


def _read_idx(src: _Reader, expect: Literal["images", "labels"] | None) -> np.ndarray:
    path = src.path
    head = src.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: too short for an IDX header: {len(head)} bytes (need at least 4)")
    magic = struct.unpack(">I", head)[0]
    if expect is not None:
        want = _EXPECTED_MAGIC[expect]
        if magic != want:
            raise DataError(f"{path}: bad magic number {magic} (expected {want} for {expect})")
    zero0, zero1, code, ndim = head
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
    rest = src.read(4 * ndim)
    if len(rest) < 4 * ndim:
        raise DataError(
            f"{path}: truncated header: {ndim} dimensions need {header_len} header bytes, "
            f"file has {4 + len(rest)}"
        )
    dims = struct.unpack(f">{ndim}I", rest)
    dtype = IDX_TYPES[code][0]
    # Python integers: a product of up to 255 dimensions of 2**32 - 1 cannot overflow here.
    expected = math.prod(dims) * dtype.itemsize
    shape_txt = "x".join(str(d) for d in dims)
    if expected > MAX_IDX_BYTES:
        raise DataError(
            f"{path}: the header declares shape {shape_txt} ({expected:,} bytes of data), more "
            f"than the {MAX_IDX_BYTES:,}-byte limit for an IDX file"
        )
    if not src.gz:  # the file's size tells truncation or extra bytes before any allocation
        found = src.size - header_len
        _check_size(path, expected, found, shape_txt)
    payload = np.empty(expected, dtype=np.uint8)
    found = src.read_into(memoryview(payload))
    if found == expected:
        # Count extra bytes up to one chunk: beyond that a gzip bomb is not worth unpacking.
        extra = len(src.read(_CHUNK))
        if extra == _CHUNK:
            raise DataError(
                f"{path}: extra bytes: expected {expected} bytes of data for shape {shape_txt}, "
                f"found at least {expected + extra}"
            )
        found += extra
    _check_size(path, expected, found, shape_txt)
    arr = payload.view(dtype)
    # astype copies: the result is native-endian and writeable.
    return arr.astype(dtype.newbyteorder("="), copy=not dtype.isnative).reshape(dims)


def _check_size(path: Path, expected: int, found: int, shape_txt: str) -> None:
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
        raise DataError(f"{path}: cannot write file ({os_reason(exc)})") from None


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
