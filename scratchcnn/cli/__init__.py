"""The ``scratchcnn`` command line: train, evaluate, predict, info, explain, filters, plot.

A user error (bad argument, missing or malformed file, diverged training) prints one line
``scratchcnn: error: ...`` on stderr and exits with status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .._json import json_line
from .._version import __version__
from ..checkpoint import atomic_write_bytes, load_checkpoint
from ..data import DATASETS, load_dataset
from ..data.images import load_image
from ..data.sources import canonical_dataset_name
from ..errors import ConfigError, DataError, ScratchCNNError, os_reason
from ..nn.zoo import MODELS, RECIPES, build_model
from ..parallel import mpi as distributed
from ..parallel import supervise
from ..parallel.threads import resolve_threads, set_blas_threads
from ..training.finetune import init_model
from ..training.loop import (
    CHECKPOINT_NAME,
    EpochMetrics,
    check_data_fits,
    default_loss,
    evaluate,
    fit,
    make_optimizer,
    make_scheduler,
)
from ..training.midepoch import resume_point
from ..training.runs import RESUMABLE_CHANGES, prepare_run_folder

RUN_CONFIG = "run.json"

#: Defaults of ``scratchcnn train``: LeNet-5 on the embedded MNIST subset, tuned to reach
#: >= 96 % test accuracy in well under a minute on 2 cores.
TRAIN_DEFAULTS: dict[str, Any] = {
    "model": "lenet5",
    "dataset": "mnist-5k",
    "epochs": 12,
    "batch_size": 32,
    "optimizer": "sgd",
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": "cosine",
    "clip": None,
    "seed": 0,
    "dtype": "float32",
    "limit": None,
    "tensorboard": False,
    "init": None,
    "augment": False,
    "checkpoint_every": None,
    "checkpoint_minutes": None,
}

#: Settings ``--resume`` may change: they do not shape the run's results.
RESUME_MAY_CHANGE = RESUMABLE_CHANGES


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus exit 2), not the whole usage text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int, what: str) -> Any:
    """An argparse type: an integer >= ``low``, named ``what`` in the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
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
    "also write the checkpoint inside epochs (--resume continues there exactly; default: "
    "only at the end of each epoch)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scratchcnn",
        description="Train, evaluate and look inside CNNs written from scratch on NumPy.",
    )
    parser.add_argument("--version", action="version", version=f"scratchcnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    d = TRAIN_DEFAULTS
    p = sub.add_parser(
        "train",
        help="train a model and write checkpoint + metrics",
        description="Train a model on a data set; writes model.npz (every epoch), "
        "metrics.jsonl and run.json into --out. With no options: LeNet-5 on the embedded "
        "5,000-digit MNIST subset.",
    )
    p.add_argument("--model", choices=sorted(MODELS), help=f"network (default {d['model']})")
    _dataset_option(p, f"data set (default {d['dataset']})")
    p.add_argument(
        "--data-dir", type=Path, help="folder with the IDX files you already have (default: none)"
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
    p.add_argument("--checkpoint-every", type=_positive_int, metavar="STEPS", help=_MID_EPOCH)
    p.add_argument("--checkpoint-minutes", type=_positive_float, metavar="M", help=_MID_EPOCH)
    p.set_defaults(func=cmd_train)

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
    p.set_defaults(func=cmd_evaluate)

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
        help="always invert (dark digit on light paper); default: auto-invert, i.e. invert "
        "an image whose border is mostly light",
    )
    inv.add_argument(
        "--no-invert",
        dest="invert",
        action="store_const",
        const=False,
        help="never invert (light digit on dark, like MNIST)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(func=cmd_predict, invert=None)

    p = _checkpoint_command(
        sub,
        "info",
        "a checkpoint's model summary and training record",
        "Print a checkpoint's layers, training settings, optimiser and last test metrics.",
    )
    p.set_defaults(func=cmd_info)

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
    p.set_defaults(func=cmd_explain)

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
    p.set_defaults(func=cmd_filters)

    p = sub.add_parser(
        "export",
        help="write a checkpoint's model as an ONNX file",
        description="Write a checkpoint's model as an ONNX file (input named 'input', dynamic "
        "batch axis, the model's dtype), checked with onnx.checker; needs scratchcnn[onnx].",
    )
    p.add_argument("checkpoint", type=Path, help="a model.npz")
    p.add_argument("out", type=Path, metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--opset", type=_positive_int, help="ONNX opset (default 17)")
    p.set_defaults(func=cmd_export)

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
    p.set_defaults(func=cmd_import)

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
    p.set_defaults(func=cmd_plot)
    return parser


def _checkpoint_command(
    sub: Any, name: str, summary: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand whose first argument is a checkpoint file."""
    p = sub.add_parser(name, help=summary, description=description)
    p.add_argument("checkpoint", type=Path, help="a model.npz written by train or sc.save")
    return p


def _dataset_option(p: argparse.ArgumentParser, text: str) -> None:
    """--dataset NAME: the names of DATASETS and the aliases load_dataset accepts
    ("fashion", "mnist5k", ...)."""

    def parse(name: str) -> str:
        try:
            return canonical_dataset_name(name)
        except DataError:
            return name  # argparse's choices check names the valid ones

    p.add_argument(
        "--dataset", type=parse, choices=DATASETS, metavar="{" + ",".join(DATASETS) + "}", help=text
    )


def _threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=_positive_int,
        help="BLAS threads (default: $SCRATCHCNN_NUM_THREADS, else chosen per workload: "
        "1 for small models and batches)",
    )


def _say(*parts: Any) -> None:
    print(*parts, flush=True)


# --- train --------------------------------------------------------------------------------
def _resolve_run(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """Merge defaults, a resumed run's saved settings and the explicit arguments."""
    explicit = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}
    if args.data_dir is not None:
        explicit["data_dir"] = str(args.data_dir)
    out = args.out
    if out is None:
        stem = Path(explicit["init"]).stem if "init" in explicit else TRAIN_DEFAULTS["model"]
        name = f"{explicit.get('model', stem)}-"
        name += explicit.get("dataset", TRAIN_DEFAULTS["dataset"])
        out = Path("runs") / name
        if not args.resume and (out / CHECKPOINT_NAME).exists() and not args.overwrite:
            n = 2
            while (Path("runs") / f"{name}-{n}" / CHECKPOINT_NAME).exists():
                n += 1
            out = Path("runs") / f"{name}-{n}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder; choose another --out")
    run = {**TRAIN_DEFAULTS, "data_dir": None}
    run.update(RECIPES.get(explicit.get("model", TRAIN_DEFAULTS["model"]), {}))
    if args.resume and (out / RUN_CONFIG).exists():
        saved = _read_run_config(out / RUN_CONFIG)
        changed = [
            k for k, v in explicit.items() if k not in RESUME_MAY_CHANGE and saved.get(k) != v
        ]
        if changed:
            raise ConfigError(
                f"--resume continues the run saved in {out}; it cannot change "
                f"{', '.join('--' + k.replace('_', '-') for k in changed)} (only --epochs, "
                "--tensorboard and --checkpoint-*)"
            )
        run.update(saved)
    elif (out / CHECKPOINT_NAME).exists() and not args.resume and not args.overwrite:
        raise ConfigError(
            f"{out} already holds a run ({CHECKPOINT_NAME}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    run.update(explicit)
    if run["init"] and "model" not in explicit:
        run["model"] = None  # the checkpoint's network
    if run["optimizer"] != "sgd" and "momentum" in explicit:
        raise ConfigError(
            f"--momentum applies to --optimizer sgd only; {run['optimizer']} keeps its own "
            "moment estimates (leave --momentum out)"
        )
    return run, out


def _read_run_config(path: Path) -> dict[str, Any]:
    """A run's saved settings (run.json), checked key by key: a damaged or hand-edited file
    is a one-line error, not a crash halfway through training."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"{path}: cannot read the run's settings ({exc})") from exc
    if not isinstance(saved, dict):
        raise DataError(f"{path}: the run's settings must be a JSON object, got {saved!r:.40}")

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)

    def count(v: Any, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    valid = {
        "model": lambda v: v is None or v in MODELS,
        "dataset": lambda v: v in DATASETS,
        "epochs": lambda v: count(v, 1),
        "batch_size": lambda v: count(v, 1),
        "optimizer": lambda v: v in ("sgd", "adam", "adamw"),
        "lr": number,
        "momentum": number,
        "weight_decay": number,
        "schedule": lambda v: v in ("none", "step", "cosine"),
        "clip": lambda v: v is None or number(v),
        "seed": lambda v: count(v, 0),
        "dtype": lambda v: v in ("float32", "float64"),
        "limit": lambda v: v is None or count(v, 1),
        "augment": lambda v: isinstance(v, bool),
        "data_dir": lambda v: v is None or isinstance(v, str),
        "tensorboard": lambda v: isinstance(v, bool),
        "init": lambda v: v is None or isinstance(v, str),
        "world_size": lambda v: count(v, 1),
        "checkpoint_every": lambda v: v is None or count(v, 1),
        "checkpoint_minutes": lambda v: v is None or (number(v) and v > 0),
    }
    for key, value in saved.items():
        if key not in valid:
            raise DataError(f"{path}: unknown setting {key!r} in the run's settings")
        if not valid[key](value):
            raise DataError(f"{path}: bad value {value!r} for {key!r} in the run's settings")
    return saved


def cmd_train(args: argparse.Namespace) -> int:
    if supervise.should_supervise():  # under mpich's mpiexec: see scratchcnn/supervise.py
        return supervise.supervise()
    world = distributed.init()
    if world.size == 1:
        return _cmd_train(args, world)
    if world.rank > 0:  # only rank 0 speaks; errors still reach stderr (see run_rank)
        args.quiet = True
        sys.stdout = open(os.devnull, "w")  # for the life of this process
    return distributed.run_rank(world, lambda: _cmd_train(args, world), _error)


def _cmd_train(args: argparse.Namespace, world: distributed.World) -> int:
    run, out = _resolve_run(args)
    _set_world_size(run, out, args.resume, world.size)
    dtype = np.dtype(run["dtype"])
    train = load_dataset(run["dataset"], "train", data_dir=run["data_dir"], seed=run["seed"])
    test = load_dataset(run["dataset"], "test", data_dir=run["data_dir"], seed=run["seed"])
    if run["limit"]:
        train = train[: run["limit"]]
    if run["init"]:
        model = init_model(run["init"], run["model"], dtype, train)
    else:
        model = build_model(run["model"], dtype=dtype, seed=run["seed"])
        _check_fits(model, train, run)
    opt = make_optimizer(
        run["optimizer"], model, run["lr"], run["momentum"], run["weight_decay"], run["clip"]
    )
    sched = make_scheduler(run["schedule"], opt, run["epochs"])
    aside, done = None, None
    if world.rank == 0:  # the only process that writes the run folder
        aside, done = prepare_run_folder(
            out,
            run,
            resume=args.resume,
            overwrite=args.overwrite,
            defaults={**TRAIN_DEFAULTS, "world_size": 1},
        )
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(run, indent=2) + "\n"
        atomic_write_bytes(out / RUN_CONFIG, lambda fh: fh.write(text.encode()))
    quiet = args.quiet
    if aside is not None and not quiet:
        _say(f"moved the previous run in {out} to {aside}")
    done = done or 0  # the epoch the checkpoint in --out finished (resume), else 0
    if args.resume and (out / CHECKPOINT_NAME).exists() and not quiet:
        _say(f"resuming the run in {out} {resume_point(load_checkpoint(out / CHECKPOINT_NAME))}")
    elif args.resume and not quiet:
        _say(f"no checkpoint in {out} yet; starting the run from the beginning")
    if not quiet:
        _say(
            f"training {run['model'] or run['init']} on {run['dataset']} ({len(train):,} train / "
            f"{len(test):,} test images) for {run['epochs']} epochs, batch {run['batch_size']}, "
            f"{run['optimizer']} lr {run['lr']:g}; writing to {out}"
        )

    board = _tensorboard(model, out, done) if run["tensorboard"] else None

    def report(m: EpochMetrics) -> None:
        if board is not None:
            board(m)
        if not quiet:
            _say(
                f"epoch {m.epoch:>3}/{run['epochs']}  train loss {m.train_loss:.4f} "
                f"acc {m.train_accuracy:6.2%}  test loss {m.test_loss:.4f} "
                f"acc {m.test_accuracy:6.2%}  {m.seconds:5.1f}s"
            )

    threads = resolve_threads(args.threads, model, run["batch_size"])
    set_blas_threads(threads)
    history = fit(
        model,
        train,
        test_data=test,
        epochs=run["epochs"],
        batch_size=run["batch_size"],
        optimizer=opt,
        scheduler=sched,
        seed=run["seed"],
        out_dir=out,
        resume=args.resume,
        progress=False if quiet else None,
        on_epoch_end=report,
        extra={"run": run, "classes": list(train.classes)},
        augment=run["augment"],
        checkpoint_every=run["checkpoint_every"],
        checkpoint_minutes=run["checkpoint_minutes"],
        world=world,
        threads=threads,
    )
    if board is not None:  # events are flushed every epoch; this closes the file
        board.close()
    if history.resumed_from_epoch >= run["epochs"] and not quiet:
        _say(f"the run in {out} already finished {run['epochs']} epochs; raise --epochs to go on")
    last = history.last if history.epochs else None
    if last is not None:
        _say(
            f"test accuracy {last.test_accuracy:.2%} (loss {last.test_loss:.4f}) after "
            f"{last.epoch} epochs"
        )
    _say(f"checkpoint: {history.checkpoint}")
    _say(f"metrics:    {history.metrics_file}")
    if args.plot:
        from ..viz import plot_run

        for path in plot_run(out, data_dir=run["data_dir"]):
            _say(f"picture:    {path}")
    return 0


def _tensorboard(model: Any, out: Path, done: int) -> Any:
    """The TensorBoard writer for ``train --tensorboard`` (tensorboardX imported only now)."""
    from ..training.tensorboard import TensorBoardLogger

    return TensorBoardLogger(model, out, resume_epoch=done)


def _set_world_size(run: dict[str, Any], out: Path, resume: bool, size: int) -> None:
    """Record the number of MPI processes in the run's settings; a checkpoint written by
    another number is refused (it would not continue exactly)."""
    saved = run.get("world_size", 1)
    if resume and saved != size and (out / CHECKPOINT_NAME).exists():
        how = f"mpiexec -n {saved} scratchcnn train" if saved > 1 else "scratchcnn train"
        raise ConfigError(
            f"the run in {out} was trained by {saved} process(es), this is {size}; resume it "
            f"with {how} ... --resume (another number would not continue it exactly)"
        )
    run["world_size"] = size


def _check_fits(model: Any, data: Any, run: dict[str, Any], hint: str = "--model") -> None:
    """train.check_data_fits, with the command line's hint."""
    try:
        check_data_fits(model, data, default_loss(model), "data set")
    except ConfigError as exc:
        raise ConfigError(f"{exc} (model {run['model']}); pick a matching {hint}") from exc


# --- evaluate / predict / info -----------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    run = ckpt.extra.get("run")
    run = run if isinstance(run, dict) else {}
    name = args.dataset or run.get("dataset")
    if name is None:
        raise ConfigError(f"{args.checkpoint}: does not record its data set; pass --dataset")
    data_dir = args.data_dir if args.data_dir is not None else run.get("data_dir")
    if not isinstance(data_dir, (str, os.PathLike, type(None))):
        data_dir = None
    seed = run.get("seed", 0)
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 0
    data = load_dataset(name, args.split, data_dir=data_dir, seed=seed)
    _check_fits(ckpt.model, data, {"model": args.checkpoint.name}, "--dataset or checkpoint")
    threads = resolve_threads(args.threads, ckpt.model, 512)
    set_blas_threads(threads)
    result = evaluate(ckpt.model, data, progress=None if not args.json else False, threads=threads)
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
        name = data.classes[i] if data.classes[i] != str(i) else ""
        _say(f"{i:>4}  " + "".join(f"{v:>{width}}" for v in row) + f"   {name}".rstrip())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.model
    if model.input_shape is None:
        raise ConfigError(f"{args.checkpoint}: the model does not record its input shape")
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
    batch = np.stack([load_image(p, model.input_shape, args.invert) for p in args.images])
    logits = model.predict(batch.astype(model.dtype))
    if logits.shape[1] == 1:
        p1 = 1 / (1 + np.exp(-logits[:, 0].astype(np.float64)))
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
            others = ", ".join(f"{classes[i]} {pr[i]:.1%}" for i in top[1:])
            _say(f"{path}: {classes[top[0]]} ({pr[top[0]]:.1%}; then {others})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    _say(f"checkpoint: {ckpt.path}")
    _say(ckpt.model.summary())
    run = ckpt.extra.get("run")
    if isinstance(run, dict) and run:
        _say("trained: " + ", ".join(f"{k}={v}" for k, v in run.items() if v is not None))
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


# --- ONNX ------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from ..onnx.commands import export_checkpoint

    opset = {"opset": args.opset} if args.opset is not None else {}
    _say(export_checkpoint(args.checkpoint, args.out, **opset))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from ..onnx.commands import import_checkpoint

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    for line in import_checkpoint(args.source, args.out, classes):
        _say(line)
    return 0


# --- pictures -------------------------------------------------------------------------------
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
    if model.input_shape is None:
        raise ConfigError(f"{args.checkpoint}: the model does not record its input shape")
    image = load_image(args.image, model.input_shape).astype(model.dtype)
    classes = ckpt.extra.get("classes")
    classes = [str(c) for c in classes] if isinstance(classes, list) else None
    # A run folder's checkpoint is always model.npz: name the folder after the run instead.
    ckpt_path = args.checkpoint.resolve()
    name = ckpt_path.parent.name if ckpt_path.stem == "model" else ckpt_path.stem
    out = args.out or Path("runs") / f"explain-{name}"
    result = explain_model(model, image, out, classes, target=args.target, layer=args.layer)
    _say(f"{args.image}: " + ", ".join(f"{name} {p:.1%}" for name, p in result.top))
    _say(f"explaining class {result.target}; gradients are of its score (logit)")
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


def _error(message: Any) -> int:
    """Print ``scratchcnn: error: ...`` as exactly one line on stderr; return status 2."""
    text = " ".join(line.strip() for line in str(message).splitlines()) or "unknown error"
    print(f"scratchcnn: error: {text}", file=sys.stderr, flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scratchcnn`` command; returns the exit status.

    User errors (``ScratchCNNError``, and operating-system errors about a named file: missing,
    unreadable, disk full) print one line and return 2; anything else is a bug and propagates
    with its traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ScratchCNNError as exc:
        return _error(exc)
    except BrokenPipeError:
        # The reader of our output went away (`scratchcnn info x.npz | head -1`): not an error
        # worth a traceback. Point stdout at devnull so the interpreter's final flush is quiet.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except OSError as exc:
        if exc.filename is None:  # not about a file the user named: a bug, keep the traceback
            raise
        return _error(f"{exc.filename}: {os_reason(exc)}")
    except KeyboardInterrupt:
        print("scratchcnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
