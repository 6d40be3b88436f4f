"""Pictures of a training run folder (what ``scratchcnn train --out RUN_DIR`` writes).

``plot_run(RUN_DIR)`` reads ``metrics.jsonl``, ``run.json`` and ``model.npz``, evaluates the
model on the run's test split (in batches, with ``model.predict``) and writes six PNGs into
RUN_DIR: ``curves.png``, ``confusion.png``, ``filters.png``, ``feature_maps.png``,
``misclassified.png`` and ``grad_norms.png`` (each parameter's gradient norm per epoch).
Models with one output are binary: the prediction is ``logit > 0``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure, SubFigure
from matplotlib.ticker import Formatter, MaxNLocator

from ..checkpoint import load_checkpoint
from ..data import Dataset
from ..errors import DataError
from ..nn.layers import Conv2D, LeakyReLU, ReLU, Sigmoid, Tanh
from ..nn.layers.sequential import Sequential
from ..training.datasets import FOLDER, evaluation_data
from ..training.runs import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    RUN_CONFIG,
    read_metrics,
    read_run_config,
)
from . import _style

__all__ = [
    "FIGSIZES",
    "RunData",
    "confusion_matrix",
    "load_metrics",
    "load_run",
    "plot_confusion",
    "plot_curves",
    "plot_feature_maps",
    "plot_filters",
    "plot_grad_norms",
    "plot_misclassified",
    "plot_run",
    "predict_classes",
]

#: File name -> figure size in inches; pixel size = size * ``_style.DPI`` (100). filters.png
#: and misclassified.png shrink to fit few panels (these are then their largest sizes).
FIGSIZES: dict[str, tuple[float, float]] = {
    "curves.png": (13.0, 5.0),
    "confusion.png": (9.0, 8.0),
    "filters.png": (12.0, 7.0),
    "feature_maps.png": (16.0, 7.0),
    "misclassified.png": (12.0, 13.0),
    "grad_norms.png": (12.0, 6.0),
}

#: Layers drawn as "activation" after the first Conv2D in feature_maps.png.
ACTIVATIONS = (ReLU, LeakyReLU, Sigmoid, Tanh)
#: At most this many misclassified images / feature-map channels are drawn.
MAX_MISCLASSIFIED = 25
MAX_CHANNELS = 32
# Room (inches) for the feature maps of one stage in feature_maps.png.
_MAPS_AREA = (11.5, 3.0)


@dataclass(eq=False)
class RunData:
    """A run folder read and evaluated: its metrics, settings, model and test predictions."""

    run_dir: Path
    metrics: list[dict[str, Any]]
    run: dict[str, Any]
    model: Sequential
    test: Dataset
    logits: np.ndarray
    predicted: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.predicted == self.test.labels))

    @property
    def description(self) -> str:
        """E.g. "lenet5 on mnist-5k" (from run.json), or the folder name."""
        model, dataset = self.run.get("model"), self.run.get("dataset")
        if dataset == FOLDER and isinstance(self.run.get("data_dir"), str):
            dataset = Path(self.run["data_dir"]).name  # "resnet8 on photos"
        return f"{model} on {dataset}" if model else f"{self.run_dir.name} ({dataset})"


# --------------------------------------------------------------------------- reading


def load_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl`` (``scratchcnn.training.runs.read_metrics``, the one reader)."""
    return read_metrics(path)


def _load_run_json(path: Path) -> dict[str, Any]:
    """run.json through the one reader (``training.runs``), missing said with a hint."""
    if not os.path.lexists(path):
        raise DataError(
            f"{path}: missing; it names the run's dataset (written by `scratchcnn train --out`)"
        )
    run = read_run_config(path)
    if not isinstance(run.get("dataset"), str):
        raise DataError(f"{path}: has no 'dataset' name")
    return run


