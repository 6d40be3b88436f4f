"""Peak memory of training steps, one framework per fresh process that imports only it.

    python benchmarks/_memory.py [--threads N] FRAMEWORK NET BATCH STEPS

FRAMEWORK is scratchcnn (the model whole), scratchcnn-split (the batch split, its worker
processes counted too) or pytorch. Prints one JSON line: peak RSS, and working memory (the
peak minus the resident size after the first step). Run by ``bench_speed.py``.
"""

from __future__ import annotations

from _threads import THREADS  # first: pins the BLAS thread count before NumPy loads

# isort: split

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _nets import batch, build, ours_step


def _children_kib(field: str) -> int:
    """``field`` of /proc/PID/status summed over this process's live children (the worker
    processes of a split batch)."""
    me, total = str(os.getpid()), 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as fh:
                status = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        if status.get("PPid", "").strip() == me and field.rstrip(":") in status:
            total += int(status[field.rstrip(":")].split()[0])
    return total


def memory_child(net: str, framework: str, size: int, steps: int) -> dict:
    """Run in a child process: peak RSS and working memory of ``steps`` training steps.
    ``scratchcnn-split`` counts the split's worker processes too (their whole peak, start-up
    included, and the shared memory in every process that maps it: an upper bound)."""
    x, y = batch(net, size)
    ours = build(net)
    if framework == "pytorch":
        from bench_speed import to_torch, torch_step  # torch is loaded here only

        step = torch_step(to_torch(ours), "train", x, y)
    else:
        threads = THREADS if framework == "scratchcnn-split" else 1
        step = ours_step(ours, "train", x, y, threads=threads)
    step()
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to now
        fh.write("5")
    base = _rss_kib("VmRSS:") + _children_kib("VmRSS:")
    for _ in range(steps):
        step()
    peak = _rss_kib("VmHWM:") + _children_kib("VmHWM:")
    return {
        "net": net,
        "framework": framework,
        "batch": size,
        "peak_rss_mib": peak / 1024,
        # Pages freed between the two readings can put the peak a few KiB under the base:
        # no step used less than nothing.
        "working_mib": max(peak - base, 0) / 1024,
    }


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=THREADS)
    p.add_argument("framework", choices=["scratchcnn", "scratchcnn-split", "pytorch"])
    p.add_argument("net", choices=["lenet5", "cifar", "resnet8"])
    p.add_argument("size", type=int)
    p.add_argument("steps", type=int)
    a = p.parse_args()
    print(json.dumps(memory_child(a.net, a.framework, a.size, a.steps)))
