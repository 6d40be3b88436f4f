"""Pin the thread count of every numeric library before NumPy or torch is imported.

BLAS libraries read their thread count when they load, so the benchmark scripts import this
module first: ``--threads N`` on their command line (default 2) sets OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS and MKL_NUM_THREADS, and ``THREADS`` holds the number.
"""

from __future__ import annotations

import os
import sys


def _threads_from_argv(default: int = 2) -> int:
    if "--threads" in sys.argv:
        return int(sys.argv[sys.argv.index("--threads") + 1])
    return default


THREADS = _threads_from_argv()
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)
