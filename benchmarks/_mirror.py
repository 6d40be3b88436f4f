"""Build the PyTorch twin of a scratchcnn model: same layers, same names, same weights.

``to_torch(model)`` walks ``model.config()`` and returns a ``torch.nn.Sequential`` whose
``state_dict`` keys equal scratchcnn's, then copies every parameter and buffer across, so
the two frameworks run the same network from the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _pair(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _padding(pad: Any) -> Any:
    if isinstance(pad, list) and pad and isinstance(pad[0], list):
        (t, b), (l, r) = pad
        if t != b or l != r:
            raise NotImplementedError(f"asymmetric padding {pad} has no torch twin here")
        return (t, l)
    return _pair(pad)


class _Residual(nn.Module):
    def __init__(self, body: nn.Module, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class _Parallel(nn.Module):
    def __init__(self, branches: list[nn.Module], merge: str) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        return torch.cat(outs, dim=1) if self.merge == "concat" else sum(outs)


def _seq(specs: Any) -> nn.Module:
    if isinstance(specs, dict) and "layers" in specs:
        specs = specs["layers"]
    if isinstance(specs, dict):
        return _module(specs)
    return nn.Sequential(*[_module(s) for s in specs])


def _module(spec: dict[str, Any]) -> nn.Module:
    kind, c = spec["type"], spec.get("config", {})
    if kind == "Conv2D":
        return nn.Conv2d(
            c["in_channels"],
            c["out_channels"],
            _pair(c["kernel_size"]),
            stride=_pair(c.get("stride", 1)),
            padding=_padding(c.get("padding", 0)),
            dilation=_pair(c.get("dilation", 1)),
            groups=c.get("groups", 1),
            bias=c.get("bias", True),
        )
    if kind in ("MaxPool2D", "AvgPool2D"):
        cls = nn.MaxPool2d if kind == "MaxPool2D" else nn.AvgPool2d
        kw: dict[str, Any] = {"ceil_mode": c.get("ceil_mode", False)}
        if kind == "AvgPool2D":
            kw["count_include_pad"] = c.get("count_include_pad", True)
        return cls(
            _pair(c["kernel_size"]), _pair(c.get("stride")), _padding(c.get("padding", 0)), **kw
        )
    if kind == "GlobalAvgPool2D":
        return nn.AdaptiveAvgPool2d(1)
    if kind == "Dense":
        return nn.Linear(c["in_features"], c["out_features"], bias=c.get("bias", True))
    if kind == "Flatten":
        return nn.Flatten(c.get("start_dim", 1))
    if kind in ("BatchNorm2D", "BatchNorm1D"):
        cls = nn.BatchNorm2d if kind == "BatchNorm2D" else nn.BatchNorm1d
        return cls(c["num_features"], eps=c.get("eps", 1e-5), momentum=c.get("momentum", 0.1))
    if kind == "Residual":
        short = c.get("shortcut")
        return _Residual(_seq(c["body"]), None if short is None else _seq(short))
    if kind == "Parallel":
        return _Parallel([_seq(b) for b in c["branches"]], c.get("merge", "concat"))
    simple = {"ReLU": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "Dropout": nn.Dropout}
    if kind in simple:
        return simple[kind]()
    raise NotImplementedError(f"no torch twin for layer type {kind!r}")


def to_torch(model: Any) -> nn.Sequential:
    """A torch.nn.Sequential with the same architecture, keys and weights as ``model``."""
    twin = nn.Sequential(*[_module(s) for s in model.config()["layers"]])
    state = {k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    return twin.to(dtype=torch.float32 if model.dtype.name == "float32" else torch.float64)
