"""The named data sets and where their files come from.

``mnist-5k`` is embedded in the package (no network). ``mnist`` and
``fashion-mnist`` are read from IDX files found, in this order, in ``data_dir``
(when given; then nowhere else), the Debian ``dataset-fashion-mnist`` folder
(Fashion-MNIST only), the cache, or downloaded once into the cache with every
file's SHA-256 checked. ``cifar10`` and ``cifar100`` are read from the binary
version's files in ``data_dir`` (when given; then nowhere else) or the cache,
where the official archive is downloaded once (or put by hand), its SHA-256
checked, and the binary files taken out of it. ``shapes`` is generated from a
seed. See docs/data.md.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from scratchcnn._cache import cache_root
from scratchcnn.data.cifar import CIFAR, extract_cifar, find_cifar_files, read_cifar
from scratchcnn.data.idx import read_mnist_pair
from scratchcnn.data.loader import Dataset
from scratchcnn.data.shapes import SHAPE_CLASSES, make_shapes
from scratchcnn.errors import DataError, os_reason

__all__ = [
    "CHECKSUMS",
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "IDX_FILES",
    "MIRRORS",
    "MNIST5K_PATH",
    "MNIST_CLASSES",
    "SHAPES_SIZES",
    "SHAPES_TEST_SEED_OFFSET",
    "SPLITS",
    "canonical_dataset_name",
    "default_cache_dir",
    "fashion_mnist_dir",
    "load_dataset",
]

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("mnist-5k", "mnist", "fashion-mnist", "shapes", "cifar10", "cifar100")
SPLITS: tuple[str, ...] = ("train", "test")

MNIST_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: The embedded 5,000-image MNIST subset, built by tools/make_mnist5k.py.
MNIST5K_PATH = Path(__file__).with_name("mnist5k.npz")

#: Where Debian's dataset-fashion-mnist package puts the files. Read at call
#: time, so tests (or other distributions) can point it elsewhere.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: (images file, labels file) of each split, without the .gz suffix.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Download mirrors, tried in order; the file name is appended to each.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    ),
    # The authors' page (https://www.cs.toronto.edu/~kriz/cifar.html): the binary version.
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/",),
}

#: Size in bytes and SHA-256 of each official .gz file, as listed in
#: tensorflow/datasets tensorflow_datasets/url_checksums/{mnist,fashion_mnist}.txt;
#: for CIFAR, of the binary archives (the authors publish their MD5s:
#: c32a1d4ab5d03f1284b67883e8d87530 and 03b5dce01913d631647c71ecec9e9cb8; docs/data.md).
CHECKSUMS: dict[str, dict[str, tuple[int, str]]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (
            9912422,
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        ),
        "train-labels-idx1-ubyte.gz": (
            28881,
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        ),
        "t10k-images-idx3-ubyte.gz": (
            1648877,
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            4542,
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": (
            26421880,
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        ),
        "train-labels-idx1-ubyte.gz": (
            29515,
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        ),
        "t10k-images-idx3-ubyte.gz": (
            4422102,
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            5148,
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
    },
    "cifar10": {
        "cifar-10-binary.tar.gz": (
            170052171,
            "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        ),
    },
    "cifar100": {
        "cifar-100-binary.tar.gz": (
            168513733,
            "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
        ),
    },
}

#: Number of images of the generated shapes set, per split.
SHAPES_SIZES: dict[str, int] = {"train": 2000, "test": 500}
#: The shapes test split uses seed + this offset, so no train split of another
#: seed below the offset can coincide with it.
SHAPES_TEST_SEED_OFFSET = 1_000_000

#: Seconds to wait on a mirror before trying the next one.
DOWNLOAD_TIMEOUT_S = 30.0

_ALIASES = {
    "mnist5k": "mnist-5k",
    "mnist-5000": "mnist-5k",
    "fashion": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
}

# The opener used for downloads; tests replace it.
_urlopen = urllib.request.urlopen


def default_cache_dir() -> Path:
    """Cache root: ``$SCRATCHCNN_CACHE_DIR`` (or its older name ``$SCRATCHCNN_CACHE``),
    else ``$XDG_CACHE_HOME/scratchcnn``, else ``~/.cache/scratchcnn``
    (``scratchcnn._cache.cache_root``, the one rule). Each data set gets a subfolder of it."""
    return cache_root()


def fashion_mnist_dir() -> Path:
    """Where the Debian ``dataset-fashion-mnist`` files are looked for:
    ``$SCRATCHCNN_FASHION_MNIST_DIR`` if set, else :data:`DEBIAN_FASHION_MNIST_DIR`."""
    env = os.environ.get("SCRATCHCNN_FASHION_MNIST_DIR")
    return Path(env).expanduser() if env else Path(DEBIAN_FASHION_MNIST_DIR)


def canonical_dataset_name(name: str) -> str:
    if not isinstance(name, str):
        raise DataError(
            f"dataset name must be a string, got {type(name).__name__} "
            f"(valid: {', '.join(DATASETS)})"
        )
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r} (valid: {', '.join(DATASETS)})")
    return key


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    seed: int = 0,
) -> Dataset:
    """Load split ``"train"`` or ``"test"`` of a named data set as a :class:`Dataset`.

    ``name`` is one of :data:`DATASETS`. ``data_dir`` and ``download`` only
    concern ``mnist``, ``fashion-mnist``, ``cifar10`` and ``cifar100``; ``seed`` only
    concerns ``shapes`` (train = ``make_shapes(2000, seed)``, test = ``make_shapes(500,
    seed + SHAPES_TEST_SEED_OFFSET)``). The MNIST-style sets are uint8 (N, 1, 28, 28), the
    CIFAR sets uint8 (N, 3, 32, 32) (CIFAR-100 with its 100 fine labels).
    """
    key = canonical_dataset_name(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for dataset {key!r} (valid: train, test)")
    if key == "mnist-5k":
        return _load_mnist5k(split)
    if key == "shapes":
        offset = 0 if split == "train" else SHAPES_TEST_SEED_OFFSET
        images, labels = make_shapes(SHAPES_SIZES[split], seed + offset)
        return Dataset(images, labels, SHAPE_CLASSES, "shapes")
    if key in CIFAR:
        folder = _locate_cifar(key, split, data_dir, download)
        images, labels = read_cifar(folder, key, split)
        return Dataset(images, labels, CIFAR[key].classes, key)
    classes = MNIST_CLASSES if key == "mnist" else FASHION_MNIST_CLASSES
    images_path, labels_path = _locate_idx(key, split, data_dir, download)
    images, labels = read_mnist_pair(images_path, labels_path, (28, 28), len(classes))
    return Dataset(images[:, None, :, :], labels.astype(np.int64), classes, key)


# --------------------------------------------------------------------- mnist-5k


def _load_mnist5k(split: str) -> Dataset:
    path = MNIST5K_PATH
    try:
        with np.load(path, allow_pickle=False) as z:
            images = z[f"{split}_images"]
            labels = z[f"{split}_labels"]
    except FileNotFoundError:
        raise DataError(
            f"{path}: embedded MNIST subset is missing (broken install? "
            "rebuild it with tools/make_mnist5k.py)"
        ) from None
    except KeyError as exc:
        raise DataError(f"{path}: embedded MNIST subset lacks array {exc}") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: embedded MNIST subset is corrupt ({exc})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (1, 28, 28):
        raise DataError(
            f"{path}: {split}_images should be uint8 (N, 1, 28, 28), "
            f"found {images.dtype} {images.shape}"
        )
    return Dataset(images, labels.astype(np.int64), MNIST_CLASSES, "mnist-5k")


# ------------------------------------------------------------------ IDX lookup


def _find_in(folder: Path, stems: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """Paths of the files found in ``folder`` (``stem.gz`` preferred, then raw
    ``stem``) and the stems that are missing."""
    found: list[Path] = []
    missing: list[str] = []
    for stem in stems:
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            missing.append(stem)
    return found, missing


def _locate_idx(
    name: str, split: str, data_dir: str | os.PathLike[str] | None, download: bool
) -> tuple[Path, Path]:
    """Return (images path, labels path) for ``name``/``split``, downloading if allowed."""
    stems = IDX_FILES[split]
    wanted = " and ".join(f"{s}[.gz]" for s in stems)

    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            problem = "data directory does not exist"
            if root.exists():
                problem = "is a file, not a data directory"
            raise DataError(f"{root}: {problem} (looked for {wanted} of {name} {split} there)")
        looked = [root, root / name]
        for folder in looked:
            found, missing = _find_in(folder, stems)
            if not missing:
                return found[0], found[1]
        _, missing = _find_in(root, stems)
        raise DataError(
            f"{root}: missing {', '.join(f'{s}.gz (or {s})' for s in missing)} for {name} "
            f"{split} (looked in {looked[0]} and {looked[1]})"
        )

    looked: list[Path] = []
    if name == "fashion-mnist":
        debian = fashion_mnist_dir()
        looked.append(debian)
        found, missing = _find_in(debian, stems)
        if not missing:
            return found[0], found[1]

    cache = default_cache_dir() / name
    looked.append(cache)
    found, missing = _find_in(cache, stems)
    if not missing:
        return found[0], found[1]

    gz_missing = [f"{s}.gz" for s in missing]
    if not download:
        where = " and ".join(str(p) for p in looked)
        raise DataError(
            f"{cache}: missing {', '.join(gz_missing)} for {name} {split} and download is off "
            f"(looked in {where}); {_how_to_get(name, cache)}"
        )
    _download_all(name, gz_missing, cache)
    found, missing = _find_in(cache, stems)
    if missing:  # pragma: no cover - _download raises instead
        raise DataError(f"{cache}: still missing {', '.join(missing)} after download")
    return found[0], found[1]


def _download_all(name: str, filenames: list[str], cache: Path) -> None:
    """Download ``filenames`` of ``name`` into ``cache``; a cache folder this call created
    is removed again when nothing could be downloaded into it."""
    created = [p for p in (cache, *cache.parents) if not p.exists()]
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"{cache}: cannot create cache directory ({os_reason(exc)}); set "
            f"SCRATCHCNN_CACHE_DIR to a writeable folder or pass --data-dir"
        ) from None
    try:
        for filename in filenames:
            _download(name, filename, cache)
    except DataError:
        for folder in created:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break
        raise


def _how_to_get(name: str, cache: Path) -> str:
    """The short hint: every file of the data set, one mirror, where to put them."""
    if name in CIFAR:
        layout = CIFAR[name]
        return (
            f"to get {name} by hand, download {layout.archive} from {MIRRORS[name][0]} into "
            f"{cache} (it is checked and unpacked there), or pass --data-dir DIR "
            f"(data_dir=DIR in Python) where its {layout.folder} folder is"
        )
    files = [f"{stem}.gz" for pair in IDX_FILES.values() for stem in pair]
    return (
        f"to get {name} by hand, download {', '.join(files)} from {MIRRORS[name][0]} into "
        f"{cache}, or pass --data-dir DIR (data_dir=DIR in Python) where they are"
    )


# ------------------------------------------------------------------ CIFAR lookup


def _locate_cifar(
    name: str, split: str, data_dir: str | os.PathLike[str] | None, download: bool
) -> Path:
    """The folder holding ``split``'s binary files of ``name``: ``data_dir`` itself or its
    ``cifar-10-batches-bin`` / ``cifar-100-binary`` subfolder when given (nothing else is
    tried); else the cache, where the official archive is unpacked, downloaded first when
    it is not there yet (and ``download`` allows)."""
    layout = CIFAR[name]
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        wanted = " and ".join(layout.files[split])
        if not root.is_dir():
            problem = (
                "is a file, not a data directory"
                if root.exists()
                else ("data directory does not exist")
            )
            raise DataError(f"{root}: {problem} (looked for {wanted} of {name} {split} there)")
        looked = [root, root / layout.folder]
        for folder in looked:
            if not find_cifar_files(folder, layout, split):
                return folder
        missing = find_cifar_files(root, layout, split)
        raise DataError(
            f"{root}: missing {', '.join(missing)} for {name} {split} (looked in {looked[0]} "
            f"and {looked[1]}; the binary version, {layout.archive} unpacked)"
        )
    cache = default_cache_dir() / name
    folder = cache / layout.folder
    if not find_cifar_files(folder, layout, split):
        return folder
    archive = cache / layout.archive
    if archive.is_file():
        _verify_archive(name, archive)
    elif not download:
        raise DataError(
            f"{cache}: no {name} {split} files ({folder}) and no {layout.archive} to unpack, "
            f"and download is off; {_how_to_get(name, cache)}"
        )
    else:
        _download_all(name, [layout.archive], cache)  # checked while it is downloaded
    extract_cifar(archive, folder, layout)
    log.info("unpacked %s into %s", archive, folder)
    return folder


def _verify_archive(name: str, archive: Path) -> None:
    """Size and SHA-256 of an archive found in the cache (put there by hand, or downloaded
    earlier) against the official ones, before it is unpacked."""
    size, sha256 = CHECKSUMS[name][archive.name]
    digest = hashlib.sha256()
    got = 0
    try:
        with open(archive, "rb") as fh:
            while chunk := fh.read(1 << 20):
                got += len(chunk)
                if got > size:
                    break
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"{archive}: cannot read it ({os_reason(exc)})") from None
    if got != size or digest.hexdigest() != sha256:
        what = f"{got:,} bytes" if got <= size else f"more than {size:,} bytes"
        raise DataError(
            f"{archive}: not the official {archive.name} ({what}, sha256 "
            f"{digest.hexdigest()[:12]}..., expected {size:,} bytes, sha256 {sha256[:12]}...); "
            "delete it and run again to download it, or pass --data-dir (data_dir= in Python) "
            "where the unpacked files are"
        )


def _download(name: str, filename: str, cache: Path) -> Path:
    """Fetch one file into ``cache`` from the first mirror that serves the right bytes.

    The bytes go to a temporary file in the cache folder; only when size and
    SHA-256 match is it renamed (atomically) to its final name. Otherwise the
    temporary file is deleted and the next mirror is tried.
    """
    size, sha256 = CHECKSUMS[name][filename]
    target = cache / filename
    failures: list[str] = []
    offline = False
    for mirror in MIRRORS[name]:
        url = mirror + filename
        log.info("downloading %s", url)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=cache)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            got = 0
            with os.fdopen(fd, "wb") as out, _urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    got += len(chunk)
                    if got > size:
                        break  # more than the official file: cannot match, stop reading
                    digest.update(chunk)
                    out.write(chunk)
            if got != size or digest.hexdigest() != sha256:
                what = f"{got} bytes" if got <= size else f"more than {size} bytes"
                failures.append(
                    f"{url}: checksum mismatch (got {what}, sha256 {digest.hexdigest()[:12]}..., "
                    f"expected {size} bytes, sha256 {sha256[:12]}...)"
                )
                tmp.unlink(missing_ok=True)
                continue
            os.replace(tmp, target)
            log.info("saved %s", target)
            return target
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            # URLError/HTTPError, refused connections, timeouts, resets, TLS errors,
            # truncated responses (http.client.IncompleteRead).
            tmp.unlink(missing_ok=True)
            offline = offline or not isinstance(exc, urllib.error.HTTPError)
            failures.append(f"{url}: {_describe(exc)}")
    if offline:  # every mirror fails the same way; the first reason says it all
        cause = f"this machine seems to be offline ({failures[0].split(': ', 1)[-1]})"
    else:
        cause = f"every mirror failed [{'; '.join(failures)}]"
    raise DataError(
        f"could not download {name} file {filename}: {cause}; {_how_to_get(name, cache)}"
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"{exc.reason}"
    return f"{type(exc).__name__}: {exc}"
