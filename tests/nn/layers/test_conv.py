"""Conv2D: finite-difference gradients over a grid of shapes, and clear errors."""

import numpy as np
import pytest

import scratchcnn as sc
from tests.conftest import noncontiguous

# (in_ch, out_ch, kernel, stride, padding, (H, W), batch)
GRID = [
    (1, 1, 1, 1, 0, (4, 5), 1),
    (1, 2, 3, 1, 0, (5, 5), 2),
    (2, 3, 3, 2, 1, (7, 6), 2),
    (3, 2, (2, 3), 1, 0, (5, 7), 1),
    (4, 2, (3, 1), (2, 1), (1, 0), (6, 5), 2),
    (2, 2, 5, 1, 2, (5, 5), 1),
    (1, 3, 4, 3, 2, (9, 7), 2),
    (3, 1, 2, 2, 0, (6, 6), 1),  # exact tiling
    (2, 2, 3, 3, 0, (7, 8), 2),  # stride equals kernel, leftover columns
    (1, 2, 2, (1, 3), (2, 1), (5, 4), 1),
    (2, 2, 3, 1, "same", (5, 6), 1),
    (2, 2, 4, 1, "same", (5, 6), 1),  # even kernel: asymmetric same padding
    (2, 1, 3, 1, "valid", (4, 4), 2),
]


@pytest.mark.parametrize("cin,cout,k,s,p,hw,n", GRID)
def test_conv_gradcheck(cin, cout, k, s, p, hw, n, rng):
    conv = sc.Conv2D(cin, cout, k, stride=s, padding=p, dtype=np.float64, rng=rng)
    x = rng.standard_normal((n, cin, *hw))
    result = sc.gradcheck(conv, x)
    assert result.ok, f"\n{result}"
    assert {c.name for c in result.checks} == {"input", "weight", "bias"}


def test_conv_gradcheck_noncontiguous_input_and_dy(rng):
    conv = sc.Conv2D(2, 3, 3, padding=1, dtype=np.float64, rng=rng)
    x = noncontiguous(rng.standard_normal((2, 2, 5, 4)))
    dy = noncontiguous(rng.standard_normal((2, 3, 5, 4)))
    y_ref = conv.forward(np.ascontiguousarray(x))
    dx_ref = conv.backward(np.ascontiguousarray(dy))
    gw_ref = conv.grads["weight"].copy()
    np.testing.assert_array_equal(conv.forward(x), y_ref)
    np.testing.assert_allclose(conv.backward(dy), dx_ref, rtol=1e-14)
    np.testing.assert_allclose(conv.grads["weight"], gw_ref, rtol=1e-14)
    assert sc.gradcheck(conv, x, dy).ok


def test_conv_without_bias(rng):
    conv = sc.Conv2D(2, 3, 3, bias=False, dtype=np.float64, rng=rng)
    assert "bias" not in conv.params
    assert sc.gradcheck(conv, rng.standard_normal((1, 2, 4, 4))).ok


def test_conv_output_size_formula(rng):
    for h, k, s, p in [(28, 5, 1, 2), (28, 3, 1, 0), (13, 3, 2, 1), (7, 4, 3, 2)]:
        conv = sc.Conv2D(1, 1, k, stride=s, padding=p)
        y = conv.forward(rng.standard_normal((1, 1, h, h)).astype(np.float32))
        assert y.shape[2] == (h + 2 * p - k) // s + 1
        assert conv.output_shape((1, 1, h, h)) == y.shape


def test_conv_skips_input_grad_on_request(rng):
    conv = sc.Conv2D(1, 2, 3, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 1, 5, 5))
    dy = rng.standard_normal((2, 2, 3, 3))
    conv.forward(x)
    assert conv.backward(dy, input_grad=False) is None
    gw = conv.grads["weight"].copy()
    conv.forward(x)
    conv.backward(dy)
    np.testing.assert_array_equal(conv.grads["weight"], gw)


