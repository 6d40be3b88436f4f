"""The engine's Conv2D and BatchNorm routes against PyTorch and the reference layers.

The Conv2D route computes dL/dx at stride 1 (O <= 2C) as a correlation of dy with the
rotated kernel, elsewhere by the adjoint of its row im2col; both against each other and
torch. The BatchNorm route works on its input's memory layout (``channel_view``); torch
runs on a contiguous copy, and the reference layer is held to the same numbers.
"""

import numpy as np
import pytest
import torch

import scratchcnn as sc
from scratchcnn.engine import conv as conv_module
from scratchcnn.engine.conv import Conv2DRoute
from scratchcnn.engine.layout import channel_view, from_memory_order
from tests.engine.conftest import routes_only, way

DTYPES = [(np.float64, 1e-10), (np.float32, 2e-4)]

CORRELATION_CASES = [
    # cin, cout, kernel, padding, hw
    (4, 4, 3, 1, (7, 6)),  # 3x3 "same"
    (3, 6, 3, 0, (6, 7)),  # valid, O = 2C
    (2, 3, 5, 2, (6, 6)),
    (3, 2, (2, 3), ((1, 0), (0, 2)), (5, 4)),  # even kernel, asymmetric padding
    (2, 2, 1, 0, (3, 3)),  # 1x1
]


def _torch_conv_grads(conv, x, dy):
    (pt, pb), (pl, pr) = conv.pad
    xt = torch.tensor(np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))), requires_grad=True)
    wt = torch.tensor(conv.params["weight"], requires_grad=True)
    bt = torch.tensor(conv.params["bias"], requires_grad=True)
    torch.nn.functional.conv2d(xt, wt, bt, stride=conv.stride).backward(torch.tensor(dy))
    h, w = x.shape[2:]
    return xt.grad.numpy()[:, :, pt : pt + h, pl : pl + w], wt.grad.numpy(), bt.grad.numpy()


