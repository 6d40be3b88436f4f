"""Image folders: a folder of your own images as a :class:`Dataset`.

Two layouts (class names are the folder names, sorted, as torchvision's ImageFolder does)::

    PATH/<class>/*.png|jpg|jpeg|bmp|gif|webp|tif|tiff          one folder of classes
    PATH/train/<class>/...   PATH/test/<class>/...              a given test split
                                                                (val/ is taken for test/)

:class:`ImageFolder` reads one folder of classes; :func:`image_folder_splits` reads either
layout and returns a training and a test split, holding out a stratified fraction of the
training images (chosen by a seed) when there is no test folder.

Every image is decoded once, through the checks of :func:`scratchcnn.data.images.load_image`
(regular files only, size and pixel caps before decoding, any mode converted), resized to
the image size with Pillow's Lanczos filter, and written as uint8 into a memory-mapped cache
on disk (:mod:`scratchcnn.data.imagecache`); later epochs and later runs read the cache. See
docs/data.md.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from scratchcnn.data.imagecache import (
    CacheEntry,
    ImageFile,
    build_entry,
    cache_folder,
    listing_digest,
    open_entry,
    request_digest,
)
from scratchcnn.data.images import load_image, probe_image
from scratchcnn.data.loader import Dataset
from scratchcnn.data.sources import default_cache_dir
from scratchcnn.errors import ConfigError, DataError, os_reason

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "IMAGE_EXTENSIONS",
    "MAX_FOLDER_DEPTH",
    "MAX_FOLDER_ENTRIES",
    "MAX_IMAGE_SIDE",
    "MAX_NATIVE_SIDE",
    "RESIZE_FILTER",
    "ImageFolder",
    "ImageFolderInfo",
    "image_folder_splits",
    "looks_like_image_folder",
]

log = logging.getLogger(__name__)

#: File name endings read as images (any case); every other file is ignored and counted.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".png",
    ".tif",
    ".tiff",
    ".webp",
)
#: Most files and folders looked at under one image folder (a walk that goes past it stops
#: with an error rather than running for hours).
MAX_FOLDER_ENTRIES = 2_000_000
#: Deepest nesting of folders inside a class folder.
MAX_FOLDER_DEPTH = 32
#: Largest image side accepted for ``image_size``.
MAX_IMAGE_SIDE = 1024
#: The image size when ``image_size`` is None and the training images' most common size
#: has a side above :data:`MAX_NATIVE_SIDE`.
DEFAULT_IMAGE_SIZE = (32, 32)
#: With ``image_size=None``, the training images' most common size is kept when both its
#: sides are at most this.
MAX_NATIVE_SIDE = 64
#: The resize filter (Pillow's Lanczos, the one ``load_image`` and so ``predict`` use).
RESIZE_FILTER = "lanczos"

_TEST_NAMES = ("test", "val")
_SKIP_HINT = "pass --skip-bad-images (skip_bad_images=True in Python) to skip unreadable images"


@dataclass(frozen=True)
class ImageFolderInfo:
    """What :func:`image_folder_splits` (or :class:`ImageFolder`) read and decided.

    Paths in ``train_files``, ``test_files`` and ``skipped`` are relative to ``root`` and
    '/'-separated; row ``i`` of the training images comes from ``root / train_files[i]``.
    """

    root: Path  #: the folder given
    classes: tuple[str, ...]  #: sorted class folder names; label i is classes[i]
    image_size: tuple[int, int]  #: (H, W) every image was resized to
    channels: int  #: 1 (grey) or 3 (RGB)
    #: where the test split came from: "folder" (PATH/test or PATH/val), "held-out" (a
    #: stratified ``val_split`` fraction of the training images, chosen by ``seed``), "none"
    #: (``val_split=0``, no test folder), or "" for :class:`ImageFolder` (one folder)
    test_source: str
    val_split: float | None  #: the fraction held out (test_source "held-out", else None)
    seed: int | None  #: the seed that chose the held-out images (else None)
    train_files: tuple[str, ...] = field(repr=False)
    test_files: tuple[str, ...] = field(repr=False)  #: the held-out files for "held-out"
    skipped: tuple[tuple[str, str], ...] = field(repr=False)  #: (path, reason) not read
    ignored: int  #: files without an image extension, not read
    mean: tuple[float, ...]  #: per channel, over the training split, pixels in [0, 1]
    std: tuple[float, ...]  #: per channel (population std), over the training split
    cache: Path  #: the manifest of the decode cache entry used

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able summary for a run's records (file lists as counts; the skipped
        files' first ten paths)."""
        return {
            "root": os.fsdecode(self.root),
            "classes": list(self.classes),
            "image_size": list(self.image_size),
            "channels": self.channels,
            "resize": RESIZE_FILTER,
            "test_source": self.test_source,
            "val_split": self.val_split,
            "seed": self.seed,
            "train_images": len(self.train_files),
            "test_images": len(self.test_files),
            "skipped": len(self.skipped),
            "skipped_files": [p for p, _ in self.skipped[:10]],
            "ignored": self.ignored,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def summary(self) -> str:
        """One line for a person: counts, size, channels, where the test split came from."""
        h, w = self.image_size
        test = ""
        if self.test_source == "folder":
            test = f"{len(self.test_files)} test images from its test folder"
        elif self.test_source == "held-out":
            test = (
                f"{len(self.test_files)} held out for testing (val_split {self.val_split:g}, "
                f"seed {self.seed})"
            )
        elif self.test_source == "none":
            test = "no test split"
        parts = [
            f"{self.root}: {len(self.classes)} classes, {len(self.train_files)} training images",
            test,
            f"{h}x{w} {'RGB' if self.channels == 3 else 'grey'}",
        ]
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} unreadable (first: {self.skipped[0][1]})")
        if self.ignored:
            parts.append(f"ignored {self.ignored} files that are not images")
        return ", ".join(p for p in parts if p)


