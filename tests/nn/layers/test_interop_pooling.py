"""Pooling's interop arguments (ceil_mode, count_include_pad, asymmetric padding, MaxPool2D
dilation), GlobalAvgPool2D and Flatten(start_dim): finite differences in float64, shapes,
config, NaN / -inf gradient routing and errors. PyTorch parity is in
tests/test_parity_torch_interop.py."""

import json

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.nn.layers import layer_from_config
from tests.conftest import distinct, noncontiguous

# (kernel, stride, padding, ceil_mode, (H, W))
GRID = [
    (2, 2, 0, True, (5, 7)),  # ceil adds a partial last row and column
    (3, 2, 1, True, (6, 6)),  # ceil with padding: the last window hangs past the padded edge
    (3, 2, 1, True, (7, 8)),
    (2, 2, 1, True, (4, 4)),  # ceil would start a window in the right padding: dropped
    ((3, 2), (2, 3), (1, 1), True, (8, 7)),
    (3, 2, ((0, 1), (1, 0)), False, (7, 6)),  # asymmetric padding
    (3, 2, ((1, 0), (0, 1)), True, (6, 7)),  # asymmetric padding with ceil
    (4, 3, ((2, 1), (1, 2)), True, (9, 8)),
]


@pytest.mark.parametrize("k,s,p,ceil,hw", GRID)
def test_maxpool_interop_gradcheck(k, s, p, ceil, hw, rng):
    pool = sc.MaxPool2D(k, stride=s, padding=p, ceil_mode=ceil)
    x = distinct((2, 2, *hw), rng)
    result = sc.gradcheck(pool, x)
    assert result.ok, f"\n{result}"
    assert pool.output_shape(x.shape) == pool.forward(x).shape


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("k,s,p,ceil,hw", GRID)
def test_avgpool_interop_gradcheck(k, s, p, ceil, hw, count_include_pad, rng):
    pool = sc.AvgPool2D(k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=count_include_pad)
    x = rng.standard_normal((2, 2, *hw))
    result = sc.gradcheck(pool, x)
    assert result.ok, f"\n{result}"
    assert pool.output_shape(x.shape) == pool.forward(x).shape


