"""A small supervisor per MPI rank, so that ``mpiexec -n N scratchcnn train`` ends with one
line and status 2 when a rank dies, even by SIGKILL, under mpich's default ``mpiexec``.

Why. When a process of the job dies without telling the process manager (PMI) that it is
done, mpich's Hydra "cleans up": it SIGKILLs every other process at once, so no survivor can
say what happened, and the job's status becomes 9. A process killed by SIGKILL cannot tell
anyone anything itself. So the process Hydra starts is this supervisor; it starts the real
rank (the *worker*, the same command line) as its child and waits. When the worker ends:

* status 0: it finished and finalized MPI; the supervisor exits 0;
* killed by a signal, or any other non-zero status: the supervisor tells PMI that this rank
  is done (PMI-1's ``cmd=finalize``, on the socket Hydra gave the rank, which the worker no
  longer uses), so Hydra does *not* kill the others, and exits 2 (or the worker's status).
  The survivors notice the silent peer through their heartbeats
  (:mod:`scratchcnn.distributed`), and one of them prints the one line;
* :data:`CLEANUP_STATUS`: the worker found a peer dead or silent and reported it; the
  supervisor exits 2 *without* finalizing, so that Hydra does stop whatever is left;
* :data:`ABORT_STATUS`: the worker waited in vain for a collective (a peer hung: alive, so
  something is certainly left); the supervisor also sends PMI's ``cmd=abort``. Exiting
  unfinalized alone left a frozen peer running in about 1 job in 10: Hydra did not always
  notice.

The worker asks the kernel to kill it if the supervisor dies (``PR_SET_PDEATHSIG``), so
Hydra's own clean-up, and Ctrl-C, still reach it; signals the supervisor receives are passed
on. The supervisor is used only where all of this holds: Linux, a launcher that speaks PMI
over an inherited socket (``PMI_FD``: mpich, Intel MPI), and the ``train`` command.
Elsewhere (Open MPI, your own loop) a dead rank is handled by the launcher as usual.
``SCRATCHCNN_MPI_SUPERVISOR=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

__all__ = ["ABORT_STATUS", "CLEANUP_STATUS", "attach_worker", "should_supervise", "supervise"]

#: Worker -> supervisor only: "exit 2 and let the launcher stop the rest" (never seen by users).
CLEANUP_STATUS = 86
#: Worker -> supervisor only: as CLEANUP_STATUS, and ask the launcher to abort the job.
ABORT_STATUS = 87
#: Set in the worker's environment to the supervisor's pid.
WORKER_VAR = "SCRATCHCNN_MPI_WORKER_OF"
SWITCH_VAR = "SCRATCHCNN_MPI_SUPERVISOR"
_PR_SET_PDEATHSIG = 1
_FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


def _pmi_fd(environ: Mapping[str, str]) -> int | None:
    raw = environ.get("PMI_FD", "")
    if not raw.isdigit():
        return None
    fd = int(raw)
    try:
        os.fstat(fd)
    except OSError:
        return None
    return fd


def should_supervise(environ: Mapping[str, str] | None = None) -> bool:
    """True in the process an mpich-style launcher started for a job of more than one
    process (and not in the worker a supervisor started)."""
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux") or env.get(SWITCH_VAR, "1") == "0":
        return False
    if WORKER_VAR in env or not env.get("PMI_SIZE", "").isdigit() or int(env["PMI_SIZE"]) < 2:
        return False
    return _pmi_fd(env) is not None and _libc() is not None


def _libc() -> ctypes.CDLL | None:
    # The interpreter's own symbols include the C library's (no find_library: it runs
    # programs); None where prctl is missing.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "prctl") else None
    except (OSError, AttributeError):
        return None


def attach_worker() -> bool:
    """In a worker (a no-op elsewhere): die with the supervisor. Returns True in a worker."""
    parent = os.environ.pop(WORKER_VAR, None)
    if parent is None:
        return False
    libc = _libc()
    if libc is not None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if str(os.getppid()) != parent:  # the supervisor died before prctl: nobody would wait
        os._exit(2)
    return True


def _finalize_pmi(fd: int, wait: float = 2.0) -> None:
    """Tell the process manager this rank is done (PMI-1 wire protocol); best effort."""
    with contextlib.suppress(OSError):
        os.write(fd, b"cmd=finalize\n")
        deadline = time.monotonic() + wait
        reply = b""
        while b"\n" not in reply and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                break
            chunk = os.read(fd, 256)
            if not chunk:
                break
            reply += chunk


def _abort_pmi(fd: int, status: int) -> None:
    """Ask the process manager to stop every process of the job (PMI-1's ``cmd=abort``).

    Exiting without ``cmd=finalize`` should be enough (Hydra then kills what is left), but
    Hydra sometimes misses it: a frozen peer then kept the job alive (about 1 run in 10
    here). The abort is explicit and is what MPI_Abort sends; best effort."""
    with contextlib.suppress(OSError):
        os.write(fd, f"cmd=abort exitcode={status}\n".encode())


def supervise() -> int:
    """Run this very command line again as the worker, wait for it, and end as described in
    the module docstring. Returns 0 when the worker succeeded; otherwise ends this process
    here (``os._exit``) with the status described there."""
    fd = _pmi_fd(os.environ)
    env = dict(os.environ, **{WORKER_VAR: str(os.getpid())})
    # The worker inherits PMI_FD (pass_fds keeps it open across exec) and our stdio.
    worker = subprocess.Popen(
        [sys.executable, *sys.orig_argv[1:]], env=env, pass_fds=() if fd is None else (fd,)
    )

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            worker.send_signal(signum)

    for name in _FORWARDED:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), forward)
    status = worker.wait()  # SIGINT is forwarded (above), so this wait is not interrupted
    if status == 0:
        return 0
    if status in (CLEANUP_STATUS, ABORT_STATUS):
        if status == ABORT_STATUS and fd is not None:
            _abort_pmi(fd, 2)
        status = 2  # not finalized: the launcher stops what is left
    else:
        if fd is not None:
            _finalize_pmi(fd)
        status = 2 if status < 0 else status  # killed by a signal: the survivors report it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
