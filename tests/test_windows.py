"""The shared window helper: every view equals its definition, and fold is the adjoint of
sliding_windows (so the backward passes built on it are exact)."""

import numpy as np
import pytest

from scratchcnn.errors import ConfigError, ShapeError
from scratchcnn.windows import (
    as_pair,
    fold,
    pad2d,
    row_blocks,
    sliding_windows,
    window_output_shape,
    window_views,
)


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


@pytest.mark.parametrize("axes", [(2, 3), (0, 2)])
def test_pad2d_pads_only_the_spatial_axes(axes, rng):
    x = rng.standard_normal((2, 3, 4, 5))
    pad = ((1, 2), (0, 3))
    got = pad2d(x, pad, value=-7.0, axes=axes)
    widths = [(0, 0)] * 4
    widths[axes[0]], widths[axes[1]] = pad
    np.testing.assert_array_equal(got, np.pad(x, widths, constant_values=-7.0))
    assert pad2d(x, ((0, 0), (0, 0))) is x
    copied = pad2d(x.transpose(2, 1, 3, 0), ((0, 0), (0, 0)), axes=(0, 2), copy=True)
    assert copied.flags.c_contiguous


def test_window_views_enumerate_every_offset(rng):
    x = rng.standard_normal((1, 2, 7, 6))
    views = dict(window_views(x, (3, 2), (2, 2), (3, 3)))
    assert sorted(views) == list(range(6))
    for k, view in views.items():
        u, v = divmod(k, 2)
        np.testing.assert_array_equal(view, x[:, :, u : u + 6 : 2, v : v + 6 : 2])


def test_kernel_larger_than_padded_input_is_refused():
    with pytest.raises(ShapeError, match=r"kernel 5x5 is larger than the padded input 4x6"):
        window_output_shape((2, 4), (5, 5), (1, 1), ((1, 1), (1, 1)), "Conv2D")


@pytest.mark.parametrize("bad", [0, -1, (1, 0), (2,), "2", 1.5, True])
def test_as_pair_rejects_bad_values(bad):
    with pytest.raises(ConfigError, match="stride"):
        as_pair(bad, "stride", 1)


def test_as_pair_accepts_ints_and_pairs():
    assert as_pair(3, "k", 1) == (3, 3)
    assert as_pair((2, 5), "k", 1) == (2, 5)
    assert as_pair(np.int64(0), "p", 0) == (0, 0)
