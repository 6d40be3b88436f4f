"""CIFAR-10 and CIFAR-100, binary version: small files generated in the format, read from a
folder, from the cache, from an archive put in the cache by hand, or "downloaded" from a
fake opener; every broken file is one line. No network."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from scratchcnn.data import DATASETS, default_cache_dir, load_dataset, sources
from scratchcnn.data.cifar import (
    CIFAR,
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    read_cifar,
    write_cifar,
)
from scratchcnn.errors import DataError


def _no_network(*args, **kwargs):
    raise AssertionError(f"unexpected download attempt: {args}")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHCNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "_urlopen", _no_network)
    return tmp_path


def _split(n: int, seed: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), np.uint8), rng.integers(0, classes, n)


def write_cifar10(folder: Path, per_batch: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Five train batches and a test batch of a few records each; returns what they hold."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(1, 6):
        images, labels = _split(per_batch + i, i, 10)  # batches of different lengths
        write_cifar(folder / f"data_batch_{i}.bin", images, labels)
        parts.append((images, labels))
    test = _split(4, 9, 10)
    write_cifar(folder / "test_batch.bin", *test)
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return {"train": train, "test": test}


def write_cifar100(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, seed in (("train", 7, 1), ("test", 3, 2)):
        images, fine = _split(n, seed, 100)
        coarse = (fine // 5).astype(np.uint8)  # any value below 20
        write_cifar(folder / f"{split}.bin", images, fine, coarse)
        out[split] = (images, fine)
    return out


def _same(ds, images, labels, name):
    assert ds.name == name and ds.images.dtype == np.uint8 and ds.labels.dtype == np.int64
    assert ds.input_shape == (3, 32, 32)
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)


def test_names_and_aliases(isolated):
    assert DATASETS[-2:] == ("cifar10", "cifar100")
    assert len(CIFAR10_CLASSES) == 10 and CIFAR10_CLASSES[0] == "airplane"
    assert len(CIFAR100_CLASSES) == 100 and list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)
    assert CIFAR100_CLASSES[:2] == ("apple", "aquarium_fish") and CIFAR100_CLASSES[-1] == "worm"
    folder = isolated / "c10"
    want = write_cifar10(folder)
    for alias in ("CIFAR-10", "cifar_10", "Cifar10"):
        ds = load_dataset(alias, "test", data_dir=folder)
        _same(ds, *want["test"], "cifar10")
        assert ds.classes == CIFAR10_CLASSES


def test_record_layout_is_label_then_red_green_blue_planes(tmp_path):
    """A record written byte by byte, as the format's documentation describes it."""
    record = bytearray([7])
    pixels = np.zeros((3, 32, 32), np.uint8)
    pixels[0, 0, 1] = 10  # red, row 0, column 1: the record's byte 1 + 1
    pixels[1, 2, 0] = 20  # green plane starts at byte 1 + 1024
    pixels[2, 31, 31] = 30  # the last byte
    record += bytes(3072)
    record[1 + 1] = 10
    record[1 + 1024 + 2 * 32] = 20
    record[1 + 3071] = 30
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(bytes(record))
    images, labels = read_cifar(folder, "cifar10", "test")
    np.testing.assert_array_equal(images[0], pixels)
    assert labels.tolist() == [7]
    # CIFAR-100: coarse label, then the fine label that is used
    (folder / "test.bin").write_bytes(bytes([3, 42]) + bytes(record[1:]))
    images, labels = read_cifar(folder, "cifar100", "test")
    np.testing.assert_array_equal(images[0], pixels)
    assert labels.tolist() == [42]


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_from_data_dir(isolated, nested):
    root = isolated / "data"
    want = write_cifar10(root / "cifar-10-batches-bin" if nested else root)
    for split in ("train", "test"):
        _same(load_dataset("cifar10", split, data_dir=root), *want[split], "cifar10")
    assert len(load_dataset("cifar10", "train", data_dir=root)) == 4 + 5 + 6 + 7 + 8


def test_cifar100_fine_labels(isolated):
    root = isolated / "data" / "cifar-100-binary"
    want = write_cifar100(root)
    for split in ("train", "test"):
        ds = load_dataset("cifar100", split, data_dir=root.parent)
        _same(ds, *want[split], "cifar100")
        assert ds.num_classes == 100


