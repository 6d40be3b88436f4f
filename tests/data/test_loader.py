"""Dataset validation and the DataLoader: batching, scaling, shuffling, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scratchcnn.data import DataLoader, Dataset
from scratchcnn.errors import CheckpointError, ConfigError, DataError


def _ds(n=10, dtype=np.uint8, classes=3, name="toy"):
    images = (np.arange(n * 2 * 3 * 3) % 256).astype(dtype).reshape(n, 2, 3, 3)
    if dtype != np.uint8:
        images = images / 255.0
        images = images.astype(dtype)
    labels = np.arange(n) % classes
    return Dataset(images, labels, tuple(f"c{i}" for i in range(classes)), name)


# ---------------------------------------------------------------- Dataset


def test_dataset_basics():
    ds = _ds(10)
    assert len(ds) == 10 and ds.num_classes == 3 and ds.input_shape == (2, 3, 3)
    assert ds.labels.dtype == np.int64
    sub = ds[2:5]
    assert isinstance(sub, Dataset) and len(sub) == 3
    assert sub.name == "toy" and sub.classes == ds.classes
    fancy = ds[np.array([9, 0, 3])]
    np.testing.assert_array_equal(fancy.labels, [0, 0, 0])
    np.testing.assert_array_equal(fancy.images[0], ds.images[9])
    mask = ds[ds.labels == 1]
    assert len(mask) == 3
    image, label = ds[-1]  # one item, as in PyTorch
    assert image.shape == (2, 3, 3) and label == int(ds.labels[9]) and type(label) is int
    np.testing.assert_array_equal(image, ds.images[9])
    assert len(ds[9:10]) == 1  # a slice stays a Dataset
    with pytest.raises(IndexError):
        ds[10]
    assert "n=10" in repr(ds)


def test_dataset_validation():
    img = np.zeros((4, 1, 2, 2), np.uint8)
    lab = np.zeros(4, np.int64)
    with pytest.raises(DataError, match=r"4-D \(N, C, H, W\), got shape \(4, 2, 2\)"):
        Dataset(img[:, 0], lab, ("a",), "x")
    with pytest.raises(DataError, match=r"labels must be 1-D"):
        Dataset(img, lab[:, None], ("a",), "x")
    with pytest.raises(DataError, match=r"labels must be integers, got float64"):
        Dataset(img, lab.astype(float), ("a",), "x")
    with pytest.raises(DataError, match=r"dataset 'x': 4 images but 3 labels"):
        Dataset(img, lab[:3], ("a",), "x")
    with pytest.raises(DataError, match=r"label 2 at index 1 is out of range \[0, 2\)"):
        Dataset(img, np.array([0, 2, 1, 5]), ("a", "b"), "x")
    with pytest.raises(DataError, match=r"label -1 at index 3"):
        Dataset(img, np.array([0, 0, 0, -1]), ("a", "b"), "x")
    bad = np.zeros((4, 1, 2, 2), np.float32)
    bad[2, 0, 1, 1] = np.nan
    with pytest.raises(DataError, match=r"image 2 contains NaN or inf"):
        Dataset(bad, lab, ("a",), "x")
    bad[2, 0, 1, 1] = np.inf
    with pytest.raises(DataError, match=r"image 2 contains NaN or inf"):
        Dataset(bad, lab, ("a",), "x")
    with pytest.raises(DataError, match=r"dataset 'x' is empty"):
        Dataset(img[:0], lab[:0], ("a",), "x")
    with pytest.raises(DataError, match=r"uint8 or floating"):
        Dataset(img.astype(np.int32), lab, ("a",), "x")
    # float images outside [0, 1] are allowed as long as they are finite
    Dataset(np.full((4, 1, 2, 2), 3.0, np.float32), lab, ("a",), "x")


def test_dataset_is_frozen():
    ds = _ds(4)
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]


# ---------------------------------------------------------------- DataLoader


def test_batch_shapes_and_partial_last():
    ds = _ds(10)
    loader = DataLoader(ds, batch_size=4, shuffle=False)
    batches = list(loader)
    assert len(loader) == 3 == len(batches)
    assert [b[0].shape for b in batches] == [(4, 2, 3, 3), (4, 2, 3, 3), (2, 2, 3, 3)]
    assert all(b[1].dtype == np.int64 for b in batches)


def test_drop_last():
    loader = DataLoader(_ds(10), batch_size=4, drop_last=True)
    batches = list(loader)
    assert len(loader) == 2 == len(batches)
    assert all(len(y) == 4 for _, y in batches)
    assert len(DataLoader(_ds(3), batch_size=4, drop_last=True)) == 0
    assert list(DataLoader(_ds(3), batch_size=4, drop_last=True)) == []
    assert len(DataLoader(_ds(8), batch_size=4, drop_last=True)) == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_and_scaling(dtype):
    ds = _ds(6)
    x, _ = next(iter(DataLoader(ds, batch_size=6, shuffle=False, dtype=dtype)))
    assert x.dtype == dtype
    np.testing.assert_array_equal(x, ds.images.astype(dtype) / dtype(255))
    assert x.min() >= 0 and x.max() <= 1


def test_float_images_pass_through():
    ds = _ds(6, dtype=np.float32)
    x, _ = next(iter(DataLoader(ds, batch_size=6, shuffle=False, dtype=np.float64)))
    assert x.dtype == np.float64
    np.testing.assert_array_equal(x, ds.images.astype(np.float64))


def test_batches_are_copies():
    ds = _ds(6, dtype=np.float32)
    x, _ = next(iter(DataLoader(ds, batch_size=6, shuffle=False)))
    x[:] = 7
    assert ds.images.max() < 1


def test_no_shuffle_keeps_order():
    ds = _ds(10)
    ys = np.concatenate([y for _, y in DataLoader(ds, batch_size=3, shuffle=False)])
    np.testing.assert_array_equal(ys, ds.labels)
    xs = np.concatenate([x for x, _ in DataLoader(ds, batch_size=3, shuffle=False)])
    np.testing.assert_array_equal(xs, ds.images / np.float32(255))


def _order(loader):
    """Sample indices in the order one epoch of ``loader`` yields them."""
    out = []
    for x, _ in loader:
        out.append(x[:, 0, 0, 0])
    return np.concatenate(out)


def test_each_sample_once_per_epoch_and_fresh_permutations():
    n = 103
    images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
    ds = Dataset(images, np.zeros(n, np.int64), ("a",), "idx")
    loader = DataLoader(ds, batch_size=10, seed=1)
    epochs = [_order(loader) for _ in range(3)]
    for e in epochs:
        np.testing.assert_array_equal(np.sort(e), np.arange(n))
    assert not np.array_equal(epochs[0], np.arange(n))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])


def test_same_seed_same_batches():
    ds = _ds(50)
    la, lb = DataLoader(ds, 7, seed=9), DataLoader(ds, 7, seed=9)
    a = [(x, y) for _ in range(2) for x, y in la]
    b = [(x, y) for _ in range(2) for x, y in lb]
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    c = [y for x, y in DataLoader(ds, 7, seed=10)]
    assert not all(np.array_equal(p[1], q) for p, q in zip(a, c, strict=False))


def test_generator_seed_shared():
    ds = _ds(20)
    rng = np.random.default_rng(3)
    loader = DataLoader(ds, 5, seed=rng)
    assert loader.rng is rng
    expected = np.random.default_rng(3).permutation(20)
    got = np.concatenate([y for _, y in loader])
    np.testing.assert_array_equal(got, ds.labels[expected])


def test_permutation_drawn_at_iter_not_first_next():
    ds = _ds(20)
    loader = DataLoader(ds, 5, seed=0)
    before = loader.state_dict()
    it = iter(loader)
    assert loader.state_dict() != before
    del it


def test_state_dict_resume_json_round_trip():
    n = 37
    images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
    ds = Dataset(images, np.zeros(n, np.int64), ("a",), "idx")
    full = DataLoader(ds, batch_size=8, seed=123)
    reference = [_order(full) for _ in range(5)]

    first = DataLoader(ds, batch_size=8, seed=123)
    for _ in range(2):
        _order(first)
    saved = json.loads(json.dumps(first.state_dict()))
    assert saved["bit_generator"] == "PCG64"

    resumed = DataLoader(ds, batch_size=8, seed=999)
    resumed.load_state_dict(saved)
    for k in range(2, 5):
        np.testing.assert_array_equal(_order(resumed), reference[k])


def test_load_state_dict_errors():
    loader = DataLoader(_ds(4), 2)
    with pytest.raises(CheckpointError, match="bit_generator"):
        loader.load_state_dict({"x": 1})
    with pytest.raises(CheckpointError, match="'MT19937'"):
        loader.load_state_dict({"bit_generator": "MT19937", "state": {}})
    with pytest.raises(CheckpointError, match="invalid DataLoader state"):
        loader.load_state_dict({"bit_generator": "PCG64", "state": {"state": 1}})


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, None])
def test_bad_batch_size(bad):
    with pytest.raises(ConfigError) as err:
        DataLoader(_ds(4), batch_size=bad)
    assert repr(bad) in str(err.value) and "batch_size" in str(err.value)


def test_bad_args():
    with pytest.raises(ConfigError, match="float type"):
        DataLoader(_ds(4), dtype=np.int32)
    with pytest.raises(ConfigError, match="seed"):
        DataLoader(_ds(4), seed=-1)
    with pytest.raises(ConfigError, match="Dataset"):
        DataLoader((np.zeros((2, 1, 1, 1)), np.zeros(2)))  # type: ignore[arg-type]


# ---------------------------------------------------------------- augmentation


def _digits(n=12, h=5, w=6):
    rng = np.random.default_rng(3)
    images = rng.integers(1, 256, size=(n, 2, h, w)).astype(np.uint8)  # no zero pixel
    return Dataset(images, np.arange(n) % 3, ("a", "b", "c"), "digits")


def _reference_crop_flip(img, dy, dx, flip, pad):
    """One image at a time, the obvious way."""
    c, h, w = img.shape
    padded = np.zeros((c, h + 2 * pad, w + 2 * pad), img.dtype)
    padded[:, pad : pad + h, pad : pad + w] = img
    out = padded[:, dy : dy + h, dx : dx + w]
    return out[:, :, ::-1] if flip else out


def test_augment_equals_per_image_crop_and_flip():
    ds = _digits()
    loader = DataLoader(ds, batch_size=5, shuffle=True, seed=4, augment=True, pad=2)
    probe = np.random.default_rng(4)  # the loader's draws, in its order
    order = probe.permutation(len(ds))
    shifts = probe.integers(0, 5, size=(len(ds), 2))
    flips = probe.random(len(ds)) < 0.5
    got = np.concatenate([x for x, _ in loader])
    base = ds.images[order].astype(np.float32) / 255
    want = [_reference_crop_flip(base[k], *shifts[k], flips[k], 2) for k in range(len(ds))]
    np.testing.assert_array_equal(got, np.stack(want))
    assert 0 < flips.sum() < len(ds) and np.ptp(shifts) > 0  # the probe draws do vary
    assert (got == 0).any()  # padding showed up somewhere


def test_augment_is_seeded_resumable_and_off_by_default():
    ds = _digits()
    plain = DataLoader(ds, batch_size=4, seed=1)
    aug = DataLoader(ds, batch_size=4, seed=1, augment=True)
    x_plain, _ = next(iter(plain))
    x_aug, _ = next(iter(aug))
    assert not np.array_equal(x_plain, x_aug)
    assert not plain.augment and aug.pad == 2
    # Restoring the state replays the same crops and flips.
    a = DataLoader(ds, batch_size=4, seed=7, augment=True)
    list(a)
    state = json.loads(json.dumps(a.state_dict()))
    epoch2 = [x for x, _ in a]
    b = DataLoader(ds, batch_size=4, seed=99, augment=True)
    b.load_state_dict(state)
    for x, y in zip(epoch2, (x for x, _ in b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_augment_pad_zero_only_flips():
    ds = _digits()
    (x, _), *_ = DataLoader(ds, batch_size=12, shuffle=False, augment=True, pad=0)
    base = ds.images.astype(np.float32) / 255
    flipped = np.all(x == base[..., ::-1], axis=(1, 2, 3))
    assert np.all(flipped | np.all(x == base, axis=(1, 2, 3)))
    assert 0 < flipped.sum() < 12


@pytest.mark.parametrize("pad", [-1, 1.5, True, 5])
def test_augment_bad_pad(pad):
    with pytest.raises(ConfigError, match="pad"):
        DataLoader(_digits(), augment=True, pad=pad)


# ---------------------------------------------------------------- colour and memory maps


def _memmapped(tmp_path, images: np.ndarray) -> np.memmap:
    """``images`` written to a file and mapped back read-only, as the image-folder cache
    does."""
    path = tmp_path / "images.u8"
    images.tofile(path)
    return np.memmap(path, dtype=np.uint8, mode="r", shape=images.shape)


def test_memmapped_colour_images_batch_like_in_memory_ones(tmp_path):
    rng = np.random.default_rng(5)
    images = rng.integers(1, 256, size=(23, 3, 9, 7), dtype=np.uint8)  # RGB, odd sizes
    labels = np.arange(23) % 4
    mapped = _memmapped(tmp_path, images)
    on_disk = Dataset(mapped, labels, tuple("abcd"), "rgb")
    in_memory = Dataset(images.copy(), labels, tuple("abcd"), "rgb")
    assert isinstance(on_disk.images, np.memmap) and not on_disk.images.flags.writeable
    assert on_disk.input_shape == (3, 9, 7)
    for augment in (False, True):
        a = DataLoader(on_disk, batch_size=5, seed=11, augment=augment, pad=3)
        b = DataLoader(in_memory, batch_size=5, seed=11, augment=augment, pad=3)
        for _epoch in range(2):  # two epochs: two permutations
            got = list(a)
            want = list(b)
            assert len(got) == len(want) == 5
            for (xa, ya), (xb, yb) in zip(got, want, strict=True):
                assert xa.dtype == np.float32 and xa.shape[1:] == (3, 9, 7)
                np.testing.assert_array_equal(xa, xb)
                np.testing.assert_array_equal(ya, yb)
    image, label = on_disk[4]
    np.testing.assert_array_equal(image, images[4])
    assert label == 0
    sub = on_disk[:10]  # a slice of a memory map is still a view of the file
    assert isinstance(sub.images, np.memmap) and len(sub) == 10


def test_augment_moves_all_three_channels_together():
    """Crop and flip apply the same shift and flip to every channel of an image."""
    h, w = 6, 8
    plane = np.arange(1, h * w + 1, dtype=np.uint8).reshape(h, w)
    images = np.stack([np.stack([plane, plane + 100, plane + 200]) for _ in range(16)])
    ds = Dataset(images, np.zeros(16, np.int64), ("x",), "rgb")
    (x, _), *_ = DataLoader(ds, batch_size=16, shuffle=False, augment=True, pad=2, seed=2)
    x = np.rint(x * 255).astype(np.int64)
    probe = np.random.default_rng(2)  # no shuffle: no permutation drawn before the shifts
    shifts = probe.integers(0, 5, size=(16, 2))
    flips = probe.random(16) < 0.5
    for k in range(16):
        want = _reference_crop_flip(images[k], *shifts[k], flips[k], 2).astype(np.int64)
        np.testing.assert_array_equal(x[k], want)
        inside = want[0] > 0  # pixels not from the padding: channel offsets kept
        np.testing.assert_array_equal(x[k, 1][inside], x[k, 0][inside] + 100)
        np.testing.assert_array_equal(x[k, 2][inside], x[k, 0][inside] + 200)
    assert 0 < flips.sum() < 16
