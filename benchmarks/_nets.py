"""The benchmark networks and scratchcnn's side of a step, without importing torch (so that
``_memory.py`` can measure scratchcnn in a process where torch was never loaded)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import scratchcnn as sc
from scratchcnn import models
from scratchcnn.parallel import procsplit
from scratchcnn.parallel.split import BatchSplit

#: Every BatchSplit that ``ours_step`` made; ``close_all`` ends their worker processes, so
#: that idle workers of one workload never share the machine with the next one's timing.
OPEN: list[BatchSplit] = []


def close_all() -> None:
    while OPEN:
        OPEN.pop().close()
    procsplit.shutdown()  # closing parks a split's workers for reuse: end them here


INPUTS = {"lenet5": (1, 28, 28), "cifar": (3, 32, 32), "resnet8": (1, 28, 28)}


def cifar_net(seed: int = 0) -> sc.Sequential:
    """The CIFAR-shaped network of the speed issue."""
    rng = np.random.default_rng(seed)
    layers: list[sc.Layer] = []
    for c_in, c_out in ((3, 32), (32, 64), (64, 128)):
        layers += [sc.Conv2D(c_in, c_out, 3, padding=1, rng=rng), sc.ReLU(), sc.MaxPool2D(2)]
    layers += [sc.Flatten(), sc.Dense(2048, 256, rng=rng), sc.ReLU(), sc.Dense(256, 10, rng=rng)]
    return sc.Sequential(layers, input_shape=(3, 32, 32))


def build(net: str) -> sc.Sequential:
    if net == "lenet5":
        return models.lenet5(seed=0)
    if net == "cifar":
        return cifar_net()
    if net == "resnet8":
        return models.resnet8(seed=0)
    raise SystemExit(f"unknown net {net!r}")


def batch(net: str, batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, *INPUTS[net])).astype(np.float32)
    return x, rng.integers(0, 10, batch)


def ours_step(
    model: sc.Sequential, kind: str, x: np.ndarray, y: np.ndarray, threads: int = 1
) -> Callable:
    """One batch as ``scratchcnn.training.loop.fit`` / ``evaluate`` run it with ``threads``: 1 = the
    model whole (BLAS with its own threads), more = the batch split over that many threads
    (``scratchcnn.parallel.split.BatchSplit``, one BLAS thread each); then the optimiser step."""
    splitter = BatchSplit(model, sc.CrossEntropyLoss(), threads=threads)
    OPEN.append(splitter)
    if kind == "infer":
        model.eval()
        return lambda: splitter.forward(x)
    model.train()
    opt = sc.optim.SGD(model, lr=0.01, momentum=0.9)

    def step() -> None:
        splitter.step(x, y)
        opt.step()

    return step
