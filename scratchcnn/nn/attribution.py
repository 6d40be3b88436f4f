"""Why did the model say that? Saliency, Grad-CAM and per-layer statistics for any model.

Everything here is one forward and one backward pass of the model's own layers (no autograd,
no extra derivatives): the backward starts from the *score* of the target class, i.e.
dy = onehot(target) on the logits (for a one-logit binary model, +1 for class 1 and -1 for
class 0, since its class-0 score is -logit). The model runs in eval mode; its mode and every
layer's ``grads`` are restored afterwards, so explaining a model in the middle of training
changes nothing.

* ``saliency(model, x)``: |d score / d x|, shaped like ``x``.
* ``gradcam(model, x, layer=None)``: Grad-CAM on a 4-D activation A (default: the output of
  the last Conv2D): alpha_c = mean_{i,j} d score / d A[c,i,j], cam = ReLU(sum_c alpha_c A[c]),
  at the activation's resolution; ``upsample`` stretches it over the image.
* ``trace(model, x)``: every leaf layer's output and the gradient of the score with respect
  to it; ``layer_statistics`` summarises them (mean, std, fraction of dead ReLUs).

Leaf layers are found with ``Sequential.named_layers()``, which walks into blocks. Their
outputs are recorded by wrapping each leaf's ``forward`` and ``backward`` for the duration of
the pass (instance attributes, removed afterwards), so blocks need nothing special. numpy
only: the pictures are in ``scratchcnn.viz.attribution``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, ShapeError
from .layers import Conv2D, ReLU
from .layers.base import Layer, check_array, leaf_layers

__all__ = [
    "LayerStats",
    "Trace",
    "activation_shapes",
    "class_probabilities",
    "format_layer_table",
    "gradcam",
    "gradcam_from_trace",
    "gradcam_layer",
    "layer_statistics",
    "leaf_layers",
    "saliency",
    "trace",
    "upsample",
]


@dataclass(eq=False)
class Trace:
    """One forward and backward pass from the target class's score (see the module docstring).

    ``activations[p]`` is leaf layer ``p``'s output, ``gradients[p]`` d score / d that output,
    ``input_grad`` d score / d x. Arrays keep the batch axis.
    """

    x: np.ndarray
    logits: np.ndarray
    target: np.ndarray
    input_grad: np.ndarray
    layers: list[tuple[str, Layer]]
    activations: dict[str, np.ndarray] = field(repr=False)
    gradients: dict[str, np.ndarray] = field(repr=False)


def _as_batch(model: Any, x: Any) -> tuple[np.ndarray, bool]:
    """x (float, images in [0, 1] like the model was trained on) as an (N, ...) array of the
    model's dtype, and whether a batch axis was added."""
    x = check_array(x, "explaining a model", "x").astype(model.dtype, copy=False)
    shape = getattr(model, "input_shape", None)
    single = shape is not None and x.ndim == len(shape)
    if single:
        x = x[None]
    if x.ndim < 2 or x.shape[0] == 0:
        raise ShapeError(f"x must hold at least one image, got shape {x.shape}")
    return x, single


def _targets(logits: np.ndarray, target: Any) -> np.ndarray:
    """The class to explain per item: the prediction, or ``target`` (an int or one per item)."""
    n, k = logits.shape
    classes = max(k, 2)
    if target is None:
        return (logits[:, 0] > 0).astype(np.int64) if k == 1 else logits.argmax(axis=1)
    t = np.asarray(target)
    if t.dtype.kind not in "iu" or t.ndim > 1 or (t.ndim == 1 and len(t) != n):
        raise ConfigError(f"target must be a class index or one per image, got {target!r:.60}")
    if t.size and (t.min() < 0 or t.max() >= classes):
        raise ConfigError(f"target must be a class in 0..{classes - 1}, got {target!r:.60}")
    return np.broadcast_to(t.astype(np.int64), (n,)).copy()


