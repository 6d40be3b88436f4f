"""The edge-filter demo: the vertical and horizontal Sobel filters, run by the library's own
``Conv2D`` with "same" and "valid" padding over a grayscale photograph.

    vertical, horizontal = sobel_edges(gray, "same")   # (H, W) each; "valid": (H-2, W-2)
    sobel_demo()                                       # writes ./sobel.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Rectangle

from ..data.images import load_grayscale_image
from ..errors import ConfigError, DataError
from ..nn.layers import Conv2D
from . import _style

__all__ = [
    "MAX_SIDE",
    "SOBEL_FIGSIZE",
    "SOBEL_HORIZONTAL",
    "SOBEL_VERTICAL",
    "default_image_path",
    "load_grayscale",
    "sobel_demo",
    "sobel_edges",
]

#: Responds to vertical edges (intensity changing from left to right).
SOBEL_VERTICAL = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
#: Responds to horizontal edges (intensity changing from top to bottom).
SOBEL_HORIZONTAL = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float32)
SOBEL_VERTICAL.flags.writeable = False
SOBEL_HORIZONTAL.flags.writeable = False

#: Images are downscaled (keeping the aspect ratio) so their longest side is at most this.
MAX_SIDE = 512
#: Size in inches of sobel.png (times ``_style.DPI`` = 1600 x 1000 pixels).
SOBEL_FIGSIZE = (16.0, 10.0)


def default_image_path() -> Path:
    """The photograph that ships with matplotlib (Grace Hopper), so the demo works offline."""
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def load_grayscale(path: str | Path, max_side: int = MAX_SIDE) -> np.ndarray:
    """Read a PNG/JPEG (or any format Pillow reads) as a float32 (H, W) grayscale image in
    [0, 1], downscaled so its longest side is at most ``max_side``. DataError if it is missing
    or not an image (see ``scratchcnn.data.images`` for the checks and bounds)."""
    return load_grayscale_image(path, max_side)


def sobel_edges(gray: np.ndarray, padding: str = "same") -> tuple[np.ndarray, np.ndarray]:
    """Run both Sobel filters over a 2-D image with one ``Conv2D(1, 2, 3, padding=padding)``
    (weights = the two filters, bias 0, float32); returns (vertical, horizontal) responses,
    signed, each (H, W) for "same" and (H-2, W-2) for "valid"."""
    if padding not in ("same", "valid"):
        raise ConfigError(f"sobel_edges: padding must be 'same' or 'valid', got {padding!r}")
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype.kind not in "uif":
        raise ConfigError(f"sobel_edges: expects a 2-D numeric image, got shape {gray.shape}")
    conv = Conv2D(1, 2, 3, padding=padding, dtype=np.float32)
    conv.params["weight"][...] = np.stack([SOBEL_VERTICAL, SOBEL_HORIZONTAL])[:, None]
    conv.params["bias"][...] = 0
    out = conv.forward(gray.astype(np.float32)[None, None])
    return out[0, 0], out[0, 1]


def _size(a: np.ndarray) -> str:
    return f"{a.shape[0]} x {a.shape[1]}"


#: Colour of the input's outline and of the area a "valid" output does not cover.
_FRAME = "#e66101"
_CORNER = 12


def _draw_edges(
    ax: Any, zoom: Any, edges: np.ndarray, input_shape: tuple[int, int], top: float
) -> Any:
    """Draw an edge map at its true place in the input's pixel grid: a "valid" output is
    (k - 1) / 2 = 1 pixel in from every side, which the outline of the input and, beside the
    map (``zoom``, an axes of its own, so nothing of the map is hidden), its top-left
    corner enlarged show (at full size a 2-pixel difference is invisible)."""
    h, w = input_shape
    off = (h - edges.shape[0]) // 2
    extent = (off - 0.5, off + edges.shape[1] - 0.5, off + edges.shape[0] - 0.5, off - 0.5)
    kw = {"cmap": "gray_r", "vmin": 0, "vmax": top, "extent": extent}
    image = ax.imshow(edges, interpolation="antialiased", **kw)
    ax.set_facecolor("#fdb863")  # no output pixel here
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, ec=_FRAME, lw=1.5, ls="--"))
    ax.add_patch(Rectangle((-0.5, -0.5), _CORNER, _CORNER, fill=False, ec=_FRAME, lw=1.5))
    ax.tick_params(labelsize=8)
    ax.set_xlabel("x (input pixels)", fontsize=9)
    ax.set_ylabel("y (input pixels)", fontsize=9)
    inset = zoom
    inset.imshow(edges, interpolation="nearest", **kw)
    inset.set_facecolor("#fdb863")
    inset.set_xlim(-0.5, _CORNER - 0.5)
    inset.set_ylim(_CORNER - 0.5, -0.5)
    inset.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, ec=_FRAME, lw=2.5, ls="--"))
    inset.set_xticks([0, _CORNER - 1])
    inset.set_yticks([0, _CORNER - 1])
    inset.tick_params(labelsize=7)
    inset.set_title(f"top-left\n{_CORNER}x{_CORNER} pixels,\nenlarged", fontsize=8)
    for spine in inset.spines.values():
        spine.set_edgecolor(_FRAME)
    return image


def sobel_demo(
    image: str | Path | None = None, out_dir: str | Path = ".", max_side: int = MAX_SIDE
) -> list[Path]:
    """Filter ``image`` (default: matplotlib's Grace Hopper photo) with both Sobel filters,
    "same" and "valid" padding, and write ``out_dir/sobel.png``; returns ``[path]``."""
    path = default_image_path() if image is None else Path(image)
    gray = load_grayscale(path, max_side)
    if min(gray.shape) < 3:
        raise DataError(f"{path}: image is {_size(gray)} pixels, too small for a 3x3 filter")
    results = {mode: sobel_edges(gray, mode) for mode in ("same", "valid")}
    # One colour scale for all four edge maps: the same filter gives the same strength.
    top = float(max(np.percentile(np.abs(r), 99) for pair in results.values() for r in pair))
    top = top if top > 0 else 1.0

    fig = _style.new_figure(*SOBEL_FIGSIZE)
    name = "matplotlib's sample photo (Grace Hopper)" if image is None else path.name
    fig.suptitle(
        f"Sobel edge filters run by scratchcnn's Conv2D on {name}, {_size(gray)} pixels",
        fontsize=16,
        fontweight="bold",
    )
    # input | edge map, its corner | edge map, its corner | colour bar
    grid = fig.add_gridspec(2, 6, width_ratios=[1, 1, 0.34, 1, 0.34, 0.04])
    ax = fig.add_subplot(grid[0, 0])
    _style.show_image(ax, gray, f"input, grayscale: {_size(gray)} (H x W)", fontsize=12)
    inner = grid[1, 0].subgridspec(1, 2)
    for k, (kernel, label) in enumerate(
        (
            (SOBEL_VERTICAL, "vertical Sobel\n(weight[0])"),
            (SOBEL_HORIZONTAL, "horizontal Sobel\n(weight[1])"),
        )
    ):
        _style.draw_matrix(
            fig.add_subplot(inner[k]),
            kernel,
            label,
            decimals=0,
            fontsize=12,
            diverging=True,
            show_index=False,
        )
    image_artist = None
    for row, mode in enumerate(("same", "valid")):
        vertical, horizontal = results[mode]
        explain = "padded by 1: size kept" if mode == "same" else "no padding: shrinks by k-1 = 2"
        for col, (edges, label) in zip(
            (1, 3),
            ((vertical, "|vertical edges|"), (horizontal, "|horizontal edges|")),
            strict=True,
        ):
            axe = fig.add_subplot(grid[row, col])
            zoom = fig.add_subplot(grid[row, col + 1].subgridspec(2, 1)[0])
            image_artist = _draw_edges(axe, zoom, np.abs(edges), gray.shape, top)
            axe.set_title(
                f'padding="{mode}": {label}\noutput {_size(edges)} ({explain})', fontsize=12
            )
    cbar = fig.colorbar(image_artist, cax=fig.add_subplot(grid[:, 5]))
    cbar.set_label(
        "|filter response| (darker = stronger edge; clipped at the 99th percentile)", fontsize=11
    )
    fig.supxlabel(
        "Each output is drawn at its place in the input's pixel grid (dashed orange: the "
        'input\'s outline; orange fill: no output pixel). "valid" starts 1 pixel in, as the '
        "enlarged top-left corners beside each map show.",
        fontsize=11,
    )
    out = Path(out_dir) / "sobel.png"
    return [_style.save_figure(fig, out)]
