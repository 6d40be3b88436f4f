"""Shared drawing helpers: figures on the Agg canvas, saving, and a small matrix drawn with
its number written in every cell.

Nothing here imports pyplot or calls ``matplotlib.use``: every figure is a
``matplotlib.figure.Figure`` attached to its own ``FigureCanvasAgg``, so drawing works
headless and never touches the caller's matplotlib state.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..checkpoint import atomic_write_bytes

#: Resolution of every figure scratchcnn writes; pixel size = figsize (inches) * DPI.
DPI = 100

#: One colour rule per kind of value, in every figure, and said on it (the *_KEY texts):
#: values that can be negative (activations, weights, gradients) on a diverging map
#: centred at 0; values that cannot (ReLU outputs, |gradient|, Grad-CAM) on one sequential
#: map; counts (the confusion matrix) in blues; images in grey.
DIVERGING_CMAP = "RdBu_r"
SEQUENTIAL_CMAP = "viridis"
COUNT_CMAP = "Blues"
DIVERGING_KEY = "red > 0, blue < 0, white = 0"
SEQUENTIAL_KEY = "dark = 0, yellow = largest"
HIGHLIGHT = "#ff7f0e"


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width x height`` inches at :data:`DPI`, on its own Agg canvas, with
    constrained layout (titles and colour bars never overlap)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as an RGB PNG of exactly figsize * DPI pixels; returns the path.

    The canvas is rendered by Agg and encoded by Pillow without the alpha channel (smaller
    files, same picture), in memory; the file is then written atomically by the one writer
    (``checkpoint.files.atomic_write_bytes``): on a full disk an earlier picture stays
    complete and no truncated PNG is left. A target that is a device, a FIFO, a folder or a
    symbolic link is refused; any failure is one FileWriteError line naming the path.
    """
    from PIL import Image

    path = Path(path)
    fig.set_dpi(DPI)
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    png = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(png, format="PNG")
    atomic_write_bytes(path, lambda fh: fh.write(png.getbuffer()))
    return path


def symmetric_limit(*arrays: np.ndarray) -> float:
    """max |value| over the arrays (at least a tiny positive number, so a zero map still draws)."""
    m = max((float(np.max(np.abs(a))) for a in arrays if np.size(a)), default=0.0)
    return m if m > 0 else 1e-12


def text_colours(cmap: Colormap, norm: Normalize, values: np.ndarray) -> np.ndarray:
    """Black or white per cell, whichever reads better on the cell's colour."""
    rgba = cmap(norm(values))
    luminance = 0.299 * rgba[..., 0] + 0.587 * rgba[..., 1] + 0.114 * rgba[..., 2]
    return np.where(luminance < 0.5, "white", "black")


def draw_matrix(
    ax: Axes,
    values: np.ndarray,
    title: str,
    *,
    diverging: bool | None = None,
    vlim: tuple[float, float] | None = None,
    decimals: int = 3,
    fontsize: float = 10,
    highlight: np.ndarray | None = None,
    notes: np.ndarray | None = None,
    show_index: bool = True,
    annotate: bool = True,
) -> Any:
    """Draw a small 2-D matrix with its value written in every cell; returns the image.

    ``diverging`` (default: True when any value is negative) picks a red-blue colormap
    centred at 0 with symmetric limits; otherwise a sequential one from 0 (or ``vlim``).
    ``highlight`` is a boolean mask of cells to outline; ``notes`` an optional string per
    cell written small under its number (e.g. where a pooled maximum came from).
    ``annotate=False`` draws the colours only (for matrices too big to hold numbers).
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    if diverging is None:
        diverging = bool(np.any(values < 0))
    if vlim is None:
        if diverging:
            m = 1.15 * symmetric_limit(values)  # a margin keeps the extremes readable
            vlim = (-m, m)
        else:
            top = float(values.max()) if values.size else 1.0
            vlim = (min(0.0, float(values.min())), top if top > 0 else 1.0)
    cmap = matplotlib.colormaps[DIVERGING_CMAP if diverging else SEQUENTIAL_CMAP]
    norm = Normalize(*vlim)
    image = ax.imshow(values, cmap=cmap, norm=norm, interpolation="nearest")
    rows, cols = values.shape
    colours = text_colours(cmap, norm, values)
    for (i, j), v in np.ndenumerate(values if annotate else np.empty((0, 0))):
        text = f"{v:.{decimals}f}"
        if text.lstrip("-").strip("0.") == "":  # -0.000 -> 0.000
            text = f"{0:.{decimals}f}"
        note = "" if notes is None else str(notes[i, j])
        ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=colours[i, j])
        if note:
            ax.text(
                j,
                i + 0.28,
                note,
                ha="center",
                va="center",
                fontsize=fontsize * 0.72,
                color=colours[i, j],
            )
    if highlight is not None:
        for i, j in np.argwhere(highlight):
            ax.add_patch(
                Rectangle(
                    (j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor=HIGHLIGHT, linewidth=3
                )
            )
    ax.set_title(title, fontsize=fontsize + 1)
    if show_index:
        ax.set_xticks(range(cols))
        ax.set_yticks(range(rows))
        ax.tick_params(length=0, labelsize=fontsize * 0.75, colors="0.4")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    # Cell borders as two line collections (much cheaper to lay out than minor ticks).
    ax.vlines(np.arange(0.5, cols - 1), -0.5, rows - 0.5, colors="0.75", linewidth=0.8)
    ax.hlines(np.arange(0.5, rows - 1), -0.5, cols - 0.5, colors="0.75", linewidth=0.8)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    return image


def show_image(ax: Axes, image: np.ndarray, title: str, fontsize: float = 9) -> None:
    """Draw one (C, H, W) or (H, W) image in [0, 1] in grey (or colour for 3 channels)."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        img = np.transpose(img, (1, 2, 0)) if img.shape[0] == 3 else img[0]
    ax.imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=fontsize)
    ax.set_xticks([])
    ax.set_yticks([])
