"""CIFAR-10 and CIFAR-100 in their binary version (never the pickle version).

A binary CIFAR file is a sequence of fixed-size records: the label byte(s), then 3,072 pixel
bytes, the 1,024 red values of the 32x32 image row by row, then the 1,024 green, then the
1,024 blue, so a record's pixels are already (C, H, W). CIFAR-10 records have one label byte
(0..9); CIFAR-100 records have two, the coarse label (0..19) then the fine label (0..99),
which is the one used here.

=========  ==========================  =====================================  ===========
data set   folder in the archive       train files                            test file
=========  ==========================  =====================================  ===========
cifar10    ``cifar-10-batches-bin``    ``data_batch_1.bin`` .. ``_5.bin``     ``test_batch.bin``
cifar100   ``cifar-100-binary``        ``train.bin``                          ``test.bin``
=========  ==========================  =====================================  ===========

Every file is checked when read (a regular file, at most :data:`MAX_CIFAR_FILE_BYTES`
bytes, a whole number of records, labels in range); every problem is one
:class:`DataError` line naming the file. :func:`extract_cifar` takes the few files it needs
out of the official ``.tar.gz`` (after its checksum was verified by the caller), each
written to a temporary file and renamed into place; it never calls ``extractall`` and
never follows a link or a path from the archive.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from scratchcnn.checkpoint.files import read_regular_file, remove_stale_temp_files
from scratchcnn.data._files import regular_file_size
from scratchcnn.errors import DataError, os_reason

__all__ = [
    "CIFAR",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "MAX_CIFAR_FILE_BYTES",
    "CifarLayout",
    "extract_cifar",
    "find_cifar_files",
    "read_cifar",
    "write_cifar",
]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

#: The 100 fine labels of CIFAR-100, in label order (alphabetical, as in fine_label_names.txt).
CIFAR100_CLASSES: tuple[str, ...] = tuple(
    """
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
    crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house
    kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle
    mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree
    plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew
    skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank
    telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree
    wolf woman worm
    """.split()
)

#: Largest CIFAR file read (bytes): CIFAR-100's train.bin is 153,700,000 bytes.
MAX_CIFAR_FILE_BYTES = 256 * 2**20

_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR data set's files are and what their records hold."""

    name: str  #: "cifar10" or "cifar100"
    archive: str  #: the official archive's file name
    folder: str  #: the folder the archive unpacks into
    files: dict[str, tuple[str, ...]]  #: split -> file names, read in this order
    label_bytes: int  #: 1 (CIFAR-10) or 2 (CIFAR-100: coarse, fine)
    classes: tuple[str, ...]

    @property
    def record_bytes(self) -> int:
        return self.label_bytes + _PIXELS


CIFAR: dict[str, CifarLayout] = {
    "cifar10": CifarLayout(
        "cifar10",
        "cifar-10-binary.tar.gz",
        "cifar-10-batches-bin",
        {
            "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
            "test": ("test_batch.bin",),
        },
        1,
        CIFAR10_CLASSES,
    ),
    "cifar100": CifarLayout(
        "cifar100",
        "cifar-100-binary.tar.gz",
        "cifar-100-binary",
        {"train": ("train.bin",), "test": ("test.bin",)},
        2,
        CIFAR100_CLASSES,
    ),
}


def find_cifar_files(folder: Path, layout: CifarLayout, split: str) -> list[str]:
    """The names of ``split``'s files that are missing from ``folder`` (a folder or special
    file of that name is not missing: reading it says what it is)."""
    return [f for f in layout.files[split] if not (folder / f).exists()]


def read_cifar(
    folder: str | os.PathLike[str], name: str, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 3, 32, 32) and labels int64 (N,) of ``split`` ("train" or "test") of
    ``name`` ("cifar10" or "cifar100", fine labels) from the binary files in ``folder``.

    Any number of records per file is accepted (the official files hold 10,000 or 50,000);
    each file must hold a whole number of records and at least one. Memory: the result plus
    one file's bytes."""
    layout = CIFAR[name]
    folder = Path(folder)
    paths = [folder / f for f in layout.files[split]]
    rec = layout.record_bytes
    counts = []
    for path in paths:
        size = regular_file_size(path, f"a {_title(name)} binary file")
        counts.append(_records(path, size, layout))
    total = sum(counts)
    images = np.empty((total, 3, 32, 32), np.uint8)
    labels = np.empty(total, np.int64)
    start = 0
    for path, n in zip(paths, counts, strict=True):
        blob = read_regular_file(
            path, MAX_CIFAR_FILE_BYTES, kind=f"{_title(name)} binary file", error=DataError
        )
        if len(blob) != n * rec:
            raise DataError(f"{path}: the file changed while it was read")
        records = np.frombuffer(blob, np.uint8).reshape(n, rec)
        if layout.label_bytes == 2:
            _check_labels(path, records[:, 0], 20, "coarse label")
        label = records[:, layout.label_bytes - 1]
        _check_labels(path, label, len(layout.classes), "label")
        images[start : start + n] = records[:, layout.label_bytes :].reshape(n, 3, 32, 32)
        labels[start : start + n] = label
        start += n
        del blob, records
    return images, labels


