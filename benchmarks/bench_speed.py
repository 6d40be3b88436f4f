"""Side by side on this CPU: scratchcnn vs PyTorch (and onnxruntime for inference).

    python benchmarks/bench_speed.py [--net lenet5 cifar resnet8] [--threads 2] [--rounds 7]
                                     [--seconds 0.5] [--json FILE] [--only train infer memory]

Same network, same weights (copied into torch by ``_torch_twin.twin``), same batch, same
threads, float32, both frameworks in ONE process. The method (``_harness.py``): a 0.3 s pause
before every timed window, the order alternated round by round, the machine's foreign load
measured during every window and rounds taken under load dropped and counted, and the
median of the per-round ratios reported. **ratio = scratchcnn images/s / PyTorch images/s.**

Workloads (training step = forward, cross-entropy, backward, SGD momentum 0.9, lr 0.01;
inference = forward in eval mode):

* lenet5: train at batch 16, 64, 256; inference at batch 1 and 256;
* cifar: a CIFAR-shaped net (3x [conv3x3 same + ReLU + maxpool2] at 32-64-128 channels,
  dense 2048-256-10, input 3x32x32): train at batch 8 and 64; inference at batch 8 and 256;
* resnet8 (when ``scratchcnn.nn.zoo`` has it): train at batch 64; inference at batch 256.

scratchcnn is timed twice where the batch allows: whole (``scratchcnn``, the default of
``fit``/``evaluate``; BLAS uses ``--threads``) and with the batch split over ``--threads``
threads (``scratchcnn-split``, ``fit(threads=N)`` / ``scratchcnn train --threads N``); both
ratios are reported. Where ``scratchcnn.onnx`` and onnxruntime are installed, inference also
times onnxruntime (CPUExecutionProvider, same thread count) on the model exported by
scratchcnn; its ratio is reported, not a target. Peak memory: each framework in a fresh
child process.
"""

from __future__ import annotations

from _threads import THREADS  # first: pins the BLAS thread count before NumPy loads

# isort: split

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable

import numpy as np
import torch

import scratchcnn as sc
from scratchcnn import models
from scratchcnn.parallel.split import MIN_ITEMS_PER_THREAD

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import MAX_FOREIGN, compare
from _nets import batch as _batch
from _nets import build, close_all, ours_step
from _torch_twin import twin as to_torch

torch.set_num_threads(THREADS)

WORKLOADS: dict[str, list[tuple[str, int]]] = {
    "lenet5": [("train", 16), ("train", 64), ("train", 256), ("infer", 1), ("infer", 256)],
    "cifar": [("train", 8), ("train", 64), ("infer", 8), ("infer", 256)],
    "resnet8": [("train", 64), ("infer", 256)],
}


def available_nets() -> list[str]:
    return [n for n in WORKLOADS if n != "resnet8" or hasattr(models, "resnet8")]


def torch_step(model: torch.nn.Module, kind: str, x: np.ndarray, y: np.ndarray) -> Callable:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    if kind == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode():
                model(xt)

        return infer
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()

    return step


