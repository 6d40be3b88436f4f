"""The command line's parser: every command, option and default, and argparse's usage
errors as one line (exit status 2)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..data import DATASETS
from ..data.folders import MAX_IMAGE_SIDE
from ..data.sources import canonical_dataset_name
from ..errors import DataError
from ..nn.zoo import MODELS, RECIPES
from ..training.datasets import FOLDER
from ..training.runs import RUN_DEFAULTS
from . import checkpoints, onnx, pictures, train


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus exit 2), not the whole usage text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: The largest integer any option takes (epochs, batch size, limit, seed, threads): what a
#: checkpoint may record (a 32-bit signed integer), so a run can save what it was given.
MAX_OPTION_INT = 2**31 - 1


def _int_at_least(low: int, what: str) -> Any:
    """An argparse type: an integer from ``low`` to :data:`MAX_OPTION_INT`, named ``what``
    in the error."""

    def parse(text: str) -> int:
        if len(text) > 40:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text[:20]!r}...")
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        if value > MAX_OPTION_INT:
            raise argparse.ArgumentTypeError(
                f"expected {what} up to {MAX_OPTION_INT:,} (2**31 - 1), got {value:,}"
            )
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")


def _layer_ref(text: str) -> str:
    """A layer number as ``info`` shows it ("7", "-2"); checked against the model later."""
    t = text.strip()
    if not t.lstrip("-").isdigit() or len(t) > 12:
        raise argparse.ArgumentTypeError(
            f"expected a layer number (the # column of scratchcnn info; negative counts from "
            f"the end), got {text[:40]!r}"
        )
    return t


_seed = _int_at_least(0, "an integer >= 0")


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


_MID_EPOCH = (
    "--resume continues there exactly; default: only at the end of each epoch; with "
    "--checkpoint-{other} too, whichever comes first"
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scratchcnn",
        description="Train, evaluate and look inside CNNs written from scratch on NumPy.",
    )
    parser.add_argument("--version", action="version", version=f"scratchcnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    d = RUN_DEFAULTS
    p = sub.add_parser(
        "train",
        help="train a model and write checkpoint + metrics",
        description="Train a model on a data set; writes model.npz (every epoch), "
        "metrics.jsonl and run.json into --out. With no options: LeNet-5 on the embedded "
        "5,000-digit MNIST subset.",
    )
    p.add_argument("--model", choices=sorted(MODELS), help=f"network (default {d['model']})")
    _dataset_option(
        p,
        f"data set (default {d['dataset']}; 'folder' with --data-dir PATH of class folders is "
        "found by itself)",
        folder=True,
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="a folder of your own images, one subfolder per class (PATH/<class>/*.png, or "
        "PATH/train/<class>/ and PATH/test/<class>/); or the IDX / CIFAR files you already have "
        "for --dataset (default: none)",
    )
    p.add_argument(
        "--image-size",
        type=_image_size,
        metavar="S|H,W",
        help="image folders: resize every image to SxS or HxW (Lanczos; default: the images' "
        "own size when both sides are at most 64, else 32x32)",
    )
    p.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        help="image folders: 1 (grey) or 3 (RGB) (default 3 if any training image has colour)",
    )
    p.add_argument(
        "--val-split",
        type=_fraction,
        metavar="F",
        help="image folders without a test folder: hold out this fraction of each class for "
        f"testing, chosen by --seed (default {d['val_split']}; 0: no test split)",
    )
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        default=None,
        help="image folders: skip files that cannot be read as images (and say how many) "
        "instead of stopping at the first",
    )
    p.add_argument("--epochs", type=_positive_int, help=f"default {d['epochs']}")
    p.add_argument("--batch-size", type=_positive_int, help=f"default {d['batch_size']}")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], help="default sgd")
    p.add_argument("--lr", type=_float, help=f"learning rate (default {d['lr']})")
    p.add_argument("--momentum", type=_float, help=f"SGD momentum (default {d['momentum']})")
    p.add_argument("--weight-decay", type=_float, help="default 0")
    p.add_argument("--schedule", choices=["none", "step", "cosine"], help="default cosine")
    p.add_argument(
        "--clip", type=_float, help="clip the global gradient norm to this value (default: off)"
    )
    p.add_argument("--seed", type=_seed, help="seed for weights and shuffling (default 0)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default float32")
    p.add_argument(
        "--limit", type=_positive_int, help="train on the first N images only (default: all)"
    )
    p.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="start from this checkpoint's network and weights (fine-tuning; default: none)",
    )
    p.add_argument(
        "--num-classes",
        type=_positive_int,
        metavar="N",
        help="with --init: put a fresh classifier head with N outputs (the data's class "
        "count) in place of the last Dense / 1x1 Conv2D (default: only when the model's "
        "outputs differ from the data's classes)",
    )
    p.add_argument(
        "--freeze",
        type=_layer_ref,
        metavar="UNTIL",
        help="with --init: keep layers 0..UNTIL fixed (a layer number from `scratchcnn info`, "
        "negative from the end); they get no gradient, keep their weights bit for bit and "
        "their BatchNorm statistics (default: every layer trains)",
    )
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="random crop (2-pixel zero padding) + horizontal flip of the training images "
        "(default off; on for resnet8, whose recipe also changes the defaults above: "
        + ", ".join(f"{k} {v}" for k, v in RECIPES["resnet8"].items())
        + ")",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="output folder (default runs/MODEL-DATASET; if that holds a run already, "
        "runs/MODEL-DATASET-2, -3, ...)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in --out: the old run is first renamed to OUT.old-N, never deleted",
    )
    p.add_argument("--plot", action="store_true", help="write the run's pictures at the end")
    p.add_argument(
        "--tensorboard",
        action="store_true",
        default=None,
        help="also write TensorBoard event files into the run folder (tensorboardX)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    _threads_option(p)
    p.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        metavar="STEPS",
        help="also write the checkpoint after every STEPS optimiser steps, inside epochs ("
        + _MID_EPOCH.format(other="minutes")
        + ")",
    )
    p.add_argument(
        "--checkpoint-minutes",
        type=_positive_float,
        metavar="M",
        help="also write the checkpoint when M minutes have passed since the last one, inside "
        "epochs (" + _MID_EPOCH.format(other="every") + ")",
    )
    p.set_defaults(func=train.cmd_train)

    p = _checkpoint_command(
        sub,
        "evaluate",
        "accuracy and loss of a checkpoint on a data set",
        "Accuracy, loss and confusion matrix of a checkpoint on a data set's test (or train) "
        "split.",
    )
    _dataset_option(p, "data set (default: the one it was trained on)")
    p.add_argument(
        "--data-dir", type=Path, help="folder with IDX files (default: the run's, if any)"
    )
    p.add_argument("--split", choices=["train", "test"], default="test", help="default test")
    p.add_argument("--json", action="store_true", help='print {"accuracy", "loss", "n"}')
    _threads_option(p)
    p.set_defaults(func=checkpoints.cmd_evaluate)

    p = _checkpoint_command(
        sub,
        "predict",
        "classify image files (PNG/JPEG, any size)",
        "Classify image files: each is converted to the model's channels (alpha composited "
        "onto the background), resized to its input and, by default, inverted when its "
        "border is light (MNIST digits are light on dark).",
    )
    p.add_argument(
        "images", type=Path, nargs="+", metavar="IMAGE", help="PNG, JPEG, GIF, ... files"
    )
    inv = p.add_mutually_exclusive_group()
    inv.add_argument(
        "--invert",
        dest="invert",
        action="store_const",
        const=True,
        help="always invert (dark digit on light paper); default for models of the MNIST "
        "family: auto-invert, i.e. invert an image whose border is mostly light; for any "
        "other model (photos, CIFAR): never",
    )
    inv.add_argument(
        "--no-invert",
        dest="invert",
        action="store_const",
        const=False,
        help="never invert (light digit on dark, like MNIST)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(func=checkpoints.cmd_predict, invert=None)

    p = _checkpoint_command(
        sub,
        "info",
        "a checkpoint's model summary and training record",
        "Print a checkpoint's layers, training settings, optimiser and last test metrics.",
    )
    p.set_defaults(func=checkpoints.cmd_info)

    p = sub.add_parser(
        "explain",
        help="the cross-vs-rectangle walkthrough, or why a checkpoint classifies an image so",
        description="Without CHECKPOINT: walk one cross-or-rectangle image through shapes_net, "
        "print every forward value and gradient, and save them as explain.png. With CHECKPOINT "
        "IMAGE: print the top-3 classes and per-layer statistics of that image through the "
        "model and save saliency.png, gradcam.png and layers.png.",
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        nargs="?",
        metavar="CHECKPOINT",
        help="a model.npz to explain (default: none, the walkthrough)",
    )
    p.add_argument(
        "image",
        type=Path,
        nargs="?",
        metavar="IMAGE",
        help="the image to explain, needed with CHECKPOINT (default: none)",
    )
    p.add_argument(
        "--seed", type=_seed, default=0, help="which image and weights to draw (default 0)"
    )
    p.add_argument(
        "--out",
        type=Path,
        help="folder (default runs/explain, or runs/explain-<run> with a CHECKPOINT)",
    )
    p.add_argument("--target", type=_seed, help="class to explain (default: the predicted one)")
    p.add_argument("--layer", help="Grad-CAM layer, e.g. 3 or 3.body.0 (default: last Conv2D)")
    p.set_defaults(func=pictures.cmd_explain)

    p = sub.add_parser(
        "filters",
        help="Sobel edge filters over a photograph",
        description="Run the vertical and horizontal Sobel filters through Conv2D with "
        '"same" and "valid" padding over a photograph; saves sobel.png.',
    )
    p.add_argument("image", type=Path, nargs="?", help="default: a photo shipped with matplotlib")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/filters"),
        help="folder for sobel.png (default runs/filters)",
    )
    p.set_defaults(func=pictures.cmd_filters)

    p = sub.add_parser(
        "export",
        help="write a checkpoint's model as an ONNX file",
        description="Write a checkpoint's model as an ONNX file (input named 'input', dynamic "
        "batch axis, the model's dtype), checked with onnx.checker; needs scratchcnn[onnx].",
    )
    p.add_argument("checkpoint", type=Path, help="a model.npz")
    p.add_argument("out", type=Path, metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--opset", type=_positive_int, help="ONNX opset (default 17)")
    p.set_defaults(func=onnx.cmd_export)

    p = sub.add_parser(
        "import",
        help="read an ONNX file into a scratchcnn checkpoint",
        description="Read an ONNX graph (from torch.onnx.export or built by hand) into a "
        "scratchcnn checkpoint that evaluate, predict, info, explain, export and train --init "
        "take; needs scratchcnn[onnx].",
    )
    p.add_argument("source", type=Path, metavar="IN.onnx", help="the ONNX file to read")
    p.add_argument("out", type=Path, metavar="OUT.npz", help="the checkpoint to write")
    p.add_argument("--classes", help="class names, comma-separated (default: from the file)")
    p.set_defaults(func=onnx.cmd_import)

    p = sub.add_parser(
        "plot",
        help="curves, confusion matrix, filters ... of a training run",
        description="Draw a run folder's loss and accuracy curves, confusion matrix, "
        "first-layer filters, feature maps and misclassified images into that folder.",
    )
    p.add_argument("run_dir", type=Path, help="a folder written by train --out")
    p.add_argument(
        "--data-dir", type=Path, help="folder with IDX files (default: the run's, if any)"
    )
    p.set_defaults(func=pictures.cmd_plot)
    return parser


def _checkpoint_command(
    sub: Any, name: str, summary: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand whose first argument is a checkpoint file."""
    p = sub.add_parser(name, help=summary, description=description)
    p.add_argument("checkpoint", type=Path, help="a model.npz written by train or sc.save")
    return p


