"""Property-based tests over layer shapes and hyper-parameters (hypothesis): output shapes
follow the formula, gradients pass gradcheck in float64, invalid combinations raise a
ConfigError or ShapeError naming the numbers, and extreme logits never make a NaN loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import scratchcnn as sc
from tests.conftest import distinct

CHEAP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GRAD = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
F64 = np.float64


def out_size(size: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
    """The formula of the SPEC: (H + 2p - k) // s + 1 (here with asymmetric padding)."""
    return (size + pad[0] + pad[1] - kernel) // stride + 1


def gradcheck_ok(layer: sc.Layer, x: np.ndarray) -> None:
    event("gradcheck")
    result = sc.gradcheck(layer, x, max_per_tensor=24, seed=1)
    assert result.ok, str(result)


pairs = st.one_of(st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4)))


def as_pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else v


# --- Conv2D ---------------------------------------------------------------------------------
@GRAD
@given(
    c_in=st.integers(1, 3),
    c_out=st.integers(1, 3),
    kernel=pairs,
    stride=st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))),
    padding=st.one_of(
        st.integers(0, 2),
        st.tuples(st.integers(0, 2), st.integers(0, 2)),
        st.sampled_from(["valid", "same"]),
    ),
    n=st.integers(1, 2),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_conv2d_shape_gradients_and_invalid_combinations(
    c_in, c_out, kernel, stride, padding, n, h, w, bias, seed
):
    (kh, kw), (sh, sw) = as_pair(kernel), as_pair(stride)
    if padding == "same" and (sh, sw) != (1, 1):
        with pytest.raises(sc.ConfigError, match=r"padding='same' needs stride 1"):
            sc.Conv2D(c_in, c_out, kernel, stride, padding)
        return
    layer = sc.Conv2D(c_in, c_out, kernel, stride, padding, bias=bias, dtype=F64, rng=seed)
    if padding == "same":
        pads = ((kh - 1) // 2, kh - 1 - (kh - 1) // 2), ((kw - 1) // 2, kw - 1 - (kw - 1) // 2)
    elif padding == "valid":
        pads = ((0, 0), (0, 0))
    else:
        ph, pw = as_pair(padding)
        pads = ((ph, ph), (pw, pw))
    x = distinct((n, c_in, h, w), np.random.default_rng(seed))
    if kh > h + sum(pads[0]) or kw > w + sum(pads[1]):
        with pytest.raises(sc.ShapeError, match=r"is larger than the padded input"):
            layer.forward(x)
        return
    expected = (n, c_out, out_size(h, kh, sh, pads[0]), out_size(w, kw, sw, pads[1]))
    if padding == "same":
        assert expected[2:] == (h, w)
    assert layer.output_shape(x.shape) == expected
    assert layer.forward(x).shape == expected
    gradcheck_ok(layer, x)


@CHEAP
@given(
    c_in=st.integers(-2, 3),
    c_out=st.integers(-2, 3),
    kernel=st.integers(-2, 3),
    stride=st.integers(-2, 3),
    padding=st.integers(-2, 2),
)
def test_conv2d_hyper_parameters_out_of_range_raise(c_in, c_out, kernel, stride, padding):
    valid = min(c_in, c_out, kernel, stride) >= 1 and padding >= 0
    if valid:
        sc.Conv2D(c_in, c_out, kernel, stride, padding)
    else:
        with pytest.raises(sc.ConfigError, match=r"must be (positive|non-negative|a positive)"):
            sc.Conv2D(c_in, c_out, kernel, stride, padding)


# --- pooling --------------------------------------------------------------------------------
@GRAD
@given(
    cls=st.sampled_from([sc.MaxPool2D, sc.AvgPool2D]),
    kernel=pairs,
    stride=st.one_of(st.none(), st.integers(1, 3)),
    padding=st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2))),
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
def test_pooling_shape_gradients_and_invalid_combinations(
    cls, kernel, stride, padding, n, c, h, w, seed
):
    (kh, kw), (ph, pw) = as_pair(kernel), as_pair(padding)
    if 2 * ph > kh or 2 * pw > kw:
        with pytest.raises(sc.ConfigError, match=r"must be at most half the kernel size"):
            cls(kernel, stride, padding)
        return
    layer = cls(kernel, stride, padding)
    sh, sw = (kh, kw) if stride is None else (stride, stride)
    # Distinct values: finite differences are undefined at max-pool ties.
    x = distinct((n, c, h, w), np.random.default_rng(seed))
    if kh > h + 2 * ph or kw > w + 2 * pw:
        with pytest.raises(sc.ShapeError, match=r"is larger than the padded input"):
            layer.forward(x)
        return
    expected = (n, c, out_size(h, kh, sh, (ph, ph)), out_size(w, kw, sw, (pw, pw)))
    assert layer.output_shape(x.shape) == expected
    assert layer.forward(x).shape == expected
    gradcheck_ok(layer, x)


