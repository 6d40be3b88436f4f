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

import importlib
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from typing import Any


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
    """``torchvision.models.<name>(weights=None)`` in eval mode, seeded, BatchNorm running
    statistics and affine parameters moved away from their defaults (so a folded or kept
    BatchNorm is really tested)."""
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
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()
