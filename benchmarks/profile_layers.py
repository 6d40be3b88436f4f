"""Where a training step spends its time: forward and backward per layer.

    python benchmarks/profile_layers.py [--net lenet5|cifar|resnet8] [--batch 64]
                                        [--threads 2] [--steps 50] [--eval]
    python benchmarks/profile_layers.py --pyinstrument     # call tree instead of the table

Each leaf layer's forward and backward (inside Residual blocks too) is timed separately
over ``--steps`` steps (median, ms), then summed per layer type; the last line gives the
share of the step spent in Conv2D's matrix products (``np.matmul``). ``--eval`` times
inference (forward only, eval mode).

The timers wrap what runs: each layer's route in the engine's plan (``scratchcnn.engine``),
or the layer itself where the engine has none (``SCRATCHCNN_KERNELS=numpy``: every layer's
reference code). The plan's order is kept (a ReLU runs after the MaxPool2D it feeds).
"""

from __future__ import annotations

from _threads import THREADS  # first: pins the BLAS thread count before NumPy loads

# isort: split

import argparse
import time
import types
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

import scratchcnn as sc
from scratchcnn import models
from scratchcnn.engine import conv as conv_module

INPUTS = {"lenet5": (1, 28, 28), "cifar": (3, 32, 32), "resnet8": (1, 28, 28)}


def build(net: str) -> sc.Sequential:
    if net == "cifar":
        from _nets import cifar_net

        return cifar_net()
    return getattr(models, net)(seed=0)


def _timed(fn: Callable, into: list[float]) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        into.append(time.perf_counter() - t)
        return out

    return wrapper


class _CountingNumpy(types.ModuleType):
    """numpy for conv.py, with ``matmul`` timed (everything else passed through)."""

    def __init__(self) -> None:
        super().__init__("numpy")
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    def matmul(self, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = np.matmul(*args, **kwargs)
        self.seconds += time.perf_counter() - t
        return out


def runners(model: sc.Sequential) -> list[tuple[str, Any, Any]]:
    """(key, leaf layer, what runs it) for every leaf: its route in the engine's plan of the
    Sequential that holds it (nested ones inside blocks too), or the layer itself."""
    route_of: dict[int, Any] = {}

    def walk(seq: sc.Sequential) -> None:
        plan = sc.engine.plan(seq)
        if plan is not None:
            for layer, route in zip(plan.layers, plan.routes, strict=True):
                if route is not None:
                    route_of[id(layer)] = route
        for layer in seq.layers:
            for _, child in getattr(layer, "named_children", list)():
                if isinstance(child, sc.Sequential):
                    walk(child)

    walk(model)
    return [(key, la, route_of.get(id(la), la)) for key, la in model.named_layers()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--net", choices=list(INPUTS), default="lenet5")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eval", action="store_true", help="inference only")
    p.add_argument("--pyinstrument", action="store_true", help="print a pyinstrument profile")
    args = p.parse_args()

    model = build(args.net)
    opt = sc.optim.SGD(model, lr=0.01, momentum=0.9)
    loss_fn = sc.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch, *INPUTS[args.net])).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    if args.eval:
        model.eval()

    def step() -> None:
        out = model.forward(x)
        if not args.eval:
            loss_fn.forward(out, y)
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()

    if args.pyinstrument:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0002)
        profiler.start()
        for _ in range(args.steps):
            step()
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False))
        return

    step()  # makes the engine's plans
    leaves = runners(model)
    fwd: list[list[float]] = [[] for _ in leaves]
    bwd: list[list[float]] = [[] for _ in leaves]
    for i, (_, _, runner) in enumerate(leaves):
        runner.forward = _timed(runner.forward, fwd[i])  # instance attributes shadow the class
        runner.backward = _timed(runner.backward, bwd[i])
    counting = _CountingNumpy()
    conv_module.np = counting
    steps, gemm = [], []
    try:
        step()  # warm-up: buffers allocated, BLAS threads started
        for lst in (*fwd, *bwd):
            lst.clear()
        for _ in range(args.steps):
            counting.seconds = 0.0
            t = time.perf_counter()
            step()
            steps.append(time.perf_counter() - t)
            gemm.append(counting.seconds)
    finally:
        conv_module.np = np

    def ms(v: list[float]) -> float:
        return float(np.median(v)) * 1e3 if v else 0.0

    total = ms(steps)
    mode = "inference" if args.eval else "training step"
    print(f"{args.net} {mode}, batch {args.batch}, {THREADS} threads, median of {args.steps} (ms)")
    names = [f"{key:<14}{layer!r}"[:64] for key, layer, _ in leaves]
    wid = max(len(n) for n in names) + 2
    print(f"{'layer':<{wid}}{'forward':>9}{'backward':>10}{'share':>8}")
    by_type: dict[str, float] = defaultdict(float)
    for i, (_, layer, _) in enumerate(leaves):
        f, b = ms(fwd[i]), ms(bwd[i])
        by_type[type(layer).__name__] += f + b
        print(f"{names[i]:<{wid}}{f:>9.3f}{b:>10.3f}{(f + b) / total:>8.1%}")
    rest = total - sum(by_type.values())
    print(f"{'loss, optimiser, Python':<{wid}}{rest:>9.3f}{'':>10}{rest / total:>8.1%}")
    print(f"{'step':<{wid}}{total:>9.3f}   ({args.batch / total * 1e3:,.0f} images/s)")
    print("per layer type: " + ", ".join(f"{k} {v / total:.0%}" for k, v in by_type.items()))
    share = ms(gemm) / total
    print(f"Conv2D matrix products (np.matmul): {ms(gemm):.3f} ms = {share:.0%} of the step")


if __name__ == "__main__":
    main()
