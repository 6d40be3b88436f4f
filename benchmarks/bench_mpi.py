"""Data-parallel training speed: ``mpiexec -n 1`` and ``-n 2`` (1 BLAS thread per process)
against one process with 2 BLAS threads; LeNet-5, float32, mnist-5k, SGD with momentum.

Each configuration runs in fresh processes (a worker: this script with ``--worker``), which
time ``--steps`` training steps of ``scratchcnn.training.loop`` (the very step ``fit`` takes,
with its Allreduce under MPI) after a warm-up; the configurations alternate for ``--rounds``
rounds and the median images/s is reported (global batch x steps / seconds, as rank 0 measures it)::

    python benchmarks/bench_mpi.py --rounds 5 --steps 150 --json benchmarks/results/bench_mpi.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MPIEXEC = Path(sys.executable).with_name("mpiexec")
CONFIGS = [  # (label, processes or None for no mpiexec, BLAS threads per process)
    ("1 process, 2 threads", None, 2),
    ("mpiexec -n 1, 1 thread", 1, 1),
    ("mpiexec -n 2, 1 thread each", 2, 1),
]


def worker(batch: int, steps: int, warmup: int) -> None:
    sys.path.insert(0, str(HERE))
    import time

    import _threads  # noqa: F401  - pins BLAS threads before NumPy loads
    import numpy as np

    from scratchcnn import distributed
    from scratchcnn.data import DataLoader, load_dataset
    from scratchcnn.nn.losses import CrossEntropyLoss
    from scratchcnn.nn.optim import SGD
    from scratchcnn.nn.zoo import lenet5
    from scratchcnn.training.loop import _train_step

    world = distributed.init()
    model = lenet5(seed=0)
    opt = SGD(model, lr=0.01, momentum=0.9)
    loss_fn = CrossEntropyLoss()
    loader = DataLoader(load_dataset("mnist-5k", "train"), batch_size=batch, seed=0)

    def batches():
        while True:
            yield from loader

    it = batches()
    model.train()
    for _ in range(warmup):
        _train_step(model, *next(it), loss_fn, opt, world)
    data = [next(it) for _ in range(steps)]
    world.allreduce(np.zeros(1))  # start together
    t0 = time.perf_counter()
    for x, y in data:
        _train_step(model, x, y, loss_fn, opt, world)
    seconds = time.perf_counter() - t0
    if world.rank == 0:
        print(json.dumps({"img_s": batch * steps / seconds}))


def measure(procs: int | None, threads: int, batch: int, steps: int, warmup: int) -> float:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--threads", str(threads)]
    argv += ["--batch", str(batch), "--steps", str(steps), "--warmup", str(warmup)]
    if procs is not None:
        argv = [str(MPIEXEC), "-n", str(procs), *argv]
    path = [str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"worker failed ({' '.join(argv)}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])["img_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, nargs="+", default=[32, 64, 256], help="global batches")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    if args.worker:
        worker(args.batch[0], args.steps, args.warmup)
        return
    rows = []
    for batch in args.batch:
        samples: dict[str, list[float]] = {label: [] for label, _, _ in CONFIGS}
        for _ in range(args.rounds):
            for label, procs, threads in CONFIGS:
                samples[label].append(measure(procs, threads, batch, args.steps, args.warmup))
        base = statistics.median(samples[CONFIGS[0][0]])
        for label, _, _ in CONFIGS:
            med = statistics.median(samples[label])
            rows.append({"batch": batch, "config": label, "img_s": med, "samples": samples[label]})
            print(f"batch {batch:>4}  {label:<28} {med:8,.0f} img/s  x{med / base:.2f}")
    if args.json:
        info = {"rounds": args.rounds, "steps": args.steps, "cpus": os.cpu_count()}
        args.json.write_text(json.dumps({"settings": info, "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
