"""The layers and blocks that torchvision's classification models need (issue 24): Clip /
ReLU6, Hardsigmoid, Hardswish, SiLU, GELU (both forms), LayerNorm2D, ChannelScale,
ChannelShuffle, and the blocks Gate, DenseConcat, ChannelSplit. Finite differences in
float64, PyTorch autograd (forward and every gradient), configs, state shapes, checkpoints.
The element-wise ones are also in tests/test_parity_torch.py (both ways: reference, engine).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scratchcnn as sc
from scratchcnn.nn.layers.activations import erf
from tests.conftest import distinct, noncontiguous

F64 = np.float64


def conv(ci, co, k=1, seed=0, bias=True):
    return sc.Conv2D(ci, co, k, padding=k // 2, bias=bias, dtype=F64, rng=seed)


def se_gate(c=4, squeeze=2, gate=sc.Sigmoid):
    """torchvision's SqueezeExcitation: pool, 1x1 conv, ReLU, 1x1 conv, sigmoid."""
    return sc.Gate([sc.GlobalAvgPool2D(), conv(c, squeeze, seed=1), sc.ReLU(),
                    conv(squeeze, c, seed=2), gate()])  # fmt: skip


def scaled(layer, rng, c=4):
    if "weight" in layer.params:
        layer.params["weight"][:] = rng.uniform(0.5, 1.5, c)
    if "bias" in layer.params:
        layer.params["bias"][:] = rng.standard_normal(c) * 0.1
    return layer


ELEMENTWISE = {
    "clip": (lambda: sc.Clip(-0.5, 1.5), lambda t: torch.clamp(t, -0.5, 1.5)),
    "clip-low": (lambda: sc.Clip(min_value=0.25), lambda t: torch.clamp(t, min=0.25)),
    "relu6": (sc.ReLU6, F.relu6),
    "hardsigmoid": (sc.Hardsigmoid, F.hardsigmoid),
    "hardswish": (sc.Hardswish, F.hardswish),
    "silu": (sc.SiLU, F.silu),
    "gelu": (sc.GELU, F.gelu),
    "gelu-tanh": (lambda: sc.GELU("tanh"), lambda t: F.gelu(t, approximate="tanh")),
}


@pytest.mark.parametrize("kind", list(ELEMENTWISE))
def test_elementwise_gradcheck_and_torch(kind, rng):
    make, theirs = ELEMENTWISE[kind]
    x = distinct((2, 3, 4, 5), rng) * 3  # values in about [-6, 6], away from every kink
    x = x[np.abs(np.abs(x) - 3) > 0.02].reshape(-1)[:100].reshape(2, 2, 5, 5)
    assert sc.gradcheck(make(), noncontiguous(x)).ok
    layer = make()
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    np.testing.assert_allclose(layer.forward(x), yt.detach().numpy(), rtol=1e-12, atol=1e-14)
    dy = rng.standard_normal(x.shape)
    yt.backward(torch.tensor(dy))
    # 1e-7: torch's float64 hardsigmoid backward multiplies by 1/6 rounded to float32
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=1e-7, atol=1e-14)
    assert layer.forward(x.astype(np.float32)).dtype == np.float32
    assert layer.backward(dy.astype(np.float32)).dtype == np.float32


def test_kinks_follow_torch():
    """At the kinks the derivative is torch's choice (0 on a clip bound, hardswish's
    (2x + 3) / 6 at -3 and 3, hardsigmoid's 0 at +-3)."""
    x = np.array([[-3.0, 0.0, 3.0, 6.0, -0.5, 1.5]])
    pairs = [
        (sc.ReLU6(), F.relu6),
        (sc.Hardswish(), F.hardswish),
        (sc.Hardsigmoid(), F.hardsigmoid),
        (sc.Clip(-0.5, 1.5), lambda t: t.clamp(-0.5, 1.5)),
    ]
    for layer, fn in pairs:
        xt = torch.tensor(x, requires_grad=True)
        fn(xt).sum().backward()
        layer.forward(x)
        got = layer.backward(np.ones_like(x))
        if isinstance(layer, sc.Clip) and not isinstance(layer, sc.ReLU6):
            # torch's clamp passes the gradient on a bound; Clip follows hardtanh (0 there).
            np.testing.assert_array_equal(got, [[0, 1, 0, 0, 0, 0]])
        else:
            want = xt.grad.numpy()
            np.testing.assert_allclose(got, want, rtol=1e-7, err_msg=type(layer).__name__)
            np.testing.assert_array_equal(got == 0, want == 0)


