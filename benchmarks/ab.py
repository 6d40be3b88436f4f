"""A/B of two versions of scratchcnn's own step, in one process, finely alternated.

    python benchmarks/ab.py --net cifar --kind train --batch 8 \
        --set scratchcnn.engine.conv.ONE_GEMM_MAX_COLS=0 [--kernels numpy] [--seconds 20]

A is the code as it is; B is the same with the given module attributes set (``--set
module.NAME=VALUE``, VALUE a Python literal) and/or another kernel mode (``--kernels``).
Each version gets its own model. The two alternate in blocks of about ``--block`` seconds
(default 0.05) for ``--seconds`` in all, starting each block with one untimed step; the
result is the median over pairs of blocks of A's speed-up over B (B's time / A's time),
with a bootstrap 95 % interval.

Why not ``_harness.compare`` (0.5 s windows after a 0.3 s pause): on this machine the speed
of both versions drifts by 20-50 % within a minute, so a few windows of each give ratios
that scatter by +-10 %. Blocks of 50 ms see the same drift as their neighbour, and a
few hundred pairs give an interval of about +-1.5 %: enough to keep or drop a change worth
3 %. Use ``bench_speed.py`` for the figures against PyTorch, this for deciding changes.

Compare like with like: both versions whole, or both split (``--split``). A split version
against a whole one is measured unfairly here: its worker naps between blocks (after
``procsplit.IDLE_SPIN_S``) and the whole version's BLAS thread spins into the next block
(CIFAR-shaped b8: the split 1.16x and 1.44x slower in two runs, where 0.5 s windows
put it 6-7 % behind).
"""

from __future__ import annotations

from _threads import THREADS  # first: pins the BLAS thread count before NumPy loads

# isort: split

import argparse
import ast
import importlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from _harness import alternate_blocks
from _nets import batch as make_batch
from _nets import build, close_all, ours_step

from scratchcnn import engine


def parse_setting(text: str) -> tuple[Any, str, Any]:
    """'package.module.NAME=VALUE' -> (module, NAME, value)."""
    target, sep, value = text.partition("=")
    module_name, _, name = target.rpartition(".")
    if not sep or not module_name or not name:
        raise SystemExit(f"--set wants module.NAME=VALUE, got {text!r}")
    module = importlib.import_module(module_name)
    if not hasattr(module, name):
        raise SystemExit(f"--set: {module_name} has no attribute {name!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError) as exc:
        raise SystemExit(f"--set {text!r}: the value must be a Python literal ({exc})") from exc
    return module, name, parsed


@contextmanager
def version_b(settings: list[tuple[Any, str, Any]], mode: str | None) -> Iterator[None]:
    """Version B for the duration of a block: attributes set, kernel mode switched."""
    old = [(m, n, getattr(m, n)) for m, n, _ in settings]
    for m, n, v in settings:
        setattr(m, n, v)
    try:
        if mode is None:
            yield
        else:
            with engine.using(mode):
                yield
    finally:
        for m, n, v in old:
            setattr(m, n, v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--net", choices=["lenet5", "cifar", "resnet8"], default="lenet5")
    p.add_argument("--kind", choices=["train", "infer"], default="train")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--split", action="store_true", help="split the batch over --threads")
    p.add_argument("--set", action="append", default=[], metavar="module.NAME=VALUE")
    p.add_argument("--kernels", choices=engine.MODES, help="kernel mode of version B")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--block", type=float, default=0.05)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = p.parse_args()
    if args.batch < 1 or args.threads < 1 or args.seconds <= 0 or args.block <= 0:
        raise SystemExit("--batch and --threads must be at least 1, --seconds and --block above 0")
    settings = [parse_setting(s) for s in args.set]
    if not settings and args.kernels is None:
        raise SystemExit("nothing to compare: give --set and/or --kernels for version B")
    x, y = make_batch(args.net, args.batch)
    split = THREADS if args.split else 1
    step_a = ours_step(build(args.net), args.kind, x, y, threads=split)
    with version_b(settings, args.kernels):
        step_b_raw = ours_step(build(args.net), args.kind, x, y, threads=split)

    def step_b() -> None:
        with version_b(settings, args.kernels):
            step_b_raw()

    try:
        result = alternate_blocks(step_a, step_b, args.seconds, args.block)
    finally:
        close_all()
    result.update(net=args.net, kind=args.kind, batch=args.batch, threads=THREADS, split=split)
    if args.json:
        print(json.dumps(result))
        return
    lo, hi = result["interval95"]
    print(
        f"{args.net} {args.kind} batch {args.batch}, {THREADS} threads"
        f"{' split' if args.split else ''}: A (as is) is {result['speedup_a_over_b']:.3f}x "
        f"as fast as B (95 % {lo:.3f}-{hi:.3f}); {result['pairs']} pairs of "
        f"{result['steps_per_block']} steps; A {result['ms_a']:.3f} ms, B {result['ms_b']:.3f} "
        "ms per step"
    )


if __name__ == "__main__":
    main()
