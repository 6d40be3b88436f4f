"""Inference plans (``scratchcnn.engine.inference``) against the reference layers.

An eval-mode pass runs through an InferencePlan: one flat list of steps, convolutions with
their bias, BatchNorm and activation fused, 4-D activations kept as (C, N, H, W). Every
model here runs twice, the plan's way and the reference way (``SCRATCHCNN_KERNELS=numpy``:
the layers' own NumPy code), and the outputs must agree; then what makes a pass leave the
plan (training, a hook, a changed model, a cast) and what a backward after it does.
"""

from __future__ import annotations

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn import engine
from scratchcnn.engine import inference
from scratchcnn.nn.windows import im2col
from tests.engine.conftest import close, way

F64 = np.float64


def conv(c, o, k=3, **kw):
    return sc.Conv2D(c, o, k, dtype=kw.pop("dtype", F64), rng=kw.pop("rng", 0), **kw)


def bn(c, dtype=F64, seed=0):
    """A BatchNorm2D whose running statistics and affine terms are not the defaults."""
    layer = sc.BatchNorm2D(c, dtype=dtype)
    r = np.random.default_rng(seed)
    layer.buffers["running_mean"][:] = r.standard_normal(c)
    layer.buffers["running_var"][:] = r.uniform(0.5, 2.0, c)
    layer.params["weight"][:] = r.uniform(0.5, 1.5, c)
    layer.params["bias"][:] = r.standard_normal(c)
    return layer


ACTIVATIONS = {
    "relu": sc.ReLU,
    "relu6": sc.ReLU6,
    "clip_low": lambda: sc.Clip(min_value=-0.5),
    "clip_high": lambda: sc.Clip(max_value=0.25),
    "leaky": lambda: sc.LeakyReLU(0.1),
    "hardsigmoid": sc.Hardsigmoid,
    "hardswish": sc.Hardswish,
    "silu": sc.SiLU,
    "sigmoid": sc.Sigmoid,
    "tanh": sc.Tanh,
    "gelu": sc.GELU,
    "gelu_tanh": lambda: sc.GELU(approximate="tanh"),
}


def mobile_block(c: int, e: int, stride: int, act) -> list:
    """An inverted residual (MobileNetV2 / EfficientNet) with squeeze-and-excitation."""
    se = sc.Gate([sc.GlobalAvgPool2D(), conv(e, 4, 1), act(), conv(4, e, 1), sc.Sigmoid()])
    body = [conv(c, e, 1), bn(e), act(), conv(e, e, 3, stride=stride, padding=1, groups=e)]
    body += [bn(e, seed=1), act(), se, conv(e, c, 1, bias=False), bn(c, seed=2)]
    return [sc.Residual(body)] if stride == 1 else [*body[:-2], conv(e, c, 1), bn(c)]


