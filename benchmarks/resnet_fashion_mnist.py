"""ResNet-8 on full Fashion-MNIST: per-epoch test accuracy and wall time, scratchcnn vs PyTorch.

    python benchmarks/resnet_fashion_mnist.py [--epochs 30] [--threads 2] [--json FILE]
        [--framework both|scratchcnn|pytorch] [--limit N]
    python benchmarks/resnet_fashion_mnist.py --combine A.json B.json --json OUT.json

The recipe (also ``scratchcnn train --model resnet8``'s defaults): SGD lr 0.1, momentum 0.9,
weight decay 5e-4 on every parameter, batch 128, cosine schedule over the epochs
(the rate set once per epoch), augmentation (random crop of the 2-pixel zero-padded image
and horizontal flip). Both frameworks start from the same weights (``resnet8(seed)``'s,
copied into the PyTorch twin built with the same module names) and train on the same
batches: each builds the same seeded ``scratchcnn.data.DataLoader(augment=True)``, so the
same shuffles and the same crop/flip draws, and PyTorch gets those NumPy arrays. Test
accuracy after every epoch in eval mode (BatchNorm running statistics).

``--framework scratchcnn`` / ``pytorch`` runs one side only (to run the two in parallel,
one process per core); ``--combine`` merges their JSON files. The JSON is rewritten after
every epoch, so a run cut short still has its finished epochs.
"""

from __future__ import annotations

from _threads import THREADS  # first: pins the BLAS thread count before NumPy loads

# isort: split

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import scratchcnn as sc
from scratchcnn.data import DataLoader, load_dataset
from scratchcnn.nn.zoo import RECIPES, resnet8
from scratchcnn.training import evaluate

sys.path.insert(0, os.path.dirname(__file__))
from _torch_twin import accuracy, twin

torch.set_num_threads(THREADS)

RECIPE = {
    "model": "resnet8",
    "optimizer": "SGD",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5e-4,
    "batch_size": 128,
    "schedule": "cosine (per epoch)",
    "augment": "random crop, pad 2, + horizontal flip",
    "dtype": "float32",
}


def cosine_lr(epoch: int, epochs: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based), as sc.optim.CosineAnnealingLR."""
    return RECIPE["lr"] * (1 + math.cos(math.pi * epoch / epochs)) / 2


def write_json(path: str | None, result: dict) -> None:
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(result, fh, indent=2)
        os.replace(tmp, path)


def run_ours(train, test, args, init, report):
    model = resnet8()
    model.load_state_dict(init)
    opt = sc.optim.SGD(
        model,
        lr=RECIPE["lr"],
        momentum=RECIPE["momentum"],
        nesterov=RECIPE["nesterov"],
        weight_decay=RECIPE["weight_decay"],
    )
    sched = sc.optim.CosineAnnealingLR(opt, T_max=args.epochs)
    fn = sc.CrossEntropyLoss()
    loader = DataLoader(train, RECIPE["batch_size"], seed=args.seed, augment=True)
    rows = []
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for x, y in loader:
            fn.forward(model.forward(x), y)
            model.backward(fn.backward(), input_grad=False)
            opt.step()
        sched.step()
        seconds = time.perf_counter() - t0
        acc = evaluate(model, test).accuracy
        rows.append({"epoch": epoch, "seconds": seconds, "test_accuracy": acc})
        print(f"scratchcnn epoch {epoch}: {seconds:6.1f}s  test accuracy {acc:.4f}", flush=True)
        report(rows)
    return rows


def run_torch(train, test, args, init, report):
    model = twin(resnet8())
    model.load_state_dict({k: torch.tensor(v) for k, v in init.items()}, strict=True)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=RECIPE["lr"],
        momentum=RECIPE["momentum"],
        nesterov=RECIPE["nesterov"],
        weight_decay=RECIPE["weight_decay"],
    )
    loader = DataLoader(train, RECIPE["batch_size"], seed=args.seed, augment=True)
    xt = torch.from_numpy(test.images.astype(np.float32) / 255)
    rows = []
    for epoch in range(1, args.epochs + 1):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(epoch - 1, args.epochs)
        t0 = time.perf_counter()
        model.train()
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            out = model(torch.from_numpy(x))
            torch.nn.functional.cross_entropy(out, torch.from_numpy(y)).backward()
            opt.step()
        seconds = time.perf_counter() - t0
        acc = accuracy(model, xt, test.labels)
        rows.append({"epoch": epoch, "seconds": seconds, "test_accuracy": acc})
        print(f"pytorch    epoch {epoch}: {seconds:6.1f}s  test accuracy {acc:.4f}", flush=True)
        report(rows)
    return rows


def summarise(result: dict) -> None:
    parts = []
    for name in ("scratchcnn", "pytorch"):
        rows = result.get(name) or []
        if rows:
            mean = sum(r["seconds"] for r in rows) / len(rows)
            parts.append(
                f"{name}: {len(rows)} epochs, {mean:.1f} s/epoch, final test accuracy "
                f"{rows[-1]['test_accuracy']:.4f}"
            )
    print("; ".join(parts))


def combine(paths: list[str], out: str | None) -> None:
    result: dict = {}
    for path in paths:
        part = json.loads(Path(path).read_text())
        for name in ("scratchcnn", "pytorch"):
            if part.get(name):
                result[name] = part[name]
        result.update({k: v for k, v in part.items() if k not in ("scratchcnn", "pytorch")})
    result["framework"] = "both"
    summarise(result)
    write_json(out, result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=RECIPES["resnet8"]["epochs"])
    p.add_argument("--threads", type=int, default=2, help="BLAS and torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--framework", choices=("both", "scratchcnn", "pytorch"), default="both")
    p.add_argument("--data-dir")
    p.add_argument("--json")
    p.add_argument("--combine", nargs="+", metavar="JSON", help="merge one-framework results")
    p.add_argument(
        "--limit", type=int, help="use only the first N images of each split (smoke test)"
    )
    args = p.parse_args()
    if args.combine:
        combine(args.combine, args.json)
        return
    train = load_dataset("fashion-mnist", "train", data_dir=args.data_dir)
    test = load_dataset("fashion-mnist", "test", data_dir=args.data_dir)
    if args.limit:
        train, test = train[: args.limit], test[: args.limit]
    init = resnet8(seed=args.seed).state_dict()
    print(
        f"Fashion-MNIST {len(train):,} train / {len(test):,} test, ResNet-8, {args.epochs} "
        f"epochs, {THREADS} BLAS thread(s), {args.framework}",
        flush=True,
    )
    result: dict = {
        "threads": THREADS,
        "epochs": args.epochs,
        "seed": args.seed,
        "train_images": len(train),
        "test_images": len(test),
        "recipe": RECIPE,
        "framework": args.framework,
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs",
        "versions": {"numpy": np.__version__, "torch": torch.__version__},
    }

    def report(name):
        def save(rows):
            result[name] = rows
            write_json(args.json, result)

        return save

    if args.framework in ("both", "scratchcnn"):
        run_ours(train, test, args, init, report("scratchcnn"))
    if args.framework in ("both", "pytorch"):
        run_torch(train, test, args, init, report("pytorch"))
    summarise(result)


if __name__ == "__main__":
    main()
