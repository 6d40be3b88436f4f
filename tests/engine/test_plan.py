"""Execution plans: the routes a model runs, the ReLU/MaxPool2D order, hooks, input_grad."""

from __future__ import annotations

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn import engine
from scratchcnn.engine import plans as plan_module
from tests.engine.conftest import way


def order(net: sc.Sequential) -> list[str]:
    """The classes of the layers in the order the engine runs them."""
    return [type(la).__name__ for la in engine.plan(net).order()]


def _relu_pool_net(pool: sc.MaxPool2D, conv: bool) -> sc.Sequential:
    head = [sc.Conv2D(2, 2, 3, padding=1, dtype=np.float64, rng=0)] if conv else []
    x_hw = pool.output_shape((1, 2, 7, 7))[2:]
    return sc.Sequential(
        [
            *head,
            sc.ReLU(),
            pool,
            sc.Flatten(),
            sc.Dense(2 * x_hw[0] * x_hw[1], 3, dtype=np.float64, rng=1),
        ]
    )


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the NaN, on purpose
@pytest.mark.parametrize("how", ["engine", "engine-numpy"])
@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize(
    "pool",
    [
        lambda: sc.MaxPool2D(2),
        lambda: sc.MaxPool2D(3, stride=2, padding=1),  # overlapping windows, padding
        lambda: sc.MaxPool2D(2, ceil_mode=True),
    ],
)
def test_relu_before_maxpool_runs_after_it_with_the_same_bits(rng, monkeypatch, how, conv, pool):
    # Ties (values on a coarse grid), zeros, windows of negatives only, NaN and -inf.
    x = np.round(rng.standard_normal((8, 2, 7, 7)) * 2) / 2
    x[0, 0, :2, :2] = np.nan
    x[1, 1, 2:4, 2:4] = -np.inf
    x[2, 0, 4:6, :2] = [[-1.0, -2.0], [0.0, -3.0]]
    dy = rng.standard_normal((8, 3))
    results = []
    with way(how):
        for reorder in (False, True):
            monkeypatch.setattr(plan_module, "REORDER_RELU_MAXPOOL", reorder)
            net = _relu_pool_net(pool(), conv)
            y = net.forward(x)
            dx = net.backward(dy)
            results.append((y, dx, [g.copy() for g in net.gradients()]))
            ran = order(net)
            assert ran.index("ReLU") == ran.index("MaxPool2D") + (1 if reorder else -1)
    (y0, dx0, g0), (y1, dx1, g1) = results
    assert np.isnan(y0).any() and np.isnan(dx0).any() == np.isnan(dx1).any()
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(dx1, dx0)
    for a, b in zip(g1, g0, strict=True):
        np.testing.assert_array_equal(a, b)
    # and the reference layers, in list order, agree
    with way("reference"):
        net = _relu_pool_net(pool(), conv)
        np.testing.assert_allclose(net.forward(x), y0, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(net.backward(dy), dx0, rtol=1e-12, atol=1e-12)


def test_relu_maxpool_swap_only_for_the_plain_built_in_layers():
    class MyReLU(sc.ReLU):
        pass

    assert order(sc.Sequential([sc.ReLU(), sc.MaxPool2D(2), sc.ReLU(), sc.ReLU()])) == [
        "MaxPool2D",
        "ReLU",
        "ReLU",
        "ReLU",
    ]
    assert order(sc.Sequential([sc.ReLU(), sc.AvgPool2D(2)])) == ["ReLU", "AvgPool2D"]
    assert order(sc.Sequential([MyReLU(), sc.MaxPool2D(2)])) == ["MyReLU", "MaxPool2D"]
    hooked = sc.ReLU()
    hooked.forward = hooked.forward  # an instance attribute, as attribution's hooks set
    assert order(sc.Sequential([hooked, sc.MaxPool2D(2)])) == ["ReLU", "MaxPool2D"]
    # The plan is made again when the list of layers changes.
    net = sc.Sequential([sc.ReLU(), sc.MaxPool2D(2)])
    assert order(net) == ["MaxPool2D", "ReLU"]
    net.layers[1] = sc.AvgPool2D(2)
    assert order(net) == ["ReLU", "AvgPool2D"]
    net.add(sc.ReLU()).add(sc.MaxPool2D(2))
    assert order(net) == ["ReLU", "AvgPool2D", "MaxPool2D", "ReLU"]
    # backward with no forward: the runners refuse
    net = sc.Sequential([sc.ReLU(), sc.MaxPool2D(2)])
    with pytest.raises(sc.StateError, match="forward"):
        net.backward(np.ones((1, 1, 1, 1)))


def test_only_exact_built_in_classes_get_routes_and_hooks_turn_them_off(rng):
    class MyConv(sc.Conv2D):  # may compute something else: its own code runs
        pass

    net = sc.Sequential([sc.Conv2D(1, 2, 3), MyConv(2, 2, 3), sc.ReLU(), sc.Dense(3, 3)])
    routes = engine.plan(net).routes
    assert [type(r).__name__ for r in routes] == [
        "Conv2DRoute",
        "NoneType",
        "ReLURoute",
        "NoneType",
    ]
    calls = []
    conv = net.layers[0]
    real = conv.forward
    conv.forward = lambda x: calls.append(x.shape) or real(x)  # a hook on the instance
    net = sc.Sequential([conv, sc.ReLU()])
    net.forward(rng.standard_normal((2, 1, 5, 5)).astype(np.float32))
    assert calls == [(2, 1, 5, 5)]  # the hook ran: the layer's own code, not the route
    assert engine.plan(net).current()[0] is conv
    del conv.forward
    net.forward(rng.standard_normal((2, 1, 5, 5)).astype(np.float32))
    assert calls == [(2, 1, 5, 5)] and engine.plan(net).current()[0] is not conv


@pytest.mark.parametrize("how", ["reference", "engine"])
def test_the_first_layer_skips_the_input_gradient(rng, how, monkeypatch):
    net = sc.Sequential([sc.Conv2D(1, 2, 3), sc.Flatten(), sc.Dense(18, 2)])
    with way(how):
        y = net.forward(rng.standard_normal((2, 1, 5, 5)).astype(np.float32))
        assert net.backward(np.ones_like(y), input_grad=False) is None
        assert net.layers[0].grads["weight"].any()
        dx = net.backward(np.ones_like(y))
        assert dx.shape == (2, 1, 5, 5)


def test_numpy_mode_runs_the_layers_as_written(rng):
    net = sc.Sequential([sc.ReLU(), sc.MaxPool2D(2)])
    x = rng.standard_normal((2, 1, 4, 4))
    with engine.using("numpy"):
        assert engine.plan(net) is None
        y = net.forward(x)
        assert net._ran is None and net.layers[0]._cache is not None
    with engine.using("auto"):
        np.testing.assert_array_equal(net.forward(x), y)
        assert net._ran is engine.plan(net)