def _score_grad(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """d (sum over items of the target class's score) / d logits."""
    dy = np.zeros_like(logits)
    if logits.shape[1] == 1:
        dy[:, 0] = np.where(target == 1, 1.0, -1.0)
    else:
        dy[np.arange(len(target)), target] = 1.0
    return dy


@contextmanager
def _recording(layers: list[tuple[str, Layer]]) -> Iterator[tuple[dict, dict]]:
    """Record each leaf's forward output and the dL/dy its backward receives."""
    acts: dict[str, np.ndarray] = {}
    grads: dict[str, np.ndarray] = {}
    saved = []
    for prefix, layer in layers:
        own = vars(layer)
        saved.append((layer, own.get("forward"), own.get("backward"), dict(layer.grads)))

        def forward(x: Any, *a: Any, _f: Any = layer.forward, _p: str = prefix, **k: Any) -> Any:
            out = _f(x, *a, **k)
            acts[_p] = out
            return out

        def backward(dy: Any, *a: Any, _b: Any = layer.backward, _p: str = prefix, **k: Any) -> Any:
            grads[_p] = dy
            return _b(dy, *a, **k)

        layer.forward = forward  # type: ignore[method-assign]
        layer.backward = backward  # type: ignore[method-assign]
    try:
        yield acts, grads
    finally:
        for layer, fwd, bwd, layer_grads in saved:
            for name, old in (("forward", fwd), ("backward", bwd)):
                if old is None:
                    vars(layer).pop(name, None)
                else:
                    setattr(layer, name, old)
            layer.grads = layer_grads


def trace(model: Any, x: np.ndarray, target: Any = None) -> Trace:
    """Forward ``x`` (one image (C, H, W) or a batch) in eval mode, then backward from the
    target class's score (default: the predicted class), recording every leaf layer."""
    batch, _ = _as_batch(model, x)
    layers = leaf_layers(model)
    was_training = model.training
    model.eval()
    try:
        with _recording(layers) as (acts, grads):
            logits = model.forward(batch)
            if logits.ndim != 2:
                raise ShapeError(
                    f"the model's output must be (N, classes) logits, got shape {logits.shape}"
                )
            tgt = _targets(logits, target)
            dx = model.backward(_score_grad(logits, tgt))
    finally:
        model.train(was_training)
    return Trace(batch, logits, tgt, dx, layers, dict(acts), dict(grads))


def saliency(model: Any, x: np.ndarray, target: Any = None) -> np.ndarray:
    """|d score_target / d x|, shaped like ``x``: how much each input pixel moves the score of
    the target class (default: the predicted one)."""
    _, single = _as_batch(model, x)
    grad = np.abs(trace(model, x, target).input_grad)
    return grad[0] if single else grad


def gradcam_layer(model: Any, layer: Any = None, shapes: dict[str, tuple] | None = None) -> str:
    """The prefix of the leaf layer Grad-CAM looks at: ``layer`` given as a prefix ("3"),
    an index into the leaf layers, or the layer itself; by default the last Conv2D outside a
    residual shortcut (or, with none, the last leaf whose output ``shapes`` says is 4-D).
    ConfigError if there is none."""
    layers = leaf_layers(model)
    if layer is None:
        # A residual block's projection shortcut (a 1x1 conv) comes after its body in forward
        # order but is not where the features are: prefer the main path.
        convs = [p for p, la in layers if isinstance(la, Conv2D)]
        convs = [p for p in convs if "shortcut" not in p.split(".")] or convs
        four_d = [p for p, _ in layers if shapes is not None and len(shapes.get(p, ())) == 4]
        if convs or four_d:
            return (convs or four_d)[-1]
        names = ", ".join(type(la).__name__ for _, la in layers) or "no layers"
        raise ConfigError(
            "Grad-CAM needs a 4-D (N, C, H, W) activation, and this model has none "
            f"({names}); saliency still works"
        )
    if isinstance(layer, Layer):
        found = [p for p, la in layers if la is layer]
    elif isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        found = [layers[layer][0]] if -len(layers) <= layer < len(layers) else []
    else:
        found = [p for p, _ in layers if p == str(layer)]
    if not found:
        known = ", ".join(p for p, _ in layers)
        raise ConfigError(f"Grad-CAM: no layer {layer!r} in the model (its layers: {known})")
    return found[0]


def gradcam_from_trace(trace_: Trace, prefix: str) -> np.ndarray:
    """Grad-CAM maps (N, H', W') of leaf layer ``prefix`` from a recorded pass."""
    a = trace_.activations.get(prefix)
    g = trace_.gradients.get(prefix)
    if a is None or g is None:
        raise ConfigError(f"Grad-CAM: layer {prefix} took no part in the forward pass")
    if a.ndim != 4:
        raise ConfigError(
            f"Grad-CAM needs a 4-D (N, C, H, W) activation; layer {prefix} outputs {a.shape}"
        )
    alpha = g.mean(axis=(2, 3))  # (N, C): how much each channel matters to the score
    return np.maximum(np.einsum("nc,nchw->nhw", alpha, a), 0)


def activation_shapes(t: Trace) -> dict[str, tuple[int, ...]]:
    """Leaf prefix -> shape of its recorded output."""
    return {p: a.shape for p, a in t.activations.items()}


def gradcam(model: Any, x: np.ndarray, layer: Any = None, target: Any = None) -> np.ndarray:
    """Grad-CAM map(s) of the target class (default: the predicted one) on ``layer``
    (default: the last Conv2D), shape (H', W') for one image or (N, H', W') for a batch, at
    that layer's resolution; see the module docstring for the formula."""
    _, single = _as_batch(model, x)
    t = trace(model, x, target)
    cam = gradcam_from_trace(t, gradcam_layer(model, layer, activation_shapes(t)))
    return cam[0] if single else cam


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (..., h, w) maps to (..., H, W) (pixel centres aligned, like
    torch's ``interpolate(align_corners=False)``)."""

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    maps = np.asarray(maps, dtype=np.float64)
    r0, r1, fr = axis(maps.shape[-2], size[0])
    c0, c1, fc = axis(maps.shape[-1], size[1])
    rows = maps[..., r0, :] * (1 - fr)[:, None] + maps[..., r1, :] * fr[:, None]
    return rows[..., c0] * (1 - fc) + rows[..., c1] * fc


def class_probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax of (N, K) logits; for one logit, [1 - sigmoid, sigmoid] (N, 2)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.shape[1] == 1:
        p1 = 1 / (1 + np.exp(-z[:, 0]))
        return np.stack([1 - p1, p1], axis=1)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class LayerStats:
    """One leaf layer's output ("activation") and the score's gradient with respect to it."""

    prefix: str
    name: str
    shape: tuple[int, ...]
    act_mean: float
    act_std: float
    grad_mean: float
    grad_std: float
    grad_abs_mean: float
    dead_fraction: float | None  # ReLU layers: fraction of outputs that are exactly 0
    act_percentiles: np.ndarray = field(repr=False)  # 5, 25, 50, 75, 95
    grad_percentiles: np.ndarray = field(repr=False)


PERCENTILES = (5, 25, 50, 75, 95)


def layer_statistics(t: Trace) -> list[LayerStats]:
    """Per leaf layer, in forward order (layers that did not run are left out)."""
    stats = []
    for prefix, layer in t.layers:
        a, g = t.activations.get(prefix), t.gradients.get(prefix)
        if a is None:
            continue
        a64 = np.asarray(a, dtype=np.float64)
        g64 = np.zeros_like(a64) if g is None else np.asarray(g, dtype=np.float64)
        stats.append(
            LayerStats(
                prefix=prefix,
                name=type(layer).__name__,
                shape=tuple(a.shape[1:]),
                act_mean=float(a64.mean()),
                act_std=float(a64.std()),
                grad_mean=float(g64.mean()),
                grad_std=float(g64.std()),
                grad_abs_mean=float(np.abs(g64).mean()),
                dead_fraction=float(np.mean(a64 == 0)) if isinstance(layer, ReLU) else None,
                act_percentiles=np.percentile(a64, PERCENTILES),
                grad_percentiles=np.percentile(g64, PERCENTILES),
            )
        )
    return stats


def format_layer_table(stats: list[LayerStats]) -> str:
    """The statistics as a text table (one row per layer)."""
    head = ("layer", "type", "output", "act mean", "act std", "grad mean", "grad std", "dead")
    rows = [head]
    for s in stats:
        dead = "" if s.dead_fraction is None else f"{s.dead_fraction:.1%}"
        rows.append(
            (
                s.prefix,
                s.name,
                "x".join(str(d) for d in s.shape),
                f"{s.act_mean:.4g}",
                f"{s.act_std:.4g}",
                f"{s.grad_mean:.3g}",
                f"{s.grad_std:.3g}",
                dead,
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = [
        "  ".join(
            v.ljust(w) if c < 3 else v.rjust(w)
            for c, (v, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)
