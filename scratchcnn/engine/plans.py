"""Execution plans: how the engine runs the layers of one ``Sequential``.

A plan is made once per model (and made again when its list of layers changes): for every
layer the engine's *route*, when it has one for that class (``ROUTES``), else the layer
itself. A route computes what its layer computes, by other means (another memory layout,
compiled loops, buffers kept between steps); the layer stays the reference and every route
is tested equal to it (tests/engine/).

Two things only a plan can see, because they span layers:

* **ReLU -> MaxPool2D runs pool-first.** relu(maxpool(x)) equals maxpool(relu(x)) exactly
  (max commutes with any non-decreasing function), and the gradients are the same bits too:
  where a window's maximum is positive both orders pick the same winner and pass dy; where
  it is <= 0 or NaN both give 0 to the whole window. The ReLU then touches the pool's
  output, a quarter of the data for 2x2 windows, forward and backward.
* **Eval mode runs an inference plan** (``inference``): the whole model as one flat list
  of fused steps, made once per input shape; a ``backward`` after it runs the forward
  again layer by layer for the caches.
* **The first layer skips dL/dx** in ``backward(dy, input_grad=False)`` (training: nobody
  needs the gradient of the images).

A layer whose ``forward`` or ``backward`` was replaced on the instance (a hook, as
``scratchcnn.nn.attribution`` installs for one pass) runs as replaced: without its route
and in its place in the list.
"""

from __future__ import annotations

from typing import Any

from ..nn.layers.activations import ReLU
from ..nn.layers.base import accepts_input_grad
from ..nn.layers.pooling import MaxPool2D
from . import inference

#: Run a ReLU that feeds a MaxPool2D after the pool (see the module docstring); False runs
#: every layer in list order.
REORDER_RELU_MAXPOOL = True

#: layer class -> the class of its route: filled by the engine's modules as they load.
#: Only exact classes: a subclass of a built-in layer may compute something else.
ROUTES: dict[type, type] = {}


def route_for(layer: Any) -> Any:
    """The engine's route for ``layer``, or None (the layer runs its own code)."""
    cls = ROUTES.get(type(layer))
    return None if cls is None else cls(layer)


def _hooked(layer: Any) -> bool:
    """True if the instance's forward or backward was replaced (a hook)."""
    own = layer.__dict__
    return "forward" in own or "backward" in own


class Plan:
    """The runners of one model's layers (routes or the layers themselves), in the order
    they run; see the module docstring."""

    def __init__(self, layers: list[Any], mode: str) -> None:
        self.layers = list(layers)
        self.mode = mode
        self.reorder = REORDER_RELU_MAXPOOL
        self.routes = [route_for(layer) for layer in self.layers]
        n = len(self.layers)
        self.swaps = [
            i
            for i in range(n - 1)
            if self.reorder
            and type(self.layers[i]) is ReLU
            and type(self.layers[i + 1]) is MaxPool2D
        ]
        self.runners = self._runners(set())
        #: the layers with a route or a place that moves: where a hook changes the plan
        self._watched = [
            layer
            for i, layer in enumerate(self.layers)
            if self.routes[i] is not None or any(i in (s, s + 1) for s in self.swaps)
        ]
        self._ran: list[Any] | None = None
        #: inference plans by (input shape, dtype), and the input of the last pass that ran
        #: one (a backward after it runs the forward again for the layers' caches)
        self._inference: dict[tuple, Any] = {}
        self._inferred: Any = None

    def _runners(self, hooked: set[int]) -> list[Any]:
        runners = [
            layer if route is None or i in hooked else route
            for i, (layer, route) in enumerate(zip(self.layers, self.routes, strict=True))
        ]
        for i in self.swaps:
            if i not in hooked and i + 1 not in hooked:
                runners[i], runners[i + 1] = runners[i + 1], runners[i]
        return runners

    def current(self) -> list[Any]:
        """The runners for this call: the plan's, unless a layer has a hook right now."""
        for layer in self._watched:
            if _hooked(layer):
                hooked = {i for i, la in enumerate(self.layers) if _hooked(la)}
                return self._runners(hooked)
        return self.runners

    def order(self) -> list[Any]:
        """The layers in the order this call would run them."""
        return [getattr(runner, "layer", runner) for runner in self.current()]

    def forward(self, x: Any) -> Any:
        self._inferred = None
        if self.layers and not getattr(self.layers[0], "training", True):
            fast = inference.fast_kernels(getattr(x, "dtype", None))
            p = (
                None
                if fast is None
                else inference.plan_for(self._inference, self.layers, x, route_for)
            )
            if p is not None:
                self._ran = None
                try:
                    y = p.run(x, fast)
                except inference.PlanMismatch:  # a layer's output_shape is not its forward's
                    self._inference[(x.shape, x.dtype)] = None  # layer by layer from now on
                    return self._forward(x)
                self._inferred = x
                return y
        return self._forward(x)

    def _forward(self, x: Any) -> Any:
        runners = self._ran = self.current()
        for runner in runners:
            x = runner.forward(x)
        return x

    def backward(self, dy: Any, input_grad: bool = True, start: int = 0) -> Any:
        """Backward through the runners from the last down to ``start`` (the first layer
        that learns when the model has frozen layers; only ReLU/MaxPool2D pairs swap places,
        and neither has parameters, so the cut is the same in both orders)."""
        if self._inferred is not None:  # an inference pass kept no caches: run it again
            x, self._inferred = self._inferred, None
            self._forward(x)
        runners = self._ran if self._ran is not None else self.current()
        runners = runners[start:]
        if not runners:
            return None if start else dy
        for runner in reversed(runners[1:]):
            dy = runner.backward(dy)
        first = runners[0]
        if not input_grad and accepts_input_grad(first):
            first.backward(dy, input_grad=False)
            return None
        dx = first.backward(dy)
        return dx if input_grad else None
