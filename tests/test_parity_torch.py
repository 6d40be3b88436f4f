"""Every layer and loss against PyTorch autograd: forward and every gradient.

float64 must agree to 1e-7 and float32 to 1e-4, relative to the tensor's scale
(max |a - b| <= rel * max |b|). Dropout is not here: torch draws its own masks; its
gradients are checked by finite differences instead.

Every test runs both ways (the ``_both_ways`` fixture): the layer's own code, the reference
(``SCRATCHCNN_KERNELS=numpy``), and the engine's route for it (the layer in a Sequential,
the engine on; the loss through ``engine.loss_route``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scratchcnn as sc
from scratchcnn import engine
from tests.conftest import distinct, noncontiguous

REL = {np.float64: 1e-7, np.float32: 1e-4}
DTYPES = [np.float64, np.float32]
_WAY = {"name": "reference"}


@pytest.fixture(autouse=True, params=["reference", "engine"])
def _both_ways(request):
    """Each test twice: the layers' own code, then the engine's routes."""
    _WAY["name"] = request.param
    with engine.using("numpy" if request.param == "reference" else "auto"):
        yield


def run(layer):
    """What runs ``layer`` this way: the layer itself, or a one-layer Sequential (the
    engine's plan puts the layer's route in its place)."""
    return layer if _WAY["name"] == "reference" else sc.Sequential([layer])


def loss(fn):
    """What runs the loss ``fn`` this way: itself, or the engine's route for it."""
    return fn if _WAY["name"] == "reference" else engine.loss_route(fn)


def assert_close(ours: np.ndarray, theirs: torch.Tensor, dtype, what: str) -> None:
    theirs = theirs.detach().numpy()
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs torch {theirs.shape}"
    assert ours.dtype == dtype, f"{what}: dtype {ours.dtype}, expected {np.dtype(dtype)}"
    scale = max(float(np.abs(theirs).max(initial=0.0)), 1e-30)
    err = float(np.abs(ours.astype(np.float64) - theirs).max(initial=0.0))
    assert err <= REL[dtype] * scale, f"{what}: max error {err:.3e} vs scale {scale:.3e}"


def run_both(layer, torch_fn, x: np.ndarray, dtype, torch_params=(), dy=None):
    """Forward + backward in both; returns (ours dx, torch x tensor) after comparing y."""
    xt = torch.tensor(np.ascontiguousarray(x), requires_grad=True)
    yt = torch_fn(xt)
    runner = run(layer)
    y = runner.forward(x)
    assert_close(y, yt, dtype, "forward")
    if dy is None:
        dy = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(np.ascontiguousarray(dy)))
    dx = runner.backward(dy)
    assert_close(dx, xt.grad, dtype, "dL/dx")
    for name, tp in torch_params:
        assert_close(layer.grads[name], tp.grad, dtype, f"dL/d{name}")
    return dx


def tparam(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a.copy(), requires_grad=True)


