"""What every route of the engine shares: the layer it runs for, and its cache."""

from __future__ import annotations

from typing import Any

from ..errors import StateError


class Route:
    """The engine's way to run one layer: ``forward(x)`` and ``backward(dy)`` compute what
    the layer's own do (the layer is the reference, tests/engine/ hold them equal) and fill
    the layer's ``grads``; the route keeps its own cache between the two."""

    #: True when ``backward`` takes ``input_grad`` (and can skip dL/dx).
    supports_input_grad_skip = False

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self._cache: Any = None

    def _require_cache(self) -> Any:
        if self._cache is None:
            raise StateError(
                f"{type(self.layer).__name__}.backward called before forward; call forward first"
            )
        return self._cache

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.layer!r})"
