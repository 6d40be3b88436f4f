"""Every route against its reference layer on random configurations: odd sizes, asymmetric
padding, stride, dilation and groups for Conv2D; overlapping, padded, dilated and ceil-mode
windows with ties, NaN and -inf for the pools; BatchNorm over odd shapes; float32 and
float64; NCHW and the (H, C, W, N) layout a Conv2D route hands on. The draws are seeded, so a
failure names a configuration that fails again."""

from __future__ import annotations

import numpy as np
import pytest

import scratchcnn as sc
from tests.engine.conftest import LAYOUTS, close, run

SEEDS = range(24)


def _conv_config(r: np.random.Generator) -> tuple[dict, tuple[int, int, int, int]]:
    g = int(r.choice([1, 1, 2, 3]))
    c, o = g * int(r.integers(1, 4)), g * int(r.integers(1, 4))
    k = (int(r.integers(1, 5)), int(r.integers(1, 5)))
    d = (int(r.integers(1, 3)), int(r.integers(1, 3)))
    s = (int(r.integers(1, 4)), int(r.integers(1, 4)))
    pad = (
        (int(r.integers(0, 3)), int(r.integers(0, 3))),
        (int(r.integers(0, 3)), int(r.integers(0, 3))),
    )
    span = [d[i] * (k[i] - 1) + 1 for i in range(2)]
    h = span[0] + int(r.integers(0, 6)) - sum(pad[0]) + 1
    w = span[1] + int(r.integers(0, 6)) - sum(pad[1]) + 1
    n = int(r.choice([1, 2, 3, 8, 9]))
    kwargs = {
        "in_channels": c,
        "out_channels": o,
        "kernel_size": k,
        "stride": s,
        "padding": pad,
        "dilation": d,
        "groups": g,
        "bias": bool(r.integers(0, 2)),
    }
    return kwargs, (n, c, max(h, 1), max(w, 1))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_route_equals_the_layer(seed, dtype):
    r = np.random.default_rng(seed)
    kwargs, shape = _conv_config(r)
    layout = LAYOUTS[["nchw", "hcwn"][seed % 2]]
    x = layout(r.standard_normal(shape).astype(dtype))

    def make():
        return sc.Conv2D(**kwargs, dtype=dtype, rng=seed)

    y_shape = make().output_shape(shape)  # the sizes are drawn so that the kernel fits
    dy = layout(r.standard_normal(y_shape).astype(dtype))
    out = run(make, x, dy)
    ref = out["reference"]
    for way in ("engine", "engine-numpy"):
        y, dx, grads, _ = out[way]
        assert y.shape == ref[0].shape and y.dtype == dtype and dx.dtype == dtype
        close(ref[0], y, dtype)
        close(ref[1], dx, dtype)
        for key in ref[2]:
            close(ref[2][key], grads[key], dtype)


def _pool_config(r: np.random.Generator) -> tuple[type, dict]:
    kind = sc.MaxPool2D if r.integers(0, 3) else sc.AvgPool2D
    k = (int(r.integers(1, 4)), int(r.integers(1, 4)))
    s = (int(r.integers(1, 4)), int(r.integers(1, 4)))
    d = (int(r.integers(1, 3)), int(r.integers(1, 3))) if kind is sc.MaxPool2D else (1, 1)
    span = [d[i] * (k[i] - 1) + 1 for i in range(2)]
    pad = tuple((int(r.integers(0, sp // 2 + 1)), int(r.integers(0, sp // 2 + 1))) for sp in span)
    kwargs = {"kernel_size": k, "stride": s, "padding": pad, "ceil_mode": bool(r.integers(0, 2))}
    if kind is sc.MaxPool2D:
        kwargs["dilation"] = d
    else:
        kwargs["count_include_pad"] = bool(r.integers(0, 2))
    return kind, kwargs


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pool_route_equals_the_layer(seed, dtype):
    r = np.random.default_rng(1000 + seed)
    kind, kwargs = _pool_config(r)
    n, c = int(r.choice([1, 2, 8, 17])), int(r.integers(1, 4))
    h, w = int(r.integers(6, 11)), int(r.integers(6, 11))
    # Values on a coarse grid (ties), with NaN and -inf where the pool is a max.
    x = np.round(r.standard_normal((n, c, h, w)) * 2) / 2
    if kind is sc.MaxPool2D:
        x[r.random(x.shape) < 0.05] = np.nan
        x[r.random(x.shape) < 0.1] = -np.inf
        x[0, 0, :3, :3] = -np.inf  # a window of -inf only, at the padded corner
    x = LAYOUTS[["nchw", "hcwn"][seed % 2]](x.astype(dtype))
    for train in (True, False):
        out = run(lambda: kind(**kwargs), x, lambda y: np.ones_like(y) + 0.5, train)
        ref = out["reference"]
        for way in ("engine", "engine-numpy"):
            if kind is sc.MaxPool2D:  # a max is exact, and so is the routing of dy
                np.testing.assert_array_equal(ref[0], out[way][0])
                np.testing.assert_allclose(ref[1], out[way][1], rtol=0, atol=1e-6)
            else:
                close(ref[0], out[way][0], dtype)
                close(ref[1], out[way][1], dtype)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_route_equals_the_layer(seed, dtype):
    r = np.random.default_rng(2000 + seed)
    two_d = bool(seed % 3)
    c = int(r.integers(1, 6))
    shape = (int(r.integers(2, 9)), c, int(r.integers(1, 6)), int(r.integers(1, 6)))
    shape = shape if two_d else shape[:2]
    x = (r.standard_normal(shape) * r.uniform(0.1, 5) + r.uniform(-3, 3)).astype(dtype)
    if two_d:
        x = LAYOUTS[["nchw", "hcwn"][seed % 2]](x)
    dy = r.standard_normal(shape).astype(dtype)
    affine = bool(r.integers(0, 2))
    momentum = float(r.uniform(0, 1))

    def make():
        cls = sc.BatchNorm2D if two_d else sc.BatchNorm1D
        bn = cls(c, momentum=momentum, affine=affine, dtype=dtype)
        if affine:
            bn.params["weight"][:] = np.linspace(0.5, 2, c)
            bn.params["bias"][:] = np.linspace(-1, 1, c)
        bn.buffers["running_var"][:] = np.linspace(0.5, 3, c)
        return bn

    for train in (True, False):
        out = run(make, x, dy, train)
        ref = out["reference"]
        for way in ("engine", "engine-numpy"):
            close(ref[0], out[way][0], dtype)
            close(ref[1], out[way][1], dtype)
            for key in ref[2]:
                close(ref[2][key], out[way][2][key], dtype)
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                close(ref[3].buffers[key], out[way][3].buffers[key], dtype)