MODELS = {
    # name: (layers, input shape without the batch)
    "lenet": (
        lambda: [
            conv(1, 6, 5),
            sc.ReLU(),
            sc.MaxPool2D(2),
            conv(6, 16, 5),
            sc.ReLU(),
            sc.MaxPool2D(2),
            sc.Flatten(),
            sc.Dense(16 * 4 * 4, 10, dtype=F64, rng=1),
            sc.ReLU(),
            sc.Dense(10, 5, dtype=F64, rng=2),
        ],
        (1, 28, 28),
    ),
    "resnet": (
        lambda: [
            conv(3, 8, 7, stride=2, padding=3, bias=False),
            bn(8),
            sc.ReLU(),
            sc.MaxPool2D(3, stride=2, padding=1),
            sc.Residual(
                [conv(8, 8, padding=1), bn(8), sc.ReLU(), conv(8, 8, padding=1), bn(8, seed=3)]
            ),
            sc.ReLU(),
            sc.Residual(
                [conv(8, 16, stride=2, padding=1), sc.ReLU(), conv(16, 16, padding=1)],
                [conv(8, 16, 1, stride=2), bn(16)],
            ),
            sc.ReLU(),
            sc.GlobalAvgPool2D(),
            sc.Flatten(),
            sc.Dense(16, 4, dtype=F64),
        ],
        (3, 32, 32),
    ),
    "mobile": (
        lambda: [
            conv(3, 8, 3, stride=2, padding=1),
            bn(8),
            sc.ReLU6(),
            *mobile_block(8, 16, 1, sc.ReLU6),
            *mobile_block(8, 24, 2, sc.SiLU),
            *mobile_block(8, 24, 1, sc.Hardswish),
            *mobile_block(8, 32, 2, sc.SiLU),
            sc.GlobalAvgPool2D(),
            sc.Flatten(),
            sc.Dropout(0.2),
            sc.Dense(8, 6, dtype=F64),
        ],
        (3, 40, 40),
    ),
    "inception": (
        lambda: [
            sc.Normalize([0.5, 0.4, 0.3], [0.2, 0.3, 0.4]),
            conv(3, 6, 3, padding=((1, 0), (2, 1))),
            sc.Parallel(
                [
                    [conv(6, 4, 1), sc.ReLU()],
                    [conv(6, 3, 1), sc.ReLU(), conv(3, 5, padding=1), sc.ReLU()],
                    [sc.MaxPool2D(3, stride=1, padding=1, ceil_mode=True), conv(6, 2, 1)],
                    [sc.AvgPool2D(3, stride=1, padding=1), sc.LeakyReLU(0.2)],
                ]
            ),
            sc.MaxPool2D(3, stride=2, ceil_mode=True),
            sc.Parallel([conv(17, 4, 1), [conv(17, 4, 3, padding=2, dilation=2)]], merge="add"),
            sc.Parallel([[sc.Tanh()]]),
            sc.DenseConcat([conv(4, 2, padding=1), bn(2)]),
            conv(6, 6, 3, groups=2, padding=1),
            sc.GELU(),
            conv(6, 6, 2, stride=2, groups=3),
            sc.Flatten(),
            bn_1d(6 * 4 * 4),
            sc.Sigmoid(),
            sc.Dense(96, 3, dtype=F64),
            sc.Softmax(),
        ],
        (3, 17, 17),
    ),
}


def bn_1d(f: int) -> sc.BatchNorm1D:
    layer = sc.BatchNorm1D(f, dtype=F64)
    r = np.random.default_rng(7)
    layer.buffers["running_mean"][:] = r.standard_normal(f)
    layer.buffers["running_var"][:] = r.uniform(0.5, 2.0, f)
    return layer


def build(name: str, dtype=F64) -> tuple[sc.Sequential, tuple[int, ...]]:
    make, shape = MODELS[name]
    return sc.Sequential(make()).astype(dtype).eval(), shape


def planned(model: sc.Sequential) -> bool:
    """Whether the model's last forward ran an inference plan."""
    p = engine.plan(model)
    return p is not None and p._inferred is not None


def reference(model: sc.Sequential, x: np.ndarray) -> np.ndarray:
    with way("reference"):
        return model.forward(x)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_plan_computes_what_the_layers_compute(name, batch, dtype, rng):
    model, shape = build(name, dtype)
    x = rng.standard_normal((batch, *shape)).astype(dtype)
    keep = x.copy()
    y = model.forward(x)
    assert planned(model)
    assert y.flags.c_contiguous and y.dtype == dtype
    close(y, reference(model, x), dtype)
    np.testing.assert_array_equal(x, keep)  # the input is never written to
    again = model.forward(x)
    np.testing.assert_array_equal(again, y)  # deterministic
    y[...] = 0  # the caller's output is its own: the next pass does not see this
    np.testing.assert_array_equal(model.forward(x), again)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("where", ["after_conv", "after_bn", "alone", "after_view"])