def test_missing_files_are_named(isolated):
    root = isolated / "data"
    write_cifar10(root)
    (root / "data_batch_3.bin").unlink()
    load_dataset("cifar10", "test", data_dir=root)  # the test split does not need it
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", "train", data_dir=root)
    assert str(err.value) == (
        f"{root}: missing data_batch_3.bin for cifar10 train (looked in {root} and "
        f"{root / 'cifar-10-batches-bin'}; the binary version, cifar-10-binary.tar.gz unpacked)"
    )
    with pytest.raises(DataError, match=r"data directory does not exist"):
        load_dataset("cifar100", "train", data_dir=isolated / "nowhere")


def _damage_cases(folder: Path) -> dict[str, tuple[Path, bytes, str]]:
    p = folder / "test_batch.bin"
    whole = p.read_bytes()
    bad_label = bytearray(whole)
    bad_label[3073] = 10  # record 1's label
    return {
        "truncated": (
            p,
            whole[:-100],
            f"{p}: 12,192 bytes is not a whole number of 3073-byte CIFAR-10 records (3 "
            "records and 2,973 bytes left over: truncated, or not a CIFAR-10 binary file)",
        ),
        "empty": (p, b"", f"{p}: empty file, expected 3073-byte CIFAR-10 records"),
        "label": (
            p,
            bytes(bad_label),
            f"{p}: label 10 of record 1 is out of range [0, 10) (1 bad records in all; not a "
            "CIFAR-10 binary file?)",
        ),
    }


@pytest.mark.parametrize("case", ["truncated", "empty", "label"])
def test_broken_files_are_one_line(isolated, case):
    root = isolated / "data"
    write_cifar10(root)
    path, blob, message = _damage_cases(root)[case]
    path.write_bytes(blob)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", "test", data_dir=root)
    assert str(err.value) == message


def test_cifar100_coarse_label_out_of_range(isolated):
    root = isolated / "data"
    write_cifar100(root)
    p = root / "test.bin"
    blob = bytearray(p.read_bytes())
    blob[0] = 20
    p.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"coarse label 20 of record 0 is out of range \[0, 20\)"):
        load_dataset("cifar100", "test", data_dir=root)


def test_a_special_file_is_refused(isolated):
    root = isolated / "data"
    write_cifar10(root)
    (root / "test_batch.bin").unlink()
    (root / "test_batch.bin").mkdir()
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", "test", data_dir=root)
    assert str(err.value) == (
        f"{root / 'test_batch.bin'}: is a directory, expected a CIFAR-10 binary file"
    )
    (root / "test_batch.bin").rmdir()
    os.mkfifo(root / "test_batch.bin")  # opening it would block: refused from stat
    with pytest.raises(DataError, match=r"test_batch.bin: not a regular file \(a device, FIFO"):
        load_dataset("cifar10", "test", data_dir=root)


# ----------------------------------------------------------------- archive and cache


Splits = dict[str, tuple[np.ndarray, np.ndarray]]


def _archive(
    tmp: Path, name: str, extra: bool = False, drop: str | None = None
) -> tuple[bytes, Splits]:
    """The official archive's layout with small files in it; returns it and what it holds."""
    layout = CIFAR[name]
    src = tmp / f"src-{name}"
    if name == "cifar10":
        want = write_cifar10(src)
    else:
        want = write_cifar100(src)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname=layout.folder, recursive=False)
        for files in layout.files.values():
            for f in files:
                if f != drop:
                    tar.add(src / f, arcname=f"{layout.folder}/{f}")
        if extra:  # hostile members: a path out of the folder, a link, a name twice
            info = tarfile.TarInfo("../evil.bin")
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
            link = tarfile.TarInfo(f"{layout.folder}/batches.meta.txt")
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc/passwd"
            tar.addfile(link)
    return buf.getvalue(), want


