"""IDX reader/writer: round trips and every malformed-file error."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from scratchcnn.data import read_idx, write_idx
from scratchcnn.data.idx import read_mnist_pair
from scratchcnn.errors import DataError


def _header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def _mnist_files(tmp_path, n_images=5, n_labels=5, size=(28, 28), labels=None, gz=True):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_images, *size), dtype=np.uint8)
    if labels is None:
        labels = rng.integers(0, 10, size=n_labels, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    ip = tmp_path / f"train-images-idx3-ubyte{suffix}"
    lp = tmp_path / f"train-labels-idx1-ubyte{suffix}"
    write_idx(ip, images)
    write_idx(lp, np.asarray(labels, dtype=np.uint8))
    return ip, lp, images, labels


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, arr)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)  # native byte order
    assert back.dtype.isnative
    assert back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    assert back.flags.writeable


def test_header_is_big_endian_mnist_magic(tmp_path):
    path = tmp_path / "x"
    write_idx(path, np.zeros((2, 28, 28), np.uint8))
    raw = path.read_bytes()
    assert struct.unpack(">I", raw[:4])[0] == 2051
    assert struct.unpack(">3I", raw[4:16]) == (2, 28, 28)
    write_idx(path, np.zeros(7, np.uint8))
    assert struct.unpack(">II", path.read_bytes()[:8]) == (2049, 7)
    write_idx(path, np.arange(3, dtype=np.int16))
    assert path.read_bytes()[8:] == b"\x00\x00\x00\x01\x00\x02"


def test_gzip_detected_by_magic_not_extension(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    blob = _header(0x08, (3, 4)) + arr.tobytes()
    gz_no_ext = tmp_path / "plain-name"
    gz_no_ext.write_bytes(gzip.compress(blob))
    np.testing.assert_array_equal(read_idx(gz_no_ext), arr)
    raw_with_ext = tmp_path / "raw.gz"
    raw_with_ext.write_bytes(blob)
    np.testing.assert_array_equal(read_idx(raw_with_ext), arr)


def test_gzip_output_is_deterministic(tmp_path):
    arr = np.arange(100, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "b.gz", arr)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_truncated_payload(tmp_path):
    path = tmp_path / "trunc-images"
    path.write_bytes(_header(0x08, (2, 28, 28)) + bytes(1000))
    with pytest.raises(DataError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "truncated: expected 1568 bytes of data" in msg
    assert "found 1000" in msg


def test_truncated_gzip_payload(tmp_path):
    path = tmp_path / "trunc.gz"
    path.write_bytes(gzip.compress(_header(0x0C, (10,)) + bytes(39)))
    with pytest.raises(DataError, match=r"truncated: expected 40 bytes of data .* found 39"):
        read_idx(path)


def test_extra_bytes(tmp_path):
    path = tmp_path / "extra"
    path.write_bytes(_header(0x08, (4,)) + bytes(6))
    with pytest.raises(DataError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg and "2 extra bytes" in msg and "expected 4" in msg and "found 6" in msg


def test_truncated_header(tmp_path):
    path = tmp_path / "hdr"
    path.write_bytes(bytes([0, 0, 8, 3]) + bytes(5))
    with pytest.raises(DataError, match="truncated header: 3 dimensions need 16 header bytes"):
        read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match=r"too short for an IDX header: 2 bytes"):
        read_idx(path)


def test_bad_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(struct.pack(">I", 1234) + bytes(8))
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(path) in str(err.value) and "bad magic number 1234" in str(err.value)
    with pytest.raises(DataError) as err:
        read_idx(path, expect="images")
    assert str(err.value) == f"{path}: bad magic number 1234 (expected 2051 for images)"


def test_unknown_type_code(tmp_path):
    path = tmp_path / "code"
    path.write_bytes(bytes([0, 0, 0x0A, 1]) + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataError, match=r"unknown IDX type code 0x0a"):
        read_idx(path)


def test_role_magic_mismatch(tmp_path):
    ip, lp, _, _ = _mnist_files(tmp_path)
    # label file given as images and the reverse
    with pytest.raises(DataError, match=r"bad magic number 2049 \(expected 2051 for images\)"):
        read_mnist_pair(lp, ip)
    # a 2-D "labels" file has magic 2050
    two_d = tmp_path / "labels2d"
    write_idx(two_d, np.zeros((5, 2), np.uint8))
    with pytest.raises(DataError) as err:
        read_mnist_pair(ip, two_d)
    assert str(err.value) == f"{two_d}: bad magic number 2050 (expected 2049 for labels)"
    # float images: magic 0x0D03 = 3331
    fl = tmp_path / "float-images"
    write_idx(fl, np.zeros((5, 28, 28), np.float32))
    with pytest.raises(DataError, match=r"bad magic number 3331 \(expected 2051"):
        read_mnist_pair(fl, lp)


def test_wrong_image_dims(tmp_path):
    ip, lp, _, _ = _mnist_files(tmp_path, size=(32, 30))
    with pytest.raises(DataError) as err:
        read_mnist_pair(ip, lp)
    assert str(ip) in str(err.value) and "expected 28x28 images, found 32x30" in str(err.value)


def test_mismatched_counts(tmp_path):
    ip, lp, _, _ = _mnist_files(tmp_path, n_images=7, n_labels=6)
    with pytest.raises(DataError) as err:
        read_mnist_pair(ip, lp)
    msg = str(err.value)
    assert str(ip) in msg and str(lp) in msg
    assert "7 images" in msg and "6 labels" in msg


def test_label_out_of_range(tmp_path):
    ip, lp, _, _ = _mnist_files(tmp_path, labels=[0, 1, 2, 10, 3])
    with pytest.raises(DataError) as err:
        read_mnist_pair(ip, lp)
    msg = str(err.value)
    assert str(lp) in msg and "label 10 at index 3" in msg and "[0, 10)" in msg
    ip, lp, _, _ = _mnist_files(tmp_path, labels=[255, 1, 2, 9, 3])
    with pytest.raises(DataError, match=r"label 255 at index 0 .*\(1 bad labels in all\)"):
        read_mnist_pair(ip, lp)


def test_mnist_pair_ok(tmp_path):
    ip, lp, images, labels = _mnist_files(tmp_path, gz=False)
    got_i, got_l = read_mnist_pair(ip, lp)
    np.testing.assert_array_equal(got_i, images)
    np.testing.assert_array_equal(got_l, labels)


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "train-images-idx3-ubyte.gz"
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(err.value) == f"{path}: file not found (expected an IDX file)"
    with pytest.raises(DataError, match="is a directory"):
        read_idx(tmp_path)


def test_corrupt_gzip(tmp_path):
    good = gzip.compress(_header(0x08, (100,)) + bytes(range(100)))
    path = tmp_path / "bad.gz"
    path.write_bytes(good[:10] + b"garbage!" * 4 + good[42:])
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(path) in str(err.value) and "corrupt gzip stream" in str(err.value)
    # cut-off gzip stream (EOFError inside gzip)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="corrupt gzip stream"):
        read_idx(path)


def test_write_rejects_unsupported(tmp_path):
    with pytest.raises(DataError, match=r"cannot write dtype int64"):
        write_idx(tmp_path / "x", np.zeros(3, np.int64))
    with pytest.raises(DataError, match=r"1 to 255 dimensions, array has 0"):
        write_idx(tmp_path / "x", np.zeros((), np.uint8))
    with pytest.raises(DataError, match="cannot write file"):
        write_idx(tmp_path / "missing-dir" / "x", np.zeros(3, np.uint8))
    assert not list((tmp_path).glob(".*tmp"))
