"""Named data sets: the embedded subset, IDX lookup order, downloads (all local)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from scratchcnn.data import DATASETS, default_cache_dir, load_dataset, sources, write_idx
from scratchcnn.errors import DataError

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _no_network(*args, **kwargs):
    raise AssertionError(f"unexpected download attempt: {args}")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Empty cache, no Debian folder, no network unless a test allows it."""
    monkeypatch.setenv("SCRATCHCNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SCRATCHCNN_FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(sources, "_urlopen", _no_network)
    monkeypatch.setenv("no_proxy", "*")
    return tmp_path


def _write_split(folder: Path, split: str, n: int = 12, seed: int = 0, gz: bool = True):
    """Write a small synthetic MNIST-style split; return (images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = ((np.arange(n) + seed) % 10).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    img_name, lab_name = FILES[split]
    write_idx(folder / f"{img_name}{suffix}", images)
    write_idx(folder / f"{lab_name}{suffix}", labels)
    return images, labels


def _check(ds, images, labels, name):
    assert ds.name == name
    assert ds.images.dtype == np.uint8 and ds.images.shape == (len(images), 1, 28, 28)
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.images[:, 0], images)
    np.testing.assert_array_equal(ds.labels, labels)


# ----------------------------------------------------------------- names


def test_dataset_names():
    assert DATASETS == ("mnist-5k", "mnist", "fashion-mnist", "shapes", "cifar10", "cifar100")


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError) as err:
        load_dataset("imagenet")
    msg = str(err.value)
    assert "'imagenet'" in msg
    for name in DATASETS:
        assert name in msg


def test_unknown_split():
    with pytest.raises(DataError, match=r"unknown split 'val' .*train, test"):
        load_dataset("mnist-5k", "val")


def test_aliases():
    assert load_dataset("MNIST_5K", "test").name == "mnist-5k"


# ----------------------------------------------------------------- mnist-5k


def test_mnist5k_train_and_test():
    train = load_dataset("mnist-5k", "train")
    test = load_dataset("mnist-5k", "test")
    assert train.images.shape == (4000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    for ds in (train, test):
        assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int64
        assert ds.classes == tuple("0123456789") and ds.name == "mnist-5k"
        assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
        assert ds.images.max() == 255 and ds.images.min() == 0
    assert np.bincount(test.labels, minlength=10).tolist() == [100] * 10
    assert np.bincount(train.labels, minlength=10).tolist() == [400] * 10
    # shuffled: no long runs of the same label, not sorted
    assert not np.all(np.diff(train.labels) >= 0)
    assert np.mean(train.labels[1:] == train.labels[:-1]) < 0.2
    # the two splits share no image
    tr = {bytes(x) for x in train.images.reshape(4000, -1)}
    assert not any(bytes(x) in tr for x in test.images.reshape(1000, -1))


def test_mnist5k_file_contents():
    with np.load(sources.MNIST5K_PATH, allow_pickle=False) as z:
        names = set(z.files)
        import json

        meta = json.loads(bytes(z["meta"]).decode())
    assert {"train_images", "train_labels", "test_images", "test_labels"} <= names
    assert meta["train"] == 4000 and meta["test"] == 1000 and "split_seed" in meta
    assert sources.MNIST5K_PATH.stat().st_size < 1_500_000


def test_mnist5k_missing_file(monkeypatch, tmp_path):
    path = tmp_path / "mnist5k.npz"
    monkeypatch.setattr(sources, "MNIST5K_PATH", path)
    with pytest.raises(DataError, match=str(path)):
        load_dataset("mnist-5k")
    path.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="corrupt"):
        load_dataset("mnist-5k")


# ----------------------------------------------------------------- data_dir


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_data_dir(isolated, name, gz):
    folder = isolated / "mine"
    images, labels = _write_split(folder, "test", n=12, gz=gz)
    ds = load_dataset(name, "test", data_dir=folder)
    _check(ds, images, labels, name)
    assert len(ds.classes) == 10
    if name == "fashion-mnist":
        assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    else:
        assert ds.classes == tuple(str(d) for d in range(10))


def test_data_dir_subfolder_per_dataset(isolated):
    images, labels = _write_split(isolated / "root" / "mnist", "train", n=7)
    _check(load_dataset("mnist", "train", data_dir=isolated / "root"), images, labels, "mnist")


def test_data_dir_missing_files_named(isolated):
    folder = isolated / "partial"
    _write_split(folder, "test")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "test", data_dir=folder)
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "t10k-images" not in msg
    assert str(folder) in msg and str(folder / "mnist") in msg
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*train-labels"):
        load_dataset("mnist", "train", data_dir=folder)


def test_data_dir_does_not_exist(isolated):
    missing = isolated / "nowhere"
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", "test", data_dir=missing)
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)


def test_data_dir_is_not_validated_against_download_checksums_but_by_reader(isolated):
    folder = isolated / "bad"
    _write_split(folder, "test", n=5)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(4, dtype=np.uint8))
    with pytest.raises(DataError, match=r"5 images but .* 4 labels"):
        load_dataset("mnist", "test", data_dir=folder)


# ----------------------------------------------------------------- Debian and cache


def test_debian_dir_used_for_fashion(isolated, monkeypatch):
    deb = isolated / "debian"
    images, labels = _write_split(deb, "test", n=9)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", deb)
    _check(load_dataset("fashion-mnist", "test"), images, labels, "fashion-mnist")
    # not for MNIST: that goes to the cache (empty) and, with download off, fails
    with pytest.raises(DataError, match="download is off"):
        load_dataset("mnist", "test", download=False)
    (deb / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", "test", download=False)
    cache = default_cache_dir() / "fashion-mnist"
    assert f"(looked in {deb} and {cache})" in str(err.value)


def test_debian_dir_takes_precedence_over_cache(isolated, monkeypatch):
    deb_images, _ = _write_split(isolated / "debian", "test", n=4, seed=1)
    _write_split(default_cache_dir() / "fashion-mnist", "test", n=6, seed=2)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", isolated / "debian")
    ds = load_dataset("fashion-mnist", "test")
    np.testing.assert_array_equal(ds.images[:, 0], deb_images)


def test_cache_used_without_download(isolated):
    images, labels = _write_split(default_cache_dir() / "mnist", "train", n=8)
    _check(load_dataset("mnist", "train"), images, labels, "mnist")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SCRATCHCNN_CACHE_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("SCRATCHCNN_CACHE", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "d"
    monkeypatch.delenv("SCRATCHCNN_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "a"  # the older name still works
    monkeypatch.delenv("SCRATCHCNN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "scratchcnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "scratchcnn"


def test_download_off_message(isolated):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "train", download=False)
    msg = str(err.value)
    cache = default_cache_dir() / "mnist"
    assert str(cache) in msg and "--data-dir" in msg
    assert "from https://ossci-datasets.s3.amazonaws.com/mnist/ into" in msg
    assert "t10k-labels-idx1-ubyte.gz" in msg  # all four files named


# ----------------------------------------------------------------- downloads


class _Quiet(http.server.SimpleHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        _Quiet.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server (thread) serving tmp_path/www; yields (root dir, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    _Quiet.requests = []
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"


def _publish(monkeypatch, name, split, good_dir: Path):
    """Checksum table for the synthetic files in good_dir."""
    table = {}
    for stem in FILES[split]:
        blob = (good_dir / f"{stem}.gz").read_bytes()
        table[f"{stem}.gz"] = (len(blob), hashlib.sha256(blob).hexdigest())
    monkeypatch.setitem(sources.CHECKSUMS, name, table)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_download_checksum_mismatch_falls_through(isolated, monkeypatch, http_root, name):
    root, base = http_root
    images, labels = _write_split(root / "good", "test", n=10, seed=3)
    _write_split(root / "evil", "test", n=10, seed=4)  # same size, wrong bytes
    _publish(monkeypatch, name, "test", root / "good")
    monkeypatch.setattr(sources, "_urlopen", sources.urllib.request.urlopen)
    mirrors = (_closed_port_url(), f"{base}/evil/", f"{base}/missing/", f"{base}/good/")
    monkeypatch.setitem(sources.MIRRORS, name, mirrors)

    ds = load_dataset(name, "test")
    _check(ds, images, labels, name)
    cache = default_cache_dir() / name
    assert sorted(p.name for p in cache.iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]  # no temporary files left behind
    for stem in FILES["test"]:
        assert (cache / f"{stem}.gz").read_bytes() == (root / "good" / f"{stem}.gz").read_bytes()
    assert _Quiet.requests.count("/evil/t10k-images-idx3-ubyte.gz") == 1
    assert _Quiet.requests.count("/good/t10k-labels-idx1-ubyte.gz") == 1

    # downloaded once: the next load reads the cache and makes no request
    before = len(_Quiet.requests)
    _check(load_dataset(name, "test"), images, labels, name)
    assert len(_Quiet.requests) == before


def test_download_all_mirrors_bad_checksum(isolated, monkeypatch, http_root):
    root, base = http_root
    _write_split(root / "good", "train", n=5)
    _write_split(root / "evil", "train", n=5, seed=9)
    _publish(monkeypatch, "mnist", "train", root / "good")
    monkeypatch.setattr(sources, "_urlopen", sources.urllib.request.urlopen)
    monkeypatch.setitem(sources.MIRRORS, "mnist", (f"{base}/evil/",))
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "train")
    msg = str(err.value)
    assert "checksum mismatch" in msg and "offline" not in msg
    assert not (default_cache_dir() / "mnist").exists()


def test_offline_error_message(isolated, monkeypatch):
    dead = _closed_port_url()
    monkeypatch.setattr(sources, "_urlopen", sources.urllib.request.urlopen)
    monkeypatch.setitem(sources.MIRRORS, "fashion-mnist", (dead, dead + "second/"))
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", "train")
    msg = str(err.value)
    cache = default_cache_dir() / "fashion-mnist"
    assert "\n" not in msg
    assert "seems to be offline" in msg
    assert f"from {dead} into {cache}" in msg  # where to fetch them by hand, where to put them
    for split in FILES.values():  # all four files, not only the split that failed first
        for stem in split:
            assert f"{stem}.gz" in msg
    assert "--data-dir" in msg and len(msg) < len(str(cache)) + len(dead) + 400
    assert not cache.exists() and not cache.parent.exists()  # no empty cache folder left


def test_download_with_fake_opener(isolated, monkeypatch, tmp_path):
    """The opener can be replaced: a fake serving bytes from memory (HTTP error first)."""
    import io
    import urllib.error

    src = tmp_path / "src"
    images, labels = _write_split(src, "train", n=6)
    _publish(monkeypatch, "mnist", "train", src)
    monkeypatch.setitem(sources.MIRRORS, "mnist", ("http://a.invalid/", "http://b.invalid/"))
    calls = []

    def fake(url, timeout):
        calls.append(url)
        if url.startswith("http://a.invalid/"):
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)
        return io.BytesIO((src / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(sources, "_urlopen", fake)
    _check(load_dataset("mnist", "train"), images, labels, "mnist")
    assert calls == [
        "http://a.invalid/train-images-idx3-ubyte.gz",
        "http://b.invalid/train-images-idx3-ubyte.gz",
        "http://a.invalid/train-labels-idx1-ubyte.gz",
        "http://b.invalid/train-labels-idx1-ubyte.gz",
    ]


def test_download_only_404_is_not_called_offline(isolated, monkeypatch):
    import urllib.error

    def fake(url, timeout):
        raise urllib.error.HTTPError(url, 404, "Not Found", None, None)

    monkeypatch.setattr(sources, "_urlopen", fake)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "test")
    assert "HTTP 404" in str(err.value) and "offline" not in str(err.value)


def test_real_checksum_table():
    """The download table: four files per data set, sizes and SHA-256 as published."""
    for name in ("mnist", "fashion-mnist"):
        table = sources.CHECKSUMS[name]
        assert set(table) == {f"{s}.gz" for pair in FILES.values() for s in pair}
        for size, digest in table.values():
            assert size > 4000 and len(digest) == 64 and int(digest, 16) >= 0
    assert sources.CHECKSUMS["mnist"]["train-images-idx3-ubyte.gz"] == (
        9912422,
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    )


# ----------------------------------------------------------------- real Debian data


def test_real_debian_fashion_mnist_test_split(tmp_path, monkeypatch, fashion_mnist_dir):
    """Reads the Debian dataset-fashion-mnist files (skipped with the reason when they are
    absent; .ci/run installs the package and sets SCRATCHCNN_REQUIRE_DATA=1, so there a
    missing folder fails loudly)."""
    assert sources.fashion_mnist_dir() == fashion_mnist_dir
    monkeypatch.setenv("SCRATCHCNN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(sources, "_urlopen", _no_network)
    ds = load_dataset("fashion-mnist", "test", download=False)
    assert ds.images.shape == (10000, 1, 28, 28) and ds.images.dtype == np.uint8
    assert np.bincount(ds.labels, minlength=10).tolist() == [1000] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.name == "fashion-mnist"
    assert 0 < ds.images.mean() < 255


def test_fashion_mnist_folder_is_overridable(isolated, monkeypatch):
    images, labels = _write_split(isolated / "elsewhere", "test", n=5)
    monkeypatch.setenv("SCRATCHCNN_FASHION_MNIST_DIR", str(isolated / "elsewhere"))
    assert sources.fashion_mnist_dir() == isolated / "elsewhere"
    _check(load_dataset("fashion-mnist", "test", download=False), images, labels, "fashion-mnist")
