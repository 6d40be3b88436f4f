"""Image folders: layouts, classes, the pixels (as ``predict`` decodes them), size and
channels, splits, statistics, and the decode cache. Every folder is generated here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import scratchcnn as sc
from scratchcnn.data import (
    DataLoader,
    Dataset,
    ImageFolder,
    folders,
    image_folder_splits,
    imagecache,
)
from scratchcnn.data.images import load_image, probe_image

FORMATS = ("png", "jpg", "bmp", "gif", "webp", "tif")


def rgb(rng: np.random.Generator, h: int, w: int, tint=(0, 0, 0)) -> np.ndarray:
    return (rng.integers(0, 128, (h, w, 3)) + np.array(tint)).clip(0, 255).astype(np.uint8)


def make_folder(
    root: Path,
    counts: dict[str, int],
    size: tuple[int, int] = (12, 10),
    colour: bool = True,
    seed: int = 0,
) -> Path:
    """``counts[class]`` images per class, formats cycling through FORMATS; colour images
    tinted per class (red, green, blue ...) or grey ones."""
    rng = np.random.default_rng(seed)
    tints = [(120, 0, 0), (0, 120, 0), (0, 0, 120), (60, 60, 0)]
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = rgb(rng, *size, tints[c % 4])
            img = Image.fromarray(a) if colour else Image.fromarray(a[..., 0])
            img.save(root / name / f"{i:03d}.{FORMATS[i % len(FORMATS)]}")
    return root


def expected_row(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """What the cache must hold for ``path``: load_image (predict's decoding), to 8 bits."""
    return np.floor(load_image(path, shape, invert=False) * 255 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------ one folder


def test_classes_labels_samples_and_pixels(tmp_path):
    root = make_folder(tmp_path / "pets", {"b_dog": 4, "a_cat": 3, "Zebra": 2})
    (root / "a_cat" / "notes.txt").write_text("not an image")  # ignored, counted
    (root / "a_cat" / ".DS_Store").write_bytes(b"\0\1")  # hidden: not even counted
    nested = root / "b_dog" / "more"
    nested.mkdir()
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(nested / "x.JPEG")  # any case
    ds = ImageFolder(root, progress=False)
    assert isinstance(ds, Dataset) and ds.name == "pets"
    assert ds.classes == ("Zebra", "a_cat", "b_dog")  # sorted as strings, as torchvision
    assert ds.class_to_idx == {"Zebra": 0, "a_cat": 1, "b_dog": 2}
    assert ds.samples == (
        "Zebra/000.png",
        "Zebra/001.jpg",
        "a_cat/000.png",
        "a_cat/001.jpg",
        "a_cat/002.bmp",
        "b_dog/000.png",
        "b_dog/001.jpg",
        "b_dog/002.bmp",
        "b_dog/003.gif",
        "b_dog/more/x.JPEG",
    )
    assert ds.labels.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    assert ds.images.dtype == np.uint8 and ds.input_shape == (3, 12, 10)
    assert isinstance(ds.images, np.memmap) and not ds.images.flags.writeable
    assert ds.info.ignored == 1 and ds.skipped == () and ds.info.test_source == ""
    for row, rel in enumerate(ds.samples):
        np.testing.assert_array_equal(ds.images[row], expected_row(root / rel, (3, 12, 10)))
    image, label = ds[3]
    assert image.shape == (3, 12, 10) and label == 1


def test_every_format_and_mode_is_decoded_as_predict_decodes_it(tmp_path):
    """Mixed sizes and modes (palette, palette with transparency, 16-bit, alpha, CMYK,
    1-bit, animated GIF, every file format): each converted exactly as load_image does."""
    rng = np.random.default_rng(1)
    root = tmp_path / "mixed"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
    grey = rng.integers(0, 256, (20, 16), np.uint8)
    colour = rgb(rng, 9, 14, (100, 0, 50))
    alpha = np.dstack([colour, rng.integers(0, 256, (9, 14), np.uint8)])
    pal = Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal_t = pal.copy()
    saves = {
        "a/p.png": (pal, {}),
        "a/pt.png": (pal_t, {"transparency": 3}),
        "a/i16.png": (Image.fromarray(grey.astype(np.uint16) * 257), {}),
        "a/rgba.png": (Image.fromarray(alpha, "RGBA"), {}),
        "a/la.png": (Image.fromarray(np.dstack([grey, 255 - grey]), "LA"), {}),
        "b/cmyk.jpg": (Image.fromarray(colour).convert("CMYK"), {}),
        "b/bilevel.png": (Image.fromarray(grey).convert("1"), {}),
        "b/grey.webp": (Image.fromarray(grey), {"lossless": True}),
        "b/rgb.tif": (Image.fromarray(colour), {}),
        "b/rgb.bmp": (Image.fromarray(colour), {}),
    }
    for rel, (img, kw) in saves.items():
        img.save(root / rel, **kw)
    frames = [Image.fromarray(grey), Image.fromarray(255 - grey)]
    frames[0].save(root / "b" / "anim.gif", save_all=True, append_images=frames[1:])
    ds = ImageFolder(root, image_size=(11, 13), progress=False)
    assert ds.input_shape == (3, 11, 13)  # colour somewhere: RGB
    for row, rel in enumerate(ds.samples):
        np.testing.assert_array_equal(ds.images[row], expected_row(root / rel, (3, 11, 13)))
    grey_only = ImageFolder(root, image_size=8, channels=1, progress=False)
    assert grey_only.input_shape == (1, 8, 8)
    for row, rel in enumerate(grey_only.samples):
        np.testing.assert_array_equal(grey_only.images[row], expected_row(root / rel, (1, 8, 8)))


def test_resize_is_pillow_lanczos(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "r"
    pixels = {}
    for c in ("x", "y"):
        (root / c).mkdir(parents=True)
        pixels[c] = rng.integers(0, 256, (30, 40), np.uint8)
        Image.fromarray(pixels[c]).save(root / c / "img.png")
    ds = ImageFolder(root, image_size=(12, 16), progress=False)
    for row, c in enumerate(("x", "y")):
        want = Image.fromarray(pixels[c]).resize(
            (16, 12), Image.Resampling.LANCZOS, reducing_gap=3.0
        )
        np.testing.assert_array_equal(ds.images[row, 0], np.asarray(want))
    assert folders.RESIZE_FILTER == "lanczos"


def test_default_channels_grey_unless_some_image_holds_colour(tmp_path):
    rng = np.random.default_rng(3)
    root = make_folder(tmp_path / "g", {"a": 2, "b": 2}, colour=False)
    grey = rng.integers(0, 256, (12, 10), np.uint8)
    Image.fromarray(grey.astype(np.uint16) * 257).save(root / "a" / "deep.png")
    # RGB -> P gives the 216-colour web palette; a grey image uses only its grey entries
    Image.fromarray(grey).convert("RGB").convert("P").save(root / "b" / "grey-palette.png")
    Image.fromarray(grey).convert("P").save(root / "b" / "grey-palette.gif")
    assert probe_image(root / "b" / "grey-palette.png").colour is False
    assert probe_image(root / "b" / "grey-palette.gif").colour is False
    assert ImageFolder(root, progress=False).input_shape[0] == 1
    Image.fromarray(rgb(rng, 12, 10)).convert("P").save(root / "b" / "colour-palette.png")
    assert probe_image(root / "b" / "colour-palette.png").colour is True
    ds = ImageFolder(root, progress=False)
    assert ds.input_shape[0] == 3
    # a grey image in an RGB data set: three equal channels
    row = ds.samples.index("a/000.png")
    np.testing.assert_array_equal(ds.images[row, 0], ds.images[row, 2])
    assert ImageFolder(root, channels=1, progress=False).input_shape[0] == 1


def test_default_size_the_most_common_up_to_64_else_32(tmp_path):
    root = make_folder(tmp_path / "s", {"a": 3, "b": 2}, size=(20, 30))
    make_folder(root, {"a": 1}, size=(50, 50), seed=5)  # overwrites a/000.png: 50x50
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(root / "b" / "small.png")
    assert ImageFolder(root, progress=False).input_shape == (3, 20, 30)
    big = make_folder(tmp_path / "big", {"a": 2, "b": 2}, size=(100, 80))
    assert ImageFolder(big, progress=False).input_shape == (3, 32, 32)
    assert ImageFolder(big, image_size=24, progress=False).input_shape == (3, 24, 24)
    assert ImageFolder(big, image_size=(40, 24), progress=False).input_shape == (3, 40, 24)


# ------------------------------------------------------------------ splits


def test_train_and_test_folders(tmp_path):
    make_folder(tmp_path / "d" / "train", {"cat": 3, "dog": 4, "owl": 2})
    make_folder(tmp_path / "d" / "test", {"cat": 1, "owl": 2}, seed=9)  # no dog: fine
    (tmp_path / "d" / "README.txt").write_text("hello")
    train, test, info = image_folder_splits(tmp_path / "d", progress=False)
    assert info.classes == train.classes == test.classes == ("cat", "dog", "owl")
    assert info.test_source == "folder" and info.val_split is None and info.seed is None
    assert len(train) == 9 and len(test) == 3
    assert test.labels.tolist() == [0, 2, 2]
    assert info.train_files[0] == "train/cat/000.png" and info.test_files[-1] == "test/owl/001.jpg"
    np.testing.assert_array_equal(
        test.images[0], expected_row(tmp_path / "d" / "test/cat/000.png", (3, 12, 10))
    )
    os.rename(tmp_path / "d" / "test", tmp_path / "d" / "val")  # val/ is the test split too
    _, test2, info2 = image_folder_splits(tmp_path / "d", progress=False)
    assert info2.test_source == "folder" and info2.test_files[0] == "val/cat/000.png"
    np.testing.assert_array_equal(test2.images, test.images)


def test_held_out_split_is_stratified_and_chosen_by_the_seed(tmp_path):
    root = make_folder(tmp_path / "h", {"a": 10, "b": 5, "c": 3, "d": 1}, size=(6, 6))
    train, test, info = image_folder_splits(root, val_split=0.2, seed=4, progress=False)
    assert info.test_source == "held-out" and info.val_split == 0.2 and info.seed == 4
    # per class: round(0.2 n) half up, at most n - 1: 10 -> 2, 5 -> 1, 3 -> 1 (0.6), 1 -> 0
    assert np.bincount(test.labels, minlength=4).tolist() == [2, 1, 1, 0]
    assert np.bincount(train.labels, minlength=4).tolist() == [8, 4, 2, 1]
    assert set(info.train_files).isdisjoint(info.test_files)
    assert sorted(info.train_files + info.test_files) == sorted(ImageFolder(root).samples)
    whole = ImageFolder(root, progress=False)
    for split, files in ((train, info.train_files), (test, info.test_files)):
        for row, rel in enumerate(files):
            np.testing.assert_array_equal(split.images[row], whole.images[whole.samples.index(rel)])
    again = image_folder_splits(root, val_split=0.2, seed=4, progress=False)[2]
    assert again.test_files == info.test_files
    others = {image_folder_splits(root, val_split=0.2, seed=s)[2].test_files for s in range(5, 9)}
    assert len(others | {info.test_files}) > 1  # another seed, other images held out
    # a class folder alone under train/ (no test folder) is held out from too
    os.rename(root, tmp_path / "x")
    (tmp_path / "h").mkdir()
    os.rename(tmp_path / "x", root / "train")
    _, test3, info3 = image_folder_splits(root, val_split=0.2, seed=4, progress=False)
    assert info3.test_source == "held-out" and len(test3) == 4


def test_no_validation_split(tmp_path):
    root = make_folder(tmp_path / "n", {"a": 2, "b": 2})
    train, test, info = image_folder_splits(root, val_split=0, progress=False)
    assert test is None and len(train) == 4 and info.test_source == "none"
    assert info.test_files == () and "no test split" in info.summary()


def test_mean_and_std_of_the_training_split_only(tmp_path):
    root = make_folder(tmp_path / "m", {"a": 6, "b": 6})
    train, test, info = image_folder_splits(root, val_split=0.25, progress=False)
    x = np.asarray(train.images, np.float64) / 255
    np.testing.assert_allclose(info.mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(info.std, x.std(axis=(0, 2, 3)), rtol=1e-9)
    everything = np.concatenate([x, np.asarray(test.images, np.float64) / 255])
    assert not np.allclose(info.mean, everything.mean(axis=(0, 2, 3)), rtol=1e-6)
    d = info.to_dict()
    assert d["mean"] == list(info.mean) and d["image_size"] == [12, 10] and d["channels"] == 3
    # 6 per class: round(1.5) half up = 2 held out each
    assert d["train_images"] == 8 and d["test_images"] == 4 and d["resize"] == "lanczos"


def test_loader_and_augmentation_on_a_folder(tmp_path):
    root = make_folder(tmp_path / "l", {"a": 5, "b": 4}, size=(8, 8))
    ds = ImageFolder(root, progress=False)
    copy = Dataset(np.array(ds.images), ds.labels, ds.classes, ds.name)
    for augment in (False, True):
        a = list(DataLoader(ds, batch_size=4, seed=3, augment=augment))
        b = list(DataLoader(copy, batch_size=4, seed=3, augment=augment))
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert xa.shape[1] == 3
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)


# ------------------------------------------------------------------ the cache


def _count_decodes(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = folders.load_image

    def counting(path, shape, invert=None):
        calls.append(Path(path))
        return real(path, shape, invert)

    monkeypatch.setattr(folders, "load_image", counting)
    return calls


def _entries(ds: ImageFolder) -> list[str]:
    return sorted(p.name for p in ds.info.cache.parent.iterdir())


def test_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "c", {"a": 3, "b": 3})
    calls = _count_decodes(monkeypatch)
    first = ImageFolder(root, progress=False)
    assert len(calls) == 6
    cache_root = Path(os.environ["SCRATCHCNN_CACHE_DIR"]) / "image-folders"
    assert first.info.cache.parent.parent == cache_root
    again = ImageFolder(str(root) + "/", progress=False)  # the same folder, spelt otherwise
    assert len(calls) == 6  # nothing decoded
    np.testing.assert_array_equal(again.images, first.images)
    assert again.info.mean == first.info.mean and again.samples == first.samples
    assert Path(again.images.filename).parent == first.info.cache.parent


def test_a_changed_or_added_file_rebuilds_and_the_old_entry_goes(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "c", {"a": 3, "b": 3})
    first = ImageFolder(root, progress=False)
    old = _entries(first)
    calls = _count_decodes(monkeypatch)
    Image.fromarray(np.full((12, 10, 3), 255, np.uint8)).save(root / "b" / "001.jpg")
    changed = ImageFolder(root, progress=False)
    assert len(calls) == 6
    row = changed.samples.index("b/001.jpg")
    assert changed.images[row].min() >= 250 and first.images[row].min() < 250
    assert set(_entries(changed)).isdisjoint(old)  # the stale entry was removed
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(root / "a" / "new.png")
    added = ImageFolder(root, progress=False)
    assert len(added) == 7 and len(calls) == 13
    os.utime(root / "a" / "new.png", ns=(1, 1))  # only the mtime
    ImageFolder(root, progress=False)
    assert len(calls) == 20
    assert len([n for n in _entries(added) if n.endswith(".json")]) == 1


def test_other_sizes_are_other_entries_kept_side_by_side(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "c", {"a": 2, "b": 2})
    for s in (8, 9, 10, 11, 12):
        ImageFolder(root, image_size=s, progress=False)
    calls = _count_decodes(monkeypatch)
    ds = ImageFolder(root, image_size=12, progress=False)
    assert calls == []  # the newest entries are kept ...
    assert (
        len([n for n in _entries(ds) if n.endswith(".json")]) == imagecache.MAX_ENTRIES_PER_FOLDER
    )
    ImageFolder(root, image_size=8, progress=False)  # ... up to MAX_ENTRIES_PER_FOLDER
    assert len(calls) == 4


@pytest.mark.parametrize("damage", ["truncate", "grow", "manifest", "no-manifest", "shape"])
def test_a_damaged_cache_is_never_used(tmp_path, monkeypatch, damage):
    root = make_folder(tmp_path / "c", {"a": 3, "b": 3})
    first = ImageFolder(root, progress=False)
    want = np.array(first.images)
    data = Path(first.images.filename)
    manifest = first.info.cache
    del first
    if damage == "truncate":  # a half-written data file under the final name
        with open(data, "r+b") as fh:
            fh.truncate(data.stat().st_size - 1)
    elif damage == "grow":
        with open(data, "ab") as fh:
            fh.write(b"\0")
    elif damage == "manifest":
        manifest.write_text('{"format": "scratchcnn image-folder cache", "version": 1')
    elif damage == "no-manifest":  # killed between the data file and the manifest
        manifest.unlink()
    else:
        text = manifest.read_text().replace('"channels": 3', '"channels": 1')
        manifest.write_text(text)
    calls = _count_decodes(monkeypatch)
    again = ImageFolder(root, progress=False)
    assert len(calls) == 6  # rebuilt
    np.testing.assert_array_equal(again.images, want)


def test_temporary_files_of_a_killed_build_are_removed(tmp_path):
    root = make_folder(tmp_path / "c", {"a": 2, "b": 2})
    first = ImageFolder(root, image_size=5, progress=False)
    folder = first.info.cache.parent
    stem = first.info.cache.stem
    dead = 2**22 + 12345  # above the usual pid_max: no such process
    leftover = folder / f".{stem}.all.u8.{dead}.abcd1234.tmp"
    leftover.write_bytes(b"half")
    first.info.cache.unlink()
    ImageFolder(root, image_size=5, progress=False)
    assert not leftover.exists()


def test_progress_bar_on_request_only(tmp_path, capsys):
    root = make_folder(tmp_path / "p", {"a": 2, "b": 2})
    ImageFolder(root, progress=True)
    err = capsys.readouterr().err
    assert "decoding p (once; cached)" in err and "4/4" in err
    ImageFolder(root, image_size=6, progress=False)
    ImageFolder(root, image_size=7)  # None: only on a terminal, and pytest's stderr is not
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_a_model_trains_on_an_image_folder(tmp_path):
    """End to end: a colour folder, held-out split, augmentation, fit, evaluate."""
    root = make_folder(tmp_path / "t", {"red": 24, "green": 24, "blue": 24}, size=(16, 16))
    train, test, info = image_folder_splits(root, val_split=0.25, seed=1, progress=False)
    assert train.input_shape == (3, 16, 16) and info.channels == 3
    model = sc.Sequential(
        [sc.Conv2D(3, 4, 3, rng=0), sc.ReLU(), sc.Flatten(), sc.Dense(4 * 14 * 14, 3, rng=1)],
        input_shape=(3, 16, 16),
    )
    history = sc.train.fit(
        model,
        train,
        epochs=8,
        batch_size=8,
        test_data=test,
        augment=True,
        optimizer=sc.optim.Adam(model, lr=0.01),
        progress=False,
    )
    assert np.isfinite(history.last.train_loss) and len(history.epochs) == 8
    assert sc.train.evaluate(model, test).accuracy > 0.8  # tints tell the classes apart


def test_a_folder_labelled_by_given_classes(tmp_path):
    """Evaluating a trained model on another folder: its classes, its label order."""
    root = make_folder(tmp_path / "e", {"owl": 2, "cat": 1})  # no "dog", one class is fine
    ds = ImageFolder(root, classes=["cat", "dog", "owl"], progress=False)
    assert ds.classes == ("cat", "dog", "owl") and ds.labels.tolist() == [0, 2, 2]
    assert ds.samples == ("cat/000.png", "owl/000.png", "owl/001.jpg")
    np.testing.assert_array_equal(ds.images[0], expected_row(root / "cat/000.png", (3, 12, 10)))
    only = make_folder(tmp_path / "one", {"dog": 2})
    assert ImageFolder(only, classes=("cat", "dog"), progress=False).labels.tolist() == [1, 1]
