"""The decode cache of image folders: every image decoded once into a uint8 file on disk,
read back memory-mapped.

An entry of the cache is, in ``default_cache_dir() / "image-folders" / FOLDER``:

* ``STEM.SPLIT.u8`` for each split: the images, uint8 (N, C, H, W) in C order, nothing else
  (N, C, H, W are in the manifest; the file's size must be exactly N * C * H * W bytes);
* ``STEM.json``: the manifest, written last. Without a valid manifest an entry is not used.

``STEM`` is ``LISTING-REQUEST``: LISTING (24 hex digits) is the SHA-256 of the files as
listed (every image's relative path, class, size in bytes and modification time in ns), so
any change to the folder gives a new entry; REQUEST (16 hex digits) is the SHA-256 of what
was asked for (image size, channels, which files go to which split, the cache format and
the Pillow version that decodes and resizes). FOLDER names the image folder (a digest of
its absolute path and its name).

Writing: each split is decoded file by file straight into a memory-mapped window of a
temporary file ``.NAME.PID.XXXXXXXX.tmp`` in the cache folder (space reserved first with
``posix_fallocate``, so a full disk is an error before decoding, never a crash), a window of
a few MB at a time so memory stays bounded whatever the folder's size; then flushed,
fsynced and renamed into place (``os.replace``), and only then the manifest is written
(``checkpoint.files.atomic_write_bytes``). A killed build leaves only temporary files (removed
by the next build once their process is gone) or data files without a manifest (not used,
replaced). Reading: the manifest is checked (format, version, stem, classes, splits, row
counts, the skipped files, per-channel statistics) and every data file's size against it
before it is mapped read-only; any mismatch rebuilds the entry.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from scratchcnn.checkpoint.files import (
    atomic_write_bytes,
    read_regular_file,
    remove_stale_temp_files,
)
from scratchcnn.errors import DataError, os_reason

__all__ = [
    "CACHE_VERSION",
    "MAX_ENTRIES_PER_FOLDER",
    "CacheEntry",
    "ImageFile",
    "build_entry",
    "cache_folder",
    "listing_digest",
    "open_entry",
    "request_digest",
]

log = logging.getLogger(__name__)

#: The cache format; a change gives new entries (old ones are not read).
CACHE_VERSION = 1
#: Entries kept per image folder for the same files (other image sizes, channels or splits);
#: entries for files that changed since are removed when a new entry is built.
MAX_ENTRIES_PER_FOLDER = 4
#: Largest manifest read (bytes): it lists the skipped files, so it grows with them only.
MAX_MANIFEST_BYTES = 64 * 2**20
#: Bytes decoded into one memory-mapped window before it is flushed and unmapped.
WINDOW_BYTES = 4 * 2**20
_MAGIC = "scratchcnn image-folder cache"
_ENTRY = re.compile(r"([0-9a-f]{24})-([0-9a-f]{16})\.(json|[a-z]+\.u8)")


@dataclass(frozen=True)
class ImageFile:
    """One image file as listed: path relative to the image folder ('/'-separated), class
    index, size in bytes and modification time in nanoseconds."""

    path: str
    label: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class CacheEntry:
    """A valid entry: the images of each split (read-only memory maps), the rows of each
    split's file list that were skipped (with the reason), and the manifest."""

    manifest_path: Path
    images: dict[str, np.ndarray]
    skipped: dict[str, tuple[tuple[int, str], ...]]
    image_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def cache_folder(cache_root: Path, root: Path) -> Path:
    """The cache folder of the image folder ``root`` under ``cache_root``."""
    absolute = os.path.abspath(os.path.realpath(root))
    digest = hashlib.sha256(os.fsencode(absolute)).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(absolute).name)[:40].lstrip(".") or "root"
    return cache_root / "image-folders" / f"{name}-{digest}"


