"""The lazy import of the optional ``onnx`` package."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MissingDependencyError


def require_onnx() -> ModuleType:
    """``import onnx``, or one line naming the extra that installs it."""
    try:
        return importlib.import_module("onnx")
    except ImportError as exc:
        raise MissingDependencyError(
            f"ONNX support needs the onnx package ({exc}); install it with pip install onnx "
            "(the [onnx] extra: pip install -e '.[onnx]' in a clone)"
        ) from None
