"""Reading untrusted checkpoint files with memory bounded by the file's size.

Two steps, both before anything in the file is trusted: ``files.read_regular_file`` reads
it (a regular file within the size cap, never a FIFO or a device), then
:func:`stored_entries` parses the zip's end record and central directory itself, instead
  of trusting Python's ``zipfile`` (whose checks differ between patch versions), and returns
each entry's bytes as a ``memoryview`` slice of the file: no entry may be compressed or
encrypted, lie outside the file or the area before the central directory, overlap another
entry, declare a size other than the bytes it holds, or fail its CRC-32, and there are at
most ``max_entries``. Since the entries are disjoint slices of the file, everything read
  from them together is at most the file's size.
"""

from __future__ import annotations

import struct
import zlib
from itertools import pairwise
from pathlib import Path

from ..errors import CheckpointError

#: Largest checkpoint file read by default (2 GiB); ``load_checkpoint(max_bytes=...)`` changes it.
MAX_CHECKPOINT_BYTES = 2 * 1024**3
#: Most entries a checkpoint may hold (each parameter, buffer and optimiser buffer is one).
MAX_ENTRIES = 10_000

_EOCD = struct.Struct("<4sHHHHIIH")  # end of central directory, 22 bytes
_EOCD64_LOCATOR = struct.Struct("<4sIQI")  # 20 bytes, just before the end record
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")  # 56 bytes
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # 46 bytes
_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
_U32, _U16 = 0xFFFFFFFF, 0xFFFF


def _zip64_extra(extra: bytes, want: list[str]) -> dict[str, int]:
    """The 64-bit fields (in zip order) of a central entry's zip64 extra block (id 1)."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + size]
        if tag == 1:
            if len(body) < 8 * len(want):
                raise ValueError("short zip64 extra field")
            return dict(zip(want, struct.unpack_from(f"<{len(want)}Q", body), strict=True))
        pos += 4 + size
    raise ValueError("missing zip64 extra field")


def _end_record(data: bytes) -> tuple[int, int, int, int]:
    """(entry count, central directory offset, its size, where it must end) from the end
    record, following a zip64 end record when the 32-bit fields overflowed."""
    pos = data.rfind(b"PK\x05\x06", max(0, len(data) - _EOCD.size - _U16))
    if pos < 0 or pos + _EOCD.size > len(data):
        raise ValueError("no end record")
    _, disk, cd_disk, n_disk, n, cd_size, cd_off, _ = _EOCD.unpack_from(data, pos)
    end = pos
    loc = pos - _EOCD64_LOCATOR.size
    # A zip64 end record (needed when a 32-bit field overflowed; some writers, torch's
    # among them, always add one) sits before a locator right before the end record.
    if loc >= 0 and data[loc : loc + 4] == b"PK\x06\x07":
        _, _, rec, _ = _EOCD64_LOCATOR.unpack_from(data, loc)
        if rec + _EOCD64.size > loc:
            raise ValueError("bad zip64 end record locator")
        sig, _, _, _, disk, cd_disk, n_disk, n, cd_size, cd_off = _EOCD64.unpack_from(data, rec)
        if sig != b"PK\x06\x06":
            raise ValueError("bad zip64 end record")
        end = rec
    elif _U16 in (n, n_disk) or _U32 in (cd_size, cd_off):
        raise ValueError("no zip64 end record")
    if disk != 0 or cd_disk != 0 or n_disk != n:
        raise ValueError("multi-disk archive")
    return n, cd_off, cd_size, end


def stored_entries(
    path: Path, data: bytes, max_entries: int = MAX_ENTRIES
) -> list[tuple[str, memoryview]]:
    """The (name, bytes) of every entry of the zip ``data``, in central-directory order,
    after the checks in the module docstring; one ``CheckpointError`` line otherwise."""

    def corrupt(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: corrupt checkpoint ({what})")

    try:
        n, cd_off, cd_size, cd_end = _end_record(data)
    except (ValueError, struct.error) as exc:
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint (the end of the archive is missing or "
            "damaged)"
        ) from exc
    if n > max_entries:
        raise corrupt(f"{n:,} entries, more than the limit of {max_entries:,}")
    if cd_off + cd_size != cd_end:
        raise corrupt("the central directory is not where the end record says")
    view = memoryview(data)
    entries: list[tuple[str, int, int, int, int, int, int]] = []
    pos = cd_off
    try:
        for _ in range(n):
            fields = _CENTRAL.unpack_from(data, pos)
            if fields[0] != b"PK\x01\x02":
                raise ValueError("bad central directory entry")
            flags, method, crc, csize, usize = fields[3], fields[4], fields[7], fields[8], fields[9]
            n_name, n_extra, n_comment, disk, offset = (*fields[10:13], fields[13], fields[16])
            start = pos + _CENTRAL.size
            raw_name = data[start : start + n_name]
            extra = data[start + n_name : start + n_name + n_extra]
            pos = start + n_name + n_extra + n_comment
            if pos > cd_end:
                raise ValueError("central directory runs past its end")
            want = [k for k, v in (("u", usize), ("c", csize), ("o", offset)) if v == _U32]
            if want:
                big = _zip64_extra(extra, want)
                usize, csize, offset = (
                    big.get("u", usize),
                    big.get("c", csize),
                    big.get("o", offset),
                )
            if disk not in (0, _U16):
                raise ValueError("multi-disk archive")
            name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
            entries.append((name, flags, method, crc, csize, usize, offset))
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise corrupt(f"central directory: {exc}") from exc
    if pos != cd_end:
        raise corrupt("the central directory's size does not match its entries")
    names = [e[0] for e in entries]
    if any(name.endswith("data.pkl") for name in names):
        raise CheckpointError(
            f"{path}: is a PyTorch checkpoint (pickle inside), not a scratchcnn checkpoint; "
            "refusing to load it"
        )
    if len(set(names)) != len(names):
        raise corrupt("duplicate entries")
    for name, flags, method, *_ in entries:
        if not name.endswith(".npy"):
            raise CheckpointError(
                f"{path}: not a scratchcnn checkpoint (entry {name!r} is not a .npy array)"
            )
        if method != 0:
            raise CheckpointError(f"{path}: entry {name!r} is compressed; checkpoints are not")
        if flags & 0x41:
            raise corrupt(f"entry {name!r} is encrypted")
    spans, out = [], []
    for name, _, _, crc, csize, usize, offset in entries:
        if csize != usize:
            raise corrupt(f"entry {name!r} declares {csize} stored bytes but {usize} in all")
        if offset + _LOCAL.size > cd_off:
            raise corrupt(f"entry {name!r} starts outside the archive's data")
        local = _LOCAL.unpack_from(data, offset)
        n_name, n_extra = local[9], local[10]
        begin = offset + _LOCAL.size + n_name + n_extra
        if local[0] != b"PK\x03\x04" or data[offset + _LOCAL.size : begin - n_extra] != (
            name.encode("utf-8" if local[2] & 0x800 else "cp437")
        ):
            raise corrupt(f"entry {name!r}: its local header does not match the directory")
        if begin + csize > cd_off:
            raise corrupt(
                f"entry {name!r} declares {csize:,} bytes, more than the file holds there"
            )
        spans.append((offset, begin + csize, name))
        out.append((name, view[begin : begin + csize], crc))
    spans.sort()
    for (_, end, first), (start, _, second) in pairwise(spans):
        if start < end:
            raise corrupt(f"entries {first!r} and {second!r} overlap")
    for name, body, crc in out:
        if zlib.crc32(body) != crc:
            raise corrupt(f"Bad CRC-32 for file {name!r}")
    return [(name, body) for name, body, _ in out]