def _path_bytes(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def listing_digest(classes: Sequence[str], files: Sequence[ImageFile]) -> str:
    """SHA-256 (hex) of the class names and every file's path, class, size and mtime."""
    h = hashlib.sha256(f"{_MAGIC} {CACHE_VERSION}\n".encode())
    h.update(json.dumps(list(classes)).encode() + b"\n")
    for f in files:
        h.update(_path_bytes(f.path) + f"\0{f.label}\0{f.size}\0{f.mtime_ns}\n".encode())
    return h.hexdigest()


def request_digest(request: Mapping[str, Any], splits: Mapping[str, Sequence[ImageFile]]) -> str:
    """SHA-256 (hex) of the request (JSON-able) and the paths of each split, in order."""
    from PIL import __version__ as pillow

    h = hashlib.sha256(f"{_MAGIC} {CACHE_VERSION} pillow {pillow}\n".encode())
    h.update(json.dumps(request, sort_keys=True).encode() + b"\n")
    for name in sorted(splits):
        h.update(f"[{name}] {len(splits[name])}\n".encode())
        for f in splits[name]:
            h.update(_path_bytes(f.path) + b"\n")
    return h.hexdigest()


class _Stale(Exception):
    """An entry that cannot be used (the reason is logged, the entry rebuilt)."""


def open_entry(
    folder: Path,
    stem: str,
    classes: Sequence[str],
    splits: Mapping[str, Sequence[ImageFile]],
) -> CacheEntry | None:
    """The entry ``stem`` if it is complete and matches ``classes`` and ``splits``, else
    None (a missing, half-written, damaged or foreign entry is never used)."""
    manifest_path = folder / f"{stem}.json"
    if not manifest_path.is_file():
        return None
    try:
        raw = read_regular_file(
            manifest_path, MAX_MANIFEST_BYTES, kind="image cache manifest", error=_Stale
        )
        try:
            manifest = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Stale(f"not JSON ({exc})") from None
        return _check(folder, stem, manifest_path, manifest, classes, splits)
    except _Stale as exc:
        log.info("image cache %s not used, rebuilt: %s", manifest_path, exc)
        return None


def _check(
    folder: Path,
    stem: str,
    manifest_path: Path,
    m: Any,
    classes: Sequence[str],
    splits: Mapping[str, Sequence[ImageFile]],
) -> CacheEntry:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise _Stale(what)

    need(isinstance(m, dict), "not a JSON object")
    need(m.get("format") == _MAGIC and m.get("version") == CACHE_VERSION, "other format")
    need(m.get("stem") == stem, "its stem differs")
    need(m.get("classes") == list(classes), "other classes")
    size, channels = m.get("image_size"), m.get("channels")
    need(
        isinstance(size, list)
        and len(size) == 2
        and all(type(v) is int and v >= 1 for v in size)
        and channels in (1, 3),
        "bad image size or channels",
    )
    mean, std = m.get("mean"), m.get("std")
    need(
        all(
            isinstance(v, list)
            and len(v) == channels
            and all(isinstance(x, float) and math.isfinite(x) for x in v)
            for v in (mean, std)
        ),
        "bad mean or std",
    )
    entries = m.get("splits")
    need(isinstance(entries, dict) and sorted(entries) == sorted(splits), "other splits")
    h, w = size
    row = channels * h * w
    images: dict[str, np.ndarray] = {}
    skipped: dict[str, tuple[tuple[int, str], ...]] = {}
    for name, files in splits.items():
        e = entries[name]
        need(isinstance(e, dict), f"split {name} is not an object")
        skips = e.get("skipped")
        need(
            isinstance(skips, list)
            and all(
                isinstance(s, list)
                and len(s) == 2
                and type(s[0]) is int
                and 0 <= s[0] < len(files)
                and isinstance(s[1], str)
                for s in skips
            ),
            f"split {name}: bad skipped list",
        )
        rows_skipped = [s[0] for s in skips]
        need(rows_skipped == sorted(set(rows_skipped)), f"split {name}: skipped rows unsorted")
        n = len(files) - len(skips)
        need(e.get("rows") == n and n >= 1, f"split {name}: {e.get('rows')} rows, expected {n}")
        path = folder / f"{stem}.{name}.u8"
        try:
            st = os.stat(path)
        except OSError as exc:
            raise _Stale(f"{path}: {os_reason(exc)}") from None
        need(st.st_size == n * row, f"{path}: {st.st_size} bytes, expected {n * row}")
        try:
            images[name] = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, channels, h, w))
        except (OSError, ValueError) as exc:
            raise _Stale(f"{path}: cannot map it ({exc})") from None
        skipped[name] = tuple((int(i), str(r)) for i, r in skips)
    return CacheEntry(manifest_path, images, skipped, (h, w), channels, tuple(mean), tuple(std))