CONV_GRID = [
    # in, out, kernel, stride, padding, (H, W), N
    (1, 6, 5, 1, 2, (28, 28), 3),
    (6, 16, 5, 1, 0, (14, 14), 2),
    (3, 4, 3, 2, 1, (9, 7), 2),
    (2, 3, (2, 4), (3, 1), (0, 2), (8, 9), 1),
    (4, 2, 1, 1, 0, (5, 5), 2),
    (2, 2, 3, 3, 0, (10, 11), 1),
    (1, 2, 4, 2, 1, (7, 7), 2),
    (2, 3, 3, 1, "same", (6, 5), 2),
    (2, 3, 4, 1, "same", (6, 5), 2),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cin,cout,k,s,p,hw,n", CONV_GRID)
def test_conv2d(cin, cout, k, s, p, hw, n, dtype, rng):
    conv = sc.Conv2D(cin, cout, k, stride=s, padding=p, dtype=dtype, rng=rng)
    w, b = tparam(conv.params["weight"]), tparam(conv.params["bias"])
    x = rng.standard_normal((n, cin, *hw)).astype(dtype)
    run_both(
        conv,
        lambda t: F.conv2d(t, w, b, stride=s, padding=p),
        noncontiguous(x),
        dtype,
        [("weight", w), ("bias", b)],
    )


POOL_GRID = [
    (2, None, 0, (28, 28)),
    (2, 1, 0, (3, 3)),
    (3, 2, 1, (9, 8)),
    ((2, 3), (1, 2), (1, 1), (6, 7)),
    (3, 3, 0, (10, 10)),
    (2, 3, 0, (7, 7)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p,hw", POOL_GRID)
def test_maxpool2d(k, s, p, hw, dtype, rng):
    x = distinct((2, 3, *hw), rng, dtype)
    run_both(
        sc.MaxPool2D(k, stride=s, padding=p),
        lambda t: F.max_pool2d(t, k, stride=s, padding=p),
        x,
        dtype,
    )


@pytest.mark.parametrize("k,s", [(2, 2), (2, 1), (3, 2)])
def test_maxpool2d_ties_match_torch(k, s, rng):
    # Heavily tied input (values from {0, 1}), overlapping windows: the gradient routing
    # must be identical to torch's, position by position.
    x = rng.integers(0, 2, (2, 2, 7, 7)).astype(np.float64)
    run_both(sc.MaxPool2D(k, stride=s), lambda t: F.max_pool2d(t, k, stride=s), x, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p,hw", POOL_GRID)
def test_avgpool2d(k, s, p, hw, dtype, rng):
    x = rng.standard_normal((2, 3, *hw)).astype(dtype)
    run_both(
        sc.AvgPool2D(k, stride=s, padding=p),
        lambda t: F.avg_pool2d(t, k, stride=s, padding=p),
        x,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense(dtype, rng):
    layer = sc.Dense(13, 7, dtype=dtype, rng=rng)
    w, b = tparam(layer.params["weight"]), tparam(layer.params["bias"])
    x = rng.standard_normal((5, 13)).astype(dtype)
    run_both(
        layer, lambda t: F.linear(t, w, b), noncontiguous(x), dtype, [("weight", w), ("bias", b)]
    )


ACTS = [
    (sc.ReLU, F.relu),
    (lambda: sc.LeakyReLU(0.05), lambda t: F.leaky_relu(t, 0.05)),
    (sc.Sigmoid, torch.sigmoid),
    (sc.Tanh, torch.tanh),
    (sc.Softmax, lambda t: F.softmax(t, dim=1)),
    (sc.Flatten, lambda t: torch.flatten(t, 1)),
    # issue 24 (torch's float64 hardsigmoid backward uses 1/6 as a float32: 3e-8 off)
    (sc.ReLU6, F.relu6),
    (lambda: sc.Clip(-1.5, 2.5), lambda t: F.hardtanh(t, -1.5, 2.5)),
    (sc.Hardsigmoid, F.hardsigmoid),
    (sc.Hardswish, F.hardswish),
    (sc.SiLU, F.silu),
    (sc.GELU, F.gelu),
    (lambda: sc.GELU("tanh"), lambda t: F.gelu(t, approximate="tanh")),
    (lambda: sc.ChannelShuffle(2), lambda t: F.channel_shuffle(t, 2)),
    (lambda: sc.ChannelSlice(1, 3), lambda t: t[:, 1:3]),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ours,theirs", ACTS)
def test_elementwise(ours, theirs, dtype, rng):
    x = (rng.standard_normal((3, 4, 5, 2)) * 3).astype(dtype)
    x[0, 0, 0, 0] = 0.0  # ReLU'(0) = 0 in both
    run_both(ours(), theirs, x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm2d_and_channel_scale(dtype, rng):
    ln = sc.LayerNorm2D(4, eps=1e-6, dtype=dtype)
    ln.params["weight"][:] = rng.uniform(0.5, 2, 4)
    ln.params["bias"][:] = rng.standard_normal(4)
    w, b = tparam(ln.params["weight"]), tparam(ln.params["bias"])

    def torch_ln(t):
        return F.layer_norm(t.permute(0, 2, 3, 1), (4,), w, b, 1e-6).permute(0, 3, 1, 2)

    x = (rng.standard_normal((3, 4, 5, 2)) * 2 + 1).astype(dtype)
    run_both(ln, torch_ln, x, dtype, [("weight", w), ("bias", b)])
    scale = sc.ChannelScale(4, dtype=dtype)
    scale.params["weight"][:] = rng.uniform(0.5, 2, 4)
    ws = tparam(scale.params["weight"])
    run_both(scale, lambda t: t * ws.reshape(4, 1, 1), x, dtype, [("weight", ws)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d(training, dtype, rng):
    bn = sc.BatchNorm2D(3, momentum=0.2, dtype=dtype)
    tbn = torch.nn.BatchNorm2d(3, momentum=0.2).to(
        torch.float64 if dtype == np.float64 else torch.float32
    )
    gamma = rng.uniform(0.5, 2, 3).astype(dtype)
    beta = rng.standard_normal(3).astype(dtype)
    rm, rv = rng.standard_normal(3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)
    bn.params["weight"][:], bn.params["bias"][:] = gamma, beta
    bn.buffers["running_mean"][:], bn.buffers["running_var"][:] = rm, rv
    with torch.no_grad():
        tbn.weight.copy_(torch.tensor(gamma))
        tbn.bias.copy_(torch.tensor(beta))
        tbn.running_mean.copy_(torch.tensor(rm))
        tbn.running_var.copy_(torch.tensor(rv))
    bn.train(training)
    tbn.train(training)
    x = (rng.standard_normal((4, 3, 5, 6)) * 2 + 1).astype(dtype)
    run_both(bn, tbn, x, dtype, [("weight", tbn.weight), ("bias", tbn.bias)])
    assert_close(bn.buffers["running_mean"], tbn.running_mean, dtype, "running_mean")
    assert_close(bn.buffers["running_var"], tbn.running_var, dtype, "running_var")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy(dtype, rng):
    z = (rng.standard_normal((6, 10)) * 5).astype(dtype)
    y = rng.integers(0, 10, 6)
    zt = torch.tensor(z, requires_grad=True)
    lt = F.cross_entropy(zt, torch.tensor(y))
    lt.backward()
    fn = loss(sc.CrossEntropyLoss())
    assert fn.forward(z, y) == pytest.approx(lt.item(), rel=REL[dtype])
    assert_close(fn.backward(), zt.grad, dtype, "dL/dlogits")


def test_cross_entropy_sum_reduction(rng):
    z = rng.standard_normal((4, 3))
    y = rng.integers(0, 3, 4)
    zt = torch.tensor(z, requires_grad=True)
    F.cross_entropy(zt, torch.tensor(y), reduction="sum").backward()
    fn = loss(sc.CrossEntropyLoss(reduction="sum"))
    fn.forward(z, y)
    assert_close(fn.backward(), zt.grad, np.float64, "sum-reduced dL/dlogits")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits(dtype, rng):
    z = (rng.standard_normal((8, 1)) * 10).astype(dtype)
    t = rng.integers(0, 2, (8, 1)).astype(dtype)
    zt = torch.tensor(z, requires_grad=True)
    lt = F.binary_cross_entropy_with_logits(zt, torch.tensor(t))
    lt.backward()
    fn = sc.BCEWithLogitsLoss()
    assert fn.forward(z, t) == pytest.approx(lt.item(), rel=REL[dtype])
    assert_close(fn.backward(), zt.grad, dtype, "dL/dlogits")


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse(dtype, rng):
    p = rng.standard_normal((5, 3)).astype(dtype)
    t = rng.standard_normal((5, 3)).astype(dtype)
    pt = torch.tensor(p, requires_grad=True)
    lt = F.mse_loss(pt, torch.tensor(t))
    lt.backward()
    fn = sc.MSELoss()
    assert fn.forward(p, t) == pytest.approx(lt.item(), rel=REL[dtype])
    assert_close(fn.backward(), pt.grad, dtype, "dL/doutput")
