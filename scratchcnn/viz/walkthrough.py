"""The cross-vs-rectangle walkthrough: one forward and one backward pass of ``shapes_net`` on
one 5x5 image, every intermediate kept, printed as text and drawn as one picture.

Every number comes from the library itself: the forward values are each layer's own
``forward`` output and the gradients are each layer's own ``backward`` result (nothing is
recomputed by hand here), so the walkthrough shows exactly what training does.

    w = run_walkthrough(seed=0)
    print(format_walkthrough(w))
    plot_walkthrough(w, "walkthrough.png")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import make_shapes
from ..data.shapes import SHAPE_CLASSES
from ..errors import ConfigError
from ..nn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from ..nn.layers.activations import sigmoid
from ..nn.layers.sequential import Sequential
from ..nn.losses import BCEWithLogitsLoss
from ..nn.zoo import shapes_net
from . import _style

__all__ = [
    "WALKTHROUGH_FIGSIZE",
    "Walkthrough",
    "format_walkthrough",
    "plot_walkthrough",
    "run_walkthrough",
]

#: Size in inches of the walkthrough picture (times ``_style.DPI`` = 1800 x 1200 pixels).
WALKTHROUGH_FIGSIZE = (18.0, 12.0)


@dataclass(eq=False)
class Walkthrough:
    """Every number of one forward and backward pass of ``shapes_net`` on one image.

    Arrays are plain 2-D (or 1-D) float64 arrays with the batch and channel axes dropped.
    Gradients are the library's own backward results for L = BCE(sigmoid(logit), label).
    """

    seed: int
    label: int
    class_name: str
    image: np.ndarray  # (5, 5)
    kernel: np.ndarray  # (3, 3) conv weight
    conv_bias: float
    conv_out: np.ndarray  # (3, 3)
    relu_out: np.ndarray  # (3, 3)
    pooled: np.ndarray  # (2, 2)
    pool_argmax: np.ndarray  # (2, 2, 2): (row, col) in the ReLU map that won each window
    flat: np.ndarray  # (4,)
    dense_weight: np.ndarray  # (1, 4)
    dense_bias: float
    logit: float
    prob: float
    loss: float
    dL_dlogit: float
    dL_dw: np.ndarray  # (1, 4) dense weight gradient
    dL_db: float  # dense bias gradient
    dL_dflat: np.ndarray  # (4,)
    dL_dpooled: np.ndarray  # (2, 2)
    dL_drelu: np.ndarray  # (3, 3) routed back through the pooling
    dL_dconv: np.ndarray  # (3, 3) after the ReLU mask
    dL_dkernel: np.ndarray  # (3, 3)
    dL_dbias: float  # conv bias gradient
    dL_dimage: np.ndarray  # (5, 5), returned by the convolution's backward
    model: Sequential

    @property
    def pool_routes(self) -> np.ndarray:
        """(3, 3) int: how many pooling windows chose each ReLU cell as their maximum."""
        counts = np.zeros(self.relu_out.shape, dtype=np.int64)
        np.add.at(counts, (self.pool_argmax[..., 0], self.pool_argmax[..., 1]), 1)
        return counts


def pool_argmax_positions(pool: MaxPool2D, x: np.ndarray) -> np.ndarray:
    """(OH, OW, 2): the (row, col) in ``x`` (first image and channel) that won each pooling
    window, i.e. where the library's own ``MaxPool2D.backward`` sends that window's gradient.

    Found without reading the layer's private cache: a fresh pooling layer with the same
    settings runs on OH*OW copies of the map, and its backward gets one one-hot upstream
    gradient per copy (one batched call, no loop), so copy k returns a one-hot map marking
    the cell that window k routes to. Ties resolve exactly as in training.
    """
    probe = MaxPool2D(pool.kernel_size, pool.stride, pool.padding)
    one = np.ascontiguousarray(x[:1, :1])
    _, _, oh, ow = probe.output_shape(one.shape)
    k = oh * ow
    probe.forward(np.repeat(one, k, axis=0))
    routed = probe.backward(np.eye(k, dtype=one.dtype).reshape(k, 1, oh, ow))
    rows, cols = np.unravel_index(routed.reshape(k, -1).argmax(axis=1), one.shape[2:])
    return np.stack([rows, cols], axis=-1).reshape(oh, ow, 2).astype(np.int64)


def run_walkthrough(seed: int = 0) -> Walkthrough:
    """Draw one shapes image with ``make_shapes(1, seed)``, build ``shapes_net(float64, seed)``
    and run its layers' forward and backward one at a time, keeping every intermediate."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"walkthrough seed must be an integer >= 0, got {seed!r}")
    seed = int(seed)
    images, labels = make_shapes(1, seed)
    x = images.astype(np.float64)
    label = int(labels[0])
    model = shapes_net(dtype=np.float64, seed=seed)
    conv, relu, pool, flatten, dense = model.layers
    assert isinstance(conv, Conv2D) and isinstance(relu, ReLU) and isinstance(pool, MaxPool2D)
    assert isinstance(flatten, Flatten) and isinstance(dense, Dense)

    # Forward, one layer at a time.
    conv_out = conv.forward(x)
    relu_out = relu.forward(conv_out)
    pooled = pool.forward(relu_out)
    flat = flatten.forward(pooled)
    logit = dense.forward(flat)
    loss_fn = BCEWithLogitsLoss()
    loss = loss_fn.forward(logit, np.array([[label]], dtype=np.float64))

    # Backward, one layer at a time: each call is the library's own hand-written gradient.
    dL_dlogit = loss_fn.backward()
    dL_dflat = dense.backward(dL_dlogit)
    dL_dpooled = flatten.backward(dL_dflat)
    dL_drelu = pool.backward(dL_dpooled)
    dL_dconv = relu.backward(dL_drelu)
    dL_dimage = conv.backward(dL_dconv)

    z = float(logit[0, 0])
    return Walkthrough(
        seed=seed,
        label=label,
        class_name=SHAPE_CLASSES[label],
        image=x[0, 0].copy(),
        kernel=conv.params["weight"][0, 0].copy(),
        conv_bias=float(conv.params["bias"][0]),
        conv_out=conv_out[0, 0].copy(),
        relu_out=relu_out[0, 0].copy(),
        pooled=pooled[0, 0].copy(),
        pool_argmax=pool_argmax_positions(pool, relu_out),
        flat=flat[0].copy(),
        dense_weight=dense.params["weight"].copy(),
        dense_bias=float(dense.params["bias"][0]),
        logit=z,
        prob=float(sigmoid(logit)[0, 0]),
        loss=float(loss),
        dL_dlogit=float(dL_dlogit[0, 0]),
        dL_dw=dense.grads["weight"].copy(),
        dL_db=float(dense.grads["bias"][0]),
        dL_dflat=dL_dflat[0].copy(),
        dL_dpooled=dL_dpooled[0, 0].copy(),
        dL_drelu=dL_drelu[0, 0].copy(),
        dL_dconv=dL_dconv[0, 0].copy(),
        dL_dkernel=conv.grads["weight"][0, 0].copy(),
        dL_dbias=float(conv.grads["bias"][0]),
        dL_dimage=dL_dimage[0, 0].copy(),
        model=model,
    )


