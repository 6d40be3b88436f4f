"""The engine's routes and compiled kernels against the reference layers, layer by layer
and whole steps.

Every test here runs the same computation three ways (``tests/engine/conftest.py``): the
reference layer (``SCRATCHCNN_KERNELS=numpy``), the engine with its compiled kernels, and
the engine's NumPy parts (numba hidden), and compares outputs and gradients. numba is a core
dependency, so CI runs all three.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn import engine
from scratchcnn.engine import modes
from scratchcnn.errors import ConfigError
from scratchcnn.nn import zoo as models
from scratchcnn.nn.layers import BatchNorm1D, BatchNorm2D, Conv2D, MaxPool2D, ReLU
from scratchcnn.parallel.split import BatchSplit
from tests.engine.conftest import LAYOUTS, close, hcwn, run, way, without_numba


def test_numba_is_installed_for_the_tests():
    # numba is a core dependency: the compiled path must really be tested.
    assert engine.available()


def test_mode_from_environment_and_bad_values(monkeypatch):
    monkeypatch.setattr(modes, "_mode", None)
    monkeypatch.setenv(modes.ENV, "NumPy ")
    assert engine.mode() == "numpy"
    assert engine.active() is None
    assert engine.plan(sc.Sequential([ReLU()])) is None  # numpy: the layers as written
    monkeypatch.setattr(modes, "_mode", None)
    monkeypatch.setenv(modes.ENV, "fast")
    with pytest.raises(ConfigError, match="SCRATCHCNN_KERNELS must be one of auto, numpy, numba"):
        engine.mode()
    with pytest.raises(ConfigError, match="kernel mode must be one of"):
        engine.set_mode("gpu")


def test_missing_numba_names_the_problem_and_auto_warns_once(monkeypatch):
    monkeypatch.setattr(modes, "_compiled", None)
    monkeypatch.setattr(modes, "_missing", "No module named 'numba'")
    monkeypatch.setattr(modes, "_warned", False)
    with pytest.raises(ConfigError, match=r"need numba \(No module named 'numba'\)"):
        engine.set_mode("numba")
    monkeypatch.setattr(modes, "_mode", "auto")
    with pytest.warns(RuntimeWarning, match="engine runs its NumPy paths only"):
        assert engine.active() is None  # auto: the engine's NumPy parts
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert engine.active() is None  # one warning, not one per call
    assert engine.engine_on()


def test_using_restores_the_mode():
    before = engine.mode()
    with engine.using("numpy"):
        assert engine.active() is None
        assert not engine.engine_on()
    assert engine.mode() == before


def test_the_old_module_name_is_the_engine():
    import scratchcnn.kernels as old

    assert old is engine
    assert old.using is engine.using and old.set_mode is engine.set_mode


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm2d(rng, dtype, layout, train, affine):
    x = LAYOUTS[layout]((rng.standard_normal((6, 5, 7, 3)) * 3 + 2).astype(dtype))
    dy = LAYOUTS[layout](rng.standard_normal(x.shape).astype(dtype))

    weight, bias = rng.uniform(0.5, 2, 5), rng.uniform(-1, 1, 5)

    def make():
        bn = BatchNorm2D(5, affine=affine, dtype=dtype)
        if affine:
            bn.params["weight"][:] = weight
            bn.params["bias"][:] = bias
        bn.buffers["running_mean"][:] = np.arange(5) * 0.1
        bn.buffers["running_var"][:] = 1 + np.arange(5) * 0.2
        return bn

    out = run(make, x, dy, train)
    ref = out["reference"]
    for name in ("engine", "engine-numpy"):
        new = out[name]
        for a, b in zip(ref[:2], new[:2], strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype == dtype
            close(a, b, dtype)
        for k in ref[2]:
            assert new[2][k].dtype == dtype
            close(ref[2][k], new[2][k], dtype)
        for k in ("running_mean", "running_var"):
            close(ref[3].buffers[k], new[3].buffers[k], dtype)
        # The routes' output and input gradient keep x's memory layout.
        assert new[0].strides == x.strides and new[1].strides == x.strides


def test_batchnorm1d(rng):
    x = rng.standard_normal((9, 4)) + 5
    dy = rng.standard_normal((9, 4))
    out = run(lambda: BatchNorm1D(4, dtype=np.float64), x, dy)
    for name in ("engine", "engine-numpy"):
        for a, b in zip(out["reference"][:2], out[name][:2], strict=True):
            close(a, b, np.float64)


def test_batchnorm_backward_after_switching_mode(rng):
    # A forward under the compiled kernels caches x, not x - mean: a backward after the
    # mode changed (the plan the forward ran, its NumPy path) must still get it right.
    x = rng.standard_normal((4, 3, 5, 5))
    dy = rng.standard_normal(x.shape)
    ref = run(lambda: BatchNorm2D(3, dtype=np.float64), x, dy, ways=["reference"])["reference"]
    model = sc.Sequential([BatchNorm2D(3, dtype=np.float64)])
    with engine.using("numba"):
        model.forward(x)
    with engine.using("numpy"):
        close(ref[1], model.backward(dy), np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    ("kernel", "hw"), [(2, (8, 6)), (2, (9, 7)), (3, (9, 10)), ((2, 3), (5, 7))]
)
@pytest.mark.parametrize("batch", [17, 16, 8, 5, 1])
def test_maxpool_tiles(rng, dtype, layout, kernel, hw, batch):
    # In Conv2D's layout the batch is the innermost axis: 2x2 windows over a multiple of 8
    # run the 8-lane kernels, 17 the vectorised loops (at least kernels.MIN_VECTOR), 5 and 1
    # the branch-free 2x2 kernel; other tiles the general kernels (or NumPy, short axes).
    x = rng.standard_normal((max(batch, 3), 4, *hw)).astype(dtype)
    x[0, 0, :2, :2] = 1.5  # a tie: the first maximum wins
    x[0, 0, 2, 2:4] = 2.5  # a tie along the row, the other one down the column
    x[0, 0, 3, 2] = 2.5
    x[1, 1, :2, :2] = np.nan  # NaN wins, the last NaN for the index
    x[1, 1, 0, 0] = 7
    x[0, 2, 2:4, :2] = [[np.nan, 1], [2, 3]]  # a NaN first: still the NaN
    x[2, 2, :2, :2] = -np.inf
    x[0, 3, :2, :2] = [[-np.inf, -np.inf], [-np.inf, 4]]
    x = x[:batch]
    x = LAYOUTS[layout](x)
    for train in (True, False):

        def dy(y):
            return LAYOUTS[layout]((np.ones(y.shape) + np.arange(y.shape[-1])).astype(dtype))

        out = run(lambda: MaxPool2D(kernel), x, dy, train)
        for name in ("engine", "engine-numpy"):
            np.testing.assert_array_equal(out["reference"][0], out[name][0])
            np.testing.assert_array_equal(out["reference"][1], out[name][1])
            assert out[name][0].dtype == dtype


@pytest.mark.parametrize("layout", LAYOUTS)
def test_maxpool_outside_the_tiling_case(rng, layout):
    x = LAYOUTS[layout](rng.standard_normal((2, 3, 7, 7)))
    x[0, 0, :3, :3] = 1.0  # ties in overlapping windows
    x[1, 2, 4:, 4:] = -np.inf
    x[0, 1, 2, 2] = np.nan
    for make in (
        lambda: MaxPool2D(3, stride=2),
        lambda: MaxPool2D(2, padding=1),
        lambda: MaxPool2D(2, ceil_mode=True),
        lambda: MaxPool2D(3, stride=1, padding=1, dilation=2),
    ):
        for train in (True, False):
            out = run(make, x, np.ones_like, train)
            for name in ("engine", "engine-numpy"):
                np.testing.assert_array_equal(out["reference"][0], out[name][0])
                np.testing.assert_array_equal(out["reference"][1], out[name][1])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 2},
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": 3, "stride": 1, "padding": 1, "count_include_pad": False},
        {"kernel_size": 2, "ceil_mode": True},
        {"kernel_size": (2, 3), "stride": (1, 2), "padding": ((1, 0), (0, 1))},
    ],
)
def test_avgpool(rng, layout, kwargs):
    x = LAYOUTS[layout](rng.standard_normal((3, 2, 7, 6)))
    out = run(
        lambda: sc.AvgPool2D(**kwargs),
        x,
        lambda y: np.arange(y.size, dtype=y.dtype).reshape(y.shape),
    )
    for name in ("engine", "engine-numpy"):
        close(out["reference"][0], out[name][0], np.float64)
        close(out["reference"][1], out[name][1], np.float64)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_relu(rng, layout):
    x = rng.standard_normal((4, 3, 5, 6)).astype(np.float32)
    x[0, 0, 0, :3] = [np.nan, 0.0, -0.0]
    x = LAYOUTS[layout](x)
    dy = LAYOUTS[layout](rng.standard_normal(x.shape).astype(np.float32))
    out = run(ReLU, x, dy)
    for name in ("engine", "engine-numpy"):
        np.testing.assert_array_equal(out["reference"][0], out[name][0])
        np.testing.assert_array_equal(out["reference"][1], out[name][1])
        assert out[name][0].strides == x.strides
    # dy in another layout than y: the NumPy route, same answer.
    other = np.ascontiguousarray(dy) if layout == "hcwn" else hcwn(dy)
    out = run(ReLU, x, other)
    np.testing.assert_array_equal(out["reference"][1], out["engine"][1])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "padding"),
    [
        (3, 4, 3, 1, 1),
        (4, 4, 3, 2, 1),
        (2, 5, (3, 2), 1, ((2, 0), (1, 1))),
        (3, 6, 5, 1, 0),
        (2, 3, 3, 3, 4),  # padding wider than the kernel: whole windows of zeros
        (2, 6, 5, 1, 2),  # O > 2C: dL/dx by GEMM and scatter_rows, as LeNet-5's second conv
    ],
)
@pytest.mark.parametrize("batch", [5, 1])
def test_conv2d(rng, layout, cin, cout, kernel, stride, padding, batch):
    x = LAYOUTS[layout](rng.standard_normal((batch, cin, 9, 8)))

    def make():
        return Conv2D(cin, cout, kernel, stride=stride, padding=padding, dtype=np.float64, rng=3)

    y0 = make().forward(x)
    dy = LAYOUTS[layout](rng.standard_normal(y0.shape))
    out = run(make, x, dy)
    ref = out["reference"]
    for name in ("engine", "engine-numpy"):
        for a, b in zip(ref[:2], out[name][:2], strict=True):
            close(a, b, np.float64)
        for k in ref[2]:
            close(ref[2][k], out[name][2][k], np.float64)


@pytest.mark.parametrize("chunk", [1, 1 << 30])  # one output row per GEMM, or all at once
def test_conv2d_input_grad_by_scatter_rows(rng, monkeypatch, chunk):
    from scratchcnn.engine import conv

    monkeypatch.setattr(conv, "SCATTER_BYTES", chunk)
    calls = []
    module = engine.compiled()
    real = module.scatter_rows
    monkeypatch.setattr(module, "scatter_rows", lambda *a: calls.append(a[1]) or real(*a))
    x = hcwn(rng.standard_normal((3, 2, 9, 8)))
    dy = hcwn(rng.standard_normal((3, 6, 9, 4)))

    def make():
        return Conv2D(
            2, 6, (3, 2), stride=(1, 2), padding=((2, 0), (1, 0)), dtype=np.float64, rng=3
        )

    out = run(make, x, dy, ways=("reference", "engine"))
    close(out["reference"][1], out["engine"][1], np.float64)
    assert calls == (list(range(9)) if chunk == 1 else [0])  # the 9 output rows


@pytest.mark.parametrize(
    ("pt", "pl", "sw", "kw", "extra_rows", "extra_cols"),
    [
        (0, 0, 1, 3, 0, 0),
        (1, 1, 1, 3, 1, 1),
        (2, 0, 2, 3, 0, 1),
        (4, 5, 3, 2, 4, 3),  # padding wider than the kernel
        (0, 2, 1, 5, 2, 2),
    ],
)
def test_gather_rows_is_pad_then_windows(rng, pt, pl, sw, kw, extra_rows, extra_cols):
    from scratchcnn.engine.layout import sliding_windows
    from scratchcnn.nn.windows import pad2d

    xt = rng.standard_normal((6, 3, 7, 2))[:, :, :, ::-1]  # any strides
    wp = pl + 7 + extra_cols
    ow = (wp - kw) // sw + 1
    r = np.full((pt + 6 + extra_rows, 3, kw, ow, 2), np.nan)
    engine.compiled().gather_rows(xt, pt, pl, sw, r)
    xh = pad2d(xt, ((pt, extra_rows), (pl, extra_cols)), axes=(0, 2), copy=True)
    np.testing.assert_array_equal(r, sliding_windows(xh, kw, sw, axis=2))


@pytest.mark.parametrize(
    ("h", "w", "n", "kw", "pt", "pl", "extra_rows", "extra_cols"),
    [
        (6, 7, 8, 3, 1, 1, 1, 1),  # "same" 3x3 at a batch of 8
        (6, 7, 1, 3, 0, 0, 0, 0),
        (5, 4, 3, 5, 2, 2, 2, 2),
        (4, 3, 2, 2, 4, 5, 4, 3),  # padding wider than the kernel: runs of zeros only
        (3, 9, 17, 4, 0, 3, 0, 0),  # left padding only, even kernel
    ],
)
def test_gather_rows_s1_is_gather_rows(rng, h, w, n, kw, pt, pl, extra_rows, extra_cols):
    fast = engine.compiled()
    xt = rng.standard_normal((h, 3, w, n))
    ow = pl + w + extra_cols - kw + 1
    expected = np.full((pt + h + extra_rows, 3, kw, ow, n), np.nan)
    fast.gather_rows(xt, pt, pl, 1, expected)
    r = np.full_like(expected, np.nan)
    fast.gather_rows_s1(xt.reshape(h, 3, w * n), pt, pl, n, r.reshape(*r.shape[:3], -1))
    np.testing.assert_array_equal(r, expected)


def test_conv2d_gathers_contiguous_runs_at_stride_1(rng, monkeypatch):
    # Guards test_conv2d: at stride 1 over Conv2D's own layout the run kernel is the one used
    # (forward and the input gradient); at stride 2, or from NCHW memory, it is not.
    module = engine.compiled()
    calls = []
    real = module.gather_rows_s1
    monkeypatch.setattr(module, "gather_rows_s1", lambda *a: calls.append(a[3]) or real(*a))
    with engine.using("numba"):
        conv = sc.Sequential([Conv2D(3, 4, 3, padding=1, rng=0)])
        y = conv.forward(hcwn(rng.standard_normal((8, 3, 6, 6)).astype(np.float32)))
        conv.backward(np.ones_like(y))
        assert calls == [8, 8]
        x = hcwn(rng.standard_normal((8, 3, 6, 6)).astype(np.float32))
        sc.Sequential([Conv2D(3, 4, 3, stride=2, rng=0)]).forward(x)
        conv.forward(rng.standard_normal((8, 3, 6, 6)).astype(np.float32))
    assert calls == [8, 8]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 4, 3, 2), (1, 1, 1, 1), (2, 3, 1, 4)])
def test_weight_reorders(rng, dtype, shape):
    from scratchcnn.engine.conv import reorder_weight as _reorder_weight

    o, c, kh, kw = shape
    w = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal((o, kh * c * kw)).astype(dtype)
    for name in ("engine", "engine-numpy"):
        with way(name):
            rows = _reorder_weight(w, "rows")
            np.testing.assert_array_equal(rows, w.transpose(0, 2, 1, 3).reshape(o, -1))
            back = _reorder_weight(g, "back", shape)
            np.testing.assert_array_equal(back, g.reshape(o, kh, c, kw).transpose(0, 2, 1, 3))
            assert back.flags.c_contiguous and back.shape == shape
            flip = _reorder_weight(w, "flip")
            np.testing.assert_array_equal(
                flip.reshape(c, kh, o, kw), np.rot90(w, 2, (2, 3)).transpose(1, 2, 0, 3)
            )


@pytest.mark.parametrize("threads", [1, 2])
def test_resnet8_step_matches(rng, threads):
    x = rng.standard_normal((24, 1, 28, 28))
    y = rng.integers(0, 10, 24)
    out = {}
    for mode in ("numpy", "numba"):
        with engine.using(mode):
            model = models.resnet8(seed=0, dtype=np.float64)
            with BatchSplit(model, sc.CrossEntropyLoss(), threads) as split:
                loss, logits = split.step(x, y)
            grads = [g.copy() for _, layer in model.named_layers() for g in layer.grads.values()]
            out[mode] = loss, logits, grads
    (la, ya, ga), (lb, yb, gb) = out["numpy"], out["numba"]
    assert abs(la - lb) < 1e-12
    close(ya, yb, np.float64)
    for a, b in zip(ga, gb, strict=True):
        close(a, b, np.float64)


def test_compiled_step_is_deterministic(rng):
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    runs = []
    with engine.using("numba"):
        for _ in range(2):
            model = models.resnet8(seed=0)
            with BatchSplit(model, sc.CrossEntropyLoss(), 2) as split:
                runs.append(split.step(x, y)[1])
    np.testing.assert_array_equal(runs[0], runs[1])


def test_the_routes_are_taken(rng):
    # Guards the comparisons above: under "numba" a model really runs the routes and their
    # kernels, without numba the routes' NumPy parts, under "numpy" the layers themselves.
    x = hcwn(rng.standard_normal((engine.MIN_VECTOR, 3, 6, 6)).astype(np.float32))
    pool, bn = MaxPool2D(2), BatchNorm2D(3)
    model = sc.Sequential([pool, bn])
    with engine.using("numba"):
        model.forward(x)
        routes = engine.plan(model).routes
        assert [type(r).__name__ for r in routes] == ["MaxPool2DRoute", "BatchNormRoute"]
        assert routes[0]._cache[0] == "compiled"
        assert routes[1]._cache[1] is False  # x kept, not x - mean
        assert pool._cache is None and bn._cache is None  # the layers' own code did not run
    with without_numba():
        model.forward(x)
        routes = engine.plan(model).routes
        assert routes[0]._cache[0] != "compiled"
        assert routes[1]._cache[1] is True
    with engine.using("numpy"):
        model.forward(x)
        assert engine.plan(model) is None
        assert pool._cache is not None and bn._cache is not None


@pytest.mark.parametrize(
    ("batch", "kernel"), [(1, "short"), (5, "short"), (8, "lanes"), (24, "lanes")]
)
def test_the_2x2_kernel_for_the_length_of_the_innermost_axis(rng, batch, kernel, monkeypatch):
    calls = []
    module = engine.compiled()
    monkeypatch.setattr(module, "maxpool2x2", lambda *a: calls.append("vector"))
    for name, tag in [
        ("maxpool2x2_short", "short"),
        ("maxpool2x2_lanes", "lanes"),
        ("maxpool2x2_grad_lanes", "grad lanes"),
        ("maxpool_grad", "grad"),
    ]:
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _r=real, _t=tag: calls.append(_t) or _r(*a))
    with engine.using("numba"):
        pool = sc.Sequential([MaxPool2D(2)])
        pool.backward(np.ones_like(pool.forward(hcwn(rng.standard_normal((batch, 3, 6, 6))))))
        # NCHW, (N*C, H, 1, W, 1) in memory: rows of windows too short for it, so NumPy
        assert pool.forward(rng.standard_normal((batch, 3, 6, 6))).shape[2] == 3
        assert engine.plan(pool).routes[0]._cache[0] != "compiled"
        three = sc.Sequential([MaxPool2D(3)])
        assert three.forward(hcwn(rng.standard_normal((batch, 3, 6, 6)))).shape[2] == 2
    assert calls == [kernel, "grad lanes" if kernel == "lanes" else "grad"]


def test_the_8_lane_pool_kernels_refuse_shapes_they_would_overrun():
    # The intrinsics load and store without bounds checks: the kernels check first.
    fast = engine.compiled()
    x = np.zeros((1, 4, 2, 4, 8), np.float32)
    for y in (np.zeros((1, 3, 2, 2, 8), np.float32), np.zeros((1, 2, 2, 2, 6), np.float32)):
        idx = np.zeros(y.shape, np.uint8)
        with pytest.raises(ValueError, match="8-lane"):
            fast.maxpool2x2_lanes(np.zeros((*x.shape[:4], y.shape[4]), np.float32), y, idx)
        with pytest.raises(ValueError, match="8-lane"):
            fast.maxpool2x2_grad_lanes(y, idx, np.zeros((*x.shape[:4], y.shape[4]), np.float32))
    y = np.zeros((1, 2, 2, 2, 8), np.float32)
    with pytest.raises(ValueError, match="idx"):
        fast.maxpool2x2_lanes(x, y, np.zeros((1, 2, 2, 1, 8), np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_momentum_is_bit_identical(rng, dtype):
    # The same grads each step, from a fixed list: only the update itself is compared.
    grads = [
        {k: rng.standard_normal(v.shape).astype(dtype) for k, v in layer.params.items()}
        for _, layer in models.lenet5(seed=0, dtype=dtype).named_layers()
    ]
    out = {}
    for mode in ("numpy", "numba"):
        with engine.using(mode):
            model = models.lenet5(seed=0, dtype=dtype)
            opt = sc.optim.SGD(model, lr=0.05, momentum=0.9)
            for _ in range(3):
                for (_, layer), g in zip(model.named_layers(), grads, strict=True):
                    layer.grads = {k: v.copy() for k, v in g.items()}
                opt.step()
            out[mode] = model.state_dict(), opt.state_dict()
    for key, value in out["numpy"][0].items():
        np.testing.assert_array_equal(value, out["numba"][0][key])
    assert out["numpy"][0]["0.weight"].dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy(rng, dtype, reduction):
    """The compiled softmax cross-entropy (the engine's route) against the loss's own code:
    loss and dL/dlogits, with NaN, +inf and -inf rows, unsigned labels and strided logits."""
    z = (rng.standard_normal((40, 2 * 7)) * 20).astype(dtype)[:, ::2]  # strided (40, 7)
    z[3, 2], z[5, :], z[6, 1] = np.nan, -np.inf, np.inf
    labels = rng.integers(0, 7, 40).astype(np.uint8)
    out = {}
    for mode in ("numpy", "numba"):
        with engine.using(mode), np.errstate(invalid="ignore"):
            fn = engine.loss_route(sc.CrossEntropyLoss(reduction=reduction))
            assert isinstance(fn, sc.CrossEntropyLoss) == (mode == "numpy")
            whole = fn.forward(z, labels)
            finite = fn.forward(z[7:], labels[7:])
            out[mode] = whole, finite, fn.backward()
    (whole_np, finite_np, grad_np), (whole_nb, finite_nb, grad_nb) = out["numpy"], out["numba"]
    assert np.isnan(whole_np) and np.isnan(whole_nb)  # a NaN logit makes the loss NaN
    assert np.isfinite(finite_nb) and finite_nb > 0
    tol = 1e-14 if dtype == np.float64 else 1e-6
    assert abs(finite_nb - finite_np) <= tol * abs(finite_np)
    assert grad_nb.dtype == dtype and grad_nb.shape == (33, 7)
    close(grad_np, grad_nb, dtype)
    np.testing.assert_allclose(grad_nb.sum(axis=1), 0, atol=1e-6)  # softmax - onehot


def test_cross_entropy_takes_big_endian_labels(rng):
    z = rng.standard_normal((5, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 1, 0], dtype=">i4")
    ref = sc.CrossEntropyLoss().forward(z, labels.astype(np.int64))
    fn = engine.loss_route(sc.CrossEntropyLoss())
    assert fn.forward(z, labels) == pytest.approx(ref, rel=1e-6)
    assert fn.backward()[1, 2] < 0  # the label's entry: p - 1
    with without_numba():  # the route's forward falls back to the loss's own code
        fn.forward(z, labels)
    assert fn.backward()[1, 2] < 0


def test_cross_entropy_refuses_a_bad_label_in_both_modes():
    for mode in ("numpy", "numba"):
        with engine.using(mode):
            fn = engine.loss_route(sc.CrossEntropyLoss())
            with pytest.raises(sc.ShapeError, match="label 4 at index 1 is out of range"):
                fn.forward(np.zeros((3, 4), np.float32), [0, 4, -1])
            with pytest.raises(sc.ShapeError, match="label -1 at index 2 is out of range"):
                fn.forward(np.zeros((3, 4), np.float32), [0, 3, -1])
            assert fn._cache is None  # nothing kept from a refused call


def test_a_numba_that_fails_to_load_falls_back_to_numpy(monkeypatch):
    # numba raises RuntimeError, not ImportError, when it finds no writable cache directory.
    import importlib.abc
    import sys

    class Boom(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "scratchcnn.engine._numba":
                raise RuntimeError("cannot cache function 'relu': no locator available")
            return None

    engine.available()  # make sure the real module was imported once (then hide it)
    monkeypatch.setattr(sys, "meta_path", [Boom(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "scratchcnn.engine._numba")
    monkeypatch.delattr(engine, "_numba")
    monkeypatch.setattr(modes, "_compiled", None)
    monkeypatch.setattr(modes, "_missing", None)
    monkeypatch.setattr(modes, "_mode", "auto")
    monkeypatch.setattr(modes, "_warned", True)
    assert engine.active() is None
    with pytest.raises(ConfigError, match="RuntimeError: cannot cache function"):
        engine.set_mode("numba")


def test_compiled_kernels_are_cached_outside_the_package(tmp_path):
    """numba's cache goes under SCRATCHCNN_CACHE_DIR/numba (NUMBA_CACHE_DIR wins), never next
    to the installed package, where a reinstall would find stale files."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import numpy as np, scratchcnn as sc\n"
        "sc.models.lenet5().forward(np.zeros((2, 1, 28, 28), np.float32))\n"
    )
    package = Path(sc.__file__).parent
    before = set(package.rglob("*.nbi"))
    for var, folder in (
        ("SCRATCHCNN_CACHE_DIR", tmp_path / "ours"),
        ("NUMBA_CACHE_DIR", tmp_path / "theirs"),
    ):
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
        env[var] = str(folder)
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        cached = list(folder.rglob("*.nbi"))
        assert cached, f"nothing cached under {folder}"
    assert (tmp_path / "ours" / "numba").is_dir()
    assert set(package.rglob("*.nbi")) == before  # nothing new inside the package