class ImageFolder(Dataset):
    """One folder of classes, ``PATH/<class>/*.png ...``, as a :class:`Dataset` that
    :class:`DataLoader` and ``fit`` take.

    ``image_size``: S (S x S) or (H, W); None keeps the images' most common size when both
    sides are at most :data:`MAX_NATIVE_SIDE` (64), else :data:`DEFAULT_IMAGE_SIZE` (32x32).
    Images are stretched to that size (the aspect ratio is not kept) with Pillow's Lanczos
    filter. ``channels``: 1 or 3; None gives 3 if any image holds colour, else 1.
    ``skip_bad_images``: leave out files that cannot be read as images (``skipped`` lists
    them) instead of stopping at the first. ``progress``: a tqdm bar while decoding (None:
    only on a terminal). ``classes``: the class names to label by, in label order (a trained
    model's, to evaluate it on another folder); every class folder must be one of them, and
    any of them may be absent. The images are uint8 (N, C, H, W), memory-mapped from the
    decode cache (read-only).

    Attributes besides the Dataset's: ``root``, ``samples`` (row i's file, relative to
    root), ``skipped``, ``mean`` and ``std`` (per channel, pixels in [0, 1]), ``info`` (an
    :class:`ImageFolderInfo`) and ``class_to_idx``.
    """

    root: Path
    samples: tuple[str, ...]
    info: ImageFolderInfo

    def __init__(
        self,
        path: str | os.PathLike[str],
        image_size: int | Sequence[int] | None = None,
        channels: int | None = None,
        *,
        skip_bad_images: bool = False,
        progress: bool | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        if classes is not None:
            names = list(classes) if not isinstance(classes, str) else []
            if not names or not all(isinstance(c, str) and c for c in names):
                raise ConfigError(f"classes must be a list of class names, got {classes!r}")
            if len(set(names)) != len(names):
                raise ConfigError(f"classes must not repeat a name, got {classes!r}")
            classes = names
        loaded = _load(
            path, image_size, channels, None, 0, skip_bad_images, progress, classes or True
        )
        train, _, info = loaded
        super().__init__(train.images, train.labels, train.classes, train.name)
        object.__setattr__(self, "root", info.root)
        object.__setattr__(self, "samples", info.train_files)
        object.__setattr__(self, "info", info)

    @property
    def skipped(self) -> tuple[tuple[str, str], ...]:
        """(path, reason) of every file left out as unreadable."""
        return self.info.skipped

    @property
    def mean(self) -> tuple[float, ...]:
        return self.info.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.info.std

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}


