"""Graphs written by torch.onnx.export (both exporters) load, match torch, and train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import scratchcnn as sc
from benchmarks._torchvision import quiet_export
from scratchcnn.onnx import load
from tests.onnx.helpers import rel_err


class LeNet(nn.Module):
    """LeNet-5 as in scratchcnn.nn.zoo.lenet5, optionally with BatchNorm after each conv."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5, padding=2)
        self.b1 = nn.BatchNorm2d(6) if bn else nn.Identity()
        self.c2 = nn.Conv2d(6, 16, 5)
        self.b2 = nn.BatchNorm2d(16) if bn else nn.Identity()
        self.f1, self.f2, self.f3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.b1(self.c1(x))))
        x = self.pool(torch.relu(self.b2(self.c2(x))))
        x = torch.flatten(x, 1)
        x = torch.relu(self.f2(torch.relu(self.f1(x))))
        return self.f3(x)


class Mixed(nn.Module):
    """Other ops torch writes: LeakyReLU, Sigmoid, Tanh, AvgPool, AdaptiveAvgPool2d(1),
    x.view(x.size(0), -1) (Shape/Gather/Concat/Reshape), scaling, LogSoftmax."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.pool = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.leaky_relu(self.c1((x - 0.5) * 2.0), 0.2)
        x = torch.sigmoid(self.pool(self.c2(x)))
        x = self.gap(torch.tanh(x))
        x = x.view(x.size(0), -1)
        return torch.log_softmax(self.fc(x), dim=1)


class Interop(nn.Module):
    """The layer arguments torch models use beyond LeNet: dilation, groups (depthwise),
    ceil_mode, count_include_pad=False, flatten(start_dim=1) after AdaptiveAvgPool2d."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, dilation=2, padding=2)
        self.dw = nn.Conv2d(6, 6, 3, groups=6, padding=1)
        self.mp = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.ap = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ap(self.mp(torch.relu(self.dw(torch.relu(self.c1(x))))))
        return self.fc(torch.flatten(self.gap(x), 1))


def assert_gradients_equal_torch(model, net, x, rng, rtol=1e-8) -> int:
    """One cross-entropy step on both: same loss, dL/dx and parameter gradients (float64,
    parameters in the same order); returns how many parameters were compared."""
    labels = rng.integers(0, 10, len(x))
    loss_fn = sc.CrossEntropyLoss()
    loss = loss_fn.forward(model.forward(x), labels)
    dx = model.backward(loss_fn.backward())
    xt = torch.tensor(x, requires_grad=True)
    tloss = nn.functional.cross_entropy(net(xt), torch.from_numpy(labels))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=rtol, atol=1e-12)
    theirs = dict(net.named_parameters())
    ours = model.gradients()
    assert len(ours) == len(theirs)
    for a, (key, b) in zip(ours, theirs.items(), strict=True):
        np.testing.assert_allclose(a, b.grad.numpy(), rtol=rtol, atol=1e-12, err_msg=key)
    return len(ours)


def export_torch(module, shape, path, dynamo, opset=None, training=False, dtype=torch.float32):
    """torch.onnx.export with a dynamic batch axis named N; quiet. The dynamo exporter keeps
    torch's default: the weights in PATH.data beside the graph (read by load's
    external-data checks)."""
    extra = {}
    if training and not dynamo:
        extra = {"training": torch.onnx.TrainingMode.TRAINING, "do_constant_folding": False}
    x = torch.randn(2, *shape, dtype=dtype)
    quiet_export(module, x, Path(path), "dynamo" if dynamo else "ts", opset, **extra)
    return path


def _compare(model: sc.Sequential, module: nn.Module, shape, rng, dtype=np.float32) -> None:
    for batch in (1, 64):
        x = rng.uniform(0, 1, (batch, *shape)).astype(dtype)
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        assert rel_err(model.predict(x), want) <= 1e-5


