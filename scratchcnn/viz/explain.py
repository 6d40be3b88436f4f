"""Pictures of one image through a trained model: saliency, Grad-CAM and per-layer statistics
(what ``scratchcnn explain CHECKPOINT IMAGE`` writes). The numbers come from
``scratchcnn.attribution``; this module only draws them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..nn.attribution import (
    LayerStats,
    Trace,
    activation_shapes,
    class_probabilities,
    gradcam_from_trace,
    gradcam_layer,
    layer_statistics,
    trace,
    upsample,
)
from . import _style

#: File name -> figure size in inches (pixel size = size * DPI).
EXPLAIN_FIGSIZES: dict[str, tuple[float, float]] = {
    "saliency.png": (12.0, 4.6),
    "gradcam.png": (12.0, 4.6),
    "layers.png": (13.0, 10.0),
}


def _display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) grey or (H, W, 3) colour, scaled to [0, 1] for display."""
    img = np.asarray(image, dtype=np.float64)
    img = img[0] if img.shape[0] == 1 else np.transpose(img[:3], (1, 2, 0))
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def _show(ax, img: np.ndarray, title: str) -> None:
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
    ax.set_title(title, fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])


def _three_panels(
    image: np.ndarray,
    heat: np.ndarray,
    title: str,
    heat_title: str,
    path: str | Path,
    bar_label: str,
    note: str = "",
) -> Path:
    """Input, heat map alone (with a labelled colour bar), heat map over the input; ``note``
    a line under the panels."""
    fig = _style.new_figure(*EXPLAIN_FIGSIZES[Path(path).name])
    fig.suptitle(title, fontsize=13, fontweight="bold")
    axes = fig.subplots(1, 3)
    img = _display(image)
    _show(axes[0], img, "input")
    cmap = _style.SEQUENTIAL_CMAP
    shown = axes[1].imshow(heat, cmap=cmap, vmin=0, interpolation="nearest")
    axes[1].set_title(heat_title, fontsize=11)
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    bar = fig.colorbar(shown, ax=axes[1], shrink=0.8)
    bar.set_label(f"{bar_label} ({_style.SEQUENTIAL_KEY})", fontsize=9)
    _show(axes[2], img if img.ndim == 3 else np.stack([img] * 3, axis=-1), "overlay")
    top = float(heat.max())
    axes[2].imshow(heat / top if top > 0 else heat, cmap=cmap, alpha=0.55, vmin=0, vmax=1)
    if note:
        fig.text(0.5, 0.02, note, ha="center", va="bottom", fontsize=10, wrap=True)
    return _style.save_figure(fig, path)


def plot_saliency(t: Trace, label: str, path: str | Path) -> Path:
    """|d score / d x| of the first image (max over channels) next to the image."""
    sal = np.abs(t.input_grad[0]).max(axis=0)
    return _three_panels(
        t.x[0],
        sal,
        f"Saliency: |d score({label}) / d pixel|, from the layers' own backward",
        "|gradient| (max over channels)",
        path,
        "|d score / d pixel|",
        "bright pixels: where a small change of the input changes the class score most",
    )


def plot_gradcam(
    t: Trace, label: str, path: str | Path, cam: np.ndarray | None, layer: str, note: str = ""
) -> Path:
    """Grad-CAM of the first image upsampled over it, or the reason there is none."""
    if cam is None:
        fig = _style.new_figure(*EXPLAIN_FIGSIZES["gradcam.png"])
        fig.text(0.5, 0.5, f"No Grad-CAM: {note}", ha="center", va="center", fontsize=13, wrap=True)
        return _style.save_figure(fig, path)
    h, w = t.x.shape[-2:]
    flat = not np.any(cam > 0)
    return _three_panels(
        t.x[0],
        upsample(cam, (h, w)),
        f"Grad-CAM for {label} on layer {layer}",
        "ReLU(sum_c mean(dscore/dA_c) A_c)",
        path,
        "Grad-CAM",
        f"computed on the layer's {cam.shape[0]}x{cam.shape[1]} map, stretched to the "
        f"{h}x{w} image (bilinear)"
        + (
            "; blank: no channel of this layer adds to the score here (ReLU keeps only the "
            "positive part), so Grad-CAM has nothing to show; try an earlier --layer"
            if flat
            else ""
        ),
    )


