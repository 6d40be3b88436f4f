"""MaxPool2D and AvgPool2D: gradients, overlapping windows, ties, padding, errors."""

import numpy as np
import pytest

import scratchcnn as sc
from tests.conftest import distinct, noncontiguous

# (kernel, stride, padding, (H, W), C, N)
GRID = [
    (2, None, 0, (4, 4), 1, 1),
    (2, None, 0, (5, 7), 2, 2),  # odd sizes: last row/column unused
    (3, 1, 0, (5, 5), 1, 1),  # overlapping (the toy net's pooling is 2 with stride 1)
    (2, 1, 0, (3, 3), 3, 2),
    (3, 2, 1, (7, 6), 2, 1),  # overlapping with padding
    ((2, 3), (1, 2), 0, (5, 7), 4, 1),
    (3, 3, 0, (9, 8), 2, 2),
    (2, 3, 0, (8, 8), 1, 2),  # stride larger than kernel
    (1, 1, 0, (3, 4), 2, 1),
    (4, 2, 2, (6, 6), 1, 1),
]


@pytest.mark.parametrize("cls", [sc.MaxPool2D, sc.AvgPool2D])
@pytest.mark.parametrize("k,s,p,hw,c,n", GRID)
def test_pool_gradcheck(cls, k, s, p, hw, c, n, rng):
    pool = cls(k, stride=s, padding=p)
    x = distinct((n, c, *hw), rng)
    result = sc.gradcheck(pool, x)
    assert result.ok, f"\n{result}"


@pytest.mark.parametrize("cls", [sc.MaxPool2D, sc.AvgPool2D])
def test_pool_noncontiguous(cls, rng):
    pool = cls(2, stride=1)
    x = noncontiguous(distinct((2, 2, 4, 5), rng))
    dy = noncontiguous(rng.standard_normal((2, 2, 3, 4)))
    y = pool.forward(x)
    dx = pool.backward(dy)
    y_ref = pool.forward(np.ascontiguousarray(x))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, pool.backward(np.ascontiguousarray(dy)))
    assert sc.gradcheck(pool, x, dy).ok


def test_maxpool_default_stride_is_kernel():
    assert sc.MaxPool2D(3).stride == (3, 3)
    assert sc.AvgPool2D((2, 3)).stride == (2, 3)


def test_maxpool_values():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(sc.MaxPool2D(2).forward(x)[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(sc.AvgPool2D(2).forward(x)[0, 0], [[2.5, 4.5], [10.5, 12.5]])


def test_maxpool_ties_send_gradient_to_exactly_one_position():
    # Every window is constant: all four cells tie. The first (row-major) gets the gradient.
    x = np.ones((1, 2, 4, 4), np.float64)
    pool = sc.MaxPool2D(2)
    pool.forward(x)
    dx = pool.backward(np.full((1, 2, 2, 2), 3.0))
    assert dx.sum() == pytest.approx(3.0 * 8)
    assert np.count_nonzero(dx) == 8  # one cell per window
    np.testing.assert_array_equal(dx[0, 0, ::2, ::2], 3.0)


def test_overlapping_maxpool_accumulates():
    # The centre cell is the max of all four overlapping 2x2 windows of a 3x3 input.
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 5.0
    pool = sc.MaxPool2D(2, stride=1)
    pool.forward(x)
    dx = pool.backward(np.ones((1, 1, 2, 2)))
    assert dx[0, 0, 1, 1] == 4.0
    assert np.count_nonzero(dx) == 1


def test_maxpool_padding_never_wins():
    x = -np.ones((1, 1, 2, 2), np.float32) * 7
    y = sc.MaxPool2D(2, stride=1, padding=1).forward(x)
    assert np.all(y == -7)


def test_pool_output_shape_matches_forward(rng):
    pool = sc.MaxPool2D(3, stride=2, padding=1)
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    assert pool.output_shape(x.shape) == pool.forward(x).shape == (2, 3, 5, 5)


def test_pool_keeps_dtype(rng):
    for dt in (np.float32, np.float64):
        x = rng.standard_normal((1, 1, 4, 4)).astype(dt)
        for pool in (sc.MaxPool2D(2), sc.AvgPool2D(2)):
            assert pool.forward(x).dtype == dt
            assert pool.backward(np.ones((1, 1, 2, 2), dt)).dtype == dt


# --- errors -------------------------------------------------------------------------------
def test_pool_padding_more_than_half_kernel():
    with pytest.raises(sc.ConfigError, match="at most half the kernel"):
        sc.MaxPool2D(2, padding=2)


def test_pool_kernel_larger_than_input():
    with pytest.raises(sc.ShapeError, match="kernel 3x3 is larger than the padded input 2x2"):
        sc.MaxPool2D(3).forward(np.zeros((1, 1, 2, 2), np.float32))


def test_pool_bad_stride_and_ndim():
    with pytest.raises(sc.ConfigError, match="stride must be positive"):
        sc.AvgPool2D(2, stride=0)
    with pytest.raises(sc.ShapeError, match="4-D"):
        sc.MaxPool2D(2).forward(np.zeros((4, 4), np.float32))


def test_pool_backward_before_forward_and_wrong_dtype():
    with pytest.raises(sc.StateError):
        sc.MaxPool2D(2).backward(np.zeros((1, 1, 1, 1), np.float32))
    pool = sc.AvgPool2D(2)
    pool.forward(np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(sc.DTypeError, match="float64"):
        pool.backward(np.zeros((1, 1, 1, 1), np.float64))


def test_maxpool_backward_after_an_eval_forward(rng):
    """Eval-mode forward skips the argmax bookkeeping; backward must still be exact."""
    x = distinct((2, 3, 6, 6), rng)
    dy = rng.standard_normal((2, 3, 3, 3))
    train_pool = sc.MaxPool2D(2)
    train_pool.forward(x)
    expected = train_pool.backward(dy)
    pool = sc.MaxPool2D(2).eval()
    pool.forward(x)
    np.testing.assert_array_equal(pool.backward(dy), expected)
    assert not pool.training


def test_layers_accept_any_memory_layout(rng):
    """A conv output is NCHW over (H, C, W, N) memory; every layer must give the same numbers
    for the same logical array whatever its strides."""
    model = sc.Sequential(
        [
            sc.Conv2D(2, 3, 3, padding=1, dtype=np.float64, rng=0),
            sc.ReLU(),
            sc.MaxPool2D(2),
            sc.AvgPool2D(1),
            sc.Flatten(),
            sc.Dense(12, 2, dtype=np.float64, rng=1),
        ]
    )
    x = rng.standard_normal((3, 2, 4, 4))
    for layout in [(0, 1, 2, 3), (2, 1, 3, 0), (3, 2, 1, 0)]:
        xl = np.ascontiguousarray(x.transpose(layout)).transpose(np.argsort(layout))
        np.testing.assert_array_equal(xl, x)
        y = model.forward(xl)
        dx = model.backward(np.ones_like(y))
        if layout == (0, 1, 2, 3):
            y_ref, dx_ref = y, dx
        np.testing.assert_allclose(y, y_ref, rtol=1e-13)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-13)