@pytest.mark.parametrize(
    ("dynamo", "opset"),
    [(False, 13), (False, None), (True, None), (True, 13)],
    ids=["torchscript-13", "torchscript-default", "dynamo-default", "dynamo-13"],
)
def test_torch_lenet5_loads_and_matches(dynamo, opset, tmp_path, rng):
    torch.manual_seed(0)
    net = LeNet().eval()
    path = export_torch(net, (1, 28, 28), tmp_path / "lenet.onnx", dynamo, opset)
    model = load(path)
    assert model.input_shape == (1, 28, 28)
    assert [type(la).__name__ for la in model] == [
        "Conv2D", "ReLU", "MaxPool2D", "Conv2D", "ReLU", "MaxPool2D", "Flatten",
        "Dense", "ReLU", "Dense", "ReLU", "Dense",
    ]  # fmt: skip
    _compare(model, net, (1, 28, 28), rng)
    # The weights are torch's, under torch's own names in the same order.
    ours = list(model.state_dict().values())
    for a, (_, b) in zip(ours, net.state_dict().items(), strict=True):
        np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_mixed_ops_load_and_match(dynamo, tmp_path, rng):
    torch.manual_seed(1)
    net = Mixed().eval()
    model = load(export_torch(net, (3, 16, 16), tmp_path / "m.onnx", dynamo))
    assert isinstance(model.layers[-1], sc.LogSoftmax)
    _compare(model, net, (3, 16, 16), rng)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_interop_layer_arguments_load_and_match(dynamo, tmp_path, rng):
    torch.manual_seed(6)
    net = Interop().eval()
    model = load(export_torch(net, (3, 15, 15), tmp_path / "i.onnx", dynamo))
    kinds = [type(la).__name__ for la in model]
    assert "GlobalAvgPool2D" in kinds and kinds.count("Conv2D") == 2
    assert model[2].groups == 6
    _compare(model, net, (3, 15, 15), rng)


def _trained_bn(net: nn.Module) -> nn.Module:
    """Give BatchNorm running statistics and affine parameters that are not the defaults."""
    g = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return net


def test_eval_export_folds_batchnorm_and_matches(tmp_path, rng):
    torch.manual_seed(2)
    net = _trained_bn(LeNet(bn=True)).eval()
    model = load(export_torch(net, (1, 28, 28), tmp_path / "bn.onnx", dynamo=False))
    assert not any(isinstance(la, sc.BatchNorm2D) for la in model)
    _compare(model, net, (1, 28, 28), rng)


def test_train_mode_export_keeps_batchnorm(tmp_path, rng):
    torch.manual_seed(2)
    net = _trained_bn(LeNet(bn=True))
    path = export_torch(net.train(), (1, 28, 28), tmp_path / "bn.onnx", False, training=True)
    model = load(path)
    bns = [la for la in model if isinstance(la, sc.BatchNorm2D)]
    assert len(bns) == 2
    assert bns[0].momentum == pytest.approx(0.1) and bns[0].eps == pytest.approx(1e-5)
    np.testing.assert_array_equal(bns[0].buffers["running_var"], net.b1.running_var.numpy())
    _compare(model, net.eval(), (1, 28, 28), rng)  # eval: running statistics
    x = rng.uniform(0, 1, (8, 1, 28, 28)).astype(np.float32)
    want = net.train()(torch.from_numpy(x)).detach().numpy()
    assert rel_err(model.train().forward(x), want) <= 1e-5  # train: batch statistics


def test_imported_model_gradients_equal_torch(tmp_path, rng):
    """Our backward through the imported graph gives torch's gradients (float64)."""
    torch.manual_seed(4)
    net = _trained_bn(LeNet(bn=True)).double()
    path = export_torch(
        net.train(), (1, 28, 28), tmp_path / "g.onnx", False, training=True, dtype=torch.float64
    )
    model = load(path).train()
    assert model.dtype == np.float64
    count = assert_gradients_equal_torch(model, net, rng.uniform(0, 1, (6, 1, 28, 28)), rng)
    assert count == 14


@pytest.mark.slow
def test_imported_torch_model_fine_tunes(tmp_path):
    """Fine-tuning an imported torch LeNet with scratchcnn's fit lowers the loss."""
    from scratchcnn.data import load_dataset
    from scratchcnn.training import evaluate, fit

    torch.manual_seed(5)
    model = load(export_torch(LeNet().eval(), (1, 28, 28), tmp_path / "l.onnx", False))
    data = load_dataset("mnist-5k", "train")[:1000]
    before = evaluate(model, data, progress=False).loss
    fit(model.train(), data, epochs=2, batch_size=32, optimizer=sc.optim.SGD(model, lr=0.05,
        momentum=0.9), progress=False)  # fmt: skip
    after = evaluate(model, data, progress=False).loss
    assert after < 0.7 * before