Decoder = Callable[[Path], np.ndarray]


def build_entry(
    folder: Path,
    stem: str,
    root: Path,
    classes: Sequence[str],
    splits: Mapping[str, Sequence[ImageFile]],
    image_size: tuple[int, int],
    channels: int,
    decode: Decoder,
    stats_split: str,
    skip_bad_images: bool,
    bad_image_hint: str,
    progress: bool | None = None,
) -> CacheEntry:
    """Decode every file of ``splits`` (paths relative to ``root``) with ``decode`` (a path
    -> uint8 (C, H, W)) into a new entry ``stem`` of ``folder`` and return it opened.

    A file whose decoding raises :class:`DataError`, or that vanished or changed since it
    was listed, is skipped when ``skip_bad_images`` (its row left out, the reason kept),
    else the build stops with that one line (plus ``bad_image_hint`` for unreadable
    images) and leaves nothing behind. Per-channel mean and std (pixel values / 255) are
    computed over the rows of ``stats_split`` while they are written."""
    h, w = image_size
    row = channels * h * w
    total = sum(len(f) for f in splits.values())
    _reserve_folder(folder, total * row)
    window_rows = max(1, WINDOW_BYTES // row)
    sums = np.zeros(channels, np.float64)
    squares = np.zeros(channels, np.float64)
    temps: dict[str, str] = {}
    done: dict[str, tuple[int, list[tuple[int, str]]]] = {}
    bar = tqdm(
        total=total,
        desc=f"decoding {root.name or root} (once; cached)",
        unit="img",
        disable=None if progress is None else not progress,
    )
    try:
        for name, files in splits.items():
            final = folder / f"{stem}.{name}.u8"
            fd, tmp = _temp_for(final)
            temps[name] = tmp
            with os.fdopen(fd, "r+b") as fh:
                _allocate(fh, len(files) * row, folder)
                rows, skips = 0, []
                for start in range(0, len(files), window_rows):
                    chunk = files[start : start + window_rows]
                    # the window starts at the next free row: skipped files leave no gap
                    window = np.memmap(
                        tmp, np.uint8, "r+", offset=rows * row, shape=(len(chunk), channels, h, w)
                    )
                    filled = 0
                    for i, f in enumerate(chunk, start):
                        problem = _decode_one(root / f.path, f, decode, window, filled)
                        bar.update(1)
                        if problem is None:
                            filled += 1
                            continue
                        if not skip_bad_images:
                            hint = "" if problem[1] else f"; {bad_image_hint}"
                            raise DataError(problem[0] + hint)
                        skips.append((i, problem[0]))
                    if name == stats_split and filled:
                        part = window[:filled].reshape(filled, channels, -1)
                        sums += part.sum(axis=(0, 2), dtype=np.float64)
                        # 255**2 fits uint16 exactly; the sums are exact in float64
                        squares += np.square(part, dtype=np.uint16).sum(
                            axis=(0, 2), dtype=np.float64
                        )
                    window.flush()
                    del window
                    rows += filled
                if rows == 0:
                    what = f"{root} ({name})" if len(splits) > 1 else str(root)
                    raise DataError(
                        f"{what}: none of its {len(files)} images could be read (first: "
                        f"{skips[0][1]})"
                    )
                fh.truncate(rows * row)
                fh.flush()
                os.fsync(fh.fileno())
            done[name] = (rows, skips)
        for name, tmp in temps.items():
            os.replace(tmp, folder / f"{stem}.{name}.u8")
    except BaseException as exc:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DataError(_cannot_write(folder, exc)) from None
        raise
    finally:
        bar.close()
    n_stats = done[stats_split][0] * h * w * 255.0
    mean = sums / n_stats
    std = np.sqrt(np.maximum(squares / (n_stats * 255.0) - mean**2, 0.0))
    manifest = {
        "format": _MAGIC,
        "version": CACHE_VERSION,
        "stem": stem,
        "root": os.fsdecode(os.path.abspath(root)),
        "classes": list(classes),
        "image_size": [h, w],
        "channels": channels,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "splits": {
            name: {"rows": rows, "skipped": [[i, r] for i, r in skips]}
            for name, (rows, skips) in done.items()
        },
    }
    path = folder / f"{stem}.json"
    blob = json.dumps(manifest, indent=1).encode()
    try:
        atomic_write_bytes(path, lambda fh: fh.write(blob))
    except OSError as exc:  # FileWriteError
        raise DataError(f"{path}: cannot write the image cache ({exc})") from None
    for name in splits:
        remove_stale_temp_files(folder / f"{stem}.{name}.u8")
    _prune(folder, stem)
    entry = open_entry(folder, stem, classes, splits)
    if entry is None:  # pragma: no cover - only if another process damaged it meanwhile
        raise DataError(f"{path}: the image cache just written cannot be read back")
    return entry


def _decode_one(
    path: Path, f: ImageFile, decode: Decoder, window: np.ndarray, row: int
) -> tuple[str, bool] | None:
    """Decode ``path`` into ``window[row]``; None on success, else (the one-line reason,
    whether the folder changed, as opposed to the file being unreadable)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (
            f"{path}: vanished while the image cache was built (the folder changed since it "
            "was listed; run again)",
            True,
        )
    except OSError as exc:
        return f"{path}: cannot read it ({os_reason(exc)})", False
    if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
        return (
            f"{path}: changed while the image cache was built (the folder changed since it "
            "was listed; run again)",
            True,
        )
    try:
        window[row] = decode(path)
    except DataError as exc:
        return str(exc), False
    return None


def _temp_for(final: Path) -> tuple[int, str]:
    """A temporary file next to ``final``, named as atomic_write_bytes names its own (so
    remove_stale_temp_files cleans up after a killed build)."""
    return tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent)


def _reserve_folder(folder: Path, need: int) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise DataError(_cannot_write(folder, exc)) from None
    if need > free:
        raise DataError(_no_room(folder, need, free))


def _allocate(fh: Any, size: int, folder: Path) -> None:
    """Reserve ``size`` bytes for the file: with posix_fallocate, a full disk is an error
    now rather than a SIGBUS when a page of the memory map is written."""
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fh.fileno(), 0, size)
        else:  # pragma: no cover - not Linux
            fh.truncate(size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(_no_room(folder, size, shutil.disk_usage(folder).free)) from None
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no fallocate on this filesystem
            fh.truncate(size)
            return
        raise


def _no_room(folder: Path, need: int, free: int) -> str:
    return (
        f"{folder}: the image cache needs {need / 2**30:.2f} GiB but only {free / 2**30:.2f} "
        "GiB are free there; choose a smaller image size or set SCRATCHCNN_CACHE_DIR to a "
        "folder on a bigger disk"
    )


def _cannot_write(folder: Path, exc: OSError) -> str:
    return (
        f"{folder}: cannot write the image cache ({os_reason(exc)}); set SCRATCHCNN_CACHE_DIR "
        "to a writeable folder"
    )


def _prune(folder: Path, stem: str) -> None:
    """Remove the entries of files that changed since (another LISTING) and all but the
    MAX_ENTRIES_PER_FOLDER newest entries of the same files. The manifest goes first, so a
    reader never finds a manifest whose data is gone. (A process that has an entry mapped
    keeps reading it: the data stays until it is unmapped.)"""
    listing = stem.split("-")[0]
    stems: dict[str, list[Path]] = {}
    try:
        for p in folder.iterdir():
            m = _ENTRY.fullmatch(p.name)
            if m:
                stems.setdefault(f"{m.group(1)}-{m.group(2)}", []).append(p)
    except OSError:
        return

    def age(s: str) -> float:
        try:
            return (folder / f"{s}.json").stat().st_mtime
        except OSError:
            return -math.inf

    same = sorted((s for s in stems if s.startswith(listing) and s != stem), key=age)
    drop = [s for s in stems if not s.startswith(listing)]
    drop += same[: max(0, len(same) - (MAX_ENTRIES_PER_FOLDER - 1))]
    for s in drop:
        for p in sorted(stems[s], key=lambda p: p.suffix != ".json"):
            try:
                p.unlink()
            except OSError:
                pass
