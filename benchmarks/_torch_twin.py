"""The PyTorch twin of a scratchcnn model: the same modules, built from the model's config,
with the same attribute names (``body``, ``shortcut``, ``branches``), so the two state dicts
have the same keys and ``twin(model)`` loads ours with ``strict=True``.

Used by the ResNet benchmark and by the tests (``from benchmarks._torch_twin import twin``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class Residual(nn.Module):
    """y = body(x) + shortcut(x), shortcut None = identity."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class Parallel(nn.Module):
    """The same x through every branch, outputs concatenated on channels or summed."""

    def __init__(self, branches: list[nn.Module], merge: str = "concat") -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        if self.merge == "concat":
            return torch.cat(outs, dim=1)
        return torch.stack(outs).sum(dim=0)


def _padding(value: Any) -> Any:
    """Our padding config as torch's: an int, a pair, a string; ((t, b), (l, r)) only when
    symmetric (torch's layers have no asymmetric padding)."""
    if isinstance(value, list) and value and isinstance(value[0], list):
        (t, b), (left, r) = value
        if t != b or left != r:
            raise NotImplementedError(f"torch has no asymmetric padding {value}")
        return (t, left)
    return tuple(value) if isinstance(value, list) else value


def _batchnorm(cls: type, c: dict[str, Any]) -> nn.Module:
    return cls(c["num_features"], eps=c["eps"], momentum=c["momentum"], affine=c["affine"])


def _layer(spec: dict[str, Any]) -> nn.Module:
    kind, c = spec["type"], spec.get("config", {})
    if kind == "Conv2D":
        return nn.Conv2d(
            c["in_channels"],
            c["out_channels"],
            tuple(c["kernel_size"]),
            stride=tuple(c["stride"]),
            padding=_padding(c["padding"]),
            dilation=tuple(c.get("dilation", (1, 1))),
            groups=c.get("groups", 1),
            bias=c["bias"],
        )
    if kind == "Dense":
        return nn.Linear(c["in_features"], c["out_features"], bias=c["bias"])
    if kind == "BatchNorm2D":
        return _batchnorm(nn.BatchNorm2d, c)
    if kind == "BatchNorm1D":
        return _batchnorm(nn.BatchNorm1d, c)
    if kind == "MaxPool2D":
        return nn.MaxPool2d(
            tuple(c["kernel_size"]),
            tuple(c["stride"]),
            _padding(c["padding"]),
            dilation=tuple(c.get("dilation", (1, 1))),
            ceil_mode=c.get("ceil_mode", False),
        )
    if kind == "AvgPool2D":
        return nn.AvgPool2d(
            tuple(c["kernel_size"]),
            tuple(c["stride"]),
            _padding(c["padding"]),
            ceil_mode=c.get("ceil_mode", False),
            count_include_pad=c.get("count_include_pad", True),
        )
    if kind == "Flatten":
        return nn.Flatten(c.get("start_dim", 1))
    if kind == "Residual":
        sc = c.get("shortcut")
        return Residual(_child(c["body"]), None if sc is None else _child(sc))
    if kind == "Parallel":
        return Parallel([_child(b) for b in c["branches"]], c.get("merge", "concat"))
    simple = {
        "ReLU": nn.ReLU,
        "Tanh": nn.Tanh,
        "Sigmoid": nn.Sigmoid,
        "GlobalAvgPool2D": lambda: nn.AdaptiveAvgPool2d(1),
    }
    if kind == "Dropout":
        return nn.Dropout(c["p"])
    if kind in simple:
        return simple[kind]()
    raise NotImplementedError(f"no torch twin for layer type {kind!r}")


def _child(spec: Any) -> nn.Module:
    if isinstance(spec, list):
        return nn.Sequential(*(_layer(s) for s in spec))
    return _layer(spec)


def twin(model: Any) -> nn.Module:
    """A torch ``nn.Sequential`` equal to the scratchcnn ``model``: same architecture, same
    weights and buffers (loaded with ``strict=True``), same dtype, same train/eval mode."""
    net = nn.Sequential(*(_layer(s) for s in model.config()["layers"]))
    if model.dtype == np.float64:
        net = net.double()
    state = {k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}
    net.load_state_dict(state, strict=True)
    return net.train(model.training)


def accuracy(net: nn.Module, images: torch.Tensor, labels: np.ndarray) -> float:
    """Test accuracy of ``net`` in eval mode, in batches of 512."""
    net.eval()
    with torch.inference_mode():
        pred = torch.cat([net(images[i : i + 512]).argmax(1) for i in range(0, len(images), 512)])
    return float((pred.numpy() == labels).mean())
