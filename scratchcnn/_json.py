"""JSON output that is always valid JSON: NaN and infinities become ``null``.

Python's ``json`` writes a bare ``NaN`` / ``Infinity`` by default, which no other JSON reader
accepts; every JSON line scratchcnn prints or writes (``evaluate --json``, ``predict
--json``, metrics.jsonl) goes through :func:`json_line`.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["finite_or_none", "json_line"]


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth of dicts, lists and tuples)
    replaced by None; NumPy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_line(value: Any) -> str:
    """One line of strict JSON (``allow_nan=False`` after NaN/inf became null)."""
    return json.dumps(finite_or_none(value), allow_nan=False)
