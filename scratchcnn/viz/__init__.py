"""Pictures and explanations: the cross-vs-rectangle walkthrough, the Sobel edge-filter demo,
the plots of a training run folder and saliency / Grad-CAM / layer statistics of any model.

Only this package imports matplotlib, and only through ``matplotlib.figure.Figure`` on its
own Agg canvas: no window, no pyplot, no change to the caller's matplotlib state. Nothing
here prints; functions return text and the paths of the PNGs they wrote. Every PNG is
exactly figsize x ``DPI`` pixels (see ``WALKTHROUGH_FIGSIZE``, ``SOBEL_FIGSIZE`` and
``FIGSIZES``). See docs/visualisation.md.

    from scratchcnn.viz import run_walkthrough, format_walkthrough, plot_walkthrough
    w = run_walkthrough(seed=0)
    text = format_walkthrough(w)
    plot_walkthrough(w, "walkthrough.png")
    sobel_demo(out_dir="out")          # out/sobel.png
    plot_run("runs/lenet5")            # curves, confusion, filters, feature maps, errors
    explain_model(model, image, "out") # saliency.png, gradcam.png, layers.png
"""

from __future__ import annotations

from ._style import DPI
from .explain import EXPLAIN_FIGSIZES, ModelExplanation, explain_model
from .plots import FIGSIZES, load_metrics, load_run, plot_run
from .sobel import SOBEL_FIGSIZE, SOBEL_HORIZONTAL, SOBEL_VERTICAL, sobel_demo, sobel_edges
from .walkthrough import (
    WALKTHROUGH_FIGSIZE,
    Walkthrough,
    format_walkthrough,
    plot_walkthrough,
    run_walkthrough,
)

__all__ = [
    "DPI",
    "EXPLAIN_FIGSIZES",
    "FIGSIZES",
    "SOBEL_FIGSIZE",
    "SOBEL_HORIZONTAL",
    "SOBEL_VERTICAL",
    "WALKTHROUGH_FIGSIZE",
    "ModelExplanation",
    "Walkthrough",
    "explain_model",
    "format_walkthrough",
    "load_metrics",
    "load_run",
    "plot_run",
    "plot_walkthrough",
    "run_walkthrough",
    "sobel_demo",
    "sobel_edges",
]