def image_folder_splits(
    path: str | os.PathLike[str],
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    val_split: float = 0.1,
    seed: int = 0,
    skip_bad_images: bool = False,
    progress: bool | None = None,
) -> tuple[Dataset, Dataset | None, ImageFolderInfo]:
    """The training and test splits of an image folder, and what was decided on the way.

    ``PATH/train/<class>/`` with ``PATH/test/<class>/`` (or ``PATH/val/``): those two. Else
    ``PATH/<class>/`` (or ``PATH/train/<class>/`` alone): a stratified ``val_split``
    fraction of each class (rounded, at least one image kept for training) is held out as
    the test split, chosen by ``numpy.random.default_rng(seed)``; ``val_split=0`` gives no
    test split (None). A test folder's classes must be among the training classes (a class
    may be absent from it). ``image_size``, ``channels``, ``skip_bad_images`` and
    ``progress`` are as for :class:`ImageFolder`; the default size and channels are decided
    on the training images. Returns ``(train, test, info)``; ``info.mean`` and ``info.std``
    are the training split's per-channel statistics.
    """
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)):
        raise ConfigError(f"val_split must be a number in [0, 1), got {val_split!r}")
    if not 0 <= val_split < 1:
        raise ConfigError(f"val_split must be in [0, 1), got {val_split!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    return _load(
        path, image_size, channels, float(val_split), int(seed), skip_bad_images, progress, False
    )