def test_erf_is_the_standard_librarys():
    x = np.concatenate([np.linspace(-7, 7, 20001), [0.0, 1e-300, 5.999999, 6.0, np.inf]])
    want = np.array([math.erf(v) for v in x])
    assert np.abs(erf(x) - want).max() <= 4e-15
    assert np.isnan(erf(np.array([np.nan])))[0]


def test_clip_checks():
    with pytest.raises(sc.ConfigError, match="above max_value"):
        sc.Clip(2, 1)
    with pytest.raises(sc.ConfigError, match="finite"):
        sc.Clip(float("nan"))
    with pytest.raises(sc.ConfigError, match="approximate"):
        sc.GELU("erf")
    y = sc.Clip().forward(np.ones((1, 2)))
    assert y.tolist() == [[1.0, 1.0]]


@pytest.mark.parametrize("shape", [(3, 4, 5, 2), (5, 4)])
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm2d_matches_torch_layernorm_on_channels_last(shape, affine, rng):
    layer = sc.LayerNorm2D(4, eps=1e-6, affine=affine, dtype=F64)
    if affine:
        scaled(layer, rng)
    assert sc.gradcheck(layer, rng.standard_normal(shape) * 2 + 1).ok
    ln = torch.nn.LayerNorm(4, eps=1e-6, elementwise_affine=affine).double()
    if affine:
        with torch.no_grad():
            ln.weight.copy_(torch.tensor(layer.params["weight"]))
            ln.bias.copy_(torch.tensor(layer.params["bias"]))
    x = rng.standard_normal(shape) * 2 + 1
    xt = torch.tensor(x, requires_grad=True)
    perm = (0, 2, 3, 1) if len(shape) == 4 else (0, 1)
    back = (0, 3, 1, 2) if len(shape) == 4 else (0, 1)
    yt = ln(xt.permute(perm)).permute(back)
    np.testing.assert_allclose(layer.forward(x), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    dy = rng.standard_normal(shape)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    if affine:
        np.testing.assert_allclose(layer.grads["weight"], ln.weight.grad.numpy(), rtol=1e-10)
        np.testing.assert_allclose(layer.grads["bias"], ln.bias.grad.numpy(), rtol=1e-10)
    with pytest.raises(sc.ShapeError, match="channels"):
        layer.forward(np.zeros((2, 3, 2, 2)))


def test_channel_scale_and_shuffle_match_torch(rng):
    layer = scaled(sc.ChannelScale(4, dtype=F64), rng)
    x = rng.standard_normal((3, 4, 2, 5))
    assert sc.gradcheck(layer, x).ok
    w = torch.tensor(layer.params["weight"].reshape(4, 1, 1), requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    yt = w * xt
    np.testing.assert_allclose(layer.forward(x), yt.detach().numpy(), rtol=1e-14)
    dy = rng.standard_normal(x.shape)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=1e-14)
    np.testing.assert_allclose(layer.grads["weight"], w.grad.numpy().ravel(), rtol=1e-12)

    for groups, c in [(2, 6), (3, 6), (4, 8), (1, 3)]:
        shuffle = sc.ChannelShuffle(groups)
        x = rng.standard_normal((2, c, 3, 2))
        assert sc.gradcheck(shuffle, x).ok
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.nn.ChannelShuffle(groups)(xt)
        np.testing.assert_array_equal(shuffle.forward(x), yt.detach().numpy())
        dy = rng.standard_normal(x.shape)
        yt.backward(torch.tensor(dy))
        np.testing.assert_array_equal(shuffle.backward(dy), xt.grad.numpy())
    with pytest.raises(sc.ShapeError, match="do not split into 4 groups"):
        sc.ChannelShuffle(4).forward(np.zeros((1, 6, 2, 2)))


class TorchSE(torch.nn.Module):
    def __init__(self, block: sc.Gate) -> None:
        super().__init__()
        convs = [la for _, la in block.named_layers() if isinstance(la, sc.Conv2D)]
        self.fc1, self.fc2 = (torch.nn.Conv2d(c.in_channels, c.out_channels, 1).double()
                              for c in convs)  # fmt: skip
        for mine, theirs in zip(convs, (self.fc1, self.fc2), strict=True):
            theirs.load_state_dict({k: torch.tensor(v) for k, v in mine.named_tensors()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))
        return x * torch.sigmoid(self.fc2(s))


def _torch_check(block, theirs, x, rng, params):
    """Forward, dL/dx and the named parameter gradients against torch (float64)."""
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    y = block.forward(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-14)
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(block.backward(dy), xt.grad.numpy(), rtol=1e-10, atol=1e-13)
    ours = {k: la.grads[n] for k, la, n in block.named_leaf_parameters()}
    for key, tensor in params.items():
        np.testing.assert_allclose(ours[key], tensor.grad.numpy(), rtol=1e-10, atol=1e-13,
                                   err_msg=key)  # fmt: skip


def test_gate_is_squeeze_and_excitation(rng):
    block = se_gate()
    x = rng.standard_normal((3, 4, 5, 5))
    result = sc.gradcheck(block, x)
    assert result.ok, str(result)
    keys = ["body.1.weight", "body.1.bias", "body.3.weight", "body.3.bias"]
    assert [k for k, _ in block.named_tensors()] == keys
    net = TorchSE(block)
    theirs = [net.fc1.weight, net.fc1.bias, net.fc2.weight, net.fc2.bias]
    _torch_check(block, net, x, rng, dict(zip(keys, theirs, strict=True)))
    silu = sc.Gate(sc.Sigmoid())  # same shape as the input: SiLU as a Mul
    _torch_check(silu, F.silu, x, rng, {})
    assert sc.gradcheck(silu, x).ok
    with pytest.raises(sc.ShapeError, match="does not broadcast"):
        sc.Gate(conv(4, 2)).forward(x)


def test_dense_concat_is_densenets_connection(rng):
    c1 = conv(3, 2, k=3, seed=4)
    block = sc.DenseConcat([sc.BatchNorm2D(3, dtype=F64), sc.ReLU(), c1])
    block.eval()
    x = rng.standard_normal((2, 3, 4, 4))
    assert block.output_shape((2, 3, 4, 4)) == (2, 5, 4, 4)
    assert sc.gradcheck(block, x).ok
    w = torch.tensor(c1.params["weight"], requires_grad=True)
    b = torch.tensor(c1.params["bias"], requires_grad=True)

    def theirs(t):
        return torch.cat([t, F.conv2d(torch.relu(t / math.sqrt(1 + 1e-5)), w, b, padding=1)], 1)

    _torch_check(block, theirs, x, rng, {"body.2.weight": w, "body.2.bias": b})


def test_channel_slices_in_parallel_are_shufflenets_unit(rng):
    c1 = conv(2, 2, k=3, seed=5)
    block = sc.Parallel([sc.ChannelSlice(0, 2), [sc.ChannelSlice(2, 4), c1, sc.ReLU()]])
    x = rng.standard_normal((2, 4, 3, 3))
    assert sc.gradcheck(block, x).ok
    w = torch.tensor(c1.params["weight"], requires_grad=True)
    b = torch.tensor(c1.params["bias"], requires_grad=True)

    def theirs(t):
        x1, x2 = t.chunk(2, dim=1)
        return torch.cat([x1, torch.relu(F.conv2d(x2, w, b, padding=1))], 1)

    _torch_check(block, theirs, x, rng, {"branches.1.1.weight": w, "branches.1.1.bias": b})
    with pytest.raises(sc.ShapeError, match="needs at least 4 channels"):
        sc.ChannelSlice(1, 4).forward(np.zeros((1, 3, 2, 2)))
    with pytest.raises(sc.ConfigError, match="above start"):
        sc.ChannelSlice(2, 2)


def all_new_layers():
    return sc.Sequential(
        [
            conv(3, 4, k=3),
            sc.LayerNorm2D(4, dtype=F64),
            sc.ChannelScale(4, init=0.5, dtype=F64),
            sc.Clip(-1.0, 2.0),
            sc.ReLU6(),
            sc.Hardswish(),
            sc.Hardsigmoid(0.2, 0.4),
            sc.SiLU(),
            sc.GELU(),
            sc.GELU("tanh"),
            se_gate(),
            sc.DenseConcat([conv(4, 2, seed=3), sc.ReLU()]),
            sc.ChannelShuffle(3),
            sc.Parallel([sc.ChannelSlice(0, 3), [sc.ChannelSlice(3, 6), conv(3, 3, seed=6)]]),
        ],
        input_shape=(3, 5, 5),
    )


def test_configs_state_shapes_and_checkpoints_round_trip(tmp_path, rng):
    model = all_new_layers()
    x = rng.standard_normal((2, 3, 5, 5))
    for _, layer in model.named_layers():
        for name in layer.params:
            layer.params[name][...] = rng.uniform(0.5, 1.5, layer.params[name].shape)
    cfg = json.loads(json.dumps(model.config()))
    rebuilt = sc.Sequential.from_config(cfg)
    assert rebuilt.config() == model.config()
    for spec, layer in zip(cfg["layers"], model.layers, strict=True):
        shapes = type(layer).state_shapes(spec["config"])
        assert shapes == {k: v.shape for k, v in layer.named_tensors()}, spec["type"]
    sc.save(model, tmp_path / "m.npz")
    loaded = sc.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.eval().forward(x), model.eval().forward(x))
    assert "2.weight" in model.state_dict() and "10.body.1.weight" in model.state_dict()
    assert "13.branches.1.1.weight" in model.state_dict()
    result = sc.gradcheck(model.train(), x, atol=1e-6, rtol=1e-4)
    assert result.ok, str(result)
    text = model.summary()
    assert "ChannelSlice" in text and "13.branches.1.1" in text


