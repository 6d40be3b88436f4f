"""This checkout against another version of scratchcnn, in one process: is it as fast?

    git worktree add /tmp/old <commit>
    python benchmarks/versions.py /tmp/old [--net lenet5 cifar resnet8] [--seconds 15]

The other checkout's package is copied into a temporary folder under another name
(``scratchcnn_other``: every ``scratchcnn`` module path in its source renamed, its worker
processes too), so both versions load side by side. For each workload of ``bench_speed.py``
both build the same network with the same weights and run the same step (the model whole,
and split over ``--threads`` where the batch allows), timed in alternating blocks of about
50 ms (``_harness.alternate_blocks``, ab.py's method: about +-1.5 % where 0.5 s windows
scatter by +-10 % on this machine). The figure is the median over pairs of
other version's time / this version's time: above 1.00 this checkout is faster.
"""

from __future__ import annotations

from _threads import THREADS  # first: pins the BLAS thread count before NumPy loads

# isort: split

import argparse
import importlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import scratchcnn as sc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import alternate_blocks
from _nets import batch as _batch
from _nets import build

WORKLOADS = {
    "lenet5": [("train", 16), ("train", 64), ("train", 256), ("infer", 1), ("infer", 256)],
    "cifar": [("train", 8), ("train", 64), ("infer", 8), ("infer", 256)],
    "resnet8": [("train", 64), ("infer", 256)],
}
OTHER = "scratchcnn_other"


def load_other(checkout: Path) -> ModuleType:
    """The package of ``checkout`` under the name ``scratchcnn_other``."""
    source = checkout / "scratchcnn"
    if not (source / "__init__.py").is_file():
        raise SystemExit(f"{checkout}: no scratchcnn package there")
    root = Path(tempfile.mkdtemp(prefix="scratchcnn-versions-"))
    shutil.copytree(source, root / OTHER, ignore=shutil.ignore_patterns("__pycache__"))
    word = re.compile(r"\bscratchcnn(?=[.\s])")
    for path in (root / OTHER).rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        path.write_text(word.sub(OTHER, text), encoding="utf-8")
    sys.path.insert(0, str(root))
    pkg = importlib.import_module(OTHER)
    importlib.import_module(f"{OTHER}.parallel")  # not imported by the package's __init__
    return pkg


def twin(pkg: ModuleType, model: sc.Sequential) -> Any:
    """``model`` rebuilt in ``pkg`` with the same weights."""
    other = pkg.Sequential.from_config(model.config())
    other.load_state_dict(model.state_dict())
    return other


def step(pkg: ModuleType, model: Any, kind: str, x: np.ndarray, y: np.ndarray, threads: int):
    """One batch as ``bench_speed``'s scratchcnn step: whole or split, then SGD momentum."""
    splitter = pkg.parallel.BatchSplit(model, pkg.CrossEntropyLoss(), threads=threads)
    if kind == "infer":
        model.eval()
        return splitter, lambda: splitter.forward(x)
    model.train()
    opt = pkg.optim.SGD(model, lr=0.01, momentum=0.9)

    def run() -> None:
        splitter.step(x, y)
        opt.step()

    return splitter, run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkout", type=Path, help="another checkout (a git worktree)")
    p.add_argument("--net", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--seconds", type=float, default=15.0)
    args = p.parse_args()
    other = load_other(args.checkout)
    min_split = sc.parallel.MIN_ITEMS_PER_THREAD
    print(f"float32, {THREADS} threads; other = {args.checkout}; other time / this time")
    print(f"{'net':<8}{'':<7}{'batch':>6}  {'whole':<22}{'split'}")
    for net in args.net:
        for kind, size in WORKLOADS[net]:
            x, y = _batch(net, size)
            cells = []
            for threads in (1, THREADS):
                if threads > 1 and (THREADS == 1 or size < 2 * min_split):
                    cells.append("")
                    continue
                mine = build(net)
                theirs = twin(other, mine)
                closers: list[Callable[[], object]] = []
                s1, a = step(sc, mine, kind, x, y, threads)
                s2, b = step(other, theirs, kind, x, y, threads)
                closers += [s1.close, s2.close]
                try:
                    r = alternate_blocks(a, b, args.seconds)
                finally:
                    for close in closers:
                        close()
                    for pkg in (sc, other):
                        pkg.parallel.procsplit.shutdown()  # parked workers end here
                lo, hi = r["interval95"]
                cells.append(f"{r['speedup_a_over_b']:.3f} ({lo:.3f}-{hi:.3f})")
            print(f"{net:<8}{kind:<7}{size:>6}  {cells[0]:<22}{cells[1]}", flush=True)


if __name__ == "__main__":
    main()
