"""Dense and Flatten."""

import numpy as np
import pytest

import scratchcnn as sc
from tests.conftest import noncontiguous


@pytest.mark.parametrize("n,fin,fout,bias", [(1, 1, 1, True), (3, 5, 2, True), (2, 7, 4, False)])
def test_dense_gradcheck(n, fin, fout, bias, rng):
    layer = sc.Dense(fin, fout, bias=bias, dtype=np.float64, rng=rng)
    assert sc.gradcheck(layer, rng.standard_normal((n, fin))).ok


def test_dense_formulas(rng):
    layer = sc.Dense(4, 3, dtype=np.float64, rng=rng)
    x = rng.standard_normal((5, 4))
    w, b = layer.params["weight"], layer.params["bias"]
    np.testing.assert_allclose(layer.forward(x), x @ w.T + b)
    dy = rng.standard_normal((5, 3))
    np.testing.assert_allclose(layer.backward(dy), dy @ w)
    np.testing.assert_allclose(layer.grads["weight"], dy.T @ x)
    np.testing.assert_allclose(layer.grads["bias"], dy.sum(0))


def test_dense_noncontiguous(rng):
    layer = sc.Dense(6, 3, dtype=np.float64, rng=rng)
    x = noncontiguous(rng.standard_normal((4, 6)))
    dy = noncontiguous(rng.standard_normal((4, 3)))
    assert sc.gradcheck(layer, x, dy).ok


def test_dense_shapes_like_torch_linear():
    layer = sc.Dense(400, 120)
    assert layer.params["weight"].shape == (120, 400)
    assert layer.params["bias"].shape == (120,)


def test_dense_errors():
    layer = sc.Dense(4, 2)
    with pytest.raises(sc.ShapeError, match=r"expects 4 input features, got 5"):
        layer.forward(np.zeros((3, 5), np.float32))
    with pytest.raises(sc.ShapeError, match=r"2-D \(N, features\) input, got shape \(3, 2, 2\)"):
        layer.forward(np.zeros((3, 2, 2), np.float32))
    with pytest.raises(sc.StateError):
        sc.Dense(2, 2).backward(np.zeros((1, 2), np.float32))
    with pytest.raises(sc.ConfigError, match="in_features"):
        sc.Dense(0, 2)


def test_flatten_roundtrip(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    f = sc.Flatten()
    y = f.forward(x)
    assert y.shape == (2, 60)
    np.testing.assert_array_equal(y[1], x[1].ravel())
    dx = f.backward(y * 2)
    np.testing.assert_array_equal(dx, x * 2)
    assert sc.gradcheck(f, x).ok
    with pytest.raises(sc.ShapeError, match="at least 2-D"):
        f.forward(np.zeros(3))
