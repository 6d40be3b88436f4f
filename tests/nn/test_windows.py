"""im2col, col2im and the windows of convolution and pooling: every view equals its
definition, col2im is the adjoint of im2col, and fold_windows of windows."""

import numpy as np
import pytest

from scratchcnn.errors import ConfigError, ShapeError
from scratchcnn.nn.windows import (
    as_pair,
    ceil_padding,
    col2im,
    fold_windows,
    im2col,
    pad2d,
    window_output_shape,
    windows,
)

CASES = [
    # N, C, (H, W), kernel, stride, padding, dilation
    (2, 3, (7, 6), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    (1, 2, (8, 9), (2, 4), (3, 1), ((0, 0), (2, 2)), (1, 1)),
    (3, 1, (9, 9), (3, 2), (2, 2), ((2, 0), (1, 3)), (2, 1)),
    (2, 2, (5, 5), (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    (1, 3, (10, 7), (3, 3), (2, 1), ((1, 1), (0, 0)), (2, 3)),
]


@pytest.mark.parametrize("n, c, hw, k, s, p, d", CASES)
def test_windows_are_their_definition(n, c, hw, k, s, p, d, rng):
    x = rng.standard_normal((n, c, *hw))
    oh, ow = window_output_shape(hw, k, s, p, "test", d)
    xp = np.pad(x, ((0, 0), (0, 0), *p))
    win = windows(xp, k, s, (oh, ow), d)
    assert win.shape == (n, c, *k, oh, ow) and np.shares_memory(win, xp)
    for u in range(k[0]):
        for v in range(k[1]):
            for i in range(oh):
                for j in range(ow):
                    np.testing.assert_array_equal(
                        win[:, :, u, v, i, j], xp[:, :, i * s[0] + u * d[0], j * s[1] + v * d[1]]
                    )
    with pytest.raises(ValueError):
        win[0, 0, 0, 0, 0, 0] = 1.0  # a read-only view


@pytest.mark.parametrize("n, c, hw, k, s, p, d", CASES)
def test_im2col_columns_and_col2im_adjoint(n, c, hw, k, s, p, d, rng):
    x = rng.standard_normal((n, c, *hw))
    oh, ow = window_output_shape(hw, k, s, p, "test", d)
    cols = im2col(x, k, s, p, d)
    assert cols.shape == (c * k[0] * k[1], n * oh * ow)
    xp = np.pad(x, ((0, 0), (0, 0), *p))
    # column (b, i, j), row (ch, u, v): the tap (u, v) of the window under pixel (i, j)
    b, i, j, ch, u, v = n - 1, oh - 1, ow // 2, c - 1, k[0] - 1, 0
    row, col = (ch * k[0] + u) * k[1] + v, (b * oh + i) * ow + j
    assert cols[row, col] == xp[b, ch, i * s[0] + u * d[0], j * s[1] + v * d[1]]
    g = rng.standard_normal(cols.shape)
    back = col2im(g, x.shape, k, s, p, d)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.sum(cols * g), np.sum(x * back), rtol=1e-12)  # <Ax,g> = <x,A'g>


@pytest.mark.parametrize("n, c, hw, k, s, p, d", CASES)
def test_fold_windows_is_the_adjoint_of_windows(n, c, hw, k, s, p, d, rng):
    xp = rng.standard_normal((n, c, hw[0] + sum(p[0]), hw[1] + sum(p[1])))
    oh, ow = window_output_shape(hw, k, s, p, "test", d)
    win = windows(xp, k, s, (oh, ow), d)
    g = rng.standard_normal(win.shape)
    back = fold_windows(g, xp.shape[2:], s, d)
    np.testing.assert_allclose(np.sum(win * g), np.sum(xp * back), rtol=1e-12)


def test_conv_as_one_matrix_product_is_the_formula(rng):
    """y[n,o,i,j] = sum_{c,u,v} W[o,c,u,v] * xpad[n,c,i+u,j+v]: W @ im2col(x), checked
    against the formula written as loops (the tutorial's naive convolution)."""
    x, w = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((4, 3, 3, 2))
    pad = ((1, 1), (0, 1))
    y = (w.reshape(4, -1) @ im2col(x, (3, 2), (1, 1), pad)).reshape(4, 2, 5, 4)
    xp = np.pad(x, ((0, 0), (0, 0), *pad))
    for n in range(2):
        for o in range(4):
            for i in range(5):
                for j in range(4):
                    expected = np.sum(w[o] * xp[n, :, i : i + 3, j : j + 2])
                    assert y[o, n, i, j] == pytest.approx(expected, rel=1e-12)


def test_ceil_padding_covers_the_hanging_window():
    # 7 wide, kernel 2, stride 2, ceil mode: 4 windows, the last one hangs over by one
    assert ceil_padding((7, 6), (4, 3), (2, 2), (2, 2), ((0, 0), (0, 0))) == ((0, 1), (0, 0))


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