def _title(name: str) -> str:
    return "CIFAR-10" if name == "cifar10" else "CIFAR-100"


def _records(path: Path, size: int, layout: CifarLayout) -> int:
    rec = layout.record_bytes
    what = f"{_title(layout.name)} record"
    if size > MAX_CIFAR_FILE_BYTES:
        raise DataError(
            f"{path}: {size:,} bytes is larger than the {MAX_CIFAR_FILE_BYTES:,}-byte limit for "
            f"a {_title(layout.name)} binary file"
        )
    if size == 0:
        raise DataError(f"{path}: empty file, expected {rec}-byte {what}s")
    if size % rec:
        raise DataError(
            f"{path}: {size:,} bytes is not a whole number of {rec}-byte {what}s "
            f"({size // rec:,} records and {size % rec:,} bytes left over: truncated, or not a "
            f"{_title(layout.name)} binary file)"
        )
    return size // rec


def _check_labels(path: Path, labels: np.ndarray, k: int, what: str) -> None:
    bad = np.flatnonzero(labels >= k)
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{path}: {what} {int(labels[i])} of record {i} is out of range [0, {k}) "
            f"({bad.size} bad records in all; not a {'CIFAR-100' if k != 10 else 'CIFAR-10'} "
            "binary file?)"
        )


def write_cifar(
    path: str | os.PathLike[str],
    images: np.ndarray,
    labels: np.ndarray,
    coarse: np.ndarray | None = None,
) -> None:
    """Write images uint8 (N, 3, 32, 32) and labels as one binary CIFAR file: CIFAR-10
    records, or CIFAR-100 records when ``coarse`` labels are given (for tests and tools)."""
    images = np.asarray(images, np.uint8)
    n = images.shape[0]
    if images.shape[1:] != (3, 32, 32):
        raise DataError(f"CIFAR images must be (N, 3, 32, 32), got {images.shape}")
    columns = [np.asarray(labels, np.uint8).reshape(n, 1)]
    if coarse is not None:
        columns.insert(0, np.asarray(coarse, np.uint8).reshape(n, 1))
    Path(path).write_bytes(np.concatenate([*columns, images.reshape(n, -1)], axis=1).tobytes())


def extract_cifar(archive: Path, dest: Path, layout: CifarLayout) -> None:
    """Copy the binary files of both splits out of the official ``archive`` (a .tar.gz whose
    checksum the caller verified) into ``dest``. Only regular members named
    ``FOLDER/FILE`` for the files listed in ``layout`` are read; each is streamed into a
    temporary file in ``dest`` and renamed into place, so a file in ``dest`` is always
    complete. A member larger than :data:`MAX_CIFAR_FILE_BYTES` is refused."""
    wanted = {f"{layout.folder}/{f}": f for files in layout.files.values() for f in files}
    done: set[str] = set()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                target = wanted.get(member.name.removeprefix("./"))
                if target is None or target in done or not member.isreg():
                    continue
                if member.size > MAX_CIFAR_FILE_BYTES:
                    raise DataError(
                        f"{archive}: member {member.name} of {member.size:,} bytes is larger "
                        f"than the {MAX_CIFAR_FILE_BYTES:,}-byte limit"
                    )
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - isreg() members always have data
                    continue
                _copy_atomically(source, dest / target, member.size)
                done.add(target)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        reason = os_reason(exc) if isinstance(exc, OSError) else str(exc) or type(exc).__name__
        raise DataError(f"{archive}: cannot unpack it ({reason})") from None
    missing = sorted(set(wanted.values()) - done)
    if missing:
        raise DataError(
            f"{archive}: the archive lacks {', '.join(f'{layout.folder}/{m}' for m in missing)}"
        )


def _copy_atomically(source: IO[bytes], target: Path, size: int) -> None:
    prefix = f".{target.name}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            left = size
            while left > 0:
                chunk = source.read(min(left, 1 << 20))
                if not chunk:
                    raise DataError(f"{target}: the archive member ended early")
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    remove_stale_temp_files(target)
