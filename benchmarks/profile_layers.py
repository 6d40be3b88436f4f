"""Where a LeNet-5 training step spends its time: forward and backward per layer.

    python benchmarks/profile_layers.py [--batch 64] [--threads 2] [--steps 50] [--eval]
    python benchmarks/profile_layers.py --pyinstrument     # call tree instead of the table

Each layer's forward and backward is timed separately over ``--steps`` steps (median, ms).
``--eval`` times inference (forward only, eval mode).
"""

from __future__ import annotations

from _threads import THREADS  # first: pins the BLAS thread count before NumPy loads

# isort: split

import argparse
import time

import numpy as np

import scratchcnn as sc
from scratchcnn.models import lenet5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eval", action="store_true", help="inference only")
    p.add_argument("--pyinstrument", action="store_true", help="print a pyinstrument profile")
    args = p.parse_args()

    model = lenet5(seed=0)
    opt = sc.optim.SGD(model, lr=0.01, momentum=0.9)
    loss_fn = sc.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    if args.eval:
        model.eval()

    if args.pyinstrument:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0002)
        profiler.start()
        for _ in range(args.steps):
            out = model.forward(x)
            if not args.eval:
                loss_fn.forward(out, y)
                model.backward(loss_fn.backward(), input_grad=False)
                opt.step()
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False))
        return

    n = len(model.layers)
    fwd: list[list[float]] = [[] for _ in range(n)]
    bwd: list[list[float]] = [[] for _ in range(n)]
    rest: list[float] = []
    for _ in range(args.steps):
        h = x
        for i, layer in enumerate(model.layers):
            t = time.perf_counter()
            h = layer.forward(h)
            fwd[i].append(time.perf_counter() - t)
        if args.eval:
            continue
        t = time.perf_counter()
        loss_fn.forward(h, y)
        d = loss_fn.backward()
        rest.append(time.perf_counter() - t)
        for i in reversed(range(n)):
            t = time.perf_counter()
            d = (
                model.layers[i].backward(d, input_grad=False)
                if i == 0
                else model.layers[i].backward(d)
            )
            bwd[i].append(time.perf_counter() - t)
        t = time.perf_counter()
        opt.step()
        rest[-1] += time.perf_counter() - t

    def ms(v: list[float]) -> float:
        return float(np.median(v)) * 1e3 if v else 0.0

    mode = "inference" if args.eval else "training step"
    print(f"LeNet-5 {mode}, batch {args.batch}, {THREADS} threads, median of {args.steps} (ms)")
    wid = max(len(repr(la)) for la in model.layers) + 2
    print(f"{'#':>2}  {'layer':<{wid}}{'forward':>9}{'backward':>10}")
    total = 0.0
    for i, layer in enumerate(model.layers):
        f, b = ms(fwd[i]), ms(bwd[i])
        total += f + b
        print(f"{i:>2}  {layer!r:<{wid}}{f:>9.3f}{b:>10.3f}")
    if not args.eval:
        print(f"    {'loss + optimiser step':<{wid}}{ms(rest):>9.3f}")
        total += ms(rest)
    print(f"    {'total':<{wid}}{total:>9.3f}   ({args.batch / total * 1e3:,.0f} images/s)")


if __name__ == "__main__":
    main()