def test_each_activation_fused_or_alone(act, where, rng):
    make = ACTIVATIONS[act]
    if where == "after_conv":  # folded into the convolution's pass
        layers = [conv(2, 3, 3, padding=1), make()]
    elif where == "after_bn":  # bias, then BatchNorm, then the activation: one pass
        layers = [conv(2, 3, 3, padding=1), bn(3), make()]
    elif where == "alone":  # after a pooling layer's route: a step of its own
        layers = [sc.AvgPool2D(2), make()]
    else:  # after Flatten's view: on a copy
        layers = [sc.Flatten(), make()]
    model = sc.Sequential(layers).eval()
    x = rng.standard_normal((2, 2, 6, 6)) * 4
    x[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    with np.errstate(invalid="ignore", over="ignore"):
        y = model.forward(x)
        assert planned(model)
        want = reference(model, x)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("seed", range(24))
def test_random_convolutions_and_pools(seed):
    r = np.random.default_rng(seed)
    c = int(r.integers(1, 5))
    g = int(r.choice([1, c])) if c > 1 else 1
    o = g * int(r.integers(1, 4)) if g > 1 else int(r.integers(1, 6))
    if r.random() < 0.3 and c > 1:
        g, o = c, c  # depthwise
    k = (int(r.integers(1, 5)), int(r.integers(1, 5)))
    stride = (int(r.integers(1, 4)), int(r.integers(1, 4)))
    dil = (1, 1) if g == c == o or r.random() < 0.5 else (int(r.integers(1, 3)), 1)
    pad = tuple((int(r.integers(0, kk)), int(r.integers(0, kk))) for kk in k)
    hw = (int(r.integers(6, 12)), int(r.integers(6, 12)))
    layers = [sc.Conv2D(c, o, k, stride=stride, padding=pad, dilation=dil, groups=g, rng=seed,
                        bias=bool(r.random() < 0.7), dtype=F64)]  # fmt: skip
    if r.random() < 0.5:
        pk = int(r.integers(1, 4))
        layers.append(sc.MaxPool2D(pk, stride=int(r.integers(1, 3)), padding=pk // 2,
                                   ceil_mode=bool(r.random() < 0.5)))  # fmt: skip
    model = sc.Sequential(layers).eval()
    batch = int(r.integers(1, 4))
    x = r.standard_normal((batch, c, *hw))
    try:
        want = reference(model, x)
    except sc.ShapeError:  # a kernel larger than the padded input: nothing to compare
        pytest.skip("no output for this draw")
    y = model.forward(x)
    assert planned(model)
    close(y, want, F64)


@pytest.mark.parametrize("hw", [(2, 2), (5, 3), (8, 8), (9, 16)])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("k, pad", [(3, (1, 1)), (5, (2, 1)), (3, (0, 2)), (2, (0, 0))])
def test_both_depthwise_kernels_equal_the_grouped_reference(hw, stride, k, pad, rng):
    c = 5
    x = rng.standard_normal((2, c, *hw))
    layer = sc.Conv2D(c, c, k, stride=stride, padding=(pad, pad), groups=c, dtype=F64, rng=2)
    try:
        want = reference(sc.Sequential([layer]).eval(), x)
    except sc.ShapeError:
        pytest.skip("kernel larger than the padded input")
    fast = engine.modes.compiled()
    w = layer.params["weight"].reshape(c, k, k)
    xc = np.ascontiguousarray(x.transpose(1, 0, 2, 3))
    (pt, _), (pl, _) = layer.pad
    for kernel in (fast.depthwise_planes, fast.depthwise_hwc):
        out = np.empty((c, 2, *want.shape[2:]))
        kernel(xc, w, stride, stride, pt, pl, out)
        close(out.transpose(1, 0, 2, 3) + layer.params["bias"][:, None, None], want, F64)


@pytest.mark.parametrize(
    "k, stride, pad, dil, hw",
    [(3, 1, 1, 1, (4, 4)), (3, 1, 1, 1, (2, 2)), (5, 1, 2, 1, (6, 3)), (3, 1, 2, 2, (5, 5)),
     (3, 2, 1, 1, (7, 7)), (1, 2, 0, 1, (5, 4)), (2, 1, 0, 1, (4, 4)), (3, 1, 0, 1, (5, 5))],
)  # fmt: skip
def test_im2col_kernel_equals_the_layers_im2col(k, stride, pad, dil, hw, rng):
    x = rng.standard_normal((3, 2, *hw))
    x[0, 1, 0, 0] = np.inf  # a value that must not leak into the padding's zeros
    padding = ((pad, pad), (pad, pad))
    want = im2col(x, (k, k), (stride, stride), padding, (dil, dil))
    oh = (hw[0] + 2 * pad - dil * (k - 1) - 1) // stride + 1
    ow = (hw[1] + 2 * pad - dil * (k - 1) - 1) // stride + 1
    cols = np.full(want.shape, np.nan)
    xc = np.ascontiguousarray(x.transpose(1, 0, 2, 3))
    engine.modes.compiled().im2col_cn(xc, k, k, stride, stride, dil, dil, pad, pad, oh, ow, cols)
    np.testing.assert_array_equal(cols, want)


# --- when a pass leaves the plan ----------------------------------------------------------
def test_training_a_hook_or_the_switch_run_layer_by_layer(rng, monkeypatch):
    model, shape = build("resnet")
    x = rng.standard_normal((2, *shape))
    model.train()
    model.forward(x)
    assert not planned(model)
    model.eval()
    model.forward(x)
    assert planned(model)
    # one BatchNorm put back in training inside an eval model: its batch statistics count
    norm = model.layers[4].body.layers[1]
    norm.train()
    y = model.forward(x)
    assert not planned(model)
    norm.eval()
    model.forward(x)
    assert planned(model)
    # a hook on a nested layer is called
    seen = []
    inner = model.layers[4].body.layers[0]

    def hook(z, layer=inner):
        seen.append(z.shape)
        return type(layer).forward(layer, z)

    inner.forward = hook
    hooked = model.forward(x)
    assert seen and not planned(model)
    del inner.forward
    close(hooked, model.forward(x), F64)
    monkeypatch.setattr(inference, "INFERENCE_PLAN", False)
    model.forward(x)
    assert not planned(model)
    assert y.shape == hooked.shape


def test_a_changed_model_is_planned_again(rng):
    model, shape = build("resnet")
    x = rng.standard_normal((1, *shape))
    model.forward(x)
    body = model.layers[4].body
    body.layers[0] = conv(8, 8, padding=1, rng=5).eval()  # a new layer in a nested list
    y = model.forward(x)
    assert planned(model)
    close(y, reference(model, x), F64)
    # weights changed in place (an optimiser step, a loaded state): no stale copy anywhere
    for _, arr in model.named_parameters():
        arr *= 1.5
    model.layers[1].buffers["running_var"] *= 2
    close(model.forward(x), reference(model, x), F64)
    model.layers[4].shortcut = sc.Sequential([sc.Dropout(0.1)]).eval()  # a child replaced
    y = model.forward(x)
    assert planned(model)
    close(y, reference(model, x), F64)
    model.layers[4].shortcut.layers[0].train()  # a new child's mode counts too
    model.forward(x)
    assert not planned(model)


def test_a_cast_model_refuses_the_old_dtype_as_the_layers_do(rng):
    model, shape = build("lenet", np.float32)
    x = rng.standard_normal((1, *shape)).astype(np.float32)
    model.forward(x)
    model.astype(np.float64)
    with pytest.raises(sc.DTypeError, match="holds float64 parameters but got a float32"):
        model.forward(x)
    close(model.forward(x.astype(F64)), reference(model, x.astype(F64)), F64)


def test_bad_inputs_get_the_layers_errors(rng):
    model, shape = build("lenet")
    with pytest.raises(sc.ShapeError, match=r"expects 1 input channels, got 3"):
        model.forward(rng.standard_normal((1, 3, 28, 28)))
    with pytest.raises(sc.DTypeError, match=r"must be a numpy\.ndarray"):
        model.forward([[0.0]])
    with pytest.raises(sc.ShapeError, match="batch is empty"):
        model.forward(np.zeros((0, *shape)))
    # and the model still plans the right input afterwards
    model.forward(rng.standard_normal((1, *shape)))
    assert planned(model)


@pytest.mark.parametrize("name", ["resnet", "mobile", "inception"])
def test_backward_after_an_inference_pass_is_the_layers_backward(name, rng):
    model, shape = build(name)
    x = rng.standard_normal((2, *shape))
    y = model.forward(x)
    assert planned(model)
    dy = rng.standard_normal(y.shape)
    dx = model.backward(dy)
    grads = [g.copy() for g in model.gradients()]
    with way("reference"):
        model.forward(x)
        want = model.backward(dy)
        want_grads = model.gradients()
    close(dx, want, F64)
    assert len(grads) == len(want_grads) > 0
    for g, w in zip(grads, want_grads, strict=True):
        close(g, w, F64)


def test_predict_runs_the_plan_for_full_and_last_batches(rng):
    model, shape = build("mobile", np.float32)
    x = rng.standard_normal((5, *shape)).astype(np.float32)
    got = model.predict(x, batch_size=2)
    assert len(engine.plan(model)._inference) == 2  # batches of 2 and the last one of 1
    with way("reference"):
        want = model.predict(x, batch_size=2)
    close(got, want, np.float32)


@pytest.mark.parametrize("act", [sc.SiLU, sc.Sigmoid])
@pytest.mark.parametrize("with_bn", [False, True])
def test_float32_silu_and_sigmoid_by_the_compiled_exp(act, with_bn, rng):
    """float32 SiLU and Sigmoid after a convolution run ``_numba.affine_sigmoid32`` (its own
    exp): close to the reference relative to each value, and the same at the edges."""
    layers = [conv(2, 3, 1, dtype=np.float32)]
    if with_bn:
        layers.append(bn(3, np.float32))
    model = sc.Sequential([*layers, act()]).eval()
    model.layers[0].params["weight"][:] = np.eye(3, 2, dtype=np.float32)[:, :, None, None]
    model.layers[0].params["bias"][:] = 0
    x = (rng.standard_normal((2, 2, 40, 40)) * 30).astype(np.float32)
    x[0, 0, 0, :8] = [np.nan, np.inf, -np.inf, -200, 200, 0, -87.5, 88.5]
    with np.errstate(all="ignore"):
        y = model.forward(x)
        assert planned(model)
        step = engine.plan(model)._inference[(x.shape, x.dtype)].steps[0]
        assert step.epilogue.exp32
        want = reference(model, x)
    # Without BatchNorm, v is the reference's to the bit and only exp differs: 1e-6. With
    # it, v = x * scale + shift differs from (x - mean) / std * w + b by an ulp or two, and
    # exp(-v) multiplies that by |v| (up to ~90 here).
    rtol = 3e-5 if with_bn else 1e-6
    np.testing.assert_allclose(y, want, rtol=rtol, atol=1e-30, equal_nan=True)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))


