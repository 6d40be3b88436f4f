"""The engine's compiled routes for SiLU, GELU, Hardswish, Hardsigmoid and Clip/ReLU6
against their reference layers: every value kind (kinks, bounds, NaN, +-inf, large
magnitudes), float32 and float64, contiguous and permuted memory, forward and backward."""

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn import kernels
from scratchcnn.engine.activations import ROUTES

LAYERS = {
    "SiLU": lambda: sc.SiLU(),
    "GELU": lambda: sc.GELU(),
    "GELU-tanh": lambda: sc.GELU("tanh"),
    "Hardswish": lambda: sc.Hardswish(),
    "Hardsigmoid": lambda: sc.Hardsigmoid(),
    "Hardsigmoid-onnx": lambda: sc.Hardsigmoid(alpha=0.2, beta=0.5),
    "ReLU6": lambda: sc.ReLU6(),
    "Clip": lambda: sc.Clip(-1.5, 2.0),
    "Clip-low": lambda: sc.Clip(min_value=0.25),
    "Clip-high": lambda: sc.Clip(max_value=-0.5),
    "Clip-none": lambda: sc.Clip(),
}
SPECIAL = [0.0, -0.0, 3.0, -3.0, 6.0, 2.5, -2.5, 1.5, -1.5, 2.0, 0.25, -0.5, 60.0, -60.0]
SPECIAL += [1e30, -1e30, np.inf, -np.inf, np.nan]


def _input(dtype, layout, rng):
    x = rng.standard_normal((3, 4, 5, 6)) * 4
    flat = x.reshape(-1)
    flat[: len(SPECIAL)] = SPECIAL
    x = x.astype(dtype)
    if layout == "permuted":  # a conv route's output: logical NCHW over (H, C, W, N) memory
        x = np.ascontiguousarray(x.transpose(2, 1, 3, 0)).transpose(3, 1, 0, 2)
    return x


@pytest.mark.parametrize("layout", ["contiguous", "permuted"])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-6), (np.float64, 1e-14)])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_route_equals_its_layer(kind, dtype, tol, layout, rng):
    layer = LAYERS[kind]()
    route = ROUTES[type(layer)](layer)
    x = _input(dtype, layout, rng)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dy.reshape(-1)[-1] = np.nan  # NaN in dy reaches dx wherever the layer multiplies it
    with np.errstate(all="ignore"):
        want, got = layer.forward(x), route.forward(x)
        want_dx, got_dx = layer.backward(dy), route.backward(dy)
    assert got.dtype == want.dtype == got_dx.dtype == dtype
    assert got.strides == x.strides  # the input's memory layout is kept
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(got_dx, want_dx, rtol=tol, atol=tol)
    # the kinks and bounds decide exactly as the layer does
    assert np.array_equal(got_dx == 0, want_dx == 0)
    assert np.array_equal(np.isnan(got), np.isnan(want))


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_a_model_runs_the_route_and_matches_the_numpy_mode(kind, rng):
    model = sc.Sequential(
        [sc.Conv2D(3, 4, 3, padding=1, dtype=np.float64), LAYERS[kind](), sc.Flatten()],
        input_shape=(3, 6, 6),
    )
    x = rng.standard_normal((5, 3, 6, 6))
    dy = rng.standard_normal((5, 144))
    results = {}
    for mode in ("numpy", "auto"):
        with kernels.using(mode):
            y = model.forward(x)
            results[mode] = (y, model.backward(dy), model.layers[0].grads["weight"].copy())
    for a, b in zip(results["numpy"], results["auto"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    from scratchcnn.engine import plans

    plan = plans.Plan(model.layers, "auto")
    assert type(plan.routes[1]).__name__.endswith("Route")


def test_integer_or_strided_inputs_fall_back_to_the_layer(rng):
    layer = sc.SiLU()
    route = ROUTES[sc.SiLU](layer)
    x = rng.standard_normal((4, 8))[:, ::2]  # not a permutation of a dense array
    np.testing.assert_allclose(route.forward(x), layer.forward(x), rtol=1e-15)
    dy = rng.standard_normal(x.shape)
    np.testing.assert_allclose(route.backward(dy), layer.backward(dy), rtol=1e-15)
