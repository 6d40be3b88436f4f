"""``python tests/mpi_rank.py ARGS`` = ``scratchcnn ARGS``, with knobs (environment variables)
for the distributed tests, each acting on the MPI rank ``STOP_RANK`` (default 0; a plain run
is rank 0):

* ``STOP_AT_STEP=k``: send itself ``STOP_SIGNAL`` (default SIGKILL; SIGSTOP freezes it)
  just before its k-th training step;
* ``FAIL_AT_STEP=k``: its k-th training step raises a user error (``DataError``) that the
  other ranks do not see;
* ``NAN_AT_STEP=k``: the training loss of its k-th step is NaN (a rank that diverges alone);
* ``FORCE_PROGRESS=1`` (every rank): progress bars on even without a terminal;
* ``AUDIT_FILE=path`` (every rank): at exit, write to ``path.RANK`` every file this process
  opened for writing, renamed, removed or created a folder at (one per line); recorded by
  the rank's worker, not by its supervisor (scratchcnn/supervise.py), which writes nothing.
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import sys

import scratchcnn.training.loop as train
from scratchcnn.cli import main
from scratchcnn.errors import DataError
from scratchcnn.parallel.supervise import should_supervise

rank = int(os.environ.get("PMI_RANK", "0"))
target = rank == int(os.environ.get("STOP_RANK", "0"))


def on_call(k: int, action):
    """Wrap train._train_step so that ``action`` runs instead at its k-th call."""
    real, calls = train._train_step, [0]

    def step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            return action(real, *args, **kwargs)
        return real(*args, **kwargs)

    train._train_step = step


if target and int(os.environ.get("STOP_AT_STEP", "0")) > 0:
    sig = getattr(signal, os.environ.get("STOP_SIGNAL", "SIGKILL"))

    def stop(real, *args, **kwargs):
        os.kill(os.getpid(), sig)
        return real(*args, **kwargs)

    on_call(int(os.environ["STOP_AT_STEP"]), stop)

if target and int(os.environ.get("FAIL_AT_STEP", "0")) > 0:

    def fail(real, *args, **kwargs):
        raise DataError(f"injected failure on rank {rank}")

    on_call(int(os.environ["FAIL_AT_STEP"]), fail)

if target and int(os.environ.get("NAN_AT_STEP", "0")) > 0:

    def nan_loss(real, model, x, y, loss_fn, optimizer, world, *rest):
        forward = loss_fn.forward
        loss_fn.forward = lambda *a: math.nan
        try:
            return real(model, x, y, loss_fn, optimizer, world, *rest)
        finally:
            loss_fn.forward = forward

    on_call(int(os.environ["NAN_AT_STEP"]), nan_loss)

if os.environ.get("FORCE_PROGRESS"):
    train.progress_off = lambda progress: progress is False

if os.environ.get("AUDIT_FILE") and not should_supervise():
    written: list[str] = []
    # numba keeps its compiled kernels under the cache folder (engine.modes): a cold cache
    # (a fresh CI machine) is filled by whichever rank compiles first.
    numba_cache = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
        os.environ.get("SCRATCHCNN_CACHE_DIR", os.path.expanduser("~/.cache/scratchcnn")), "numba"
    )

    def audit(event: str, args: tuple) -> None:
        # Compile caches (Python's .pyc, numba's kernels) are not the run's output.
        if args and isinstance(args[0], (str, bytes)):
            path = os.fsdecode(args[0])
            if "__pycache__" in path or path.startswith(numba_cache):
                return
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR):
                written.append(os.fsdecode(args[0]))
        elif event in ("os.rename", "os.replace", "os.remove", "os.mkdir", "os.unlink"):
            written.append(os.fsdecode(args[0]))

    sys.addaudithook(audit)
    log = f"{os.environ['AUDIT_FILE']}.{rank}"
    atexit.register(lambda: open(log, "w").write("".join(f"{p}\n" for p in written)))

sys.exit(main())