def _dataset_option(p: argparse.ArgumentParser, text: str, folder: bool = False) -> None:
    """--dataset NAME: the names of DATASETS and the aliases load_dataset accepts
    ("fashion", "mnist5k", ...), and ``folder`` (an image folder) where ``folder``."""

    def parse(name: str) -> str:
        try:
            return canonical_dataset_name(name)
        except DataError:
            return name  # argparse's choices check names the valid ones

    names = (*DATASETS, FOLDER) if folder else DATASETS
    p.add_argument(
        "--dataset", type=parse, choices=names, metavar="{" + ",".join(names) + "}", help=text
    )


def _image_size(text: str) -> list[int]:
    """--image-size S or H,W: sides from 1 to 1024."""
    parts = text.replace("x", ",").split(",")
    try:
        sides = [int(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected S or H,W (e.g. 32 or 48,64), got {text!r}"
        ) from None
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or not all(1 <= v <= MAX_IMAGE_SIDE for v in sides):
        raise argparse.ArgumentTypeError(
            f"expected S or H,W with sides from 1 to {MAX_IMAGE_SIDE}, got {text!r}"
        )
    return sides


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def _threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=_positive_int,
        help="BLAS threads (default: $SCRATCHCNN_NUM_THREADS, else chosen per workload: "
        "1 for small models and batches)",
    )
