"""The Sobel demo: the library's Conv2D with the two Sobel filters, "same" keeps the size,
"valid" shrinks it by k-1 = 2, each filter answers its own edge direction."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from scratchcnn.errors import ConfigError, DataError
from scratchcnn.viz import DPI, SOBEL_FIGSIZE, SOBEL_HORIZONTAL, SOBEL_VERTICAL, sobel_demo
from scratchcnn.viz.sobel import MAX_SIDE, default_image_path, load_grayscale, sobel_edges


def step(h: int, w: int, vertical: bool) -> np.ndarray:
    """0 on one side of an edge through the middle, 1 on the other."""
    img = np.zeros((h, w), dtype=np.float32)
    if vertical:
        img[:, w // 2 :] = 1
    else:
        img[h // 2 :, :] = 1
    return img


def correlate_valid(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(img.astype(np.float64), k.shape)
    return np.einsum("ijuv,uv->ij", windows, k.astype(np.float64))


def test_filters_are_the_tutorials():
    np.testing.assert_array_equal(SOBEL_VERTICAL, [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    np.testing.assert_array_equal(SOBEL_HORIZONTAL, [[1, 2, 1], [0, 0, 0], [-1, -2, -1]])
    np.testing.assert_array_equal(SOBEL_HORIZONTAL, SOBEL_VERTICAL.T[::-1])  # a quarter turn


@pytest.mark.parametrize("shape", [(9, 9), (12, 7), (3, 3)])
def test_same_keeps_size_valid_shrinks_by_two(shape):
    img = np.random.default_rng(0).random(shape, dtype=np.float32)
    for out in sobel_edges(img, "same"):
        assert out.shape == shape
        assert out.dtype == np.float32
    for out in sobel_edges(img, "valid"):
        assert out.shape == (shape[0] - 2, shape[1] - 2)


def test_valid_output_is_the_cross_correlation():
    img = np.random.default_rng(1).random((10, 13), dtype=np.float32)
    vertical, horizontal = sobel_edges(img, "valid")
    np.testing.assert_allclose(vertical, correlate_valid(img, SOBEL_VERTICAL), atol=1e-5)
    np.testing.assert_allclose(horizontal, correlate_valid(img, SOBEL_HORIZONTAL), atol=1e-5)
    # "same" = the valid result of the zero-padded image.
    v_same, h_same = sobel_edges(img, "same")
    padded = np.pad(img, 1)
    np.testing.assert_allclose(v_same, correlate_valid(padded, SOBEL_VERTICAL), atol=1e-5)
    np.testing.assert_allclose(h_same, correlate_valid(padded, SOBEL_HORIZONTAL), atol=1e-5)


def test_vertical_filter_sees_a_vertical_edge_only():
    vertical, horizontal = sobel_edges(step(8, 10, vertical=True), "valid")
    np.testing.assert_array_equal(horizontal, 0)
    # Dark-to-bright from left to right: +4 on the two columns whose window spans the edge.
    assert np.abs(vertical).max() == 4
    cols = np.flatnonzero(np.abs(vertical).max(axis=0) > 0)
    np.testing.assert_array_equal(cols, [3, 4])  # windows starting at x = 3, 4 of 0..7
    assert np.all(vertical[:, cols] == 4)


def test_horizontal_filter_sees_a_horizontal_edge_only():
    vertical, horizontal = sobel_edges(step(10, 8, vertical=False), "valid")
    np.testing.assert_array_equal(vertical, 0)
    rows = np.flatnonzero(np.abs(horizontal).max(axis=1) > 0)
    np.testing.assert_array_equal(rows, [3, 4])
    # Bright below, dark above: the filter's +1 row is on top, so the response is -4.
    assert np.all(horizontal[rows] == -4)


def test_same_padding_interior_matches_valid():
    img = step(8, 10, vertical=True)
    v_same, h_same = sobel_edges(img, "same")
    v_valid, h_valid = sobel_edges(img, "valid")
    np.testing.assert_array_equal(v_same[1:-1, 1:-1], v_valid)
    np.testing.assert_array_equal(h_same[1:-1, 1:-1], h_valid)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="full"):
        sobel_edges(np.zeros((5, 5)), "full")
    with pytest.raises(ConfigError, match="2-D"):
        sobel_edges(np.zeros((1, 5, 5)), "same")


def test_load_grayscale_converts_and_downscales(tmp_path):
    rgb = np.zeros((400, 1000, 3), dtype=np.uint8)
    rgb[:, :, 0] = 255  # pure red -> L = 76 (ITU-R 601-2: 0.299 * 255)
    path = tmp_path / "wide.png"
    Image.fromarray(rgb).save(path)
    gray = load_grayscale(path)
    assert gray.dtype == np.float32
    assert gray.shape == (205, MAX_SIDE)
    assert gray.min() >= 0 and gray.max() <= 1
    assert gray.mean() == pytest.approx(76 / 255, abs=0.01)

    small = tmp_path / "small.jpg"
    Image.fromarray(rgb[:30, :40]).save(small)
    assert load_grayscale(small).shape == (30, 40)


def test_default_image_ships_with_matplotlib():
    assert default_image_path().is_file()


def check_png(path, figsize) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (int(figsize[0] * DPI), int(figsize[1] * DPI))
        img.load()


def test_sobel_demo_default_photo(tmp_path):
    paths = sobel_demo(out_dir=tmp_path / "out")
    assert paths == [tmp_path / "out" / "sobel.png"]
    check_png(paths[0], SOBEL_FIGSIZE)


def test_sobel_demo_own_image(tmp_path):
    img = (step(60, 80, vertical=True) * 255).astype(np.uint8)
    path = tmp_path / "edge.png"
    Image.fromarray(img).save(path)
    (out,) = sobel_demo(path, tmp_path)
    check_png(out, SOBEL_FIGSIZE)


def test_missing_image_is_a_data_error(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        sobel_demo(missing, tmp_path)
    assert not (tmp_path / "sobel.png").exists()


def test_unreadable_image_is_a_data_error(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(DataError, match=re.escape(str(bad))):
        sobel_demo(bad, tmp_path)
    with pytest.raises(DataError, match=re.escape(str(tmp_path))):
        sobel_demo(tmp_path, tmp_path)  # a folder


def test_tiny_image_is_a_data_error(tmp_path):
    path = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((2, 9), dtype=np.uint8)).save(path)
    with pytest.raises(DataError, match="too small"):
        sobel_demo(path, tmp_path)
