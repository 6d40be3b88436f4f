"""Full Fashion-MNIST with LeNet-5: time and test accuracy, scratchcnn vs PyTorch.

    python benchmarks/fashion_mnist.py [--epochs 3] [--threads 2] [--json FILE]

The recipe of the training issue: SGD lr 0.01, momentum 0.9, batch 64, 60,000 training
images, 10,000 test images, pixels in [0, 1]. Both frameworks start from the same weights
and see the same batches in the same order (one shuffle per epoch from one seeded NumPy
generator), with the same number of threads. Data comes from Debian's
dataset-fashion-mnist package (or any source ``scratchcnn.data`` knows).
"""

from __future__ import annotations

from _threads import THREADS  # first: pins the BLAS thread count before NumPy loads

# isort: split

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

import scratchcnn as sc
from scratchcnn.data import load_dataset
from scratchcnn.nn.zoo import lenet5
from scratchcnn.training import evaluate

sys.path.insert(0, os.path.dirname(__file__))
from _torch_twin import accuracy
from bench_lenet import torch_lenet

torch.set_num_threads(THREADS)


def batches(n: int, batch: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for i in range(0, n, batch):
        yield order[i : i + batch]


def run_ours(train, test, epochs, init, seed):
    model = lenet5()
    model.load_state_dict(init)
    opt = sc.optim.SGD(model, lr=0.01, momentum=0.9)
    fn = sc.CrossEntropyLoss()
    x_all = train.images.astype(np.float32) / 255
    rng = np.random.default_rng(seed)
    rows = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for idx in batches(len(train), 64, rng):
            fn.forward(model.forward(x_all[idx]), train.labels[idx])
            model.backward(fn.backward(), input_grad=False)
            opt.step()
        seconds = time.perf_counter() - t0
        acc = evaluate(model, test).accuracy
        rows.append({"epoch": epoch, "seconds": seconds, "test_accuracy": acc})
        print(f"scratchcnn epoch {epoch}: {seconds:6.1f}s  test accuracy {acc:.4f}", flush=True)
    return rows


def run_torch(train, test, epochs, init, seed):
    model = torch_lenet()
    model.load_state_dict({k: torch.tensor(v) for k, v in init.items()})
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x_all = torch.from_numpy(train.images.astype(np.float32) / 255)
    y_all = torch.from_numpy(train.labels)
    xt = torch.from_numpy(test.images.astype(np.float32) / 255)
    rng = np.random.default_rng(seed)
    rows = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for idx in batches(len(train), 64, rng):
            idx_t = torch.from_numpy(idx)
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x_all[idx_t]), y_all[idx_t]).backward()
            opt.step()
        seconds = time.perf_counter() - t0
        acc = accuracy(model, xt, test.labels)
        rows.append({"epoch": epoch, "seconds": seconds, "test_accuracy": acc})
        print(f"pytorch    epoch {epoch}: {seconds:6.1f}s  test accuracy {acc:.4f}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir")
    p.add_argument("--json")
    p.add_argument(
        "--limit", type=int, help="use only the first N images of each split (smoke test)"
    )
    args = p.parse_args()
    train = load_dataset("fashion-mnist", "train", data_dir=args.data_dir)
    test = load_dataset("fashion-mnist", "test", data_dir=args.data_dir)
    if args.limit:
        train, test = train[: args.limit], test[: args.limit]
    init = lenet5(seed=args.seed).state_dict()
    print(f"Fashion-MNIST {len(train):,} train / {len(test):,} test, LeNet-5, {THREADS} threads")
    ours = run_ours(train, test, args.epochs, init, args.seed)
    theirs = run_torch(train, test, args.epochs, init, args.seed)
    result = {"threads": THREADS, "epochs": args.epochs, "scratchcnn": ours, "pytorch": theirs}
    t_ours = sum(r["seconds"] for r in ours)
    t_theirs = sum(r["seconds"] for r in theirs)
    print(
        f"total training time: scratchcnn {t_ours:.1f}s, pytorch {t_theirs:.1f}s "
        f"(ratio {t_theirs / t_ours:.2f}); final accuracy {ours[-1]['test_accuracy']:.4f} vs "
        f"{theirs[-1]['test_accuracy']:.4f}"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