# --------------------------------------------------------------------------- text


def _num(v: float) -> str:
    text = f"{v:.3f}"
    return "0.000" if text == "-0.000" else text


def _grid(a: np.ndarray, indent: str = "      ") -> str:
    """Rows of numbers with 3 decimals, right-aligned in equal columns."""
    a = np.atleast_2d(a)
    cells = [[_num(v) for v in row] for row in a]
    width = max(len(c) for row in cells for c in row)
    return "\n".join(indent + "  ".join(c.rjust(width) for c in row) for row in cells)


def format_walkthrough(w: Walkthrough) -> str:
    """The walkthrough as readable text: each stage headed by its formula in words, with its
    numbers in aligned grids (3 decimals)."""
    y = w.label
    windows = "\n".join(
        f"      window at ({i}, {j}) -> max {_num(w.pooled[i, j])} at ReLU cell "
        f"({w.pool_argmax[i, j, 0]}, {w.pool_argmax[i, j, 1]})"
        for i, j in np.ndindex(w.pooled.shape)
    )
    routed = []
    for r, c in np.argwhere(w.pool_routes > 0):
        chosen = np.argwhere((w.pool_argmax[..., 0] == r) & (w.pool_argmax[..., 1] == c))
        terms = [float(w.dL_dpooled[i, j]) for i, j in chosen]
        parts = _num(terms[0]) + "".join(
            f" - {_num(-t)}" if t < 0 else f" + {_num(t)}" for t in terms[1:]
        )
        sources = ", ".join(f"({i}, {j})" for i, j in chosen)
        plural = "s" if len(chosen) > 1 else ""
        total = f" = {_num(w.dL_drelu[r, c])}" if len(chosen) > 1 else ""
        routed.append(f"      ReLU cell ({r}, {c}) <- window{plural} {sources}: {parts}{total}")
    lines = [
        f"Cross-vs-rectangle walkthrough, seed {w.seed}: one {w.class_name} "
        f"(label y = {y}; 0 = cross, 1 = rectangle)",
        "shapes_net (float64): Conv2D 3x3 -> ReLU -> MaxPool 2x2 stride 1 -> Flatten -> Dense 4->1",
        "                      -> sigmoid -> binary cross-entropy",
        "Every number below is a layer's own forward output or backward gradient.",
        "",
        "FORWARD",
        "",
        "1. input image x (5x5): the shape's pixels are random in (0, 1), the rest 0",
        _grid(w.image),
        "",
        f"2. kernel K (3x3), weights drawn from U(0, 1); conv bias b = {_num(w.conv_bias)}",
        _grid(w.kernel),
        "",
        "3. convolution result (3x3): each cell = bias + the sum of the kernel times the 3x3 "
        "window of x",
        "   conv[i, j] = b + sum_{u,v} K[u, v] * x[i+u, j+v]   ('valid': 5x5 -> 3x3)",
        _grid(w.conv_out),
        "",
        "4. ReLU (3x3): relu = max(conv, 0), negative values become 0",
        _grid(w.relu_out),
        "",
        "5. max pooling 2x2, stride 1 (3x3 -> 2x2): each cell = the largest ReLU value in its "
        "2x2 window",
        _grid(w.pooled),
        "   winning ReLU cells (row, col), kept for the backward pass:",
        windows,
        "",
        "6. flatten (2x2 -> 4): flat = pooled read row by row",
        _grid(w.flat),
        "",
        "7. dense layer: the logit z (the pre-sigmoid value) = dense weights times flat, "
        "plus the bias",
        "   dense weights w (1x4):",
        _grid(w.dense_weight),
        f"   dense bias b = {_num(w.dense_bias)}",
        f"   z = w . flat + b = {_num(w.logit)}",
        "",
        f"8. sigmoid: p = 1 / (1 + exp(-z)) = {_num(w.prob)}, the predicted probability of "
        f"'rectangle'",
        f"   predicted class: {SHAPE_CLASSES[int(w.logit > 0)]} (rectangle when p > 0.5, "
        "i.e. z > 0)",
        "",
        f"9. loss: binary cross-entropy L = -[y log p + (1 - y) log(1 - p)] with y = {y}",
        f"   loss L = {w.loss:.4f}",
        "",
        "BACKWARD (each gradient is the layer's own backward result)",
        "",
        f"10. dL/dz = p - y = {_num(w.dL_dlogit)}   (sigmoid and cross-entropy together)",
        "",
        "11. dense layer backward: weight gradient = dL/dz times the layer's input; "
        "bias gradient = dL/dz",
        "    dL/dw = dL/dz * flat (1x4):",
        _grid(w.dL_dw),
        f"    dL/db = dL/dz = {_num(w.dL_db)}",
        "    gradient passed down: dL/dflat = dL/dz * w, reshaped to 2x2 = dL/dpooled:",
        _grid(w.dL_dpooled),
        "",
        "12. max pooling backward: each window's gradient goes only to the cell that held its "
        "maximum;",
        "    every other cell gets 0, and a cell that won several (overlapping) windows gets "
        "their sum.",
        "    cells that got gradient (all others are 0):",
        *routed,
        "    gradient routed back through the pooling, dL/drelu (3x3):",
        _grid(w.dL_drelu),
        "",
        "13. ReLU backward: dL/dconv = dL/drelu where conv > 0, else 0 (ReLU'(0) = 0)",
        _grid(w.dL_dconv),
        "",
        "14. convolution backward: the kernel gradient is the 'valid' correlation of the input x",
        "    with dL/dconv; the bias gradient is the sum of dL/dconv",
        "    dL/dkernel[u, v] = sum_{i,j} dL/dconv[i, j] * x[i+u, j+v]  (3x3):",
        _grid(w.dL_dkernel),
        f"    dL/dbias = sum_{{i,j}} dL/dconv[i, j] = {_num(w.dL_dbias)}",
        "",
        "A gradient-descent step subtracts lr times each gradient from its parameter, "
        "lowering the loss.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- picture


def _matrix(ax: Any, values: np.ndarray, title: str, **kw: Any) -> None:
    """A walkthrough panel: diverging colours centred at 0, like every other panel."""
    _style.draw_matrix(ax, values, title, diverging=True, **kw)


def plot_walkthrough(w: Walkthrough, path: str | Path) -> Path:
    """Save the walkthrough as ONE PNG (``WALKTHROUGH_FIGSIZE`` x ``_style.DPI`` pixels): a
    panel per stage, each a small matrix with its numbers written in the cells."""
    fig = _style.new_figure(*WALKTHROUGH_FIGSIZE)
    fig.suptitle(
        f"Cross-vs-rectangle walkthrough: seed {w.seed}, class '{w.class_name}' "
        f"(label {w.label}), loss {w.loss:.4f}",
        fontsize=17,
        fontweight="bold",
    )
    rows = fig.subfigures(3, 1, height_ratios=[1.0, 0.8, 1.0])
    titles = (
        "Forward: convolution, ReLU, max pooling",
        "Forward: dense layer, sigmoid, loss  |  start of the backward pass",
        "Backward: gradients from the library's own backward passes",
    )
    for sub, title in zip(rows, titles, strict=True):
        sub.suptitle(title, fontsize=13, x=0.01, ha="left", color="0.25")
    fig.supxlabel(
        "One colour meaning in every panel, values, weights and gradients alike: red > 0, "
        "blue < 0, white = 0 (each panel scaled to its own largest |value|)",
        fontsize=12,
    )

    routes = w.pool_routes
    route_notes = np.where(routes > 1, np.char.add(routes.astype(str), " windows"), "")
    route_notes = np.where(routes == 1, "1 window", route_notes)
    pooled_notes = np.array(
        [[f"from ({r}, {c})" for r, c in row] for row in w.pool_argmax], dtype=object
    )

    # Row 1: forward through the convolution part.
    ax = rows[0].subplots(1, 5)
    shape = (
        "an open rectangle\n(top, right, bottom; no left side)"
        if w.class_name == "rectangle"
        else "a cross: row 2 and column 2"
    )
    _matrix(ax[0], w.image, f"input image x (5x5),\n{shape}")
    _matrix(ax[1], w.kernel, f"kernel K (3x3)\nconv bias b = {w.conv_bias:.3f}")
    _matrix(ax[2], w.conv_out, "convolution result\nb + sum K * window of x")
    _matrix(
        ax[3],
        w.relu_out,
        "ReLU: max(conv, 0)\noutlined: max of a pooling window",
        highlight=routes > 0,
        notes=route_notes,
    )
    _matrix(
        ax[4],
        w.pooled,
        "max pool 2x2, stride 1 (3x3 -> 2x2)\nfrom = winning ReLU cell",
        notes=pooled_notes,
    )

    # Row 2: dense, sigmoid, loss, and the first gradients.
    ax = rows[1].subplots(1, 5, gridspec_kw={"width_ratios": [1.3, 1.3, 1.6, 1.3, 0.8]})
    _matrix(ax[0], w.flat[None], "flatten (2x2 -> 4)")
    _matrix(ax[1], w.dense_weight, f"dense weights w (1x4)\ndense bias b = {w.dense_bias:.3f}")
    ax[2].axis("off")
    predicted = SHAPE_CLASSES[int(w.logit > 0)]
    ax[2].text(
        0.5,
        0.5,
        f"pre-sigmoid value  z = w . flat + b = {w.logit:.3f}\n"
        f"sigmoid  p = 1 / (1 + exp(-z)) = {w.prob:.3f}\n"
        f"P(rectangle) = {w.prob:.3f}  ->  predicted: {predicted}\n"
        f"true label y = {w.label} ({w.class_name})\n"
        f"loss L = -[y log p + (1-y) log(1-p)] = {w.loss:.4f}\n"
        f"dL/dz = p - y = {w.dL_dlogit:.3f}",
        ha="center",
        va="center",
        fontsize=12,
        linespacing=1.7,
        family="monospace",
        bbox={"boxstyle": "round,pad=0.6", "facecolor": "#f3f3f3", "edgecolor": "0.6"},
        transform=ax[2].transAxes,
    )
    _matrix(ax[3], w.dL_dflat[None], "dL/dflat = dL/dz * w")
    _matrix(ax[4], w.dL_dpooled, "dL/dpooled\n(dL/dflat as 2x2)")
    for panel in ax:  # tops (and titles) in one line, whatever a panel's height
        panel.set_anchor("N")

    # Row 3: the parameter gradients and the routed gradient.
    ax = rows[2].subplots(1, 6, gridspec_kw={"width_ratios": [1.5, 0.6, 1.2, 1.2, 1.2, 0.6]})
    _matrix(ax[0], w.dL_dw, "dense: dL/dw = dL/dz * flat")
    _matrix(ax[1], np.array([[w.dL_db]]), "dense:\ndL/db = dL/dz")
    _matrix(
        ax[2],
        w.dL_drelu,
        "routed back through the pooling\n(nonzero only at the max cells)",
        highlight=routes > 0,
        notes=route_notes,
    )
    _matrix(ax[3], w.dL_dconv, "through ReLU: dL/dconv\n(0 where conv <= 0)")
    _matrix(ax[4], w.dL_dkernel, "conv: dL/dkernel\ncorrelate x with dL/dconv")
    _matrix(ax[5], np.array([[w.dL_dbias]]), "conv: dL/dbias\n= sum dL/dconv")
    return _style.save_figure(fig, path)