def _publish(monkeypatch, name: str, blob: bytes) -> None:
    layout = CIFAR[name]
    table = {layout.archive: (len(blob), hashlib.sha256(blob).hexdigest())}
    monkeypatch.setitem(sources.CHECKSUMS, name, table)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_archive_put_in_the_cache_by_hand_is_checked_and_unpacked(isolated, monkeypatch, name):
    """The offline path: the archive copied into the cache folder; no network."""
    blob, want = _archive(isolated, name, extra=True)
    _publish(monkeypatch, name, blob)
    layout = CIFAR[name]
    cache = default_cache_dir() / name
    cache.mkdir(parents=True)
    (cache / layout.archive).write_bytes(blob)
    ds = load_dataset(name, "test", download=False)
    _same(ds, *want["test"], name)
    unpacked = cache / layout.folder
    names = sorted(p.name for p in unpacked.iterdir())
    assert names == sorted(f for files in layout.files.values() for f in files)  # nothing else
    assert not (isolated / "evil.bin").exists() and not (cache / "evil.bin").exists()
    # the unpacked files are used from now on, the archive is not read again
    (cache / layout.archive).write_bytes(b"damaged")
    _same(load_dataset(name, "train", download=False), *want["train"], name)


def test_archive_with_a_wrong_checksum_is_refused(isolated, monkeypatch):
    blob, _ = _archive(isolated, "cifar10")
    _publish(monkeypatch, "cifar10", blob)
    cache = default_cache_dir() / "cifar10"
    cache.mkdir(parents=True)
    path = cache / "cifar-10-binary.tar.gz"
    path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", "test", download=False)
    msg = str(err.value)
    assert msg.startswith(f"{path}: not the official cifar-10-binary.tar.gz ({len(blob):,} bytes")
    assert "delete it and run again" in msg and "\n" not in msg
    assert not (cache / "cifar-10-batches-bin").exists()


def test_archive_missing_a_member(isolated, monkeypatch):
    blob, _ = _archive(isolated, "cifar10", drop="data_batch_4.bin")
    _publish(monkeypatch, "cifar10", blob)
    cache = default_cache_dir() / "cifar10"
    cache.mkdir(parents=True)
    (cache / "cifar-10-binary.tar.gz").write_bytes(blob)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", "train", download=False)
    assert str(err.value) == (
        f"{cache / 'cifar-10-binary.tar.gz'}: the archive lacks "
        "cifar-10-batches-bin/data_batch_4.bin"
    )


def test_download_once_with_the_checksum_verified(isolated, monkeypatch):
    blob, want = _archive(isolated, "cifar100")
    _publish(monkeypatch, "cifar100", blob)
    monkeypatch.setitem(sources.MIRRORS, "cifar100", ("http://a.invalid/", "http://b.invalid/"))
    calls = []

    def fake(url, timeout):
        calls.append(url)
        if url.startswith("http://a.invalid/"):
            return io.BytesIO(blob[:-10] + b"0123456789")  # right size, wrong bytes
        return io.BytesIO(blob)

    monkeypatch.setattr(sources, "_urlopen", fake)
    _same(load_dataset("cifar100", "train"), *want["train"], "cifar100")
    assert calls == [
        "http://a.invalid/cifar-100-binary.tar.gz",
        "http://b.invalid/cifar-100-binary.tar.gz",
    ]
    cache = default_cache_dir() / "cifar100"
    assert sorted(p.name for p in cache.iterdir()) == [
        "cifar-100-binary",
        "cifar-100-binary.tar.gz",
    ]
    _same(load_dataset("cifar100", "test"), *want["test"], "cifar100")
    assert len(calls) == 2  # downloaded once


def test_offline_and_download_off_messages(isolated, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(sources, "_urlopen", offline)
    cache = default_cache_dir() / "cifar10"
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", "train")
    msg = str(err.value)
    assert msg.startswith("could not download cifar10 file cifar-10-binary.tar.gz: this machine")
    assert (
        f"download cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/ into {cache} "
        "(it is checked and unpacked there), or pass --data-dir DIR (data_dir=DIR in Python) "
        "where its cifar-10-batches-bin folder is"
    ) in msg
    assert not cache.exists()  # no empty cache folder left behind
    with pytest.raises(DataError) as err:
        load_dataset("cifar100", "test", download=False)
    assert str(err.value).startswith(
        f"{default_cache_dir() / 'cifar100'}: no cifar100 test files "
        f"({default_cache_dir() / 'cifar100' / 'cifar-100-binary'}) and no "
        "cifar-100-binary.tar.gz to unpack, and download is off; to get cifar100 by hand"
    )


def test_official_checksums():
    assert sources.CHECKSUMS["cifar10"] == {
        "cifar-10-binary.tar.gz": (
            170052171,
            "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        )
    }
    assert sources.CHECKSUMS["cifar100"] == {
        "cifar-100-binary.tar.gz": (
            168513733,
            "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
        )
    }