def test_maxpool_1x1_kernel_with_stride_backward():
    """Found by the property above: MaxPool2D(1, stride=2) backward used the wrong output
    size (fixed)."""
    layer = sc.MaxPool2D(1, stride=2)
    x = distinct((1, 1, 2, 2), np.random.default_rng(0))
    y = layer.forward(x)
    assert y.shape == (1, 1, 1, 1)
    dx = layer.backward(np.ones_like(y))
    np.testing.assert_array_equal(dx, [[[[1.0, 0.0], [0.0, 0.0]]]])


def test_maxpool_stride_beyond_kernel_backward(monkeypatch):
    """Found by the property above: MaxPool2D(2, stride=3) on 3x3 returns garbage in dL/dx
    at the cells no window covers. np.empty_like may return anything; make it NaN."""
    real = np.empty_like
    monkeypatch.setattr(np, "empty_like", lambda a, *args, **kw: real(a, *args, **kw) * np.nan)
    layer = sc.MaxPool2D(2, stride=3)
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    dx = layer.backward(np.ones_like(layer.forward(x)))
    np.testing.assert_array_equal(dx, [[[[0, 0, 0], [0, 1, 0], [0, 0, 0]]]])


# --- Dense, BatchNorm, activations ----------------------------------------------------------
@GRAD
@given(
    n=st.integers(1, 4),
    fin=st.integers(1, 8),
    fout=st.integers(1, 8),
    bias=st.booleans(),
    given_features=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_dense(n, fin, fout, bias, given_features, seed):
    layer = sc.Dense(fin, fout, bias=bias, dtype=F64, rng=seed)
    x = np.random.default_rng(seed).standard_normal((n, given_features))
    if given_features != fin:
        with pytest.raises(sc.ShapeError, match=rf"expects {fin} input features, got "):
            layer.forward(x)
        return
    assert layer.output_shape(x.shape) == (n, fout)
    assert layer.forward(x).shape == (n, fout)
    gradcheck_ok(layer, x)


@GRAD
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 3),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    training=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_batchnorm(n, c, h, w, training, seed):
    layer = sc.BatchNorm2D(c, dtype=F64).train(training)
    rng = np.random.default_rng(seed)
    layer.params["weight"][...] = rng.uniform(0.5, 2, c)
    layer.params["bias"][...] = rng.standard_normal(c)
    x = rng.standard_normal((n, c, h, w))
    if training and n * h * w == 1:
        with pytest.raises(sc.ShapeError, match=r"needs more than one value per channel"):
            layer.forward(x)
        return
    assert layer.forward(x).shape == x.shape
    gradcheck_ok(layer, x)


@CHEAP
@given(
    eps=st.floats(allow_nan=True, allow_infinity=False),
    momentum=st.floats(allow_nan=True, allow_infinity=True),
)
def test_batchnorm_hyper_parameters(eps, momentum):
    valid = eps > 0 and 0 <= momentum <= 1
    if valid:
        sc.BatchNorm2D(2, eps=eps, momentum=momentum)
    else:
        with pytest.raises(sc.ConfigError, match=r"^(eps|momentum) must be (positive|in|a finite)"):
            sc.BatchNorm2D(2, eps=eps, momentum=momentum)


@GRAD
@given(
    layer=st.sampled_from(
        [sc.ReLU(), sc.LeakyReLU(0.1), sc.Sigmoid(), sc.Tanh(), sc.Softmax(), sc.Flatten()]
    ),
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_shape_preserving_layers(layer, shape, seed):
    x = distinct(tuple(shape), np.random.default_rng(seed))  # away from ReLU's kink at 0
    if isinstance(layer, sc.Flatten):
        if len(shape) != 4:
            return
        expected = (shape[0], math.prod(shape[1:]))
    else:
        expected = tuple(shape)
    assert layer.forward(x).shape == expected
    gradcheck_ok(layer, x)


@CHEAP
@given(p=st.floats(allow_nan=True, allow_infinity=True))
def test_dropout_probability(p):
    if 0 <= p < 1:
        sc.Dropout(p)
    else:
        with pytest.raises(sc.ConfigError, match=r"Dropout probability p must be in \[0, 1\)"):
            sc.Dropout(p)


# --- a whole stack: the shapes Sequential predicts are the shapes it produces ---------------
@GRAD
@given(
    h=st.integers(6, 12),
    c1=st.integers(1, 3),
    k1=st.integers(1, 3),
    pool=st.integers(1, 2),
    classes=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_sequential_output_shapes_and_gradients(h, c1, k1, pool, classes, seed):
    convolved = h - k1 + 1
    pooled = (convolved - pool) // pool + 1
    model = sc.Sequential(
        [
            sc.Conv2D(1, c1, k1, dtype=F64, rng=seed),
            sc.Tanh(),
            sc.AvgPool2D(pool),
            sc.Flatten(),
            sc.Dense(c1 * pooled * pooled, classes, dtype=F64, rng=seed + 1),
        ],
        input_shape=(1, h, h),
    )
    x = np.random.default_rng(seed).standard_normal((2, 1, h, h))
    shapes = model.output_shapes()
    assert shapes[-1] == (1, classes)
    assert model.forward(x).shape == (2, classes)
    result = sc.gradcheck(model, x, max_per_tensor=12, seed=2)
    assert result.ok, str(result)


# --- optimiser hyper-parameters -------------------------------------------------------------
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1, 2),
    st.sampled_from([0.0, 1.0, -0.0]),
)


