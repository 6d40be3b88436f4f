"""The engine: how scratchcnn runs fast. The formulas live in ``scratchcnn.nn``.

A learner reads a layer in ``scratchcnn.nn.layers``: plain NumPy in NCHW beside its
formula. The machine runs this package: for each layer class whose reference is slow, a
*route* (``conv``, ``pooling``, ``normalization``, ``activations``) that computes the same
thing in another memory layout, with buffers kept between steps and compiled loops
(``_numba``), and an execution *plan* per model (``plans``) that picks the routes and orders
the work (a ReLU that feeds a MaxPool2D runs after it); in eval mode the plan runs an
*inference plan* instead (``inference``: the model as one flat list of fused steps). Every
route and every step is tested equal to its layer (tests/engine/).

The layers never import this package. ``import scratchcnn`` installs it into the one door
nn has for it (``scratchcnn.nn.dispatch``): ``Sequential.forward`` asks for its plan, the
optimisers for their update. The training loop and the batch split, above both, take the
loss's route here (``loss_route``) and pass a split batch's BatchNorm statistics in
(``batch_statistics``).

``SCRATCHCNN_KERNELS`` chooses how much of it runs (``modes``): ``auto`` (default, routes and
compiled kernels), ``numpy`` (no engine: every model runs its layers' reference code), or
``numba`` (as auto; an error if numba cannot load). ``set_mode`` and ``using`` change it
from Python. This package is also importable as ``scratchcnn.kernels``, its old name.
"""

from __future__ import annotations

import sys
from typing import Any

from ..nn import dispatch as _dispatch
from ..nn.layers.base import leaf_layers
from ..nn.layers.normalization import BatchNorm1D, BatchNorm2D
from . import activations, conv, normalization, pooling
from . import plans as _plans
from .losses import loss_route
from .modes import (
    ENV,
    MIN_VECTOR,
    MODES,
    active,
    available,
    compiled,
    engine_on,
    for_dtype,
    mode,
    set_mode,
    using,
)
from .normalization import batch_statistics
from .optim import optimizer_update
from .plans import Plan

for _module in (conv, pooling, normalization, activations):
    _plans.ROUTES.update(_module.ROUTES)

__all__ = [
    "ENV",
    "MIN_VECTOR",
    "MODES",
    "Plan",
    "active",
    "available",
    "batch_statistics",
    "compiled",
    "engine_on",
    "for_dtype",
    "loss_route",
    "mode",
    "optimizer_update",
    "plan",
    "set_mode",
    "splits_batch_norm",
    "using",
]


def plan(model: Any) -> Plan | None:
    """The execution plan of a Sequential (made once, made again when its list of layers,
    the mode or ``plans.REORDER_RELU_MAXPOOL`` changes); None in ``numpy`` mode, where the
    model runs its layers as written."""
    m = mode()
    if m == "numpy":
        return None
    p = model.__dict__.get("_engine_plan")
    if (
        p is None
        or p.mode != m
        or p.reorder != _plans.REORDER_RELU_MAXPOOL
        or p.layers != model.layers
    ):
        p = model.__dict__["_engine_plan"] = Plan(model.layers, m)
    return p


def splits_batch_norm(model: Any) -> bool:
    """Whether a batch split may run ``model`` in training: its BatchNorm layers (if any)
    then total their statistics over the slices, which their routes do and the reference
    layers (``numpy`` mode) do not."""
    has_norm = any(isinstance(la, (BatchNorm1D, BatchNorm2D)) for _, la in leaf_layers(model))
    return engine_on() or not has_norm


_dispatch.install_engine(sys.modules[__name__])
