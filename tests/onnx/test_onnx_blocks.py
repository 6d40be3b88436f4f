"""Residual and Parallel blocks: scratchcnn -> ONNX -> scratchcnn, and torch ResNets in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper
from torch import nn

import scratchcnn as sc
from scratchcnn.nn.zoo import resnet8
from scratchcnn.onnx import export, load
from tests.onnx.helpers import graph_model, rel_err, save
from tests.onnx.test_onnx_export import _blocks_model
from tests.onnx.test_onnx_torch import assert_gradients_equal_torch, export_torch


def _structure(model) -> list[str]:
    return [f"{key}:{type(layer).__name__}" for key, layer in model.named_layers()]


@pytest.mark.parametrize("make", [_blocks_model, lambda: resnet8(seed=0).eval()],
                         ids=["all-blocks", "resnet8"])  # fmt: skip
def test_blocks_round_trip_with_the_same_keys(make, tmp_path, rng):
    model = make()
    back = load(export(model, tmp_path / "m.onnx"))
    assert _structure(back) == _structure(model)
    assert list(back.state_dict()) == list(model.state_dict())
    x = rng.uniform(0, 1, (5, *model.input_shape)).astype(np.float32)
    np.testing.assert_allclose(back.predict(x), model.predict(x), rtol=1e-6, atol=1e-6)


class Block(nn.Module):
    """torch's BasicBlock: conv-bn-relu-conv-bn plus an identity or projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        return torch.relu(y + self.short(x))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.s1, self.s2 = Block(8, 8, 1), Block(8, 16, 2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.s2(self.s1(torch.relu(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _randomise_bn(net: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(9)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_resnet_loads_as_residual_blocks(dynamo, tmp_path, rng):
    torch.manual_seed(8)
    net = _randomise_bn(TinyResNet()).eval()
    model = load(export_torch(net, (1, 12, 12), tmp_path / "r.onnx", dynamo))
    residuals = [la for la in model if isinstance(la, sc.Residual)]
    assert len(residuals) == 2
    assert residuals[0].shortcut is None and residuals[1].shortcut is not None
    x = rng.uniform(0, 1, (4, 1, 12, 12)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert rel_err(model.predict(x), want) <= 1e-5


def test_imported_resnet_gradients_equal_torch(tmp_path, rng):
    """Train-mode export keeps BatchNorm; our backward through the blocks gives torch's
    gradients for every parameter and for the input (float64)."""
    torch.manual_seed(10)
    net = _randomise_bn(TinyResNet()).double().train()
    path = export_torch(net, (1, 12, 12), tmp_path / "g.onnx", False, training=True,
                        dtype=torch.float64)  # fmt: skip
    model = load(path).train()
    x = rng.uniform(0, 1, (5, 1, 12, 12))
    assert assert_gradients_equal_torch(model, net, x, rng, rtol=1e-7) == 19


def test_joins_that_are_not_blocks_are_refused(tmp_path):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Tanh", ["x"], ["b"]),
        helper.make_node("Sigmoid", ["b"], ["c"]),
        helper.make_node("Concat", ["a", "c"], ["y"], axis=2, name="cat"),
    ]
    path = save(graph_model(nodes, ["N", 2, 3, 3]), tmp_path / "c.onnx")
    with pytest.raises(sc.OnnxError, match=r'node "cat" \(Concat\) is not supported .*axis=2'):
        load(path)
    nodes[-1] = helper.make_node("Concat", ["a", "c"], ["y"], axis=1, name="cat")
    (par,) = load(save(graph_model(nodes, ["N", 2, 3, 3]), tmp_path / "ok.onnx")).layers
    assert isinstance(par, sc.Parallel) and par.merge == "concat"
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Tanh", ["x"], ["b"]),
        helper.make_node("Add", ["a", "x"], ["y"], name="sum"),
    ]  # "b" is never used: a branch that does not join
    with pytest.raises(sc.OnnxError, match="never joins"):
        load(save(graph_model(nodes, ["N", 2]), tmp_path / "d.onnx"))