def predict_classes(
    model: Sequential, images: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, predicted class) for images, in batches; one output = binary (logit > 0)."""
    logits = model.predict(images, batch_size=batch_size)
    logits = logits.reshape(len(logits), -1)
    if logits.shape[1] == 1:
        return logits, (logits[:, 0] > 0).astype(np.int64)
    return logits, logits.argmax(axis=1).astype(np.int64)


def load_run(run_dir: str | Path, data_dir: str | Path | None = None) -> RunData:
    """Read a run folder and evaluate its model on the test split of its dataset.

    ``data_dir`` overrides the ``data_dir`` recorded in run.json. Raises DataError for a
    missing folder or files, malformed metrics, or a model that does not fit the data.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run folder (make one with `scratchcnn train --out`)")
    metrics = load_metrics(run_dir / METRICS_NAME)
    model_path = run_dir / CHECKPOINT_NAME
    if not model_path.is_file():
        raise DataError(
            f"{model_path}: no model checkpoint in the run folder (it comes from "
            "`scratchcnn train --out RUN_DIR`)"
        )
    run = _load_run_json(run_dir / RUN_CONFIG)
    ckpt = load_checkpoint(model_path)
    model = ckpt.model
    classes = ckpt.extra.get("classes")
    classes = classes if isinstance(classes, list) else None
    test = evaluation_data(run, model, classes, "test", run["dataset"], data_dir, progress=False)
    if model.input_shape and tuple(model.input_shape) != test.input_shape:
        raise DataError(
            f"{model_path}: the model takes images of shape {tuple(model.input_shape)} but the "
            f"{test.name} test images are {test.input_shape}"
        )
    logits, predicted = predict_classes(model, test.images)
    if logits.shape[1] not in (1, test.num_classes):
        raise DataError(
            f"{model_path}: the model has {logits.shape[1]} outputs but {test.name} has "
            f"{test.num_classes} classes"
        )
    return RunData(run_dir, metrics, run, model, test, logits, predicted)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class."""
    flat = np.asarray(labels, np.int64) * num_classes + np.asarray(predicted, np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, -1)


# --------------------------------------------------------------------------- pictures


#: Values beyond this magnitude (a diverged loss of 1e308) are left off the plot and said so:
#: matplotlib's tick arithmetic overflows long before float64 does.
PLOT_LIMIT = 1e30


def _series(metrics: list[dict[str, Any]], key: str) -> np.ndarray:
    values = np.array(
        [np.nan if m.get(key) is None else float(m[key]) for m in metrics], dtype=np.float64
    )
    with np.errstate(invalid="ignore"):
        return np.where(np.abs(values) < PLOT_LIMIT, values, np.nan)


def _off_scale(metrics: list[dict[str, Any]], key: str) -> int:
    """How many epochs recorded ``key`` but have no point on the plot (too large, inf)."""
    return sum(m.get(key) is not None for m in metrics) - int(
        np.count_nonzero(~np.isnan(_series(metrics, key)))
    )


class StepPercent(Formatter):
    """Percent tick labels with as many decimals as the step between ticks needs: 72.5 %
    on 2.5 % steps (a fixed 0 decimals labelled it "72"), 0.25 % on finer ones."""

    _ticks: tuple[float, ...] = ()

    def set_locs(self, locs: Any) -> None:
        self._ticks = tuple(float(v) for v in locs)

    def __call__(self, x: float, pos: int | None = None) -> str:
        locs = np.asarray(self._ticks, dtype=float)
        steps = np.diff(np.sort(locs)) if locs.size > 1 else np.array([1.0])
        step = float(steps[steps > 0].min()) if (steps > 0).any() else 1.0
        decimals = 0
        while decimals < 4 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
            decimals += 1
        return f"{x:.{decimals}f}%"


def plot_curves(data: RunData, path: str | Path) -> Path:
    """Loss and accuracy per epoch, train and test, in two panels."""
    epochs = np.array([m["epoch"] for m in data.metrics])
    fig = _style.new_figure(*FIGSIZES["curves.png"])
    fig.suptitle(f"Training curves: {data.description}", fontsize=14, fontweight="bold")
    axes = fig.subplots(1, 2)
    panels = (("loss", "loss (lower is better)"), ("accuracy", "accuracy (higher is better)"))
    for ax, (what, ylabel) in zip(axes, panels, strict=True):
        for split, colour in (("train", "tab:blue"), ("test", "tab:orange")):
            values = _series(data.metrics, f"{split}_{what}")
            if what == "accuracy":
                values = values * 100
            off = _off_scale(data.metrics, f"{split}_{what}")
            note = f"; {off} epoch{'s' * (off != 1)} off the scale (diverged)" if off else ""
            if np.all(np.isnan(values)):
                if off:
                    ax.plot([], [], color=colour, label=f"{split}: {note[2:]}")
                continue
            last = values[~np.isnan(values)][-1]
            final = f"{last:.1f}%" if what == "accuracy" else f"{last:.4f}"
            ax.plot(
                epochs,
                values,
                marker="o",
                color=colour,
                linewidth=2,
                label=f"{split} (last: {final}{note})",
            )
        ax.set_title(f"{what} per epoch", fontsize=12)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        lo, hi = float(epochs.min()), float(epochs.max())
        pad = max(0.5, 0.05 * (hi - lo))
        ax.set_xlim(lo - pad, hi + pad)
        if what == "accuracy":
            ax.yaxis.set_major_formatter(StepPercent())
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(loc="best")
    return _style.save_figure(fig, path)


def plot_confusion(data: RunData, path: str | Path) -> Path:
    """Confusion matrix of the test split, counts in the cells, class names on the axes."""
    classes = data.test.classes
    k = len(classes)
    counts = confusion_matrix(data.test.labels, data.predicted, k)
    fig = _style.new_figure(*FIGSIZES["confusion.png"])
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap=_style.COUNT_CMAP, vmin=0, interpolation="nearest")
    fontsize = 11 if k <= 10 else max(5.0, 110 / k)
    colours = _style.text_colours(image.cmap, image.norm, counts)
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=fontsize, color=colours[i, j])
    # Long names side by side would collide: tilt them when the row of names is too wide.
    tilt = sum(len(c) + 2 for c in classes) > 60
    ax.set_xticks(range(k), classes, rotation=40 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class", fontsize=12)
    ax.set_ylabel("true class", fontsize=12)
    ax.set_title(
        f"Confusion matrix, {data.test.name} test split ({len(data.test):,} images)\n"
        f"{data.description}: accuracy {100 * data.accuracy:.2f}%",
        fontsize=13,
    )
    fig.colorbar(image, ax=ax, label="number of test images", shrink=0.85)
    return _style.save_figure(fig, path)


def _first_conv(model: Sequential) -> int | None:
    return next((i for i, la in enumerate(model.layers) if isinstance(la, Conv2D)), None)


def _grid_shape(n: int, width: float, height: float, max_cols: int | None = None) -> tuple:
    """(rows, cols) for n square panels in a width x height area, biggest panels first."""
    best = (1, n)
    best_side = -1.0
    for cols in range(1, (max_cols or n) + 1):
        rows = math.ceil(n / cols)
        side = min(width / cols, height / rows)
        if side > best_side + 1e-9:
            best, best_side = (rows, cols), side
    return best


def _fitted_figure(
    name: str,
    count: int,
    area: tuple[float, float],
    margins: tuple[float, float],
    max_cols: int | None = None,
    max_side: float = 3.0,
    min_width: float = 7.5,
) -> tuple[Figure, int, int]:
    """A figure for ``count`` square panels, sized to them (so a few panels do not float in
    a blank page), at most FIGSIZES[name]; returns (figure, rows, cols). ``area`` is the
    room for panels in the full-size figure, ``margins`` the inches for titles and bars."""
    rows, cols = _grid_shape(count, *area, max_cols=max_cols)
    side = min(area[0] / cols, area[1] / rows, max_side)
    width, height = FIGSIZES[name]
    width = min(width, max(min_width, round(cols * side + margins[0], 1)))
    height = min(height, round(rows * side + margins[1], 1))
    return _style.new_figure(width, height), rows, cols


def _no_conv_figure(fig: Figure, what: str) -> None:
    fig.text(
        0.5,
        0.5,
        f"This model has no Conv2D layer: no {what} to show.",
        ha="center",
        va="center",
        fontsize=16,
    )


def plot_filters(data: RunData, path: str | Path) -> Path:
    """The first Conv2D's learned filters, one panel per output channel, on one symmetric
    colour scale (channel 0 if the layer has one input channel, else the sum over them)."""
    index = _first_conv(data.model)
    if index is None:
        fig = _style.new_figure(*FIGSIZES["filters.png"])
        _no_conv_figure(fig, "filters")
        return _style.save_figure(fig, path)
    conv = data.model.layers[index]
    weight = np.asarray(conv.params["weight"], dtype=np.float64)
    o, c, kh, kw = weight.shape
    shown = weight[:, 0] if c == 1 else weight.sum(axis=1)
    which = "one input channel" if c == 1 else f"summed over its {c} input channels"
    bias = conv.params.get("bias")
    count = min(o, MAX_CHANNELS)
    fig, rows, cols = _fitted_figure("filters.png", count, (10.5, 5.6), (1.6, 1.4))
    fig.suptitle(
        f"Learned filters of the first Conv2D (layer {index}: {o} filter{'s' if o > 1 else ''} "
        f"of {kh}x{kw}, "
        f"{which})\n{data.description}; red = positive weight, blue = negative, one colour "
        "scale",
        fontsize=13,
    )
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    limit = _style.symmetric_limit(shown)
    annotate = kh * kw <= 25 and count <= 16
    image = None
    for f, ax in enumerate(axes):
        if f >= count:
            ax.axis("off")
            continue
        title = f"filter {f}" + (f" (bias {float(bias[f]):.2f})" if bias is not None else "")
        image = _style.draw_matrix(
            ax,
            shown[f],
            title,
            diverging=True,
            vlim=(-limit, limit),
            decimals=2,
            fontsize=9 if kw <= 5 else 7,
            annotate=annotate,
            show_index=False,
        )
    if o > count:
        fig.supxlabel(f"first {count} of {o} filters shown", fontsize=11)
    fig.colorbar(image, ax=list(axes), label="weight", shrink=0.8)
    return _style.save_figure(fig, path)


def _prepare(model: Sequential, images: np.ndarray) -> np.ndarray:
    """Images as the model takes them (what ``predict`` does): uint8 / 255, model dtype."""
    x = np.asarray(images)
    if x.dtype.kind in "ui":
        return x.astype(model.dtype) / 255
    return x.astype(model.dtype)


def _unit(image: np.ndarray) -> np.ndarray:
    """An image for display in [0, 1]: uint8 / 255; float images (already in [0, 1]) as is."""
    return image / 255 if image.dtype.kind in "ui" else image


def _draw_maps(sub: SubFigure, maps: np.ndarray, title: str) -> None:
    """One panel per channel of (C, H, W) maps, on one colour scale with one colour bar."""
    count = min(len(maps), MAX_CHANNELS)
    maps = np.asarray(maps[:count], dtype=np.float64)
    rows, cols = _grid_shape(count, *_MAPS_AREA)
    axes = np.atleast_1d(sub.subplots(rows, cols, squeeze=False)).ravel()
    diverging = bool(np.any(maps < 0))
    limit = _style.symmetric_limit(maps)
    vlim = (-limit, limit) if diverging else (0.0, limit)
    small = maps.shape[1] * maps.shape[2] <= 49
    image = None
    for ch, ax in enumerate(axes):
        if ch >= count:
            ax.axis("off")
            continue
        if small:  # tiny maps (shapes_net): write the numbers in
            image = _style.draw_matrix(
                ax,
                maps[ch],
                f"channel {ch}",
                diverging=diverging,
                vlim=vlim,
                decimals=2,
                fontsize=9,
                show_index=False,
            )
            continue
        image = ax.imshow(
            maps[ch],
            cmap=_style.DIVERGING_CMAP if diverging else _style.SEQUENTIAL_CMAP,
            vmin=vlim[0],
            vmax=vlim[1],
            interpolation="nearest",
        )
        ax.set_title(f"channel {ch}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    key = _style.DIVERGING_KEY if diverging else _style.SEQUENTIAL_KEY
    sub.suptitle(f"{title} ({key})", fontsize=12)
    sub.colorbar(image, ax=list(axes), shrink=0.8, aspect=15)


def plot_feature_maps(data: RunData, path: str | Path, index: int = 0) -> Path:
    """Test image ``index`` and what the first Conv2D (and the activation after it) make of
    it, one panel per channel."""
    fig = _style.new_figure(*FIGSIZES["feature_maps.png"])
    conv_at = _first_conv(data.model)
    if conv_at is None:
        _no_conv_figure(fig, "feature maps")
        return _style.save_figure(fig, path)
    model = data.model
    layers = model.layers
    model.eval()
    x = _prepare(model, data.test.images[index : index + 1])
    for layer in layers[: conv_at + 1]:
        x = layer.forward(x)
    stages = [
        (
            f"output of the first Conv2D (layer {conv_at}): {x.shape[1]} "
            f"channel{'s' if x.shape[1] > 1 else ''} of {x.shape[2]}x{x.shape[3]}",
            x[0],
        )
    ]
    if conv_at + 1 < len(layers) and isinstance(layers[conv_at + 1], ACTIVATIONS):
        act = layers[conv_at + 1]
        y = act.forward(x)
        stages.append((f"after {type(act).__name__} (layer {conv_at + 1})", y[0]))

    classes = data.test.classes
    true, pred = int(data.test.labels[index]), int(data.predicted[index])
    fig.suptitle(
        f"Feature maps of test image {index} ({data.description})",
        fontsize=14,
        fontweight="bold",
    )
    # Size the maps' area to its content so a model with few channels is not lost on the
    # right; blank margins either side keep the pair centred.
    stage_h = (FIGSIZES["feature_maps.png"][1] - 0.8) / len(stages) - 0.6
    rows, cols = _grid_shape(min(x.shape[1], MAX_CHANNELS), *_MAPS_AREA)
    side = min(_MAPS_AREA[0] / cols, stage_h / rows)
    maps_w = min(_MAPS_AREA[0], cols * side + 1.4)
    spare = FIGSIZES["feature_maps.png"][0] - 4.0 - maps_w
    _, left, right, _ = fig.subfigures(
        1, 4, width_ratios=[spare / 2 + 0.01, 4.0, maps_w, spare / 2 + 0.01]
    )
    ax = left.add_subplot()
    _style.show_image(
        ax,
        _unit(data.test.images[index]),
        f"input: true {classes[true]}, predicted {classes[pred]}",
        fontsize=11,
    )
    subs = np.atleast_1d(right.subfigures(len(stages), 1))
    for sub, (title, maps) in zip(subs, stages, strict=True):
        _draw_maps(sub, maps, title)
    if x.shape[1] > MAX_CHANNELS:
        fig.supxlabel(f"first {MAX_CHANNELS} of {x.shape[1]} channels shown", fontsize=11)
    return _style.save_figure(fig, path)


def plot_misclassified(data: RunData, path: str | Path) -> Path:
    """Up to 25 misclassified test images, each titled "true -> predicted"."""
    wrong = np.flatnonzero(data.predicted != data.test.labels)
    n = len(data.test)
    if wrong.size == 0:
        fig = _style.new_figure(*FIGSIZES["misclassified.png"])
        fig.text(
            0.5,
            0.5,
            f"No misclassified test images:\nall {n:,} {data.test.name} test images are "
            f"correct\n({data.description})",
            ha="center",
            va="center",
            fontsize=18,
        )
        return _style.save_figure(fig, path)
    shown = wrong[:MAX_MISCLASSIFIED]
    classes = data.test.classes
    fig, rows, cols = _fitted_figure(
        "misclassified.png", shown.size, (12.0, 11.5), (0.4, 1.5), max_cols=5
    )
    fig.suptitle(
        f"Misclassified test images: {wrong.size:,} of {n:,} "
        f"({100 * wrong.size / n:.1f}%), "
        f"{'all' if shown.size == wrong.size else f'first {shown.size}'} shown\n"
        f"{data.description}; each titled: true -> predicted",
        fontsize=14,
    )
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, i in zip(axes, shown, strict=False):
        _style.show_image(
            ax,
            _unit(data.test.images[i]),
            f"#{i}: {classes[data.test.labels[i]]} -> {classes[data.predicted[i]]}",
            fontsize=11,
        )
    for ax in axes[shown.size :]:
        ax.axis("off")
    return _style.save_figure(fig, path)


#: More parameters than this get a colour bar instead of a legend (a legend of 10,000 names
#: takes minutes to lay out and cannot be read).
MAX_LEGEND_KEYS = 48


def plot_grad_norms(data: RunData, path: str | Path) -> Path:
    """Each parameter's gradient L2 norm (mean over the epoch's steps) per epoch, log scale,
    coloured from the first layer (dark) to the last (light)."""
    fig = _style.new_figure(*FIGSIZES["grad_norms.png"])
    records = [(m["epoch"], m.get("grad_norms")) for m in data.metrics]
    records = [(e, n) for e, n in records if n]
    if not records:
        fig.text(
            0.5,
            0.5,
            "No gradient norms in metrics.jsonl\n(the run was trained before they were recorded)",
            ha="center",
            va="center",
            fontsize=16,
        )
        return _style.save_figure(fig, path)
    keys = list(dict.fromkeys(k for _, n in records for k in n))
    ax = fig.add_subplot()
    epochs = np.array([e for e, _ in records], dtype=np.float64)
    norms = np.array([[n.get(k, np.nan) for _, n in records] for k in keys], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        # A zero norm has no place on a log axis; an inf or huge one is said in the title.
        exploded = int(np.count_nonzero(norms >= PLOT_LIMIT))
        norms = np.where((norms > 0) & (norms < PLOT_LIMIT), norms, np.nan)
    cmap = matplotlib.colormaps[_style.SEQUENTIAL_CMAP]
    colours = cmap(np.linspace(0, 0.9, len(keys)))
    if len(keys) <= MAX_LEGEND_KEYS:
        for key, colour, values in zip(keys, colours, norms, strict=True):
            ax.plot(epochs, values, marker="o", color=colour, label=key, linewidth=1.8)
        ax.legend(
            loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, ncols=1 + len(keys) // 24
        )
    else:  # thousands of parameters: one collection of lines, a colour bar for the order
        segments = [np.column_stack([epochs, values]) for values in norms]
        ax.add_collection(LineCollection(segments, colors=colours, linewidths=1.0))
        ax.autoscale_view()
        bar = fig.colorbar(
            ScalarMappable(Normalize(1, len(keys)), cmap), ax=ax, shrink=0.85, pad=0.02
        )
        bar.set_label(f"parameter, first layer (dark) to last (light) of {len(keys):,}")
    if np.isnan(norms).all():
        ax.text(0.5, 0.5, "no finite, positive norm to draw", ha="center", transform=ax.transAxes)
    else:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean over steps of ||dL/dparam||")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="both")
    warning = f"\n{exploded:,} norms were infinite or above {PLOT_LIMIT:g}: exploded" * bool(
        exploded
    )
    ax.set_title(
        f"Gradient norm per parameter over training: {data.description}\n"
        f"falling towards zero = vanishing, growing without bound = exploding{warning}",
        fontsize=13,
    )
    return _style.save_figure(fig, path)


def plot_run(run_dir: str | Path, data_dir: str | Path | None = None) -> list[Path]:
    """Write curves.png, confusion.png, filters.png, feature_maps.png and misclassified.png
    and grad_norms.png into ``run_dir`` (see the module docstring); returns their paths in
    that order."""
    data = load_run(run_dir, data_dir)
    out = data.run_dir
    return [
        plot_curves(data, out / "curves.png"),
        plot_confusion(data, out / "confusion.png"),
        plot_filters(data, out / "filters.png"),
        plot_feature_maps(data, out / "feature_maps.png"),
        plot_misclassified(data, out / "misclassified.png"),
        plot_grad_norms(data, out / "grad_norms.png"),
    ]
