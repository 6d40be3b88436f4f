"""A fine-tuning step of a torchvision model imported through ONNX, against torch's own.

    python benchmarks/finetune_step.py [--models resnet18 mobilenet_v2] [--batch 16]
        [--size 64] [--rounds 5] [--seconds 1.0] [--threads 1] [--json FILE]

Each model is built by torchvision with random weights (nothing is downloaded), exported
with BatchNorm kept (``do_constant_folding=False``, TorchScript exporter), imported by
``scratchcnn.onnx.load`` and given a fresh 10-class head (``replace_head``); torch's module
gets the same head (copied weights). One step on each side: forward in training mode
(BatchNorm on batch statistics), cross-entropy, backward, SGD with momentum 0.9, the whole
network trained (nothing frozen), float32, ``--threads`` threads for both, in one process
through ``_harness.compare`` (a 0.3 s pause before each window, order alternated, rounds
under foreign load dropped, medians). Prints steps/s and the ratio ours / torch.
"""

from __future__ import annotations

import sys

if "--threads" not in sys.argv:  # one thread unless asked: _threads reads the command line
    sys.argv += ["--threads", "1"]

from _threads import THREADS  # first: pins the BLAS thread count before NumPy loads

# isort: split

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _harness import compare
from _torchvision import build, quiet_export

import scratchcnn as sc
from scratchcnn.onnx import load

torch.set_num_threads(THREADS)


def export(net: torch.nn.Module, size: int, path: Path) -> Path:
    """TorchScript export with BatchNorm kept (``do_constant_folding=False``)."""
    quiet_export(net, torch.zeros(1, 3, size, size), path, "ts", 17, do_constant_folding=False)
    return path


def head_of(net: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """torchvision's last Linear and where it sits (resnet: fc; mobilenet: classifier[1])."""
    if hasattr(net, "fc"):
        return net, "fc"
    return net.classifier, str(len(net.classifier) - 1)


def steps(name: str, args: argparse.Namespace, folder: Path) -> tuple[Any, Any]:
    """One training step of each side, as functions of nothing."""
    net = build(name)
    model = load(export(net, args.size, folder / f"{name}.onnx"))
    model.replace_head(10, rng=0)
    parent, attr = head_of(net)
    old = getattr(parent, attr) if hasattr(parent, attr) else parent[int(attr)]
    new = torch.nn.Linear(old.in_features, 10)
    head = model.layers[model.head_index()]
    with torch.no_grad():
        new.weight.copy_(torch.from_numpy(head.params["weight"]))
        new.bias.copy_(torch.from_numpy(head.params["bias"]))
    if hasattr(parent, attr) and not attr.isdigit():
        setattr(parent, attr, new)
    else:
        parent[int(attr)] = new
    net.train()
    model.train()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch, 3, args.size, args.size)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    opt = sc.optim.SGD(model, lr=1e-3, momentum=0.9)
    loss_fn = sc.CrossEntropyLoss()
    topt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def ours() -> object:
        loss = loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        return loss

    def theirs() -> object:
        topt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        topt.step()
        return loss

    return ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="finetune-"))
    rows = []
    print(f"torch {torch.__version__}, threads {THREADS}, batch {args.batch}", flush=True)
    for name in args.models:
        ours, theirs = steps(name, args, folder)
        result = compare({"scratchcnn": ours, "torch": theirs}, 1, args.rounds, args.seconds)
        row = {
            "model": name,
            "batch": args.batch,
            "size": args.size,
            "threads": THREADS,
            "scratchcnn_steps_s": round(result.median_rate("scratchcnn"), 3),
            "torch_steps_s": round(result.median_rate("torch"), 3),
            "dropped": result.dropped,
            "loaded": result.loaded,
        }
        row["ratio"] = round(row["scratchcnn_steps_s"] / row["torch_steps_s"], 3)
        rows.append(row)
        print(
            f"{name:<14} ours {row['scratchcnn_steps_s']:.2f} torch {row['torch_steps_s']:.2f} "
            f"steps/s  ours/torch {row['ratio']:.2f}  ({row['dropped']} rounds dropped"
            f"{', all under load' if row['loaded'] else ''})",
            flush=True,
        )
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