@pytest.mark.parametrize(
    "k,s,p,d,ceil,hw",
    [
        (2, 1, 0, 2, False, (6, 6)),
        (3, 2, 1, 2, False, (9, 8)),  # stride > 1 with dilation and padding
        (2, 2, 1, (2, 3), True, (7, 9)),
        ((2, 3), 1, 0, (3, 1), False, (6, 5)),
    ],
)
def test_dilated_maxpool_gradcheck(k, s, p, d, ceil, hw, rng):
    pool = sc.MaxPool2D(k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    x = distinct((2, 2, *hw), rng)
    result = sc.gradcheck(pool, x)
    assert result.ok, f"\n{result}"
    assert pool.output_shape(x.shape) == pool.forward(x).shape


def test_count_include_pad_values():
    x = np.ones((1, 1, 2, 2))
    with_pad = sc.AvgPool2D(2, stride=1, padding=1).forward(x)[0, 0]
    without = sc.AvgPool2D(2, stride=1, padding=1, count_include_pad=False).forward(x)[0, 0]
    np.testing.assert_allclose(with_pad, [[0.25, 0.5, 0.25], [0.5, 1, 0.5], [0.25, 0.5, 0.25]])
    np.testing.assert_allclose(without, np.ones((3, 3)))


def test_ceil_mode_divides_a_hanging_window_by_its_clipped_size():
    # 3 columns, kernel 2, stride 2, ceil: the second window holds one column and its
    # divisor is 1 (not 2), as in PyTorch.
    x = np.array([[[[2.0, 4.0, 6.0]]]])
    y = sc.AvgPool2D((1, 2), ceil_mode=True).forward(x)
    np.testing.assert_allclose(y[0, 0, 0], [3.0, 6.0])


def test_pool_noncontiguous_with_new_arguments(rng):
    pool = sc.AvgPool2D(3, stride=2, padding=((1, 0), (0, 1)), ceil_mode=True)
    x = noncontiguous(rng.standard_normal((2, 2, 6, 7)))
    y = pool.forward(x)
    dy = noncontiguous(rng.standard_normal(y.shape))
    dx = pool.backward(dy)
    np.testing.assert_array_equal(y, pool.forward(np.ascontiguousarray(x)))
    np.testing.assert_array_equal(dx, pool.backward(np.ascontiguousarray(dy)))


# --- MaxPool2D gradient routing for NaN and -inf (PyTorch's rule) ---------------------------
def test_maxpool_nan_gradient_goes_to_the_last_nan():
    x = np.array([[[[1.0, np.nan], [np.nan, 5.0]]]])
    pool = sc.MaxPool2D(2)
    assert np.isnan(pool.forward(x)).all()
    dx = pool.backward(np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(dx[0, 0], [[0, 0], [1, 0]])


def test_maxpool_all_minus_inf_goes_to_the_first_cell_inside_the_input():
    # With padding 1, every window's first tap is padding; the gradient must land on the
    # first real cell of each window, never be dropped in the padding.
    x = np.full((1, 1, 3, 3), -np.inf)
    pool = sc.MaxPool2D(2, stride=2, padding=1)
    assert np.all(pool.forward(x) == -np.inf)
    dx = pool.backward(np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_maxpool_special_values_after_an_eval_forward():
    x = np.array([[[[-np.inf, np.nan, 1.0], [np.nan, 2.0, -np.inf], [0.0, -np.inf, -np.inf]]]])
    dy = np.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    train_pool = sc.MaxPool2D(2, stride=1)
    train_pool.forward(x)
    expected = train_pool.backward(dy)
    pool = sc.MaxPool2D(2, stride=1).eval()
    pool.forward(x)
    np.testing.assert_array_equal(pool.backward(dy), expected)
    # The NaN at (1, 0) is the last NaN of windows (0, 0) and (1, 0): 1 + 3.
    assert expected[0, 0, 1, 0] == 4.0


# --- GlobalAvgPool2D -------------------------------------------------------------------------
def test_global_avg_pool(rng):
    gap = sc.GlobalAvgPool2D()
    x = rng.standard_normal((3, 4, 5, 2))
    y = gap.forward(x)
    assert y.shape == gap.output_shape(x.shape) == (3, 4, 1, 1)
    np.testing.assert_allclose(y[..., 0, 0], x.mean(axis=(2, 3)))
    assert sc.gradcheck(gap, x).ok
    assert sc.gradcheck(gap, noncontiguous(x)).ok
    assert gap.config() == {} and sc.GlobalAvgPool2D.state_shapes({}) == {}
    assert sc.GlobalAvgPool2D().forward(x.astype(np.float32)).dtype == np.float32


def test_global_avg_pool_errors():
    with pytest.raises(sc.ShapeError, match="4-D"):
        sc.GlobalAvgPool2D().forward(np.zeros((2, 3), np.float32))
    with pytest.raises(sc.ShapeError, match="no pixels"):
        sc.GlobalAvgPool2D().forward(np.zeros((2, 3, 0, 4), np.float32))
    with pytest.raises(sc.ShapeError, match="batch is empty"):
        sc.GlobalAvgPool2D().forward(np.zeros((0, 3, 2, 2), np.float32))


# --- Flatten(start_dim) ----------------------------------------------------------------------
@pytest.mark.parametrize("start_dim,out", [(1, (2, 60)), (2, (2, 3, 20)), (3, (2, 3, 4, 5))])
def test_flatten_start_dim(start_dim, out, rng):
    flat = sc.Flatten(start_dim)
    x = rng.standard_normal((2, 3, 4, 5))
    y = flat.forward(x)
    assert y.shape == flat.output_shape(x.shape) == out
    np.testing.assert_array_equal(y.ravel(), x.ravel())
    assert sc.gradcheck(flat, noncontiguous(x)).ok
    cfg = json.loads(json.dumps(flat.config()))
    assert layer_from_config({"type": "Flatten", "config": cfg}).start_dim == start_dim


def test_flatten_old_config_and_errors():
    assert sc.Flatten().config() == {}  # as before start_dim existed
    with pytest.raises(sc.ConfigError, match="start_dim must be a positive int"):
        sc.Flatten(0)
    with pytest.raises(sc.ShapeError, match=r"at least 3-D"):
        sc.Flatten(2).forward(np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("shape", [(0, 3), (0, 2, 4, 4)])
def test_flatten_empty_batch_gives_our_message(shape):
    with pytest.raises(sc.ShapeError, match=r"Flatten: the batch is empty \(input shape \(0,"):
        sc.Flatten().forward(np.zeros(shape, np.float32))


# --- config and errors -------------------------------------------------------------------------
def test_pool_config_round_trip_and_old_configs(rng):
    pools = [
        sc.MaxPool2D(3, stride=2, padding=((1, 0), (0, 1)), ceil_mode=True, dilation=(1, 2)),
        sc.AvgPool2D(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    ]
    x = rng.standard_normal((1, 2, 9, 9)).astype(np.float32)
    for pool in pools:
        cfg = json.loads(json.dumps(pool.config()))
        twin = layer_from_config({"type": type(pool).__name__, "config": cfg})
        assert repr(twin) == repr(pool)
        np.testing.assert_array_equal(twin.forward(x), pool.forward(x))
    assert pools[0].config()["padding"] == [[1, 0], [0, 1]]
    assert pools[0].padding == ((1, 0), (0, 1)) and pools[1].padding == (1, 1)
    # Configs from before these arguments: the same keys as then, and they load.
    old = {"kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0]}
    assert sc.MaxPool2D(2).config() == old and sc.AvgPool2D(2).config() == old
    avg = layer_from_config({"type": "AvgPool2D", "config": old})
    assert avg.count_include_pad and not avg.ceil_mode


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, padding=((2, 0), (0, 0))),
        dict(kernel_size=2, padding=((0, 0), (0, 2))),
        dict(kernel_size=1, padding=1),
    ],
)
def test_pool_padding_at_most_half_the_kernel_on_each_side(kwargs):
    with pytest.raises(sc.ConfigError, match="at most half the kernel"):
        sc.MaxPool2D(**kwargs)


def test_dilation_widens_the_allowed_padding():
    assert sc.MaxPool2D(2, padding=1, dilation=3).pad == ((1, 1), (1, 1))
    with pytest.raises(sc.ConfigError, match="span"):
        sc.MaxPool2D(2, padding=3, dilation=3)