@pytest.mark.parametrize("name", ["resnet", "inception"])
def test_a_large_im2col_is_gathered_a_few_images_at_a_time(name, rng, monkeypatch):
    monkeypatch.setattr(inference, "MAX_COLS", 300)  # below one image's matrix: 1 at a time
    model, shape = build(name)
    x = rng.standard_normal((3, *shape))
    y = model.forward(x)
    assert planned(model)
    steps = engine.plan(model)._inference[(x.shape, x.dtype)].steps
    assert any(getattr(s, "chunk", 9) < 3 and s.kind == "im2col" for s in steps)
    close(y, reference(model, x), F64)


class Crop(sc.Layer):
    """A custom layer whose output_shape says one thing and forward does another."""

    def output_shape(self, input_shape):
        return tuple(input_shape)  # wrong: forward drops a row and a column

    def forward(self, x):
        return x[:, :, 1:, 1:]

    def backward(self, dy):
        raise NotImplementedError


def test_a_layer_whose_output_shape_lies_runs_layer_by_layer(rng):
    model = sc.Sequential([Crop(), conv(2, 3, 3, padding=1), sc.ReLU(), sc.MaxPool2D(2)]).eval()
    x = rng.standard_normal((1, 2, 9, 9))
    y = model.forward(x)  # the plan finds the mismatch before a kernel reads anything
    assert not planned(model) and y.shape == (1, 3, 4, 4)
    close(y, reference(model, x), F64)
    assert engine.plan(model)._inference[(x.shape, x.dtype)] is None
    close(model.forward(x), y, F64)