@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("cin, cout, k, pad, hw", CORRELATION_CASES)
def test_conv_input_grad_by_correlation_matches_col2im_and_torch(
    cin, cout, k, pad, hw, dtype, tol, rng, monkeypatch
):
    conv = sc.Conv2D(cin, cout, k, padding=pad, dtype=dtype, rng=1)
    route = Conv2DRoute(conv)
    assert route._transposable
    x = rng.standard_normal((3, cin, *hw)).astype(dtype)
    y = route.forward(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    fast = route.backward(dy)
    fast_w = conv.grads["weight"].copy()
    assert fast.dtype == dtype and fast.shape == x.shape
    monkeypatch.setattr(Conv2DRoute, "_transposable", property(lambda self: False))
    reference = route.backward(dy)
    np.testing.assert_allclose(fast, reference, rtol=tol, atol=tol)
    np.testing.assert_array_equal(conv.grads["weight"], fast_w)  # shared code
    tx, tw, tb = _torch_conv_grads(conv, x, dy)
    np.testing.assert_allclose(fast, tx, rtol=tol, atol=tol)
    np.testing.assert_allclose(fast_w, tw, rtol=tol, atol=tol)
    np.testing.assert_allclose(conv.grads["bias"], tb, rtol=tol, atol=tol)


WEIGHT_GRAD_CASES = [
    # cin, cout, kernel, stride, padding, hw, batch: rows of OW*N columns
    (4, 8, 3, 1, 1, (8, 8), 8),  # 64 columns: one GEMM (the CIFAR-shaped net's conv3 at b8)
    (4, 8, 3, 1, 1, (8, 8), 9),  # 72 columns: one GEMM per row
    (3, 5, (3, 2), 2, ((1, 0), (0, 1)), (7, 6), 2),  # stride, asymmetric padding
    (2, 3, 5, 1, 0, (9, 5), 1),  # one column per row
]


@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("cin, cout, k, s, pad, hw, n", WEIGHT_GRAD_CASES)
def test_conv_weight_grad_routes_agree_with_torch(
    cin, cout, k, s, pad, hw, n, dtype, tol, rng, monkeypatch
):
    """dL/dW by one GEMM over all rows (full im2col) and by one GEMM per output row."""
    conv = sc.Conv2D(cin, cout, k, stride=s, padding=pad, dtype=dtype, rng=1)
    route = Conv2DRoute(conv)
    x = rng.standard_normal((n, cin, *hw)).astype(dtype)
    dy = rng.standard_normal(route.forward(x).shape).astype(dtype)
    route.backward(dy)
    default = conv.grads["weight"].copy()
    grads = {}
    for limit in (0, 10**6):  # every row on its own, then all rows in one GEMM
        monkeypatch.setattr(conv_module, "ONE_GEMM_MAX_COLS", limit)
        route.forward(x)
        route.backward(dy)
        grads[limit] = conv.grads["weight"].copy()
    np.testing.assert_allclose(grads[10**6], grads[0], rtol=tol, atol=tol)
    # The default route: one GEMM when a row has at most 64 columns (and there are rows
    # to join), else one per row.
    oh, ow = route.forward(x).shape[2:]
    one_gemm = ow * n <= 64 and oh > 1
    np.testing.assert_array_equal(default, grads[10**6 if one_gemm else 0])
    _, tw, _ = _torch_conv_grads(conv, x, dy)
    for g in grads.values():
        assert g.dtype == dtype and g.flags.c_contiguous
        np.testing.assert_allclose(g, tw, rtol=tol, atol=tol)


def test_conv_correlation_path_passes_gradcheck(rng):
    conv = sc.Conv2D(3, 3, 3, padding="same", dtype=np.float64, rng=0)
    assert Conv2DRoute(conv)._transposable
    with way("engine"):  # gradcheck of a model: the engine's plan, so the route
        assert sc.gradcheck(sc.Sequential([conv]), rng.standard_normal((2, 3, 5, 4))).ok


@pytest.mark.parametrize(
    "cin, cout, stride, expected", [(4, 8, 1, True), (4, 9, 1, False), (4, 4, 2, False)]
)
def test_conv_takes_the_correlation_route_only_where_it_is_faster(cin, cout, stride, expected):
    route = Conv2DRoute(sc.Conv2D(cin, cout, 3, stride=stride, padding=1))
    assert route._transposable is expected


def _layouts(x):
    """x as NCHW, as a Conv2D output's (H, C, W, N) memory, and as a strided slice."""
    hcwn = np.ascontiguousarray(x.transpose(2, 1, 3, 0)).transpose(3, 1, 0, 2)
    wide = np.zeros((x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3]), x.dtype)
    wide[..., ::2] = x
    return {"nchw": np.ascontiguousarray(x), "hcwn": hcwn, "strided": wide[..., ::2]}


@pytest.mark.parametrize("layout", ["nchw", "hcwn", "strided"])
def test_channel_view_round_trip(layout, rng):
    x = _layouts(rng.standard_normal((3, 4, 5, 2)))[layout]
    x3, order = channel_view(x)
    assert x3.flags.c_contiguous and x3.shape[1] == 4
    back = from_memory_order(x3, order, x.shape)
    np.testing.assert_array_equal(back, x)
    if layout != "strided":  # a permutation of contiguous memory: viewed, not copied
        assert np.shares_memory(x3, x)


