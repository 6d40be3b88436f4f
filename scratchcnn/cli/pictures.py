"""``explain``, ``filters`` and ``plot``: the pictures (matplotlib is imported only when one
of these runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..checkpoint import load_checkpoint
from ..data.images import load_image
from ..errors import ConfigError
from .checkpoints import auto_invert, check_finite_output, check_takes_images
from .output import printable
from .output import say as _say


def cmd_explain(args: argparse.Namespace) -> int:
    from ..viz import format_walkthrough, plot_walkthrough, run_walkthrough

    if args.checkpoint is not None:
        return _explain_checkpoint(args)
    w = run_walkthrough(args.seed)
    _say(format_walkthrough(w))
    out = args.out or Path("runs/explain")
    out.mkdir(parents=True, exist_ok=True)
    _say(f"figure: {plot_walkthrough(w, out / 'explain.png')}")
    return 0


def _explain_checkpoint(args: argparse.Namespace) -> int:
    """``explain CHECKPOINT IMAGE``: saliency, Grad-CAM and layer statistics of one image."""
    from ..nn.attribution import format_layer_table
    from ..viz import explain_model

    if args.image is None:
        raise ConfigError("explain CHECKPOINT needs an IMAGE too: scratchcnn explain CKPT IMAGE")
    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.model
    check_takes_images(model, args.checkpoint, "explain")
    image = load_image(args.image, model.input_shape, auto_invert(ckpt)).astype(model.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        check_finite_output(model.predict(image[None]), args.checkpoint, args.image)
    classes = ckpt.extra.get("classes")
    classes = [str(c) for c in classes] if isinstance(classes, list) else None
    # A run folder's checkpoint is always model.npz: name the folder after the run instead.
    ckpt_path = args.checkpoint.resolve()
    name = ckpt_path.parent.name if ckpt_path.stem == "model" else ckpt_path.stem
    out = args.out or Path("runs") / f"explain-{name}"
    result = explain_model(model, image, out, classes, target=args.target, layer=args.layer)
    _say(f"{args.image}: " + ", ".join(f"{printable(name)} {p:.1%}" for name, p in result.top))
    _say(f"explaining class {printable(result.target)}; gradients are of its score (logit)")
    _say(format_layer_table(result.stats))
    if result.gradcam_layer is None:
        _say(f"no Grad-CAM: {result.gradcam_note}")
    else:
        _say(f"Grad-CAM on layer {result.gradcam_layer}")
    for path in result.files:
        _say(f"figure: {path}")
    return 0


def cmd_filters(args: argparse.Namespace) -> int:
    from ..viz import sobel_demo

    for path in sobel_demo(args.image, args.out):  # creates --out only once it has a picture
        _say(f"figure: {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ..viz import plot_run

    for path in plot_run(args.run_dir, data_dir=args.data_dir):
        _say(f"figure: {path}")
    return 0
