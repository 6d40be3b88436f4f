"""scratchcnn's own small networks against PyTorch and onnxruntime: inference, one process.

    python benchmarks/small_nets_onnxruntime.py [--nets lenet5 cifar resnet8] [--batches 1 256]
        [--rounds 5] [--seconds 0.5] [--threads 1] [--json FILE]

Each network (``_nets.build``: LeNet-5, the CIFAR-shaped net, resnet8; random weights, the
BatchNorm statistics moved off their defaults) in eval mode is exported by
``scratchcnn.onnx.export`` and timed three ways on the same float32 batch: ``model.forward``
(the inference plan), its PyTorch twin (``_torch_twin.twin``, ``inference_mode``) and
onnxruntime's CPUExecutionProvider on the exported file, ``--threads`` threads each,
alternating with a pause before every window, rounds under foreign load dropped
(``_harness.compare``); also the model layer by layer (no inference plan), to show what the
plan adds. Issue 27's target: LeNet-5 at batch 1 >= 0.5x onnxruntime.
"""

from __future__ import annotations

import sys

if "--threads" not in sys.argv:  # one thread unless asked: _threads reads the command line
    sys.argv += ["--threads", "1"]

from _threads import THREADS  # first: pins the BLAS thread count before NumPy loads

# isort: split

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _harness import compare
from _inference import contenders
from _nets import INPUTS, build
from _torch_twin import twin

from scratchcnn.onnx import export

torch.set_num_threads(THREADS)
SHAPES = INPUTS


def run_net(name: str, batches: list[int], args: argparse.Namespace, folder: Path) -> dict:
    import onnxruntime as ort

    model = build(name)
    rng = np.random.default_rng(0)
    for _, layer in model.named_layers():  # running statistics off their defaults
        stats = getattr(layer, "buffers", {})
        if "running_mean" in stats:
            stats["running_mean"][:] = rng.standard_normal(stats["running_mean"].shape)
            stats["running_var"][:] = rng.uniform(0.5, 2, stats["running_var"].shape)
    model.eval()
    net = twin(model).eval()
    path = folder / f"{name}.onnx"
    export(model, path, input_shape=SHAPES[name])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name
    row: dict[str, Any] = {"net": name}
    for batch in batches:
        x = rng.uniform(0, 1, (batch, *SHAPES[name])).astype(np.float32)
        want = sess.run(None, {feed: x})[0]
        row["max_abs_diff_vs_ort"] = float(np.abs(model.forward(x) - want).max())
        steps = contenders(model, net, sess, feed, x, ab=True)
        result = compare(steps, batch, args.rounds, args.seconds)
        row[f"batch{batch}"] = {n: round(result.median_rate(n), 1) for n in steps} | {
            "vs_torch": round(result.ratio("scratchcnn", "torch"), 3),
            "vs_onnxruntime": round(result.ratio("scratchcnn", "onnxruntime"), 3),
            "vs_layer_by_layer": round(result.ratio("scratchcnn", "scratchcnn-layers"), 3),
            "dropped": result.dropped,
            "loaded": result.loaded,
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", default=["lenet5", "cifar", "resnet8"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 256])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {THREADS}, load {os.getloadavg()[0]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.nets:
            row = run_net(name, args.batches, args, Path(tmp))
            rows.append(row)
            for b in args.batches:
                t = row[f"batch{b}"]
                print(
                    f"{name:<8} b{b:<4} ours {t['scratchcnn']:>9.1f} img/s  torch "
                    f"{t['torch']:>9.1f}  ort {t['onnxruntime']:>9.1f}  ours/torch "
                    f"{t['vs_torch']:.2f}  ours/ort {t['vs_onnxruntime']:.2f}  plan/layers "
                    f"{t['vs_layer_by_layer']:.2f}  ({t['dropped']} rounds dropped)",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