def looks_like_image_folder(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a folder of class folders (or of ``train``/``test`` folders) rather
    than a folder of IDX or CIFAR files: it holds at least one folder and no file of those
    formats. Looks at the top level only (a bounded number of entries), reads nothing."""
    try:
        with os.scandir(path) as it:
            folders = 0
            for n, entry in enumerate(it):
                if n >= 10_000:
                    break
                name = entry.name.lower()
                if name.endswith(("-ubyte", "-ubyte.gz")) or name.startswith("data_batch"):
                    return False
                if name in ("cifar-10-batches-bin", "cifar-100-binary"):
                    return False
                folders += entry.is_dir(follow_symlinks=False)
    except OSError:
        return False
    return folders > 0


# ------------------------------------------------------------------ arguments


def _image_size(value: int | Sequence[int] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        values = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        values = (int(value[0]), int(value[1]))
    else:
        raise ConfigError(f"image_size must be an integer S or a pair (H, W), got {value!r}")
    if not all(1 <= v <= MAX_IMAGE_SIDE for v in values):
        raise ConfigError(f"image_size sides must be in 1..{MAX_IMAGE_SIDE}, got {value!r}")
    return values


def _channels(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or value not in (1, 3):
        raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {value!r}")
    return int(value)


# ------------------------------------------------------------------ the walk


class _Walk:
    """Lists class folders and image files under ``root``: sorted, hidden entries (names
    starting with '.') skipped, symlinks followed but a loop refused, at most
    MAX_FOLDER_ENTRIES entries looked at and MAX_FOLDER_DEPTH levels."""

    def __init__(self, root: Path, skip_bad: bool) -> None:
        self.root = root
        self.skip_bad = skip_bad
        self.entries = 0
        self.ignored = 0
        self.bad: list[tuple[str, str]] = []
        self.visited: set[tuple[int, int]] = set()

    def listdir(self, folder: Path) -> list[os.DirEntry[str]]:
        found = []
        try:
            with os.scandir(folder) as it:
                for e in it:
                    self.entries += 1
                    if self.entries > MAX_FOLDER_ENTRIES:
                        raise DataError(
                            f"{self.root}: more than {MAX_FOLDER_ENTRIES:,} files and folders "
                            "in it; train on a smaller folder"
                        )
                    if not e.name.startswith("."):
                        found.append(e)
        except OSError as exc:
            raise DataError(f"{folder}: cannot read the folder ({os_reason(exc)})") from None
        return sorted(found, key=lambda e: e.name)

    def class_names(self, top: Path) -> list[str]:
        """The class folders of ``top``, sorted; one error line for none, or for images
        lying directly in ``top`` without class folders."""
        classes, images = [], []
        for e in self.listdir(top):
            if self._is_dir(Path(e.path)):
                try:
                    e.name.encode("utf-8")
                except UnicodeEncodeError:
                    raise DataError(
                        f"{e.path!r}: a class folder name must be valid UTF-8 (it names the "
                        "class); rename it"
                    ) from None
                classes.append(e.name)
            elif _is_image_name(e.name):
                images.append(e.name)
        if not classes:
            if images:
                raise DataError(
                    f"{top}: holds {len(images)} images ({images[0]}, ...) but no class "
                    f"folders; put each class's images in its own folder, {top}/<class>/"
                )
            raise DataError(
                f"{top}: no class folders in it; expected {top}/<class>/ folders of images "
                f"({', '.join(IMAGE_EXTENSIONS)})"
            )
        self.ignored += len(images)
        return classes

    def _is_dir(self, path: Path) -> bool:
        """Whether ``path`` (perhaps a symlink) is a folder; a symlink loop is an error."""
        try:
            return stat.S_ISDIR(os.stat(path).st_mode)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DataError(_loop(path)) from None
            return False

    def _entry_is_dir(self, e: os.DirEntry[str]) -> bool:
        """_is_dir from the folder listing's own file type (no system call) unless ``e`` is
        a symlink."""
        if e.is_symlink():
            return self._is_dir(Path(e.path))
        try:
            return e.is_dir(follow_symlinks=False)
        except OSError:
            return False

    def images(self, top: Path, label: int) -> list[ImageFile]:
        """Every image file under the class folder ``top`` (at any depth), sorted by path."""
        out: list[ImageFile] = []
        top_id = _dir_id(top)
        self.visited.add(top_id)
        rel_top = top.relative_to(self.root).as_posix()
        stack: list[tuple[Path, str, dict[tuple[int, int], Path], int]] = [
            (top, rel_top, {top_id: top}, 0)
        ]
        while stack:
            folder, rel, ancestors, depth = stack.pop()
            for e in self.listdir(folder):
                if self._entry_is_dir(e):
                    path = Path(e.path)
                    key = _dir_id(path)
                    if key in ancestors:
                        raise DataError(
                            f"{path}: symlink loop (it leads back to {ancestors[key]}); remove "
                            "the link"
                        )
                    if key in self.visited:  # read already, through another link
                        continue
                    if depth + 1 > MAX_FOLDER_DEPTH:
                        raise DataError(
                            f"{path}: folders nested more than {MAX_FOLDER_DEPTH} levels deep "
                            f"in {top}"
                        )
                    self.visited.add(key)
                    stack.append((path, f"{rel}/{e.name}", {**ancestors, key: path}, depth + 1))
                elif _is_image_name(e.name):
                    f = self._image_file(e, f"{rel}/{e.name}", label)
                    if f is not None:
                        out.append(f)
                else:
                    self.ignored += 1
        out.sort(key=lambda f: f.path)
        return out

    def _image_file(self, e: os.DirEntry[str], rel: str, label: int) -> ImageFile | None:
        try:
            st = e.stat()  # follows a symlink
        except FileNotFoundError:
            return self._bad(rel, f"{e.path}: broken symlink or vanished file, not an image")
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DataError(_loop(Path(e.path))) from None
            return self._bad(rel, f"{e.path}: cannot read it ({os_reason(exc)})")
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a device, FIFO or socket"
            return self._bad(rel, f"{e.path}: not a regular file ({kind}), expected an image file")
        return ImageFile(rel, label, int(st.st_size), int(st.st_mtime_ns))

    def _bad(self, rel: str, reason: str) -> None:
        if not self.skip_bad:
            raise DataError(f"{reason}; {_SKIP_HINT}")
        self.bad.append((rel, reason))
        return None


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _dir_id(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(_loop(path)) from None
        raise DataError(f"{path}: cannot read the folder ({os_reason(exc)})") from None
    return (st.st_dev, st.st_ino)


def _loop(path: Path) -> str:
    return f"{path}: symlink loop (the link leads, through links, back to itself); remove it"


def _check_root(root: Path) -> None:
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise DataError(f"{root}: image folder does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(_loop(root)) from None
        raise DataError(f"{root}: cannot read the image folder ({os_reason(exc)})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise DataError(f"{root}: is a file, not an image folder (expected {root}/<class>/...)")


def _classes_and_files(
    walk: _Walk, top: Path, allowed: Sequence[str] | None = None, what: str = "training"
) -> tuple[list[str], list[ImageFile]]:
    """The class names of ``top`` and its image files, labelled by their position in
    ``allowed`` (the training classes, or those given) or in the class names themselves."""
    names = walk.class_names(top)
    classes = list(allowed) if allowed is not None else names
    if allowed is not None:  # grouped by class in label order, as the names' own would be
        names = [c for c in classes if c in names] + [c for c in names if c not in classes]
    files: list[ImageFile] = []
    for name in names:
        if name not in classes:
            raise DataError(
                f"{top / name}: class {name!r} is not one of the {len(classes)} "
                f"{'training ' if what == 'training' else ''}classes "
                f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})"
            )
        bad_before = len(walk.bad)
        found = walk.images(top / name, classes.index(name))
        if not found and len(walk.bad) == bad_before:  # (all skipped: said after decoding)
            raise DataError(
                f"{top / name}: class folder holds no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        files += found
    if allowed is None and len(classes) < 2:
        raise DataError(
            f"{top}: only one class folder ({classes[0]}); a classifier needs at least two "
            f"classes, each in its own folder {top}/<class>/"
        )
    return classes, files


# ------------------------------------------------------------------ splits


def _layout(root: Path) -> tuple[Path, Path | None]:
    """(the folder of training classes, the folder of test classes or None)."""
    train = root / "train"
    tests = [root / n for n in _TEST_NAMES if (root / n).is_dir()]
    if train.is_dir():
        if len(tests) > 1:
            raise DataError(f"{root}: holds both test/ and val/; keep one (it is the test split)")
        return train, (tests[0] if tests else None)
    if tests:
        raise DataError(
            f"{root}: holds {tests[0].name}/ but no train/; put the training images in "
            f"{root}/train/<class>/ (or use one folder of classes, {root}/<class>/)"
        )
    return root, None


def _held_out(files: Sequence[ImageFile], val_split: float, seed: int) -> np.ndarray:
    """A boolean mask of the files held out: in each class round(val_split * n) of its n
    files (half up; at most n - 1, so every class keeps a training image), chosen by
    ``default_rng(seed)`` one class after the other. ``files`` are grouped by class in label
    order, as _classes_and_files lists them."""
    labels = np.fromiter((f.label for f in files), np.int64, len(files))
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(files), bool)
    classes, starts, counts = np.unique(labels, return_index=True, return_counts=True)
    del classes
    for start, n in zip(starts.tolist(), counts.tolist(), strict=True):  # per class, not pixel
        k = min(n - 1, int(np.floor(val_split * n + 0.5)))
        if k > 0:
            mask[start + rng.permutation(n)[:k]] = True
    return mask


# ------------------------------------------------------------------ size and channels


def _resolve(
    root: Path,
    files: Sequence[ImageFile],
    size: tuple[int, int] | None,
    channels: int | None,
    skip_bad: bool,
    progress: bool | None,
) -> tuple[tuple[int, int], int]:
    """The image size and channels asked for, or decided from the training images'
    headers: the most common size if both its sides are at most MAX_NATIVE_SIDE, else
    DEFAULT_IMAGE_SIZE; 3 channels if any image holds colour, else 1."""
    if size is not None and channels is not None:
        return size, channels
    sizes: Counter[tuple[int, int]] = Counter()
    colour = False
    bar = tqdm(
        files,
        desc=f"reading image headers of {root.name or root}",
        unit="img",
        disable=None if progress is None else not progress,
        leave=False,
    )
    with bar:
        for f in bar:
            try:
                header = probe_image(root / f.path)
            except DataError as exc:
                if skip_bad:
                    continue  # decoding fails on it again and skips it with the reason
                raise DataError(f"{exc}; {_SKIP_HINT}") from None
            sizes[(header.height, header.width)] += 1
            colour = colour or header.colour
            if size is not None and colour:
                break  # nothing more to learn
    if not sizes:
        raise DataError(f"{root}: none of its {len(files)} training images could be read")
    if size is None:
        (h, w), _ = max(sizes.items(), key=lambda kv: (kv[1], -kv[0][0] * kv[0][1], kv[0]))
        size = (h, w) if max(h, w) <= MAX_NATIVE_SIDE else DEFAULT_IMAGE_SIZE
    return size, channels if channels is not None else (3 if colour else 1)


def _decoder(size: tuple[int, int], channels: int) -> Callable[[Path], np.ndarray]:
    """path -> uint8 (C, H, W): load_image's decoding (alpha composited onto black, as
    ``load_image(path, shape, invert=False)`` gives it), exactly rounded to 8 bits."""
    shape = (channels, *size)

    def decode(path: Path) -> np.ndarray:
        pixels = load_image(path, shape, invert=False)
        pixels *= 255
        pixels += 0.5
        return pixels.astype(np.uint8)

    return decode


# ------------------------------------------------------------------ the whole


def _load(
    path: str | os.PathLike[str],
    image_size: int | Sequence[int] | None,
    channels: int | None,
    val_split: float | None,
    seed: int,
    skip_bad_images: bool,
    progress: bool | None,
    one_folder: bool | list[str],
) -> tuple[Dataset, Dataset | None, ImageFolderInfo]:
    """Both entry points. ``one_folder``: False for image_folder_splits, True for
    ImageFolder, or ImageFolder's list of class names."""
    root = Path(path).expanduser()
    size_asked, channels_asked = _image_size(image_size), _channels(channels)
    _check_root(root)
    walk = _Walk(root, bool(skip_bad_images))
    if one_folder is True:
        names = walk.class_names(root)
        if len(names) > 1 and "train" in names and set(names) <= {"train", *_TEST_NAMES}:
            other = names[0] if names[-1] == "train" else names[-1]
            raise DataError(
                f"{root}: holds train/ and {other}/, a split layout; use image_folder_splits() "
                f"for it, or ImageFolder on {root / 'train'}"
            )
        walk = _Walk(root, bool(skip_bad_images))  # count the entries once
    if one_folder:
        given = one_folder if isinstance(one_folder, list) else None
        classes, files = _classes_and_files(walk, root, given, "given")
        splits = {"all": files}
        source, stats = "", "all"
    else:
        train_root, test_root = _layout(root)
        classes, files = _classes_and_files(walk, train_root)
        if test_root is not None:
            _, test_files = _classes_and_files(walk, test_root, classes)
            splits = {"train": files, "test": test_files}
            source = "folder"
        elif val_split:
            mask = _held_out(files, val_split, seed)
            if not mask.any():
                raise DataError(
                    f"{train_root}: val_split {val_split:g} of {len(files)} images holds none "
                    "out (each class needs at least 2 images); add images or a test folder, "
                    "or set the validation split to 0"
                )
            splits = {
                "train": [f for f, m in zip(files, mask, strict=True) if not m],
                "test": [f for f, m in zip(files, mask, strict=True) if m],
            }
            source = "held-out"
        else:
            splits = {"train": files}
            source = "none"
        stats = "train"
    all_files = [f for part in splits.values() for f in part]
    request = {
        "image_size": size_asked,
        "channels": channels_asked,
        "resize": RESIZE_FILTER,
        "split": source,
        "val_split": val_split if source == "held-out" else None,
        "seed": seed if source == "held-out" else None,
    }
    listing = listing_digest(classes, sorted(all_files, key=lambda f: f.path))
    stem = f"{listing[:24]}-{request_digest(request, splits)[:16]}"
    folder = cache_folder(default_cache_dir(), root)
    entry = open_entry(folder, stem, classes, splits)
    if entry is None:
        size, ch = _resolve(
            root, splits[stats], size_asked, channels_asked, walk.skip_bad, progress
        )
        entry = build_entry(
            folder,
            stem,
            root,
            classes,
            splits,
            size,
            ch,
            _decoder(size, ch),
            stats,
            walk.skip_bad,
            _SKIP_HINT,
            progress,
        )
    elif not walk.skip_bad:
        for skips in entry.skipped.values():
            if skips:  # built with skip_bad_images=True; this call wants the error
                raise DataError(f"{skips[0][1]}; {_SKIP_HINT}")
    every_class = not isinstance(one_folder, list)  # classes from the folders: all learnt
    return _datasets(
        root, classes, splits, entry, walk, source, val_split, seed, stats, every_class
    )