def test_float32_models_and_the_engine(rng):
    model = all_new_layers().astype(np.float32)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    with sc.engine.using("auto"):
        y = model.forward(x)
        dx = model.backward(np.ones_like(y))
    with sc.engine.using("numpy"):
        np.testing.assert_allclose(model.forward(x), y, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model.backward(np.ones_like(y)), dx, rtol=1e-4, atol=1e-5)
    assert y.dtype == dx.dtype == np.float32


def test_checkpoint_schema_refuses_bad_new_configs():
    from scratchcnn.checkpoint.schema import SchemaError, check_model_config

    good = all_new_layers().config()
    check_model_config(json.loads(json.dumps(good)))
    bad = json.loads(json.dumps(good))
    bad["layers"][13]["config"]["branches"][1][1]["type"] = "NoSuchLayer"
    with pytest.raises(SchemaError, match="NoSuchLayer"):
        check_model_config(bad)
    bad = json.loads(json.dumps(good))
    bad["layers"][13]["config"]["branches"][1][0]["config"]["stop"] = -1
    with pytest.raises(SchemaError, match="stop"):
        check_model_config(bad)
    bad = json.loads(json.dumps(good))
    bad["layers"][12]["config"]["groups"] = 0
    with pytest.raises(SchemaError, match="groups"):
        check_model_config(bad)
    bad = json.loads(json.dumps(good))
    bad["layers"][9]["config"]["approximate"] = "erf"
    with pytest.raises(SchemaError, match="approximate"):
        check_model_config(bad)