@CHEAP
@given(lr=numbers, momentum=numbers, weight_decay=numbers, nesterov=st.booleans())
def test_sgd_hyper_parameters(lr, momentum, weight_decay, nesterov):
    model = sc.Sequential([sc.Dense(2, 2)])
    finite = all(math.isfinite(v) for v in (lr, momentum, weight_decay))
    valid = (
        finite
        and lr > 0
        and 0 <= momentum < 1
        and weight_decay >= 0
        and not (nesterov and momentum == 0)
    )
    if valid:
        sc.optim.SGD(model, lr, momentum, weight_decay=weight_decay, nesterov=nesterov)
    else:
        with pytest.raises(sc.ConfigError, match=r"(must be a number|nesterov=True needs)"):
            sc.optim.SGD(model, lr, momentum, weight_decay=weight_decay, nesterov=nesterov)


@CHEAP
@given(lr=numbers, beta1=numbers, beta2=numbers, eps=numbers)
def test_adam_hyper_parameters(lr, beta1, beta2, eps):
    model = sc.Sequential([sc.Dense(2, 2)])
    finite = all(math.isfinite(v) for v in (lr, beta1, beta2, eps))
    valid = finite and lr > 0 and 0 <= beta1 < 1 and 0 <= beta2 < 1 and eps > 0
    if valid:
        sc.optim.Adam(model, lr, (beta1, beta2), eps)
    else:
        with pytest.raises(sc.ConfigError, match=r"must be a number"):
            sc.optim.Adam(model, lr, (beta1, beta2), eps)


# --- losses: extreme logits never make a NaN ------------------------------------------------
def extreme_logits(dtype: type) -> st.SearchStrategy:
    big = float(np.finfo(dtype).max)
    values = st.one_of(
        st.floats(-big, big, width=32 if dtype == np.float32 else 64),
        st.sampled_from([big, -big, 0.0, 1e30, -1e30]),
    )
    return st.integers(1, 4).flatmap(
        lambda n: st.integers(2, 6).flatmap(
            lambda k: st.lists(values, min_size=n * k, max_size=n * k).map(
                lambda v: np.array(v, dtype=dtype).reshape(n, k)
            )
        )
    )


@CHEAP
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]))
def test_cross_entropy_never_nan(data, dtype):
    logits = data.draw(extreme_logits(dtype))
    n, k = logits.shape
    labels = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    loss_fn = sc.CrossEntropyLoss()
    with np.errstate(over="ignore"):
        loss = loss_fn.forward(logits, labels)
        grad = loss_fn.backward()
        spread = float(np.ptp(logits.astype(np.float64), axis=1).max())
    assert not math.isnan(loss) and loss >= 0
    if spread < float(np.finfo(dtype).max) / 2:
        assert math.isfinite(loss)  # only a spread beyond the dtype's range overflows
    assert grad.dtype == dtype and np.isfinite(grad).all()
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-6)


@CHEAP
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]))
def test_bce_never_nan(data, dtype):
    logits = data.draw(extreme_logits(dtype))
    targets = np.array(
        data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=logits.size,
                           max_size=logits.size)),
        dtype=dtype,
    ).reshape(logits.shape)  # fmt: skip
    loss_fn = sc.BCEWithLogitsLoss()
    with np.errstate(over="ignore"):
        loss = loss_fn.forward(logits, targets)
        grad = loss_fn.backward()
    assert not math.isnan(loss) and loss >= 0
    assert np.isfinite(grad).all() and np.abs(grad).max() <= 1
