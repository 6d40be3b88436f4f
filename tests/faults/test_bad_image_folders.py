"""Bad image folders: each one clear DataError line naming the folder or file, before any
training, with nothing half-written left in the cache. ``skip_bad_images`` skips the files
that cannot be read as images and reports them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scratchcnn.data import ImageFolder, folders, image_folder_splits, imagecache
from scratchcnn.errors import ConfigError, DataError

from .test_hostile_inputs import bomb_png

HINT = "; pass --skip-bad-images (skip_bad_images=True in Python) to skip unreadable images"
EXTS = ".bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A cache of its own per test, so what a test leaves behind is its own."""
    monkeypatch.setenv("SCRATCHCNN_CACHE_DIR", str(tmp_path / "cache"))


def picture(path: Path, value: int = 100, size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)
    return path


def two_classes(root: Path, n: int = 3) -> Path:
    for c in ("a", "b"):
        for i in range(n):
            picture(root / c / f"{i}.png", 20 * i + (100 if c == "b" else 0))
    return root


def error(call, *args, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        call(*args, progress=False, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def cache_files() -> list[str]:
    """Every file under the image-folder cache (temporary files included)."""
    top = Path(os.environ["SCRATCHCNN_CACHE_DIR"]) / "image-folders"
    return sorted(str(p.relative_to(top)) for p in top.rglob("*") if not p.is_dir())


# ------------------------------------------------------------------ the folder itself


def test_missing_root_or_a_file(tmp_path):
    assert (
        error(ImageFolder, tmp_path / "nope") == f"{tmp_path / 'nope'}: image folder does not exist"
    )
    f = picture(tmp_path / "one.png")
    assert error(image_folder_splits, f) == (
        f"{f}: is a file, not an image folder (expected {f}/<class>/...)"
    )


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    root = tmp_path / "empty"
    assert error(ImageFolder, root) == (
        f"{root}: no class folders in it; expected {root}/<class>/ folders of images ({EXTS})"
    )


def test_images_without_class_folders(tmp_path):
    root = tmp_path / "flat"
    for i in range(3):
        picture(root / f"{i}.jpg")
    assert error(image_folder_splits, root) == (
        f"{root}: holds 3 images (0.jpg, ...) but no class folders; put each class's images in "
        f"its own folder, {root}/<class>/"
    )


def test_a_class_folder_with_no_images(tmp_path):
    root = two_classes(tmp_path / "d")
    (root / "c").mkdir()
    (root / "c" / "readme.txt").write_text("nothing here")
    (root / "c" / ".hidden.png").write_bytes(b"not even looked at")
    assert error(ImageFolder, root) == f"{root / 'c'}: class folder holds no images ({EXTS})"


def test_one_class_only(tmp_path):
    root = tmp_path / "d"
    picture(root / "cats" / "1.png")
    assert error(ImageFolder, root) == (
        f"{root}: only one class folder (cats); a classifier needs at least two classes, each in "
        f"its own folder {root}/<class>/"
    )


def test_split_layouts_that_do_not_fit(tmp_path):
    root = two_classes(tmp_path / "d" / "train")
    two_classes(tmp_path / "d" / "test")
    two_classes(tmp_path / "d" / "val")
    d = tmp_path / "d"
    assert error(image_folder_splits, d) == (
        f"{d}: holds both test/ and val/; keep one (it is the test split)"
    )
    os.rename(d / "val", d / "test" / "zebra")  # a class the training split lacks
    assert error(image_folder_splits, d) == (
        f"{d / 'test' / 'zebra'}: class 'zebra' is not one of the 2 training classes (a, b)"
    )
    os.rename(root, tmp_path / "elsewhere")
    assert error(image_folder_splits, d) == (
        f"{d}: holds test/ but no train/; put the training images in {d}/train/<class>/ (or "
        f"use one folder of classes, {d}/<class>/)"
    )
    os.rename(tmp_path / "elsewhere", root)
    os.rename(d / "test" / "zebra", d / "val")
    (d / "test").rename(tmp_path / "gone")
    assert error(ImageFolder, d) == (
        f"{d}: holds train/ and val/, a split layout; use image_folder_splits() for it, or "
        f"ImageFolder on {d / 'train'}"
    )


def test_given_classes_that_do_not_fit(tmp_path):
    root = two_classes(tmp_path / "d")
    assert error(ImageFolder, root, classes=["a", "c"]) == (
        f"{root / 'b'}: class 'b' is not one of the 2 classes (a, c)"
    )
    for bad in ("ab", [], ["a", "a"], ["a", 3]):
        with pytest.raises(ConfigError, match="classes must"):
            ImageFolder(root, classes=bad)


def test_nothing_to_hold_out(tmp_path):
    root = tmp_path / "d"
    picture(root / "a" / "1.png")
    picture(root / "b" / "1.png")
    assert error(image_folder_splits, root) == (
        f"{root}: val_split 0.1 of 2 images holds none out (each class needs at least 2 "
        "images); add images or a test folder, or set the validation split to 0"
    )
    train, test, _ = image_folder_splits(root, val_split=0, progress=False)
    assert len(train) == 2 and test is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": 0}, "image_size sides must be in 1..1024, got 0"),
        ({"image_size": (32, 2000)}, r"image_size sides must be in 1..1024, got \(32, 2000\)"),
        ({"image_size": "32"}, "image_size must be an integer S or a pair"),
        ({"image_size": True}, "image_size must be an integer S or a pair"),
        ({"channels": 2}, r"channels must be 1 \(grey\) or 3 \(RGB\), got 2"),
        ({"val_split": 1.0}, r"val_split must be in \[0, 1\), got 1.0"),
        ({"val_split": "0.1"}, "val_split must be a number"),
        ({"seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    root = two_classes(tmp_path / "d")
    with pytest.raises(ConfigError, match=message):
        image_folder_splits(root, **kwargs)


# ------------------------------------------------------------------ files that are not images


def _not_an_image(p: Path) -> str:
    p.write_bytes(b"<html>404 Not Found</html>\n")
    return f"{p}: cannot read it as an image (cannot identify image file '{p}')"


def _truncated_png(p: Path) -> str:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:3000])  # the header is whole: it fails when decoded
    return f"{p}: cannot read it as an image ("


def _truncated_jpeg(p: Path) -> str:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(p, quality=90)
    p.write_bytes(p.read_bytes()[:2000])
    return f"{p}: cannot read it as an image (image file is truncated"


def _empty(p: Path) -> str:
    p.write_bytes(b"")
    return f"{p}: empty file (0 bytes), not an image"


def _bomb(p: Path) -> str:
    p.write_bytes(bomb_png(7000, 7000))
    return (
        f"{p}: image of 7,000x7,000 pixels is larger than the 40,000,000-pixel limit (a "
        "decompression bomb, or a photo to shrink first)"
    )


def _fifo(p: Path) -> str:
    os.mkfifo(p)  # opening it would block: refused from stat
    return f"{p}: not a regular file (a device, FIFO or socket), expected an image file"


def _broken_link(p: Path) -> str:
    p.symlink_to(p.parent / "nowhere.png")
    return f"{p}: broken symlink or vanished file, not an image"


BAD = {
    "not-an-image.png": _not_an_image,
    "truncated.png": _truncated_png,
    "truncated.jpg": _truncated_jpeg,
    "empty.gif": _empty,
    "bomb.png": _bomb,
    "fifo.png": _fifo,
    "broken-link.webp": _broken_link,
}


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("size", [None, 8], ids=["size-from-headers", "size-given"])
def test_an_unreadable_file_is_named_or_skipped(tmp_path, name, size):
    root = two_classes(tmp_path / "d")
    bad = root / "b" / name
    message = BAD[name](bad)
    got = error(ImageFolder, root, image_size=size)
    assert got.startswith(message) and got.endswith(HINT), got
    assert cache_files() == []  # nothing left behind
    ds = ImageFolder(root, image_size=size, skip_bad_images=True, progress=False)
    assert len(ds) == 6 and f"b/{name}" not in ds.samples
    assert len(ds.skipped) == 1 and ds.skipped[0][0] == f"b/{name}"
    assert ds.skipped[0][1].startswith(message)
    assert "skipped 1 unreadable (first: " in ds.info.summary()
    assert ds.info.to_dict()["skipped"] == 1
    # the cache built while skipping is not a way around the error
    got = error(ImageFolder, root, image_size=size)
    assert got.startswith(message) and got.endswith(HINT)


def test_skipping_reports_every_file_and_keeps_the_rest_in_order(tmp_path):
    root = two_classes(tmp_path / "d", n=4)
    _not_an_image(root / "a" / "1.png")  # replaces a good one
    _truncated_png(root / "b" / "x.png")
    _fifo(root / "b" / "y.png")
    train, test, info = image_folder_splits(
        root, val_split=0.25, skip_bad_images=True, progress=False
    )
    assert [p for p, _ in info.skipped] == ["a/1.png", "b/x.png", "b/y.png"]
    assert "a/1.png" not in info.train_files + info.test_files
    assert len(train) + len(test) == 8 - 1
    want = {rel: np.asarray(Image.open(root / rel))[0, 0, 0] for rel in info.train_files}
    for row, rel in enumerate(info.train_files):
        assert train.images[row, 0, 0, 0] == want[rel]  # rows line up with their files


def test_a_class_whose_every_image_is_unreadable(tmp_path):
    root = two_classes(tmp_path / "d")
    for i in range(3):
        _not_an_image(root / "a" / f"{i}.png")
    assert error(ImageFolder, root, skip_bad_images=True, image_size=8) == (
        f"{root}: every training image of class 'a' was skipped as unreadable; it cannot be learnt"
    )


def test_hidden_and_other_files_are_not_read(tmp_path):
    root = two_classes(tmp_path / "d")
    (root / "a" / "._0.png").write_bytes(b"\0\5\26\7 AppleDouble junk")  # macOS resource fork
    (root / ".git").mkdir()
    (root / ".git" / "x.png").write_bytes(b"junk")
    (root / "b" / "labels.csv").write_text("x")
    ds = ImageFolder(root, progress=False)
    assert len(ds) == 6 and ds.classes == ("a", "b") and ds.info.ignored == 1


# ------------------------------------------------------------------ links, size of the walk


def test_a_symlink_loop_is_refused(tmp_path):
    root = two_classes(tmp_path / "d")
    (root / "a" / "deeper").mkdir()
    (root / "a" / "deeper" / "up").symlink_to(root / "a")
    assert error(ImageFolder, root) == (
        f"{root / 'a' / 'deeper' / 'up'}: symlink loop (it leads back to {root / 'a'}); remove "
        "the link"
    )
    (root / "a" / "deeper" / "up").unlink()
    (root / "b" / "self.png").symlink_to(root / "b" / "self.png")  # a link to itself
    msg = f"{root / 'b' / 'self.png'}: symlink loop (the link leads, through links, back to itself)"
    assert error(ImageFolder, root, skip_bad_images=True).startswith(msg)
    (root / "b" / "self.png").unlink()
    (root / "c").symlink_to(root / "c")  # a class folder that is a loop
    assert error(ImageFolder, root).startswith(f"{root / 'c'}: symlink loop")


def test_links_to_folders_and_files_are_followed_once(tmp_path):
    root = two_classes(tmp_path / "d")
    elsewhere = two_classes(tmp_path / "other")
    (root / "a" / "more").symlink_to(elsewhere / "a")
    (root / "b" / "again").symlink_to(root / "b")  # a loop: refused (checked above)
    (root / "b" / "again").unlink()
    (root / "b" / "twice").symlink_to(elsewhere / "a")  # the same folder a second time
    (root / "b" / "pic.png").symlink_to(elsewhere / "b" / "0.png")
    ds = ImageFolder(root, progress=False)
    assert "a/more/0.png" in ds.samples and "b/pic.png" in ds.samples
    assert not any(s.startswith("b/twice/") for s in ds.samples)  # read once, under a/more
    assert len(ds) == 6 + 3 + 1


def test_too_many_files_or_too_deep(tmp_path, monkeypatch):
    root = two_classes(tmp_path / "d", n=5)
    monkeypatch.setattr(folders, "MAX_FOLDER_ENTRIES", 8)
    assert error(ImageFolder, root) == (
        f"{root}: more than 8 files and folders in it; train on a smaller folder"
    )
    monkeypatch.setattr(folders, "MAX_FOLDER_ENTRIES", 1000)
    monkeypatch.setattr(folders, "MAX_FOLDER_DEPTH", 2)
    deep = root / "a" / "x" / "y" / "z"
    picture(deep / "1.png")
    assert error(ImageFolder, root) == (
        f"{deep}: folders nested more than 2 levels deep in {root / 'a'}"
    )


def test_a_class_name_that_is_not_utf8(tmp_path):
    root = two_classes(tmp_path / "d")
    os.mkdir(os.fsencode(root) + b"/caf\xe9")
    picture(Path(os.fsdecode(os.fsencode(root) + b"/caf\xe9/1.png")))
    assert "a class folder name must be valid UTF-8" in error(ImageFolder, root)


def test_an_unreadable_folder(tmp_path):
    if os.geteuid() == 0:  # root reads everything: take the error from scandir instead
        root = two_classes(tmp_path / "d")

        def denied(path):
            raise PermissionError(13, "Permission denied")

        real = os.scandir
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(
                folders.os, "scandir", lambda p: denied(p) if str(p).endswith("/b") else real(p)
            )
            assert error(ImageFolder, root) == (
                f"{root / 'b'}: cannot read the folder (Permission denied)"
            )
        return
    root = two_classes(tmp_path / "d")
    (root / "b").chmod(0)
    try:
        assert (
            error(ImageFolder, root) == f"{root / 'b'}: cannot read the folder (Permission denied)"
        )
    finally:
        (root / "b").chmod(0o755)


# ------------------------------------------------------------------ while the cache is built


def _meddle(monkeypatch, action):
    """Run ``action`` once, just after the first image was decoded."""
    real = folders.load_image
    done = []

    def meddling(path, shape, invert=None):
        out = real(path, shape, invert)
        if not done:
            done.append(path)
            action()
        return out

    monkeypatch.setattr(folders, "load_image", meddling)


def test_a_file_that_vanishes_while_the_cache_is_built(tmp_path, monkeypatch):
    root = two_classes(tmp_path / "d")
    victim = root / "b" / "1.png"
    _meddle(monkeypatch, victim.unlink)
    assert error(ImageFolder, root, image_size=8) == (
        f"{victim}: vanished while the image cache was built (the folder changed since it was "
        "listed; run again)"
    )
    assert cache_files() == []  # the temporary file is gone, no entry was written
    ds = ImageFolder(root, image_size=8, progress=False)  # run again: fine
    assert len(ds) == 5


def test_a_file_that_changes_while_the_cache_is_built(tmp_path, monkeypatch):
    root = two_classes(tmp_path / "d")
    victim = root / "a" / "2.png"
    _meddle(monkeypatch, lambda: picture(victim, 7, size=(9, 9)))
    assert error(ImageFolder, root, image_size=8) == (
        f"{victim}: changed while the image cache was built (the folder changed since it was "
        "listed; run again)"
    )
    assert cache_files() == []


def test_a_full_disk_is_an_error_before_decoding(tmp_path, monkeypatch):
    root = two_classes(tmp_path / "d")

    class Usage:
        free = 100

    monkeypatch.setattr(imagecache.shutil, "disk_usage", lambda p: Usage)
    msg = error(ImageFolder, root, image_size=64)
    assert msg.endswith(
        "the image cache needs 0.00 GiB but only 0.00 GiB are free there; choose a smaller image "
        "size or set SCRATCHCNN_CACHE_DIR to a folder on a bigger disk"
    )
    assert cache_files() == []


def test_an_unwritable_cache_folder(tmp_path, monkeypatch):
    root = two_classes(tmp_path / "d")
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("SCRATCHCNN_CACHE_DIR", str(blocker))
    msg = error(ImageFolder, root)
    assert msg.startswith(f"{blocker}/image-folders/")
    assert msg.endswith(
        "cannot write the image cache (Not a directory); set SCRATCHCNN_CACHE_DIR to a writeable "
        "folder"
    )


KILL = """
import os, sys
from scratchcnn.data import ImageFolder, folders
real = folders.load_image
count = []
def dying(path, shape, invert=None):
    count.append(path)
    if len(count) == 4:
        os._exit(9)  # killed in the middle of the build
    return real(path, shape, invert)
folders.load_image = dying
ImageFolder(sys.argv[1], image_size=8, progress=False)
"""


def test_a_build_killed_halfway_is_never_used(tmp_path):
    root = two_classes(tmp_path / "d")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", KILL, str(root)], env=env, timeout=120)
    assert done.returncode == 9
    left = cache_files()
    assert left and all(f.split("/")[-1].startswith(".") for f in left)  # temporary only
    ds = ImageFolder(root, image_size=8, progress=False)
    assert len(ds) == 6 and ds.images[5].min() == 140  # b/2.png: 100 + 20 * 2
    assert all(not f.split("/")[-1].startswith(".") for f in cache_files())  # cleaned up
