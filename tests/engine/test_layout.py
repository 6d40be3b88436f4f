"""The engine's strided views: every view equals its definition, and fold is the adjoint of
sliding_windows (so the backward passes built on it are exact)."""

import numpy as np
import pytest

from scratchcnn.engine.layout import fold, row_blocks, sliding_windows, window_views


@pytest.mark.parametrize(
    "size,kernel,stride", [(7, 3, 1), (8, 2, 2), (9, 2, 3), (5, 5, 1), (6, 1, 1), (10, 4, 3)]
)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_sliding_windows_definition_and_fold_adjoint(size, kernel, stride, axis, rng):
    shape = [3, 4, 2]
    shape[axis] = size
    x = rng.standard_normal(shape)
    view = sliding_windows(x, kernel, stride, axis)
    out = (size - kernel) // stride + 1
    assert view.shape[axis : axis + 2] == (kernel, out)
    assert np.shares_memory(view, x)
    moved = np.moveaxis(view, (axis, axis + 1), (0, 1))
    xm = np.moveaxis(x, axis, 0)
    for v in range(kernel):
        for j in range(out):
            np.testing.assert_array_equal(moved[v, j], xm[j * stride + v])
    g = rng.standard_normal(view.shape)
    back = fold(g, size, stride, axis)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.sum(view * g), np.sum(x * back), rtol=1e-12)


def test_sliding_windows_is_read_only_unless_asked(rng):
    w = sliding_windows(rng.standard_normal((4, 4)), 2, 1, axis=0)
    with pytest.raises(ValueError):
        w[0, 0, 0] = 1.0


@pytest.mark.parametrize("rows,kernel,stride", [(7, 3, 1), (8, 2, 2), (9, 3, 3), (5, 5, 1)])
def test_row_blocks_stack_consecutive_rows(rows, kernel, stride, rng):
    r = rng.standard_normal((rows, 3, 4))
    out = (rows - kernel) // stride + 1
    blocks = row_blocks(r, kernel, stride, out)
    assert blocks.shape == (out, kernel * 3, 4)
    assert np.shares_memory(blocks, r)
    for i in range(out):
        np.testing.assert_array_equal(blocks[i], r[i * stride : i * stride + kernel].reshape(-1, 4))


def test_row_blocks_needs_a_contiguous_array(rng):
    with pytest.raises(ValueError, match="contiguous"):
        row_blocks(rng.standard_normal((4, 3, 5))[:, :, ::2], 2, 1, 3)


def test_window_views_enumerate_every_offset(rng):
    x = rng.standard_normal((1, 2, 7, 6))
    views = dict(window_views(x, (3, 2), (2, 2), (3, 3)))
    assert sorted(views) == list(range(6))
    for k, view in views.items():
        u, v = divmod(k, 2)
        np.testing.assert_array_equal(view, x[:, :, u : u + 6 : 2, v : v + 6 : 2])
