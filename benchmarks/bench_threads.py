"""BLAS threads on the default job: 1 vs 2 OpenBLAS threads, on a quiet and on a busy machine.

    python benchmarks/bench_threads.py [--rounds 5] [--steps 100] [--json FILE]

The default job is ``scratchcnn train``'s: LeNet-5, mnist-5k, batch 32, SGD (lr 0.05,
momentum 0.9). Each measurement is a fresh child process started with the BLAS thread count
fixed by OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS (set before NumPy loads,
so the BLAS starts that many threads), which times ``--steps`` training steps after 5
warm-up steps. "busy" runs one competing process (a Python loop that keeps one core busy)
alongside the child. The four settings are interleaved round after round; the figure is the
median over rounds of images per second, with the machine's 1-minute load average at the
start of each measurement. Results go to benchmarks/results/bench_threads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = [(1, False), (2, False), (1, True), (2, True)]
BUSY_LOOP = "while True:\n    pass\n"


def child(steps: int) -> None:
    """Time ``steps`` training steps of the default job; print images/s."""
    import numpy as np

    import scratchcnn as sc
    from scratchcnn.data import DataLoader, load_dataset
    from scratchcnn.nn.zoo import lenet5

    model = lenet5(seed=0)
    loss_fn = sc.CrossEntropyLoss()
    opt = sc.optim.SGD(model, lr=0.05, momentum=0.9)
    loader = DataLoader(load_dataset("mnist-5k", "train"), batch_size=32, seed=0)
    batches = []
    while len(batches) < steps + 5:
        batches.extend(loader)
    for i, (x, y) in enumerate(batches[: steps + 5]):
        if i == 5:
            start = time.perf_counter()
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    elapsed = time.perf_counter() - start
    assert np.isfinite(model.layers[0].params["weight"]).all()
    print(json.dumps({"img_s": steps * 32 / elapsed}))


def measure(threads: int, busy: bool, steps: int) -> dict[str, float]:
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    hog = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
    try:
        if hog is not None:
            time.sleep(0.5)  # let it reach the loop
        load = os.getloadavg()[0]
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--steps", str(steps)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=1800,
        ).stdout
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return {**json.loads(out.splitlines()[-1]), "load": load}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.steps)
        return 0
    runs: dict[tuple[int, bool], list[dict[str, float]]] = {s: [] for s in SETTINGS}
    for r in range(args.rounds):
        order = SETTINGS if r % 2 == 0 else SETTINGS[::-1]
        for threads, busy in order:
            runs[threads, busy].append(measure(threads, busy, args.steps))
    rows = []
    print(f"default job (LeNet-5, batch 32), median of {args.rounds} rounds, {os.cpu_count()} CPUs")
    print(f"{'threads':>7} {'machine':>8} {'img/s':>8} {'load avg':>9}")
    for threads, busy in SETTINGS:
        rates = [m["img_s"] for m in runs[threads, busy]]
        row = {
            "threads": threads,
            "busy": busy,
            "img_s_median": statistics.median(rates),
            "img_s_all": rates,
            "load_avg_median": statistics.median(m["load"] for m in runs[threads, busy]),
        }
        rows.append(row)
        machine = "busy" if busy else "as is"
        print(
            f"{threads:>7} {machine:>8} {row['img_s_median']:>8,.0f} {row['load_avg_median']:>9.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