def test_conv_bias_gradient_is_sum_of_dy(rng):
    conv = sc.Conv2D(1, 3, 2, dtype=np.float64, rng=rng)
    conv.forward(rng.standard_normal((2, 1, 4, 4)))
    dy = rng.standard_normal((2, 3, 3, 3))
    conv.backward(dy)
    np.testing.assert_allclose(conv.grads["bias"], dy.sum(axis=(0, 2, 3)))


def test_weight_shapes_match_torch_layout():
    conv = sc.Conv2D(3, 8, (5, 3))
    assert conv.params["weight"].shape == (8, 3, 5, 3)
    assert conv.params["bias"].shape == (8,)
    assert conv.params["weight"].dtype == np.float32


# --- errors -------------------------------------------------------------------------------
def test_wrong_ndim():
    with pytest.raises(sc.ShapeError, match=r"4-D \(N, C, H, W\) input, got shape \(3, 28, 28\)"):
        sc.Conv2D(3, 4, 3).forward(np.zeros((3, 28, 28), np.float32))


def test_channel_mismatch_names_both_numbers():
    with pytest.raises(sc.ShapeError, match=r"expects 3 input channels, got 1"):
        sc.Conv2D(3, 4, 3).forward(np.zeros((2, 1, 8, 8), np.float32))


def test_kernel_larger_than_padded_input():
    with pytest.raises(sc.ShapeError, match=r"kernel 5x5 is larger than the padded input 4x4"):
        sc.Conv2D(1, 1, 5).forward(np.zeros((1, 1, 4, 4), np.float32))


@pytest.mark.parametrize("stride", [0, -2, (1, 0)])
def test_non_positive_stride(stride):
    with pytest.raises(sc.ConfigError, match="stride must be positive"):
        sc.Conv2D(1, 1, 3, stride=stride)


def test_negative_padding():
    with pytest.raises(sc.ConfigError, match="padding must be non-negative"):
        sc.Conv2D(1, 1, 3, padding=-1)


def test_same_padding_with_stride_is_refused():
    with pytest.raises(sc.ConfigError, match="padding='same' needs stride 1"):
        sc.Conv2D(1, 1, 3, stride=2, padding="same")


def test_unknown_padding_string():
    with pytest.raises(sc.ConfigError, match="'full'"):
        sc.Conv2D(1, 1, 3, padding="full")


@pytest.mark.parametrize(
    "x,match",
    [
        (np.zeros((1, 1, 5, 5), np.uint8), "got dtype uint8"),
        (np.zeros((1, 1, 5, 5), np.int64), "got dtype int64"),
        (np.empty((1, 1, 5, 5), object), "got dtype object"),
        ([[[[0.0] * 5] * 5]], "numpy.ndarray, got list"),
    ],
)
def test_integer_object_and_list_inputs(x, match):
    with pytest.raises(sc.DTypeError, match=match):
        sc.Conv2D(1, 1, 3).forward(x)


def test_float64_input_to_float32_layer_is_not_silently_cast():
    with pytest.raises(sc.DTypeError, match=r"holds float32 parameters but got a float64 input"):
        sc.Conv2D(1, 1, 3).forward(np.zeros((1, 1, 5, 5)))


def test_backward_before_forward():
    with pytest.raises(sc.StateError, match="backward called before forward"):
        sc.Conv2D(1, 1, 3).backward(np.zeros((1, 1, 3, 3), np.float32))


def test_backward_with_wrong_dy_shape():
    conv = sc.Conv2D(1, 2, 3)
    conv.forward(np.zeros((1, 1, 5, 5), np.float32))
    with pytest.raises(sc.ShapeError, match=r"dy has shape \(1, 2, 2, 2\).*\(1, 2, 3, 3\)"):
        conv.backward(np.zeros((1, 2, 2, 2), np.float32))


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8"])
def test_bad_channel_counts(bad):
    with pytest.raises(sc.ConfigError, match="out_channels"):
        sc.Conv2D(1, bad, 3)


def test_bad_dtype_argument():
    with pytest.raises(sc.ConfigError, match="float32 or float64"):
        sc.Conv2D(1, 1, 3, dtype=np.int32)
