"""The cross-vs-rectangle generator: exact pixel pattern, values, balance, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from scratchcnn.data import load_dataset, make_shapes
from scratchcnn.errors import ConfigError

# Written out cell by cell from the spec, independently of the module's masks.
CROSS_CELLS = {(2, c) for c in range(5)} | {(r, 2) for r in range(5)}
RECT_CELLS = {(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 4), (3, 4), (3, 1), (3, 2), (3, 3)}


def _cells(img: np.ndarray) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in zip(*np.nonzero(img), strict=True)}


def test_types_and_shapes():
    x, y = make_shapes(50, seed=3)
    assert x.shape == (50, 1, 5, 5) and x.dtype == np.float32
    assert y.shape == (50,) and y.dtype == np.int64
    assert set(np.unique(y)) <= {0, 1}


def test_pixel_pattern_exact():
    x, y = make_shapes(400, seed=0)
    assert len(CROSS_CELLS) == 9 and len(RECT_CELLS) == 10
    assert {0, 1} == set(np.unique(y).tolist())
    for img, label in zip(x[:, 0], y, strict=True):
        expected = CROSS_CELLS if label == 0 else RECT_CELLS
        assert _cells(img) == expected
        on = np.zeros((5, 5), bool)
        on[tuple(np.array(sorted(expected)).T)] = True
        assert np.all(img[~on] == 0.0)
        assert np.all((img[on] > 0.0) & (img[on] < 1.0))


def test_values_random_uniform():
    x, _ = make_shapes(4000, seed=1)
    vals = x[x > 0]
    assert vals.min() > 0.0 and vals.max() < 1.0
    assert abs(vals.mean() - 0.5) < 0.01
    assert len(np.unique(vals)) > 0.99 * vals.size  # each pixel drawn independently


def test_class_balance():
    _, y = make_shapes(20000, seed=7)
    assert abs(y.mean() - 0.5) < 0.015  # about 4.2 standard deviations


def test_determinism():
    a = make_shapes(100, seed=42)
    b = make_shapes(100, seed=42)
    c = make_shapes(100, seed=43)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_n(bad):
    with pytest.raises(ConfigError, match=repr(bad).replace(".", r"\.")):
        make_shapes(bad, 0)


def test_bad_seed():
    with pytest.raises(ConfigError, match="seed"):
        make_shapes(3, -1)


def test_load_dataset_shapes():
    train = load_dataset("shapes", "train", seed=5)
    test = load_dataset("shapes", "test", seed=5)
    assert len(train) == 2000 and len(test) == 500
    assert train.classes == ("cross", "rectangle") and train.name == "shapes"
    assert train.images.dtype == np.float32 and train.input_shape == (1, 5, 5)
    x, y = make_shapes(2000, 5)
    np.testing.assert_array_equal(train.images, x)
    np.testing.assert_array_equal(train.labels, y)
    x, y = make_shapes(500, 5 + 1_000_000)
    np.testing.assert_array_equal(test.images, x)
    assert not np.array_equal(test.images, train.images[:500])
