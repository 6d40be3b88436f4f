"""torchvision's classification models through ONNX into scratchcnn: one row per model and
export.

    python benchmarks/torchvision_import.py [--models resnet18 ...] [--exporters ts dynamo]
        [--opsets 17 18] [--no-grads] [--timing [--ab]] [--rounds 5] [--seconds 0.5]
        [--threads 1] [--json FILE] [--keep DIR]

Each model is built by torchvision with random weights (``weights=None``; nothing is
downloaded; ``benchmarks/_torchvision.py`` imports the model definitions without
torchvision's compiled ops), its BatchNorm statistics moved off their defaults, in eval
mode, and exported by ``torch.onnx.export`` with each exporter at each opset, with a
dynamic batch axis. The TorchScript exporter (``ts``) writes one file; the dynamo exporter
(``dynamo``) is called with torch's defaults, which store the weights in ``NAME.onnx.data``
beside the graph (read through ``load``'s external-data checks).

Per row: import ok or the one-line refusal; the imported model's layer count; the largest
relative error of its output against torch's (``max |ours - torch| / max |torch|``, float32,
batch 2, inputs uniform in [0, 1]); and, unless ``--no-grads``, the float64 check: the
model exported again in float64 (``net.double()``), imported, one cross-entropy step on both
(batch 2), the largest relative error over the loss, dL/dx and every parameter gradient
that corresponds to a torch parameter (found by its values; an eval-mode export folds
BatchNorm into the convolutions, so their weights are new tensors: ``matched k/n`` says how
many of our parameters were compared).

``--timing``: inference (forward in eval mode) of the imported model against torch and
onnxruntime (CPUExecutionProvider) on the same file, float32, batch 1 and 16, 3x64x64 (the
models that need more use their own size), ``--threads`` threads for all three (default 1),
in one process: ``_harness.compare`` (a 0.3 s pause before each timed window, the order
alternated round by round, rounds under foreign load dropped, the median of the per-round
rates).
"""

from __future__ import annotations

import sys

if "--threads" not in sys.argv:  # one thread unless asked: _threads reads the command line
    sys.argv += ["--threads", "1"]

from _threads import THREADS  # first: pins the BLAS thread count before NumPy loads

# isort: split

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _harness import compare
from _inference import contenders
from _torchvision import build, gradient_check, quiet_export, rel

import scratchcnn as sc
from scratchcnn.onnx import load

torch.set_num_threads(THREADS)

#: The issue's models: those that imported before it, then those it was about.
MODELS = [
    "resnet18", "resnet50", "resnext50_32x4d", "squeezenet1_0", "squeezenet1_1", "googlenet",
    "mnasnet0_5", "regnet_x_400mf", "vgg11", "vgg11_bn", "alexnet", "inception_v3",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
    "regnet_y_400mf", "densenet121", "shufflenet_v2_x0_5", "convnext_tiny",
]  # fmt: skip
#: Input sizes other than 64: AdaptiveAvgPool2d(6 or 7) after 5 halvings needs 224 to be
#: exportable (torch refuses adaptive pools whose output does not divide the input);
#: Inception v3's stem needs at least 75 pixels.
SIZES = {"alexnet": 224, "vgg11": 224, "vgg11_bn": 224, "inception_v3": 80}


def timing(model: sc.Sequential, net: torch.nn.Module, path: Path, size: int,
           rounds: int, seconds: float, ab: bool = False) -> dict[str, Any]:  # fmt: skip
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out: dict[str, Any] = {}
    model.eval()
    for batch in (1, 16):
        x = np.random.default_rng(batch).uniform(0, 1, (batch, 3, size, size)).astype(np.float32)
        # with ``ab`` also the same model layer by layer (no inference plan)
        steps = contenders(model, net, sess, "input", x, ab)
        result = compare(steps, batch, rounds, seconds)
        out[f"batch{batch}"] = {name: round(result.median_rate(name), 2) for name in steps} | {
            "dropped": result.dropped,
            "loaded": result.loaded,
        }
    return out


def run_one(name: str, exporter: str, opset: int, folder: Path, args: argparse.Namespace,
            net: torch.nn.Module) -> dict[str, Any]:  # fmt: skip
    size = SIZES.get(name, 64)
    row: dict[str, Any] = {"model": name, "exporter": exporter, "opset": opset, "size": size}
    path = folder / f"{name}-{exporter}{opset}.onnx"
    t = time.perf_counter()
    try:
        quiet_export(net, torch.randn(2, 3, size, size), path, exporter, opset)
    except Exception as exc:  # the exporter's own failure: recorded, not ours
        row["status"] = f"export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        return row
    row["export_s"] = round(time.perf_counter() - t, 1)
    try:
        model = load(path)
    except sc.OnnxError as exc:
        row["status"] = "refused: " + str(exc).replace(str(path) + ": ", "")
        return row
    row["status"] = "ok"
    row["layers"] = sum(1 for _ in model.named_layers())
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    row["out_err"] = rel(model.predict(x), want)
    if args.grads:
        net64 = copy.deepcopy(net).double()
        path64 = folder / f"{name}-{exporter}{opset}-f64.onnx"
        try:
            quiet_export(net64, torch.randn(2, 3, size, size, dtype=torch.float64), path64,
                         exporter, opset)  # fmt: skip
            model64 = load(path64).eval()
            row |= gradient_check(model64, net64, x.astype(np.float64))
        except Exception as exc:
            row["grad_err"] = None
            row["grad_note"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    if args.timing:
        row["timing"] = timing(model, net, path, size, args.rounds, args.seconds, args.ab)
    return row


def fmt(row: dict[str, Any]) -> str:
    head = f"{row['model']:<20} {row['exporter']:<6} {row['opset']:>2}  "
    if row["status"] != "ok":
        return head + row["status"]
    text = head + f"ok {row['layers']:>4} layers  out {row['out_err']:.1e}"
    if "grad_err" in row:
        g = row["grad_err"]
        if g is None:
            text += f"  grad64 failed: {row.get('grad_note')}"
        else:
            text += f"  grad64 {g:.1e} at {row['grad_worst']} (matched {row['matched']})"
    if "timing" in row:
        for b, t in row["timing"].items():
            ours = t["scratchcnn"]
            text += f"  {b}: ours {ours:.1f} torch {t['torch']:.1f} "
            text += f"ort {t['onnxruntime']:.1f} img/s"
            text += f" (x{ours / t['torch']:.2f} torch, x{ours / t['onnxruntime']:.2f} ort"
            if "scratchcnn-layers" in t:
                text += f", x{ours / t['scratchcnn-layers']:.2f} layer by layer"
            text += f"; {t['dropped']} rounds dropped)"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--exporters", nargs="+", default=["ts", "dynamo"])
    parser.add_argument("--opsets", nargs="+", type=int, default=[17, 18])
    parser.add_argument("--no-grads", dest="grads", action="store_false")
    parser.add_argument("--timing", action="store_true")
    parser.add_argument(
        "--ab",
        action="store_true",
        help="with --timing: also time it layer by layer (no inference plan)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="folder for the exported files")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="tv-onnx-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"torch {torch.__version__}, threads {THREADS}, files in {folder}", flush=True)
    for name in args.models:
        net = build(name)
        for exporter in args.exporters:
            for opset in args.opsets:
                row = run_one(name, exporter, opset, folder, args, net)
                rows.append(row)
                print(fmt(row), flush=True)
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
