"""Running one layer three ways: the reference (the layer's own NumPy code, what
``SCRATCHCNN_KERNELS=numpy`` runs), the engine with its compiled kernels (the default), and
the engine's NumPy parts (what runs where numba cannot be loaded)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

import scratchcnn as sc
from scratchcnn import engine
from scratchcnn.engine import inference, modes

WAYS = ("reference", "engine", "engine-numpy")


@contextmanager
def without_numba() -> Iterator[None]:
    """The engine as it runs where numba cannot be loaded: routes on, compiled kernels off."""
    saved = modes._compiled, modes._missing, modes._warned, modes._mode
    modes._compiled, modes._missing, modes._warned, modes._mode = None, "hidden", True, "auto"
    try:
        yield
    finally:
        modes._compiled, modes._missing, modes._warned, modes._mode = saved


@contextmanager
def routes_only() -> Iterator[None]:
    """Eval-mode passes layer by layer, through the routes, not through an inference plan
    (those are tested in test_inference_plan.py): for tests of the routes themselves."""
    saved = inference.INFERENCE_PLAN
    inference.INFERENCE_PLAN = False
    try:
        yield
    finally:
        inference.INFERENCE_PLAN = saved


@contextmanager
def way(name: str) -> Iterator[None]:
    """Run a block the given way (see the module docstring)."""
    if name == "reference":
        with engine.using("numpy"):
            yield
    elif name == "engine":
        with engine.using("numba"):
            yield
    else:
        with without_numba():
            yield


def run(make, x, dy, train: bool = True, ways=WAYS) -> dict:
    """Forward and backward of a fresh layer from ``make()``, in a one-layer Sequential, each
    way: {way: (y, dx, grads, layer)}. ``dy`` may be a function of y. Eval mode runs the
    routes too (``routes_only``)."""
    out = {}
    for name in ways:
        with way(name), routes_only():
            layer = make()
            model = sc.Sequential([layer]).train(train)
            y = model.forward(x)
            dx = model.backward(dy(y) if callable(dy) else dy)
            out[name] = (y, dx, {k: v.copy() for k, v in layer.grads.items()}, layer)
    return out


def hcwn(a: np.ndarray) -> np.ndarray:
    """The same NCHW values over (H, C, W, N) memory: the layout a Conv2D route produces."""
    return np.ascontiguousarray(a.transpose(2, 1, 3, 0)).transpose(3, 1, 0, 2)


def strided(a: np.ndarray) -> np.ndarray:
    """The same values in a non-contiguous array (every other column of a wider one)."""
    wide = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
    wide[..., ::2] = a
    return wide[..., ::2]


LAYOUTS = {"nchw": np.ascontiguousarray, "hcwn": hcwn}


def close(a, b, dtype) -> None:
    tol = 1e-12 if np.dtype(dtype) == np.float64 else 2e-5
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(a).max())))