def _boxes(ax, stats: list[LayerStats], which: str, title: str) -> None:
    boxes = []
    for s in stats:
        p = s.act_percentiles if which == "act" else s.grad_percentiles
        mean = s.act_mean if which == "act" else s.grad_mean
        boxes.append(
            {"whislo": p[0], "q1": p[1], "med": p[2], "q3": p[3], "whishi": p[4], "mean": mean}
        )
    drawn = ax.bxp(boxes, showfliers=False, showmeans=True, patch_artist=True)
    ax.legend(
        [drawn["boxes"][0], drawn["medians"][0], drawn["means"][0], drawn["whiskers"][0]],
        ["middle 50 % (quartiles)", "median", "mean", "5-95 %"],
        loc="upper left",
        fontsize=8,
        ncol=4,
    )
    ax.set_xticks(range(1, len(stats) + 1), [f"{s.prefix}\n{s.name}" for s in stats])
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.axhline(0, color="0.6", linewidth=0.8)


def plot_layer_stats(stats: list[LayerStats], label: str, path: str | Path) -> Path:
    """Per layer: the spread of activations and of gradients (5-95 % whiskers, quartile box,
    median line, mean triangle), the gradients' size on a log scale, and the dead ReLUs."""
    fig = _style.new_figure(*EXPLAIN_FIGSIZES["layers.png"])
    fig.suptitle(
        f"Per-layer activations and gradients of d score({label}) / d output",
        fontsize=13,
        fontweight="bold",
    )
    axes = fig.subplots(4, 1)
    _boxes(axes[0], stats, "act", "activations (layer outputs)")
    _boxes(axes[1], stats, "grad", "gradients w.r.t. the layer outputs")
    x = np.arange(1, len(stats) + 1)
    names = [f"{s.prefix}\n{s.name}" for s in stats]
    tiny = 1e-30
    axes[2].semilogy(x, [max(s.grad_std, tiny) for s in stats], "o-", label="gradient std")
    axes[2].semilogy(x, [max(s.grad_abs_mean, tiny) for s in stats], "s--", label="mean |gradient|")
    axes[2].set_xticks(x, names)
    axes[2].set_title("gradient size per layer (log scale: vanishing or exploding shows)")
    axes[2].legend(loc="best")
    axes[2].grid(alpha=0.3)
    dead = [0.0 if s.dead_fraction is None else 100 * s.dead_fraction for s in stats]
    bars = axes[3].bar(x, dead, color=["tab:blue" if s.dead_fraction else "0.8" for s in stats])
    for bar, s in zip(bars, stats, strict=True):
        if s.dead_fraction is not None:
            axes[3].text(
                bar.get_x() + bar.get_width() / 2,
                bar.get_height(),
                f"{100 * s.dead_fraction:.0f}%",
                ha="center",
                va="bottom",
                fontsize=9,
            )
    axes[3].set_xticks(x, names)
    axes[3].set_ylim(0, 110)
    axes[3].set_ylabel("% zero outputs")
    axes[3].set_title(
        "ReLU outputs that are exactly 0 for this image (a ReLU is 0 wherever its input is "
        "negative: half or more for one image is normal)"
    )
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    return _style.save_figure(fig, path)


@dataclass
class ModelExplanation:
    """What ``explain_model`` found and wrote."""

    top: list[tuple[str, float]]  # the 3 most likely classes and their probabilities
    target: str  # the class explained
    stats: list[LayerStats]
    gradcam_layer: str | None  # None when the model has no 4-D activation
    gradcam_note: str  # why there is no Grad-CAM, if there is none
    files: list[Path]


def explain_model(
    model: Any,
    image: np.ndarray,
    out_dir: str | Path,
    classes: list[str] | None = None,
    target: int | None = None,
    layer: Any = None,
) -> ModelExplanation:
    """One (C, H, W) image through ``model``: write saliency.png, gradcam.png and layers.png
    into ``out_dir`` and return the top-3 classes and the per-layer statistics. Without a
    4-D activation (and no ``layer`` asked for), gradcam.png says why there is no map."""
    t = trace(model, np.asarray(image)[None], target)
    probs = class_probabilities(t.logits)[0]
    names = list(classes) if classes and len(classes) == len(probs) else None
    names = names or [str(i) for i in range(len(probs))]
    order = np.argsort(probs)[::-1][:3]
    label = names[int(t.target[0])]
    out = Path(out_dir)
    stats = layer_statistics(t)
    try:
        prefix: str | None = gradcam_layer(model, layer, activation_shapes(t))
        cam, note = gradcam_from_trace(t, prefix)[0], ""
    except ConfigError as exc:
        if layer is not None:
            raise
        prefix, cam, note = None, None, str(exc)
    files = [
        plot_saliency(t, label, out / "saliency.png"),
        plot_gradcam(t, label, out / "gradcam.png", cam, prefix or "", note),
        plot_layer_stats(stats, label, out / "layers.png"),
    ]
    return ModelExplanation(
        top=[(names[i], float(probs[i])) for i in order],
        target=label,
        stats=stats,
        gradcam_layer=prefix,
        gradcam_note=note,
        files=files,
    )