def onnxruntime_step(model: sc.Sequential, x: np.ndarray) -> Callable | None:
    """onnxruntime on scratchcnn's own export, or None where either is missing."""
    try:
        import onnxruntime as ort

        from scratchcnn import onnx as sc_onnx
    except ImportError:
        return None
    if not hasattr(sc_onnx, "export"):
        return None
    path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    sc_onnx.export(model.eval(), path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda: sess.run(None, {name: x})


def steps_for(net: str, kind: str, batch: int) -> dict[str, Callable]:
    x, y = _batch(net, batch)
    ours = build(net)
    theirs = to_torch(ours)
    steps = {"scratchcnn": ours_step(ours, kind, x, y), "pytorch": torch_step(theirs, kind, x, y)}
    if THREADS > 1 and batch >= 2 * MIN_ITEMS_PER_THREAD:
        steps["scratchcnn-split"] = ours_step(build(net), kind, x, y, threads=THREADS)
    if kind == "infer":
        ort_step = onnxruntime_step(build(net), x)
        if ort_step is not None:
            steps["onnxruntime"] = ort_step
    return steps


def run_workload(net: str, kind: str, batch: int, rounds: int, seconds: float) -> dict:
    try:
        result = compare(steps_for(net, kind, batch), batch, rounds, seconds)
    finally:
        close_all()
    row = {
        "net": net,
        "kind": kind,
        "batch": batch,
        "scratchcnn_img_s": result.median_rate("scratchcnn"),
        "pytorch_img_s": result.median_rate("pytorch"),
        "ratio": result.ratio("scratchcnn", "pytorch"),
        "rounds": len(result.foreign),
        "dropped_rounds": result.dropped,
        "max_foreign_load": max(result.foreign, default=float("nan")),
        "under_load": result.loaded,
    }
    if "scratchcnn-split" in result.rates:
        row["split_img_s"] = result.median_rate("scratchcnn-split")
        row["ratio_split"] = result.ratio("scratchcnn-split", "pytorch")
    if "onnxruntime" in result.rates:
        row["onnxruntime_img_s"] = result.median_rate("onnxruntime")
        row["ratio_vs_onnxruntime"] = result.ratio("scratchcnn", "onnxruntime")
    return row


def measure_memory(net: str, batch: int, steps: int = 10) -> list[dict]:
    out = []
    for fw in ("scratchcnn", "scratchcnn-split", "pytorch"):
        here = os.path.dirname(os.path.abspath(__file__))
        cmd = [sys.executable, os.path.join(here, "_memory.py"), "--threads", str(THREADS)]
        cmd += [fw, net, str(batch), str(steps)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def main(default_nets: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--net", nargs="+", choices=list(WORKLOADS), default=default_nets)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=0.5)
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--only", choices=["train", "infer", "memory"], action="append")
    args = p.parse_args()
    nets = args.net or available_nets()
    only = set(args.only or ["train", "infer", "memory"])
    print(
        f"float32, {THREADS} threads, numpy {np.__version__}, torch {torch.__version__}; "
        f"{args.rounds} rounds x {args.seconds}s, 0.3 s pause per window, rounds with > "
        f"{MAX_FOREIGN} cores of foreign load dropped; median of per-round ratios"
    )
    print(f"{'net':<8}{'':<7}{'batch':>6}{'scratchcnn':>12}{'pytorch':>10}{'ratio':>8}  notes")
    results, memory = [], []
    for net in nets:
        for kind, batch in WORKLOADS[net]:
            if kind not in only:
                continue
            r = run_workload(net, kind, batch, args.rounds, args.seconds)
            results.append(r)
            notes = f"{r['rounds']} rounds kept, {r['dropped_rounds']} dropped"
            if r["under_load"]:
                notes += f" (UNDER LOAD: {r['max_foreign_load']:.2f} foreign cores)"
            if "ratio_split" in r:
                notes += f"; batch split over {THREADS} threads: {r['ratio_split']:.2f}"
            if "ratio_vs_onnxruntime" in r:
                notes += f"; vs onnxruntime {r['ratio_vs_onnxruntime']:.2f}"
            print(
                f"{net:<8}{kind:<7}{batch:>6}{r['scratchcnn_img_s']:>12,.0f}"
                f"{r['pytorch_img_s']:>10,.0f}{r['ratio']:>8.2f}  {notes}",
                flush=True,
            )
        if "memory" in only:
            batch = 256 if net == "lenet5" else 64
            for m in measure_memory(net, batch):
                memory.append(m)
                print(
                    f"memory  {net} {m['framework']:<16} train batch {batch}: peak RSS "
                    f"{m['peak_rss_mib']:.0f} MiB, working {m['working_mib']:.1f} MiB"
                )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"threads": THREADS, "speed": results, "memory": memory}, fh, indent=2)


if __name__ == "__main__":
    main()
