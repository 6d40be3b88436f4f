"""torchvision's classification models (random weights) without torchvision's compiled ops.

``torchvision``'s ``__init__`` loads its C++ extension and registers fake kernels for
``torchvision::nms`` and friends; with a torchvision wheel built for another torch variant
(the CUDA wheel next to the CPU torch) that fails with "operator torchvision::nms does not
exist". The model definitions need none of it. :func:`models` imports
``torchvision.models`` with a bare package object standing in for ``torchvision`` (its
``__path__`` points at the installed package), so the extension and the registrations are
never loaded. Nothing is downloaded: models are built with ``weights=None``.

Used by ``benchmarks/torchvision_import.py`` and ``tests/onnx/test_onnx_torchvision.py``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.machinery
import importlib.util
import io
import logging
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def models() -> types.ModuleType:
    """``torchvision.models``; the real package when it imports, else through a bare
    package object (see the module docstring). ImportError when torchvision is missing."""
    if "torchvision.models" in sys.modules:
        return sys.modules["torchvision.models"]
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "torchvision is not installed; pip install torchvision==0.28.0 --no-deps "
            "(the version made for torch 2.13; --no-deps keeps the installed torch)"
        )
    if "torchvision" not in sys.modules:
        package = types.ModuleType("torchvision")
        package.__path__ = list(spec.submodule_search_locations)
        package.__file__ = spec.origin
        package.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
        package.__spec__.submodule_search_locations = package.__path__
        sys.modules["torchvision"] = package
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("torchvision.models")


def build(name: str, seed: int = 0, **kwargs: Any) -> Any:
    """``torchvision.models.<name>(weights=None)`` in eval mode, seeded; BatchNorm running
    statistics, normalisation weights and biases and ConvNeXt's layer scale moved away from
    their constant initial values (so a folded or kept BatchNorm is really tested, and each
    parameter tensor can be told from the others by its values)."""
    import torch

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = getattr(models(), name)(weights=None, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if hasattr(m, "layer_scale"):  # ConvNeXt: 1e-6 everywhere at init
                m.layer_scale.copy_(torch.rand(m.layer_scale.shape, generator=g) * 0.5 + 0.25)
    return net.eval()


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def exact_reference(net: Any) -> Any:
    """``net`` with every Hardsigmoid computed as relu6(x + 3) / 6: the same values, but
    torch's own float64 Hardsigmoid backward multiplies by 1/6 rounded to float32 (a
    relative error of 3e-8), and relu6's backward is exact."""
    import torch

    class ExactHardsigmoid(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.relu6(x + 3) / 6

    for parent in list(net.modules()):
        for key, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Hardsigmoid):
                setattr(parent, key, ExactHardsigmoid())
    return net


def gradient_check(model: Any, net: Any, x: np.ndarray) -> dict[str, Any]:
    """One cross-entropy step in float64 on both; the largest relative error over the loss,
    dL/dx and the parameter gradients that correspond (by value) to torch parameters."""
    net = exact_reference(copy.deepcopy(net))
    import torch

    import scratchcnn as sc

    labels = np.arange(len(x)) % 7
    fn = sc.CrossEntropyLoss()
    loss = fn.forward(model.forward(x), labels)
    dx = model.backward(fn.backward())
    xt = torch.tensor(x, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(net(xt), torch.from_numpy(labels))
    tloss.backward()
    worst = {"loss": abs(loss - tloss.item()) / abs(tloss.item()), "dx": rel(dx, xt.grad.numpy())}
    by_value: dict[bytes, list[Any]] = {}
    for p in net.parameters():
        by_value.setdefault(p.detach().numpy().tobytes(), []).append(p)
    matched = 0
    params = list(model.named_leaf_parameters())
    for key, layer, name in params:
        found = by_value.get(np.ascontiguousarray(layer.params[name]).tobytes(), [])
        if len(found) != 1:
            continue
        matched += 1
        err = rel(layer.grads[name].ravel(), found[0].grad.numpy().ravel())
        worst[key] = err
    top = max(worst, key=worst.get)
    return {"grad_err": worst[top], "grad_worst": top, "matched": f"{matched}/{len(params)}"}


def quiet_export(net: Any, x: Any, path: Path, exporter: str, opset: int, **extra: Any) -> None:
    """torch.onnx.export with a dynamic batch axis named N, its chatter silenced."""
    import torch

    kwargs: dict[str, Any] = {"input_names": ["input"], "output_names": ["output"]}
    kwargs["opset_version"] = opset
    if exporter == "dynamo":
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("N")},)
    else:
        kwargs["dynamic_axes"] = {"input": {0: "N"}, "output": {0: "N"}}
    kwargs.update(extra)
    logging.disable(logging.WARNING)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), str(path), dynamo=exporter == "dynamo", **kwargs)
    finally:
        logging.disable(logging.NOTSET)
