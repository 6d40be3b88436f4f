"""LeNet-5 side by side: scratchcnn vs PyTorch on this CPU, same network, weights, batch, threads.

    python benchmarks/bench_lenet.py [--threads 2] [--rounds 7] [--seconds 0.5] [--json FILE]

Training step = forward, cross-entropy, backward, SGD with momentum 0.9 (lr 0.01), at batch
16, 64 and 256; inference = forward in eval mode at batch 256. The two frameworks alternate
inside one process, round after round, each timed for about ``--seconds`` per round; the
figure is the median over rounds of images per second. Peak memory is measured in a fresh
child process per framework (batch 256 training): the peak resident set size, and the
increase of the peak over the resident size after imports and model set-up ("working"
memory, what the training step itself needs).
"""

from __future__ import annotations

from _threads import THREADS  # first: pins the BLAS thread count before NumPy loads

# isort: split

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

import scratchcnn as sc
from scratchcnn.models import lenet5

torch.set_num_threads(THREADS)


def torch_lenet() -> torch.nn.Sequential:
    """The same LeNet-5 as ``scratchcnn.models.lenet5`` (max pooling)."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


def make_pair(seed: int = 0):
    ours = lenet5(seed=seed)
    theirs = torch_lenet()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    return ours, theirs


class Ours:
    name = "scratchcnn"

    def __init__(self, model):
        self.model = model
        self.opt = sc.optim.SGD(model, lr=0.01, momentum=0.9)
        self.loss = sc.CrossEntropyLoss()

    def train_step(self, x, y):
        self.loss.forward(self.model.forward(x), y)
        self.model.backward(self.loss.backward(), input_grad=False)
        self.opt.step()

    def infer(self, x):
        return self.model.forward(x)

    def train(self):
        self.model.train()

    def eval(self):
        self.model.eval()


class Theirs:
    name = "pytorch"

    def __init__(self, model):
        self.model = model
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(self.model(x), y).backward()
        self.opt.step()

    def infer(self, x):
        with torch.inference_mode():
            return self.model(x)

    def train(self):
        self.model.train()

    def eval(self):
        self.model.eval()


def time_rate(fn, batch: int, seconds: float) -> float:
    """Images per second of ``fn`` over at least ``seconds`` (after one warm-up call)."""
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n * batch / elapsed


def _setup(framework: str, kind: str, batch: int):
    """The framework's step function on a fixed random batch."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    ours_m, theirs_m = make_pair()
    if framework == "scratchcnn":
        fw, args = Ours(ours_m), (x, y)
    else:
        fw, args = Theirs(theirs_m), (torch.from_numpy(x), torch.from_numpy(y))
    if kind == "train":
        fw.train()
        return lambda: fw.train_step(*args)
    fw.eval()
    return lambda: fw.infer(args[0])


def rate_child(framework: str, kind: str, batch: int, seconds: float) -> float:
    """Run in a child process: images/s of one framework alone (``--isolated``)."""
    return time_rate(_setup(framework, kind, batch), batch, seconds)


def compare(kind: str, batch: int, rounds: int, seconds: float, isolated: bool = False) -> dict:
    """Median images/s of both frameworks, alternating round after round. In one process by
    default; with ``isolated`` each measurement runs in a fresh child process, so neither
    framework's idle worker threads can slow the other."""
    steps = (
        {fw: _setup(fw, kind, batch) for fw in ("scratchcnn", "pytorch")} if not isolated else {}
    )
    rates: dict[str, list[float]] = {"scratchcnn": [], "pytorch": []}
    for _ in range(rounds):
        for fw in ("scratchcnn", "pytorch"):
            if isolated:
                cmd = [sys.executable, __file__, "--threads", str(THREADS), "--rate-child", fw]
                cmd += ["--kind", kind, "--batch", str(batch), "--seconds", str(seconds)]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rates[fw].append(float(res.stdout.strip().splitlines()[-1]))
            else:
                rates[fw].append(time_rate(steps[fw], batch, seconds))
    med = {k: float(np.median(v)) for k, v in rates.items()}
    return {
        "kind": kind,
        "batch": batch,
        "scratchcnn_img_s": med["scratchcnn"],
        "pytorch_img_s": med["pytorch"],
        "ratio": med["scratchcnn"] / med["pytorch"],
        "rounds": rounds,
        "isolated": isolated,
    }


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def memory_child(framework: str, batch: int, steps: int) -> dict:
    """Run in a child process: peak RSS and working memory of ``steps`` training steps."""
    step = _setup(framework, "train", batch)
    base = _rss_kib("VmRSS:")
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to now
        fh.write("5")
    for _ in range(steps):
        step()
    peak = _rss_kib("VmHWM:")
    return {
        "framework": framework,
        "peak_rss_mib": peak / 1024,
        "working_mib": (peak - base) / 1024,
    }


def measure_memory(batch: int, steps: int = 20) -> list[dict]:
    out = []
    for fw in ("scratchcnn", "pytorch"):
        cmd = [sys.executable, __file__, "--threads", str(THREADS), "--memory-child", fw]
        cmd += ["--batch", str(batch), "--steps", str(steps)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=0.5)
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--only", choices=["train", "infer", "memory"], action="append")
    p.add_argument(
        "--isolated", action="store_true", help="time each framework in its own child process"
    )
    p.add_argument("--memory-child", choices=["scratchcnn", "pytorch"], help=argparse.SUPPRESS)
    p.add_argument("--rate-child", choices=["scratchcnn", "pytorch"], help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=["train", "infer"], default="train", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=20, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rate_child:
        print(rate_child(args.rate_child, args.kind, args.batch, args.seconds))
        return
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.batch, args.steps)))
        return
    only = set(args.only or ["train", "infer", "memory"])
    print(
        f"LeNet-5, float32, {THREADS} threads, numpy {np.__version__}, torch {torch.__version__},"
        f" {args.rounds} rounds x {args.seconds}s, median images/s"
        + (", each measurement in its own process" if args.isolated else "")
    )
    print(f"{'':<10}{'batch':>6}{'scratchcnn':>12}{'pytorch':>10}{'ratio':>8}")
    results = []
    jobs = [("train", b) for b in (16, 64, 256) if "train" in only]
    jobs += [("infer", 256)] if "infer" in only else []
    for kind, batch in jobs:
        r = compare(kind, batch, args.rounds, args.seconds, args.isolated)
        results.append(r)
        print(
            f"{kind:<10}{batch:>6}{r['scratchcnn_img_s']:>12,.0f}{r['pytorch_img_s']:>10,.0f}"
            f"{r['ratio']:>8.2f}",
            flush=True,
        )
    memory = measure_memory(256) if "memory" in only else []
    for m in memory:
        print(
            f"memory    {m['framework']:<11} batch 256 training: peak RSS {m['peak_rss_mib']:.0f}"
            f" MiB, working {m['working_mib']:.1f} MiB"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"threads": THREADS, "speed": results, "memory": memory}, fh, indent=2)


if __name__ == "__main__":
    main()