def wide_net() -> sc.Sequential:
    """A small model with one 256-channel convolution: "wide", so its batches may split."""
    return sc.Sequential(
        [conv(3, 8, 3, padding=1), bn(8), sc.ReLU(), conv(8, 256, 1), sc.ReLU6(),
         conv(256, 256, 3, stride=2, padding=1, groups=256), sc.GlobalAvgPool2D(),
         sc.Flatten(), sc.Dense(256, 5, dtype=F64)]
    ).eval()  # fmt: skip


@pytest.mark.parametrize("batch", [2, 3, 7])
def test_a_batch_split_over_blas_threads_gives_each_images_result(batch, rng):
    from scratchcnn._blas import blas_libraries, blas_threads, current_blas_threads

    if not blas_libraries():
        pytest.fail("NumPy's BLAS is not visible to threadpoolctl")
    model = wide_net()
    x = rng.standard_normal((batch, 3, 9, 9))
    with blas_threads(2):
        split = model.forward(x)
        assert current_blas_threads() == 2  # the parts ran on one thread each, then back
    p = engine.plan(model)._inference[(x.shape, x.dtype)]
    assert [(a, b) for a, b, _ in p._parts[2]] == [(0, batch // 2), (batch // 2, batch)]
    with blas_threads(1):
        whole = model.forward(x)
    close(split, whole, F64)
    close(split, reference(model, x), F64)
    with blas_threads(2):
        np.testing.assert_array_equal(model.forward(x), split)  # the same bits every time
