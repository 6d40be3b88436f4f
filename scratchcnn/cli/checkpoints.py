"""``evaluate``, ``predict`` and ``info``: what a checkpoint does on data and images, and what
it holds."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from .._json import json_line
from ..checkpoint import load_checkpoint
from ..data.images import load_image
from ..errors import ConfigError
from ..training.datasets import evaluation_data
from ..training.evaluate import evaluate
from ..training.job import _check_fits
from ..training.midepoch import resume_point
from .output import printable
from .output import say as _say


def check_takes_images(model: Any, checkpoint: Any, command: str) -> None:
    """One line if ``model`` cannot be given an image: no recorded input shape, or one that
    is not (C, H, W) (an MLP imported from ONNX takes (N, features))."""
    shape = model.input_shape
    if shape is None:
        raise ConfigError(f"{checkpoint}: the model does not record its input shape")
    if len(shape) != 3:
        taken = "(N, " + ", ".join(str(d) for d in shape) + ")"
        raise ConfigError(
            f"{checkpoint}: the model takes {taken}, not images (N, C, H, W); {command} "
            "reads image files, so it needs a model whose input is an image"
        )


def check_finite_output(values: np.ndarray, checkpoint: Any, image: Any) -> None:
    """One line if the model's output for ``image`` holds inf or NaN (weights or a rescale
    that overflow float32), instead of printing ``nan%``."""
    if not np.isfinite(values).all():
        raise ConfigError(
            f"{checkpoint}: the model's output for {image} is not finite (inf or NaN): its "
            "weights or scale factors overflow float32; the checkpoint cannot classify"
        )


#: Data sets of light digits or clothes on a dark background: a picture of dark ink on light
#: paper is inverted to match them (``predict``'s default, --invert / --no-invert decide).
DARK_BACKGROUND = ("mnist-5k", "mnist", "fashion-mnist")


def auto_invert(ckpt: Any) -> bool | None:
    """``load_image``'s ``invert`` for a checkpoint when the command line does not say: None
    (decide by the image's border) for a grey model of the MNIST family or one that does
    not say what it was trained on, False (never) for anything else: photos are not ink."""
    run = ckpt.extra.get("run")
    dataset = run.get("dataset") if isinstance(run, dict) else None
    if dataset is None:
        grey = ckpt.model.input_shape is not None and ckpt.model.input_shape[0] == 1
        return None if grey and "images" not in ckpt.extra else False
    return None if dataset in DARK_BACKGROUND else False


def _classes(ckpt: Any) -> list[str] | None:
    """The class names a checkpoint records (a list of strings), or None."""
    classes = ckpt.extra.get("classes")
    if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
        return classes
    return None


def cmd_evaluate(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    run = ckpt.extra.get("run")
    run = run if isinstance(run, dict) else {}
    if args.dataset is None and args.data_dir is None and run.get("dataset") is None:
        raise ConfigError(f"{args.checkpoint}: does not record its data set; pass --dataset")
    try:
        data = evaluation_data(
            run,
            ckpt.model,
            _classes(ckpt),
            args.split,
            args.dataset,
            args.data_dir,
            progress=None if not args.json else False,
        )
    except ConfigError as exc:
        raise ConfigError(f"{args.checkpoint}: {exc}") from exc
    name = data.name
    _check_fits(ckpt.model, data, {"model": args.checkpoint.name}, "--dataset or checkpoint")
    known = _classes(ckpt)
    if known is not None and len(known) == len(data.classes) and list(data.classes) != known:
        raise ConfigError(
            f"{args.checkpoint}: the model was trained on the classes {known[:6]}, the data "
            f"set {name} has {list(data.classes)[:6]}: evaluating one on the other would "
            "score nonsense"
        )
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        result = evaluate(
            ckpt.model, data, progress=None if not args.json else False, threads=args.threads
        )
    if not np.isfinite(result.loss):
        raise ConfigError(
            f"{args.checkpoint}: the model's outputs on {name} {args.split} are not finite (inf "
            "or NaN): its weights or scale factors overflow float32; the checkpoint cannot "
            "classify"
        )
    if args.json:
        _say(json_line({"accuracy": result.accuracy, "loss": result.loss, "n": result.n}))
        return 0
    correct = int(np.trace(result.confusion))
    _say(
        f"{name} {args.split}: accuracy {result.accuracy:.2%} ({correct:,}/{result.n:,}), "
        f"loss {result.loss:.4f}"
    )
    _say("confusion matrix (rows: true class, columns: predicted):")
    width = max(4, len(str(result.confusion.max())) + 1)
    _say(" " * 6 + "".join(f"{j:>{width}}" for j in range(len(data.classes))))
    for i, row in enumerate(result.confusion):
        name = printable(data.classes[i]) if data.classes[i] != str(i) else ""
        _say(f"{i:>4}  " + "".join(f"{v:>{width}}" for v in row) + f"   {name}".rstrip())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.model
    check_takes_images(model, args.checkpoint, "predict")
    out_shape = model.output_shapes()[-1]
    if len(out_shape) != 2:
        shape = "(N, " + ", ".join(str(d) for d in out_shape[1:]) + ")"
        raise ConfigError(
            f"{args.checkpoint}: the model's output is {shape}, not (N, classes); predict "
            "needs a classifier"
        )
    n_out = out_shape[-1]
    classes = ckpt.extra.get("classes")
    if not (isinstance(classes, list) and len(classes) == max(n_out, 2)):
        classes = [str(i) for i in range(max(n_out, 2))]
    classes = [str(c) for c in classes]
    invert = args.invert if args.invert is not None else auto_invert(ckpt)
    batch = np.stack([load_image(p, model.input_shape, invert) for p in args.images])
    with np.errstate(over="ignore", invalid="ignore"):
        logits = model.predict(batch.astype(model.dtype)).astype(np.float64)
    for path, row in zip(args.images, logits, strict=True):
        check_finite_output(row, args.checkpoint, path)
    if logits.shape[1] == 1:
        p1 = 1 / (1 + np.exp(-logits[:, 0]))
        probs = np.stack([1 - p1, p1], axis=1)
    else:
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    for path, pr in zip(args.images, probs, strict=True):
        top = np.argsort(pr)[::-1][:3]
        if args.json:
            _say(
                json_line(
                    {
                        "image": str(path),
                        "prediction": classes[top[0]],
                        "probability": float(pr[top[0]]),
                        "probabilities": {classes[i]: float(pr[i]) for i in range(len(pr))},
                    }
                )
            )
        else:
            shown = [printable(c) for c in classes]
            others = ", ".join(f"{shown[i]} {pr[i]:.1%}" for i in top[1:])
            _say(f"{path}: {shown[top[0]]} ({pr[top[0]]:.1%}; then {others})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    _say(f"checkpoint: {ckpt.path}")
    _say(ckpt.model.summary())
    run = ckpt.extra.get("run")
    if isinstance(run, dict) and run:
        settings = (f"{printable(k)}={printable(v)}" for k, v in run.items() if v is not None)
        _say("trained: " + ", ".join(settings))
    classes = _classes(ckpt)
    if classes is not None:
        shown = ", ".join(printable(c) for c in classes[:20])
        more = f", ... ({len(classes)} in all)" if len(classes) > 20 else ""
        _say(f"classes: {shown}{more}")
    images = ckpt.extra.get("images")
    if isinstance(images, dict):
        _say(f"images: {_images_text(images)}")
    if ckpt.epoch is not None:
        _say(f"epoch: {ckpt.epoch}")
        if "position" in ckpt.extra:  # a mid-epoch checkpoint
            _say(f"--resume goes on {resume_point(ckpt)}")
    if ckpt.optimizer_state:
        st = ckpt.optimizer_state
        _say(f"optimizer: {_optimizer_text(st, ckpt.scheduler_state)}, {st['steps']} steps")
    history = ckpt.extra.get("history")
    h = history[-1] if isinstance(history, list) and history else None
    if isinstance(h, dict):
        acc, loss = h.get("test_accuracy"), h.get("test_loss")
        if isinstance(acc, (int, float)) and isinstance(loss, (int, float)):
            _say(f"last test accuracy: {acc:.2%} (loss {loss:.4f})")
    return 0


def _images_text(images: dict[str, Any]) -> str:
    """What an image-folder run read, from the checkpoint's ``extra["images"]``."""
    parts = []
    size, channels = images.get("image_size"), images.get("channels")
    if isinstance(size, list) and len(size) == 2:
        colour = {1: "grey", 3: "RGB"}.get(channels, "?")
        parts.append(f"{size[0]}x{size[1]} {colour} ({images.get('resize', '?')} resize)")
    for key, what in (("train_images", "training"), ("test_images", "test")):
        if isinstance(images.get(key), int):
            parts.append(f"{images[key]:,} {what}")
    if images.get("test_source") == "held-out":
        split, seed = images.get("val_split"), images.get("seed")
        parts.append(f"test held out: val_split {split}, seed {seed}")
    if images.get("skipped"):
        parts.append(f"{images['skipped']} unreadable files skipped")
    root = images.get("root")
    return printable(", ".join(parts) + (f"; from {root}" if isinstance(root, str) else ""))


def _optimizer_text(state: dict[str, Any], sched: dict[str, Any] | None) -> str:
    """``SGD(lr=0.05, momentum=0.9, current lr 0.0)``: the learning rate as set, and the one
    the schedule has reached (the optimiser's state holds only the latter)."""
    hyper = dict(state["hyper"])
    current = hyper.get("lr")
    base = sched.get("base_lr") if isinstance(sched, dict) else None
    if isinstance(base, (int, float)) and not isinstance(base, bool):
        hyper["lr"] = base
    parts = [f"{k}={v}" for k, v in hyper.items()]
    if current is not None:
        parts.append(f"current lr {current}")
    return f"{state['type']}({', '.join(parts)})"