@pytest.mark.parametrize("how", ["reference", "engine", "engine-numpy"])
@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("layout", ["nchw", "hcwn", "strided"])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_matches_torch_in_every_layout(layout, training, dtype, tol, how, rng):
    x0 = rng.standard_normal((4, 3, 5, 6)) * 2 + 1
    dy0 = rng.standard_normal(x0.shape)
    x, dy = _layouts(x0.astype(dtype))[layout], _layouts(dy0.astype(dtype))[layout]
    bn = sc.BatchNorm2D(3, momentum=0.3, dtype=dtype)
    ref = torch.nn.BatchNorm2d(3, momentum=0.3).to(torch.float64)
    w, b = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    mean, var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    bn.params["weight"][:], bn.params["bias"][:] = w, b
    bn.buffers["running_mean"][:], bn.buffers["running_var"][:] = mean, var
    with torch.no_grad():
        ref.weight[:], ref.bias[:] = torch.tensor(w), torch.tensor(b)
        ref.running_mean[:], ref.running_var[:] = torch.tensor(mean), torch.tensor(var)
    bn.train(training)
    ref.train(training)
    xt = torch.tensor(x0.astype(dtype).astype(np.float64), requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(dy0.astype(dtype).astype(np.float64)))
    model = sc.Sequential([bn])
    with way(how), routes_only():
        y = model.forward(x)
        dx = model.backward(dy)
    assert y.dtype == dx.dtype == dtype
    if how != "reference":  # the route's output keeps x's layout
        assert y.strides == x.strides or layout == "strided"
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(bn.grads["weight"], ref.weight.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(bn.grads["bias"], ref.bias.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(bn.buffers["running_mean"], ref.running_mean.numpy(), rtol=tol)
    np.testing.assert_allclose(bn.buffers["running_var"], ref.running_var.numpy(), rtol=tol)


@pytest.mark.parametrize("how", ["reference", "engine", "engine-numpy"])
@pytest.mark.parametrize("dtype, tol", DTYPES)
def test_batchnorm1d_matches_torch(dtype, tol, how, rng):
    x0, dy0 = rng.standard_normal((7, 5)) * 3 - 2, rng.standard_normal((7, 5))
    bn, ref = sc.BatchNorm1D(5, dtype=dtype), torch.nn.BatchNorm1d(5).to(torch.float64)
    xt = torch.tensor(x0.astype(dtype).astype(np.float64), requires_grad=True)
    ref(xt).backward(torch.tensor(dy0.astype(dtype).astype(np.float64)))
    model = sc.Sequential([bn])
    with way(how):
        model.forward(x0.astype(dtype))
        dx = model.backward(dy0.astype(dtype))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(bn.buffers["running_var"], ref.running_var.numpy(), rtol=tol)


@pytest.mark.parametrize("s,p", [(1, 0), (2, 1), ((1, 2), ((0, 2), (1, 1)))])
def test_grouped_path_equals_the_plain_path(s, p, rng, monkeypatch):
    """With one group and no dilation the route's two implementations must agree exactly."""
    conv = sc.Conv2D(3, 4, 3, stride=s, padding=p, dtype=np.float64, rng=rng)
    route = Conv2DRoute(conv)
    x = rng.standard_normal((2, 3, 7, 8))
    y = route.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = route.backward(dy)
    grads = {k: v.copy() for k, v in conv.grads.items()}
    monkeypatch.setattr(Conv2DRoute, "_plain", property(lambda self: False))
    np.testing.assert_allclose(route.forward(x), y, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(route.backward(dy), dx, rtol=1e-13, atol=1e-14)
    for k, v in grads.items():
        np.testing.assert_allclose(conv.grads[k], v, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(
    "n,o,hw,groups,k,expected",
    [
        (1, 64, 3, 1, 3, True),  # one image, 64 channels over 9 positions: the layer's way
        (1, 4, 9, 1, 3, False),  # 4 channels over 81 positions (LeNet-like): the row layout
        (1, 4, 9, 1, 1, True),  # a 1x1 kernel: the layer's im2col is one copy
        (1, 4, 9, 2, 3, True),  # grouped (depthwise has its own kernel)
        (2, 64, 3, 1, 3, False),  # two images: the row layout
        (2, 4, 9, 2, 3, False),  # grouped, N > 1: the route's grouped path
    ],
)
def test_inference_takes_the_layer_where_its_im2col_is_cheaper(n, o, hw, groups, k, expected, rng):
    """In eval mode on one image the route runs the reference layer where that is cheaper
    (and its backward, for saliency); training never does."""
    conv = sc.Conv2D(4, o, k, padding=k // 2, groups=groups, dtype=np.float64, rng=rng)
    ref = sc.Conv2D(4, o, k, padding=k // 2, groups=groups, dtype=np.float64)
    ref.params = {k: v.copy() for k, v in conv.params.items()}
    route = Conv2DRoute(conv)
    x = rng.standard_normal((n, 4, hw, hw))
    calls = []
    conv.forward = lambda x, f=conv.forward: calls.append(1) or f(x)
    for training in (False, True):
        conv.train(training)
        calls.clear()
        y = route.forward(x)
        assert bool(calls) == (expected and not training)
        dy = rng.standard_normal(y.shape)
        np.testing.assert_allclose(y, ref.forward(x), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(route.backward(dy), ref.backward(dy), rtol=1e-12, atol=1e-12)
        for k in ref.grads:
            np.testing.assert_allclose(conv.grads[k], ref.grads[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "k,s,p,hw",
    [
        (3, 1, 1, 9),
        (3, 2, 1, 9),
        (5, 2, 2, 11),
        (3, 1, 0, 5),
        ((3, 5), (2, 1), ((0, 2), (1, 0)), 7),
    ],
)
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_depthwise_inference_kernel_equals_the_layer(k, s, p, hw, dtype, tol, bias, rng):
    """One image in eval mode: the direct depthwise kernel; its backward (saliency) is the
    layer's own, exactly."""
    conv = sc.Conv2D(6, 6, k, stride=s, padding=p, groups=6, bias=bias, dtype=dtype, rng=rng)
    ref = sc.Conv2D(6, 6, k, stride=s, padding=p, groups=6, bias=bias, dtype=dtype)
    ref.params = {key: v.copy() for key, v in conv.params.items()}
    conv.eval()
    route = Conv2DRoute(conv)
    x = rng.standard_normal((1, 6, hw, hw)).astype(dtype)
    calls = []
    conv.forward = lambda x, f=conv.forward: calls.append(1) or f(x)
    y = route.forward(x)
    assert not calls  # the kernel, not the layer
    np.testing.assert_allclose(y, ref.forward(x), rtol=tol, atol=tol)
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(route.backward(dy), ref.backward(dy))
    for key in ref.grads:
        np.testing.assert_array_equal(conv.grads[key], ref.grads[key])


@pytest.mark.parametrize(
    "k,s,p,hw,n",
    [
        (3, 1, 1, 9, 4),
        (3, 2, 1, 9, 2),
        (5, 2, 2, 11, 3),
        (3, 1, 0, 5, 16),
        ((3, 5), (2, 1), ((0, 2), (1, 0)), 7, 2),
        (7, 1, 3, 8, 1),
    ],
)
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_depthwise_row_kernels_equal_the_layer(k, s, p, hw, n, dtype, tol, bias, rng):
    """Training (and batched inference): the depthwise row kernels, forward and both
    gradients, against the layer; and against the grouped path they replace."""
    conv = sc.Conv2D(6, 6, k, stride=s, padding=p, groups=6, bias=bias, dtype=dtype, rng=rng)
    ref = sc.Conv2D(6, 6, k, stride=s, padding=p, groups=6, bias=bias, dtype=dtype)
    ref.params = {key: v.copy() for key, v in conv.params.items()}
    route = Conv2DRoute(conv)
    x = rng.standard_normal((n, 6, hw, hw)).astype(dtype)
    y = route.forward(x)
    assert route._ran == "depthwise_rows"
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(y, ref.forward(x), rtol=tol, atol=tol)
    scale = np.abs(ref.backward(dy)).max()
    np.testing.assert_allclose(route.backward(dy), ref.backward(dy), rtol=tol, atol=tol * scale)
    for key in ref.grads:
        big = np.abs(ref.grads[key]).max()
        np.testing.assert_allclose(conv.grads[key], ref.grads[key], rtol=tol, atol=tol * big)
    assert route.backward(dy, input_grad=False) is None
