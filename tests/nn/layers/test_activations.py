"""ReLU, LeakyReLU, Sigmoid, Tanh, Softmax."""

import numpy as np
import pytest

import scratchcnn as sc
from tests.conftest import distinct, noncontiguous

ACTIVATIONS = [sc.ReLU, lambda: sc.LeakyReLU(0.1), sc.Sigmoid, sc.Tanh, sc.Softmax]


@pytest.mark.parametrize("make", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1, 3), (2, 3, 4, 5)])
def test_activation_gradcheck(make, shape, rng):
    layer = make()
    x = distinct(shape, rng)  # away from the ReLU kink
    assert sc.gradcheck(layer, x).ok
    assert sc.gradcheck(layer, noncontiguous(x), noncontiguous(rng.standard_normal(shape))).ok


def test_relu_derivative_at_zero_is_zero():
    r = sc.ReLU()
    r.forward(np.array([[-1.0, 0.0, 2.0]]))
    np.testing.assert_array_equal(r.backward(np.ones((1, 3))), [[0.0, 0.0, 1.0]])


def test_leaky_relu_values():
    layer = sc.LeakyReLU(0.2)
    np.testing.assert_allclose(layer.forward(np.array([[-5.0, 3.0]])), [[-1.0, 3.0]])


def test_sigmoid_extremes_do_not_overflow():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = sc.Sigmoid().forward(np.array([[-1000.0, 0.0, 1000.0]], np.float32))
    np.testing.assert_allclose(y, [[0.0, 0.5, 1.0]])
    assert y.dtype == np.float32


def test_softmax_sums_to_one_and_survives_large_logits():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = sc.Softmax().forward(np.array([[1000.0, 1000.0, -1000.0]]))
    np.testing.assert_allclose(y, [[0.5, 0.5, 0.0]])


@pytest.mark.parametrize("make", ACTIVATIONS)
def test_activation_keeps_dtype_and_rejects_ints(make):
    layer = make()
    assert layer.forward(np.ones((2, 3), np.float32)).dtype == np.float32
    assert layer.backward(np.ones((2, 3), np.float32)).dtype == np.float32
    with pytest.raises(sc.DTypeError, match="int"):
        layer.forward(np.ones((2, 3), np.int32))
    with pytest.raises(sc.ShapeError, match="dy has shape"):
        layer.backward(np.ones((3, 3), np.float32))


def test_activation_backward_before_forward():
    with pytest.raises(sc.StateError):
        sc.Tanh().backward(np.ones((1, 1)))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: sc.LeakyReLU("a"), "negative_slope must be a finite number"),
        (lambda: sc.LeakyReLU(float("nan")), "negative_slope must be a finite number"),
        (lambda: sc.Rescale("a"), "scale must be a finite number"),
        (lambda: sc.Softmax(axis="x"), "Softmax axis must be an int"),
    ],
)
def test_bad_constructor_arguments_are_config_errors(make, match):
    with pytest.raises(sc.ConfigError, match=match):
        make()


def test_softmax_axis_beyond_the_input():
    with pytest.raises(sc.ShapeError, match=r"Softmax\(axis=5\)"):
        sc.Softmax(axis=5).forward(np.zeros((2, 3)))