def _datasets(
    root: Path,
    classes: Sequence[str],
    splits: dict[str, list[ImageFile]],
    entry: CacheEntry,
    walk: _Walk,
    source: str,
    val_split: float | None,
    seed: int,
    stats: str,
    every_class: bool,
) -> tuple[Dataset, Dataset | None, ImageFolderInfo]:
    name = root.name or str(root)
    kept: dict[str, list[ImageFile]] = {}
    skipped = list(walk.bad)
    for split, files in splits.items():
        gone = {i for i, _ in entry.skipped[split]}
        kept[split] = [f for i, f in enumerate(files) if i not in gone]
        skipped += [(files[i].path, reason) for i, reason in entry.skipped[split]]
    datasets = {}
    for split, files in kept.items():
        labels = np.fromiter((f.label for f in files), np.int64, len(files))
        if split == stats and every_class:
            counts = np.bincount(labels, minlength=len(classes))
            if (counts == 0).any():
                lost = classes[int(np.flatnonzero(counts == 0)[0])]
                raise DataError(
                    f"{root}: every training image of class {lost!r} was skipped as "
                    "unreadable; it cannot be learnt"
                )
        datasets[split] = Dataset(entry.images[split], labels, tuple(classes), name)
    if skipped:
        log.warning(
            "%s: skipped %d unreadable images (first: %s)", root, len(skipped), skipped[0][1]
        )
    train = datasets[stats]
    test = datasets.get("test")
    info = ImageFolderInfo(
        root=root,
        classes=tuple(classes),
        image_size=entry.image_size,
        channels=entry.channels,
        test_source=source,
        val_split=val_split if source == "held-out" else None,
        seed=seed if source == "held-out" else None,
        train_files=tuple(f.path for f in kept[stats]),
        test_files=tuple(f.path for f in kept.get("test", ())),
        skipped=tuple(sorted(skipped)),
        ignored=walk.ignored,
        mean=entry.mean,
        std=entry.std,
        cache=entry.manifest_path,
    )
    return train, test, info
