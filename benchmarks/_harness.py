"""The timing method shared by the side-by-side benchmarks.

Why each rule exists:

* **A pause before every timed window** (``PAUSE`` = 0.3 s). OpenBLAS's worker thread keeps
  spinning for about 0.1 s after NumPy's last matrix product; without a pause it steals a
  core from whichever framework is timed next, which flattered scratchcnn's early figures.
* **Alternating order.** Round r times the contenders in one order, round r + 1 in the
  reverse order, so neither always runs "warm" after the other.
* **Foreign load per window.** The machine is shared: during each window we read the
  whole machine's busy CPU time (``/proc/stat``) and subtract this process's own CPU time
  (every thread, and its live child processes: the workers of a split batch). What remains
  is other processes' work, in cores. A round in which any window saw more than
  ``MAX_FOREIGN`` cores of foreign load is dropped (and counted).
* **Medians of per-round ratios.** Speed drifts from minute to minute on a virtual machine;
  two contenders timed back to back in the same round see the same drift, so the ratio of a
  round is stable where the rates are not. The reported ratio is the median over rounds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PAUSE = 0.3
MAX_FOREIGN = 0.25  # cores of other processes' CPU use tolerated during a timed window
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores, idle and iowait excluded)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest is inside user
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / _TICK


def _own_cpu_s() -> float:
    """CPU seconds used by this process, every thread included, and by its live child
    processes (the workers of a batch split over processes are part of what is timed)."""
    t = os.times()
    return t.user + t.system + _children_cpu_s()


def _children_cpu_s() -> float:
    me, total = str(os.getpid()), 0
    for entry in os.scandir("/proc") if available() else ():
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                # The command name may hold spaces: the fields start after its ")".
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        if fields[1] == me:  # ppid
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def available() -> bool:
    """True where /proc/stat exists (Linux); elsewhere foreign load is not measured."""
    return os.path.exists("/proc/stat")


@dataclass
class Window:
    rate: float  # images per second
    foreign: float  # other processes' load during the window, in cores (nan if unknown)


def timed_window(fn: Callable[[], object], batch: int, seconds: float) -> Window:
    """Images/s of ``fn`` over at least ``seconds``, after a pause and one warm-up call."""
    fn()
    time.sleep(PAUSE)
    measure = available()
    busy0, own0 = (_machine_busy_s(), _own_cpu_s()) if measure else (0.0, 0.0)
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    if measure:
        foreign = max(0.0, (_machine_busy_s() - busy0) - (_own_cpu_s() - own0)) / elapsed
    else:
        foreign = float("nan")
    return Window(rate=n * batch / elapsed, foreign=foreign)


@dataclass
class Comparison:
    """Rounds of alternating windows for several contenders; the first is the reference."""

    names: list[str]
    rates: dict[str, list[float]] = field(default_factory=dict)
    foreign: list[float] = field(default_factory=list)  # worst window of each kept round
    dropped: int = 0
    loaded: bool = False  # True when no round was free of load and the least loaded was kept

    def ratio(self, name: str, base: str) -> float:
        """Median over kept rounds of rate[name] / rate[base]."""
        a, b = np.asarray(self.rates[name]), np.asarray(self.rates[base])
        return float(np.median(a / b)) if len(a) else float("nan")

    def median_rate(self, name: str) -> float:
        return float(np.median(self.rates[name])) if self.rates[name] else float("nan")


def compare(
    steps: dict[str, Callable[[], object]],
    batch: int,
    rounds: int,
    seconds: float,
    max_foreign: float = MAX_FOREIGN,
    max_attempts: int | None = None,
) -> Comparison:
    """Time every contender once per round, alternating the order; keep ``rounds`` rounds
    taken without foreign load (trying at most ``max_attempts`` rounds, default 3x)."""
    names = list(steps)
    result = Comparison(names=names, rates={n: [] for n in names})
    attempts = max_attempts or 3 * rounds
    least: tuple[float, dict[str, Window]] | None = None
    for r in range(attempts):
        if len(result.foreign) >= rounds:
            break
        order = names if r % 2 == 0 else names[::-1]
        windows = {n: timed_window(steps[n], batch, seconds) for n in order}
        worst = max(w.foreign for w in windows.values())
        if worst > max_foreign:  # nan (unmeasured) compares False: kept
            result.dropped += 1
            if least is None or worst < least[0]:
                least = (worst, windows)
            continue
        for n in names:
            result.rates[n].append(windows[n].rate)
        result.foreign.append(worst)
    if not result.foreign and least is not None:
        # Never a silent gap: report the least loaded round, flagged, instead of nothing.
        result.loaded = True
        result.dropped -= 1
        for n in names:
            result.rates[n].append(least[1][n].rate)
        result.foreign.append(least[0])
    return result


def alternate_blocks(
    a: Callable[[], object],
    b: Callable[[], object],
    seconds: float,
    block: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``a`` and ``b`` in alternating blocks of about ``block`` seconds for ``seconds``
    (at least 5 pairs); the median over pairs of B's time / A's time (above 1: A is faster)
    and a bootstrap 95 % interval of that median. For two versions of the same step: their
    ratio within a pair of 50 ms blocks sees the same machine, while 0.5 s windows (``compare``)
    see the machine drift by tens of percent (``ab.py``)."""

    def timed(fn: Callable[[], object], k: int) -> float:
        fn()  # untimed: the first step after a switch finds the other version's caches
        t = time.perf_counter()
        for _ in range(k):
            fn()
        return (time.perf_counter() - t) / k

    k = max(1, round(block / max(timed(b, 2), timed(a, 2), 1e-6)))
    ta: list[float] = []
    tb: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(ta) < 5:
        if len(ta) % 2:
            ta.append(timed(a, k))
            tb.append(timed(b, k))
        else:
            tb.append(timed(b, k))
            ta.append(timed(a, k))
    ratios = np.array(tb) / np.array(ta)
    rng = np.random.default_rng(seed)
    boot = [np.median(rng.choice(ratios, len(ratios))) for _ in range(1000)]
    return {
        "speedup_a_over_b": float(np.median(ratios)),
        "interval95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "pairs": len(ratios),
        "steps_per_block": k,
        "ms_a": float(np.median(ta) * 1e3),
        "ms_b": float(np.median(tb) * 1e3),
    }
