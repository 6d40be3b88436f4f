"""Data-parallel training over MPI: every process (rank) holds the whole model, takes its
share of every batch, and the gradients are summed with one ``Allreduce`` per step.

``mpiexec -n N scratchcnn train ...`` uses this through :func:`scratchcnn.training.loop`; for
your own loop there are :class:`DistributedOptimizer` (``step()`` averages the gradients of
every rank, then updates) and :func:`shard` (a rank's part of a data set)::

    world = scratchcnn.distributed.init()
    opt = DistributedOptimizer(sc.optim.SGD(model, lr=0.01))   # copies rank 0's weights
    for x, y in DataLoader(shard(train, world.rank, world.size), batch_size=32, seed=0):
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        opt.step(local_batch=len(y))

mpi4py is imported only when this process was started by an MPI launcher with more than one
process (``PMI_SIZE`` / ``OMPI_COMM_WORLD_SIZE`` / ``PMIX_RANK`` in the environment), so
``import scratchcnn`` and plain runs never load MPI, and ``mpiexec -n 1`` is a plain run.

Exactness. Rank r computes the mean loss over its n_r images, so the whole batch's gradient
is sum_r (n_r / B) g_r: each rank sends n_r g_r (and n_r) in one float64 buffer and divides
the sum by sum_r n_r. BatchNorm normalises with each rank's own batch statistics (torch
DDP's default); its running statistics are averaged the same way after every step, so every
rank holds the same model. Dropout draws the mask of the whole global batch on every rank and
keeps its rows (see :func:`global_batch_rngs`), so its generator stays identical on all ranks
and a model without BatchNorm takes exactly the step one process would take on the batch.

Faults. Each rank's watchdog thread exchanges a heartbeat with the others (a star around
rank 0, every half second, on a communicator of its own): a peer silent for ``heartbeat``
seconds (default 10, env ``SCRATCHCNN_MPI_HEARTBEAT``; 0 turns it off) is taken for dead or
hung. That, a collective that does not complete within ``timeout`` seconds (default 120, env
``SCRATCHCNN_MPI_TIMEOUT``), Hydra's SIGUSR1 (under ``mpiexec -disable-auto-cleanup``) or an
MPI error make this process print one line ``scratchcnn: error: ...`` and exit with status 2,
so no rank hangs. A rank that stops on an error it reported says so in its heartbeat
(``FAILED``), and the others stop silently. Under mpich's default ``mpiexec``, which
SIGKILLs every other process the moment one dies, ``scratchcnn train`` runs each rank under a
small supervisor (:mod:`scratchcnn.supervise`) so that the survivors live to say it.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import ConfigError, DistributedError, ScratchCNNError, TrainingDiverged
from ..nn.layers.base import leaf_layers

__all__ = [
    "DistributedOptimizer",
    "World",
    "allreduce_gradients",
    "broadcast_model",
    "init",
    "launch_size",
    "shard",
    "shard_range",
]

#: Environment variables an MPI launcher sets: MPICH/Intel MPI (PMI), Open MPI, PMIx.
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
DEFAULT_TIMEOUT = 120.0
TIMEOUT_VAR = "SCRATCHCNN_MPI_TIMEOUT"
DEFAULT_HEARTBEAT = 10.0
HEARTBEAT_VAR = "SCRATCHCNN_MPI_HEARTBEAT"
_FAILURE_SIGNAL = getattr(signal, "SIGUSR1", None)


def launch_size(environ: dict[str, str] | None = None) -> int | None:
    """The number of processes an MPI launcher started, from its environment variables:
    1 when none is set (a plain run), None when launched but the size is not told."""
    env = os.environ if environ is None else environ
    for var in SIZE_VARS:
        if env.get(var, "").strip().isdigit():
            return max(int(env[var]), 1)
    return None if any(v in env for v in RANK_VARS) else 1


class World:
    """This process's place in the job: ``rank`` in ``range(size)`` and the communicator
    (None for a single process). Collectives go through :meth:`allreduce`, which is
    watched: see the module docstring."""

    def __init__(
        self,
        comm: Any = None,
        timeout: float = DEFAULT_TIMEOUT,
        heartbeat: float = DEFAULT_HEARTBEAT,
        supervised: bool = False,
    ) -> None:
        self.comm = comm
        self.rank = 0 if comm is None else int(comm.Get_rank())
        self.size = 1 if comm is None else int(comm.Get_size())
        self.timeout = float(timeout)
        #: seconds of silence after which a peer is taken for dead or hung (0: not watched)
        self.heartbeat = float(heartbeat)
        #: started by :func:`scratchcnn.supervise.supervise` (see its exit-status protocol)
        self.supervised = supervised
        #: the run's checkpoint, named in the one-line message when a peer fails
        self.checkpoint: os.PathLike | None = None
        #: set once every rank has checked in (see :meth:`sync_start`)
        self.started = False
        #: the lowest rank whose set-up failed (it reports the error), after sync_start
        self.first_failed: int | None = None
        self._busy_since: float | None = None
        self._watchdog: threading.Thread | None = None
        self._pulse: _Heartbeat | None = None
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size})"

    # --- collectives -------------------------------------------------------------------
    def allreduce(self, buf: np.ndarray) -> np.ndarray:
        """Sum ``buf`` over every rank, in place; returns it."""
        if self.size == 1:
            return buf
        from mpi4py import MPI

        with self._watched():
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return buf

    def broadcast(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        """Rank ``root``'s ``buf`` on every rank, in place; returns it."""
        if self.size > 1:
            with self._watched():
                self.comm.Bcast(buf, root=root)
        return buf

    def sync_start(self, digest: bytes | None) -> None:
        """Every rank checks in once before training: with the digest of its starting state,
        or None if its set-up failed. Raises :class:`DistributedError` on every rank if any
        rank failed (``silent`` on all but the one that reports it) or the states differ.
        No time limit: set-up (loading data) may take long; a death is still reported."""
        self.started = True
        if self.size == 1:
            return
        mine = np.zeros(33, dtype=np.uint8)
        mine[0] = digest is None
        mine[1:] = np.frombuffer(digest or bytes(32), dtype=np.uint8)
        every = np.zeros((self.size, 33), dtype=np.uint8)
        with self._watched(timed=False):
            self.comm.Allgather(mine, every)
        failed = np.flatnonzero(every[:, 0])
        if failed.size:
            self.first_failed = int(failed[0])
            exc = DistributedError(f"rank {self.first_failed} could not start")
            exc.silent = True  # type: ignore[attr-defined]  # that rank reports its own error
            raise exc
        differ = [r for r in range(self.size) if bytes(every[r, 1:]) != bytes(every[0, 1:])]
        if differ:
            exc = DistributedError(
                f"rank {differ[0]} of {self.size} starts from another state than rank 0 "
                "(other data, settings or checkpoint: every process must see the same files, "
                "e.g. on a shared file system, and the same scratchcnn version)"
            )
            exc.silent = self.rank != 0  # type: ignore[attr-defined]
            raise exc

    # --- fault handling ----------------------------------------------------------------
    @contextmanager
    def _watched(self, timed: bool = True) -> Iterator[None]:
        """Around a collective: MPI errors end the process with one line; with ``timed`` the
        watchdog ends it after ``timeout`` seconds without an answer."""
        from mpi4py import MPI

        self._busy_since = time.monotonic() if timed else None
        try:
            yield
        except MPI.Exception as exc:
            self.die(f"MPI error ({exc.Get_error_string().strip()})")
        finally:
            self._busy_since = None

    def start_watchdog(self) -> None:
        """The thread that turns a dead or hung peer into one line and exit status 2. Every
        rank must call it (the heartbeat's communicator is made collectively)."""
        if self.size == 1 or self._watchdog is not None:
            return
        from mpi4py import MPI

        if self.heartbeat > 0 and MPI.Query_thread() == MPI.THREAD_MULTIPLE:
            self._pulse = _Heartbeat(self.comm.Dup(), self.rank, self.size, self.heartbeat)
        self._watchdog = threading.Thread(target=self._watch, name="scratchcnn-mpi", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            if _FAILURE_SIGNAL is not None and hasattr(signal, "sigtimedwait"):
                if signal.sigtimedwait([_FAILURE_SIGNAL], 0.25) is not None:
                    self.die("another process of this MPI job stopped (killed or crashed)")
            else:  # pragma: no cover - non-POSIX
                time.sleep(0.25)
            if self._pulse is not None:
                self._check_pulse()
            since = self._busy_since
            if since is not None and time.monotonic() - since > self.timeout:
                self.die(
                    f"no answer from the other processes for {self.timeout:g} s (one hung, "
                    f"or the network failed; the limit is {TIMEOUT_VAR})",
                    hung=True,
                )

    def _check_pulse(self) -> None:
        event = self._pulse.tick()  # type: ignore[union-attr]
        if event is None:
            return
        what, peer = event
        if what == "failed":  # that rank reported its own error; rank 0 passes it on
            self.die("", quiet=True, cleanup=False)
        # Silence. Rank 0 speaks for a silent peer; when rank 0 is the silent one, rank 1 does.
        self.die(
            f"rank {peer} of {self.size} gave no sign of life for {self.heartbeat:g} s (killed, "
            f"crashed or hung; the limit is {HEARTBEAT_VAR})",
            quiet=not (self.rank == 0 or (peer == 0 and self.rank == 1)),
        )

    def announce_failure(self) -> None:
        """Tell the other ranks (through the heartbeat) that this one stops on an error it
        has reported, so that they stop too, silently, instead of waiting for it."""
        if self._pulse is not None:
            self._pulse.send_and_flush(_FAILED)

    def finish(self) -> None:
        """On a clean end: tell the others this rank is done (so they stop watching it) and
        stop the watchdog. A rank other than 0 first waits for rank 0's own end, still
        watching it: a rank 0 that dies while writing its last files is still reported."""
        pulse = self._pulse
        if pulse is None or self._stop.is_set():
            self._stop.set()
            return
        pulse.send_and_flush(_DONE)
        if self.rank != 0 and self._watchdog is not None:
            pulse.all_done.wait()
        self._stop.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=2.0)

    def die(
        self, reason: str, *, quiet: bool = False, cleanup: bool = True, hung: bool = False
    ) -> None:
        """Print ``scratchcnn: error: rank R of N: REASON; ...checkpoint...`` (unless
        ``quiet``) and exit with status 2 now (MPI_Finalize would wait for the peer that is
        gone). ``cleanup``: under the supervisor, let the launcher stop what is left;
        ``hung``: a peer is alive but stuck, so ask the launcher to abort the job."""
        if not quiet:
            text = f"scratchcnn: error: rank {self.rank} of {self.size}: {reason}"
            if self.checkpoint is not None and os.path.exists(self.checkpoint):
                text += (
                    f"; the last checkpoint, {self.checkpoint}, is intact: --resume continues it"
                )
            elif self.checkpoint is not None:
                text += "; no checkpoint was written yet"
            # Straight to the file descriptor: the main thread may hold sys.stderr's lock.
            os.write(2, (text + "\n").encode())
        from .supervise import ABORT_STATUS, CLEANUP_STATUS

        cleanup = cleanup and self.supervised
        status = (ABORT_STATUS if hung else CLEANUP_STATUS) if cleanup else 2
        exit_within(EXIT_GRACE_S, status)
        self.announce_failure()
        if cleanup and self._pulse is not None and self.size > 2:
            # The launcher is about to stop whatever is left: give the ranks that heard our
            # FAILED the time to end by themselves (they answer FAILED before they go).
            self._pulse.await_failed(wait=3.0)
            time.sleep(0.2)  # ...and their supervisors the time to exit
        os._exit(status)


#: Seconds a failing rank may spend telling the others before it exits regardless (the
#: longest regular path: 1 s to flush FAILED, 3.2 s for the others to answer).
EXIT_GRACE_S = 6.0


def exit_within(seconds: float, status: int) -> None:
    """End this process with ``status`` after ``seconds``, whatever the other threads do.

    A failing rank tells the others through MPI before it exits, and an MPI call can block
    when a peer is frozen (once in CI a job outlived its test's minute after rank 0 had
    printed its line). MPI calls release the GIL, so this timer thread still runs."""
    timer = threading.Timer(seconds, os._exit, args=(status,))
    timer.daemon = True
    timer.start()


_ALIVE, _DONE, _FAILED = 0, 1, 2
_PULSE_TAG = 92


class _Heartbeat:
    """Liveness between ranks, on a communicator of its own. Every ``period`` seconds rank 0
    sends one byte to every rank and every rank one to rank 0 (a star: 2(N-1) messages);
    a watched peer silent for ``limit`` seconds is taken for dead or hung. The byte says
    ``_ALIVE``, ``_DONE`` (finished: stop watching me) or ``_FAILED`` (I stop on an error
    I reported: stop too). Used by the watchdog thread and, for DONE / FAILED, by the main
    thread: hence the lock (MPI runs with THREAD_MULTIPLE)."""

    def __init__(self, comm: Any, rank: int, size: int, limit: float) -> None:
        self.comm, self.limit = comm, limit
        self.period = min(0.5, limit / 4)
        self.peers = list(range(1, size)) if rank == 0 else [0]
        now = time.monotonic()
        self.seen = dict.fromkeys(self.peers, now)  # watched peer -> when last heard
        self.inbox = {p: np.zeros(1, dtype=np.uint8) for p in self.peers}
        self.recv = {p: self._listen(p) for p in self.peers}
        self.sending: list[tuple[Any, np.ndarray]] = []
        self.last_sent = -math.inf
        self.said: int = _ALIVE
        self.all_done = threading.Event()  # every watched peer said DONE
        self.lock = threading.RLock()

    def _listen(self, peer: int) -> Any:
        """The receive request for ``peer``'s next byte (into ``inbox[peer]``)."""
        return self.comm.Irecv(self.inbox[peer], source=peer, tag=_PULSE_TAG)

    def _prune(self) -> bool:
        """Forget the sends that have completed; True when none is left."""
        self.sending = [(r, b) for r, b in self.sending if not r.Test()]
        return not self.sending

    def _send(self, what: int, to: Sequence[int]) -> None:
        buf = np.full(1, what, dtype=np.uint8)
        for p in to:
            self.sending.append((self.comm.Isend(buf, dest=p, tag=_PULSE_TAG), buf))

    def send_and_flush(self, what: int, wait: float = 1.0) -> None:
        """Say ``what`` to every peer and wait (at most ``wait`` s) until it has left."""
        with self.lock:
            if self.said != _ALIVE:
                return
            self.said = what
            self._send(what, self.peers)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with self.lock:
                if self._prune():
                    return
            time.sleep(0.01)

    def await_failed(self, wait: float) -> None:
        """Wait (at most ``wait`` s) until every peer still heard from has said FAILED."""
        deadline = time.monotonic() + wait
        with self.lock:
            pending = {p for p, heard in self.seen.items() if time.monotonic() - heard < self.limit}
        while pending and time.monotonic() < deadline:
            with self.lock:
                for p in list(pending):
                    while p in pending and self.recv[p].Test():
                        if int(self.inbox[p][0]) == _FAILED:
                            pending.discard(p)
                        else:
                            self.recv[p] = self._listen(p)
            time.sleep(0.01)

    def tick(self) -> tuple[str, int] | None:
        """Send a beat if due and read what arrived: ``("failed", peer)``,
        ``("silent", peer)`` or None."""
        with self.lock:
            now = time.monotonic()
            if self.said == _ALIVE and now - self.last_sent >= self.period:
                self._send(_ALIVE, list(self.seen))
                self.last_sent = now
            self._prune()
            for p in list(self.seen):
                while self.recv[p].Test():
                    what = int(self.inbox[p][0])
                    self.seen[p] = now
                    if what == _FAILED:
                        return ("failed", p)
                    if what == _DONE:
                        del self.seen[p]
                        break
                    self.recv[p] = self._listen(p)
            if not self.seen:
                self.all_done.set()
            for p, heard in self.seen.items():
                if now - heard > self.limit:
                    return ("silent", p)
            return None


def flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


_WORLD: World | None = None


def _seconds(var: str, default: float, zero_ok: bool = False) -> float:
    """The number of seconds in environment variable ``var`` (``default`` when unset)."""
    raw = os.environ.get(var, "")
    problem = ConfigError(
        f"{var} must be a number of seconds {'>= 0' if zero_ok else '> 0'}, got {raw!r}"
    )
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise problem from None
    if not (math.isfinite(value) and (value > 0 or (zero_ok and value == 0))):
        raise problem
    return value


def init(timeout: float | None = None, heartbeat: float | None = None) -> World:
    """This process's :class:`World` (the same object on every call).

    A plain run, or ``mpiexec -n 1``, gives ``World()`` (rank 0 of 1) without importing
    mpi4py. Under an MPI launcher with more processes mpi4py is imported (one line naming
    ``scratchcnn[mpi]`` if it is missing), MPI errors are made to raise, and the watchdog
    thread starts (with the heartbeat: see the module docstring)."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    if timeout is None:
        timeout = _seconds(TIMEOUT_VAR, DEFAULT_TIMEOUT)
    if heartbeat is None:
        heartbeat = _seconds(HEARTBEAT_VAR, DEFAULT_HEARTBEAT, zero_ok=True)
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"the MPI timeout must be a positive number of seconds, got {timeout}")
    if not (math.isfinite(heartbeat) and heartbeat >= 0):
        raise ConfigError(f"the MPI heartbeat must be a number of seconds >= 0, got {heartbeat}")
    size = launch_size()
    if size == 1:
        _WORLD = World(timeout=timeout)
        return _WORLD
    from .supervise import attach_worker

    supervised = attach_worker()
    # Block Hydra's failure signal before MPI starts its threads, so that only the watchdog
    # (sigtimedwait) ever receives it; its default action would kill us without a word.
    if _FAILURE_SIGNAL is not None and threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK, {_FAILURE_SIGNAL})
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError(
            f"this process was started by mpiexec ({size or 'several'} processes) but mpi4py "
            "is not installed; pip install mpi4py mpich (the [mpi] extra: pip install -e "
            "'.[mpi]' in a clone)"
        ) from exc
    comm = MPI.COMM_WORLD
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    world = World(comm if comm.Get_size() > 1 else None, timeout, heartbeat, supervised)
    world.start_watchdog()
    # Registered after mpi4py's own exit hook, so it runs before MPI_Finalize.
    atexit.register(world.finish)
    _WORLD = world
    return world


# --- shards ----------------------------------------------------------------------------
def shard_range(n: int, rank: int, size: int) -> tuple[int, int]:
    """[lo, hi) of rank ``rank``'s contiguous share of ``n`` items: the first ``n % size``
    ranks get one more item than the others (like ``np.array_split``)."""
    for name, v in (("n", n), ("rank", rank), ("size", size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ConfigError(f"shard: {name} must be an int, got {v!r}")
    if size < 1 or not 0 <= rank < size or n < 0:
        raise ConfigError(f"shard: need 0 <= rank < size and n >= 0, got {rank=} {size=} {n=}")
    base, extra = divmod(int(n), int(size))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def shard(data: Any, rank: int, size: int) -> Any:
    """Rank ``rank``'s contiguous part of a ``Dataset``, an index array, or ``range(n)`` for
    an int ``n`` (see :func:`shard_range`). Parts are disjoint and cover everything."""
    from ..data import Dataset

    if isinstance(data, (int, np.integer)) and not isinstance(data, bool):
        lo, hi = shard_range(int(data), rank, size)
        return np.arange(lo, hi)
    if isinstance(data, Dataset):
        lo, hi = shard_range(len(data), rank, size)
        if lo == hi:
            raise ConfigError(
                f"shard: data set {data.name!r} has {len(data)} items, too few for {size} ranks"
            )
        return data[lo:hi]
    arr = np.asarray(data)
    if arr.ndim != 1:
        raise ConfigError(f"shard: expected a Dataset, an int or 1-D indices, got {arr.shape}")
    lo, hi = shard_range(len(arr), rank, size)
    return arr[lo:hi]


# --- gradients, buffers and the random generators of layers ----------------------------
def _leaves(model: Any) -> list[Any]:
    return [layer for _, layer in leaf_layers(model)]


def _buffers(model: Any) -> list[np.ndarray]:
    return [arr for layer in _leaves(model) for arr in getattr(layer, "buffers", {}).values()]


def allreduce_gradients(
    model: Any,
    local_batch: int | None = None,
    extras: Sequence[float] = (),
    world: World | None = None,
) -> np.ndarray:
    """Replace every rank's gradients (and BatchNorm-style buffers) by their average over the
    ranks, weighted by ``local_batch`` (each rank's number of images; None: equal weights),
    with ONE Allreduce; ``extras`` (numbers) are summed in the same buffer and returned.

    A rank with ``local_batch == 0`` contributes nothing (its gradients may be stale)."""
    world = world or init()
    extras = np.asarray(extras, dtype=np.float64).ravel()
    if world.size == 1:
        return extras
    weight = 1.0 if local_batch is None else float(local_batch)
    # Frozen layers (``Sequential.freeze``) compute no gradient: only the others travel.
    walk = getattr(model, "named_trainable_parameters", None) or model.named_leaf_parameters
    grads = [layer.grads[name] for _, layer, name in walk()]
    bufs = _buffers(model)
    parts = [g.ravel() for g in grads] + [b.ravel() for b in bufs]
    sizes = [p.size for p in parts]
    flat = np.empty(sum(sizes) + 1 + extras.size, dtype=np.float64)
    if weight:
        np.concatenate(parts, out=flat[: sum(sizes)], casting="unsafe")
        flat[: sum(sizes)] *= weight
    else:
        flat[: sum(sizes)] = 0.0
    flat[sum(sizes)] = weight
    flat[sum(sizes) + 1 :] = extras
    world.allreduce(flat)
    total = flat[sum(sizes)]
    if total <= 0:
        raise DistributedError("allreduce_gradients: every rank had local_batch == 0")
    offset = 0
    for arr, n in zip([*grads, *bufs], sizes, strict=True):
        mean = flat[offset : offset + n] / total
        if arr.dtype.kind in "iu":
            mean = np.rint(mean)
        arr[...] = mean.reshape(arr.shape)
        offset += n
    return flat[sum(sizes) + 1 :].copy()


def broadcast_model(model: Any, world: World | None = None, root: int = 0) -> None:
    """Copy rank ``root``'s parameters and buffers to every rank (one Bcast)."""
    world = world or init()
    if world.size == 1:
        return
    arrays = model.parameters() + _buffers(model)
    flat = np.concatenate([a.ravel().astype(np.float64) for a in arrays])
    world.broadcast(flat, root)
    offset = 0
    for arr in arrays:
        arr[...] = flat[offset : offset + arr.size].reshape(arr.shape).astype(arr.dtype)
        offset += arr.size


class _GlobalBatchRNG:
    """Stands in for a layer's generator during a distributed step: ``random(shape)`` draws
    the values of the whole global batch (``batch`` rows) and returns rows [lo, hi), so every
    rank's generator advances the same way and the masks are those one process would draw."""

    def __init__(self, rng: np.random.Generator, lo: int, hi: int, batch: int) -> None:
        self._rng, self._lo, self._hi, self._batch = rng, lo, hi, batch

    def random(self, size: Any = None, dtype: Any = np.float64) -> np.ndarray:
        size = tuple(np.atleast_1d(size)) if size is not None else ()
        if not size or size[0] != self._hi - self._lo:
            raise DistributedError(
                f"a layer drew random numbers of shape {size} during a distributed step; "
                f"only per-image draws (first dimension {self._hi - self._lo}) can be sharded"
            )
        return self._rng.random((self._batch, *size[1:]), dtype=dtype)[self._lo : self._hi]

    def __getattr__(self, name: str) -> Any:
        if name == "bit_generator":
            return self._rng.bit_generator
        raise DistributedError(
            f"a layer called rng.{name} during a distributed step; only rng.random is sharded"
        )


@contextmanager
def global_batch_rngs(model: Any, lo: int, hi: int, batch: int) -> Iterator[None]:
    """During the block, layers' own generators (Dropout's ``rng``) draw for the global batch
    and keep rows [lo, hi) (see :class:`_GlobalBatchRNG`)."""
    swapped = [
        (layer, layer.rng)
        for layer in _leaves(model)
        if isinstance(getattr(layer, "rng", None), np.random.Generator)
    ]
    for layer, rng in swapped:
        layer.rng = _GlobalBatchRNG(rng, lo, hi, batch)
    try:
        yield
    finally:
        for layer, rng in swapped:
            layer.rng = rng


def state_digest(arrays: Sequence[np.ndarray], info: Any) -> bytes:
    """SHA-256 of some arrays (dtype, shape, bytes) and a JSON-able object: what ranks compare
    before training to be sure they start from the same state."""
    h = hashlib.sha256()
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.data)
    h.update(json.dumps(info, sort_keys=True, default=str).encode())
    return h.digest()


class DistributedOptimizer:
    """Wrap an optimiser for data-parallel training: ``step(local_batch=None)`` first averages
    the gradients over every rank (weighted by each rank's ``local_batch`` when given, so the
    result is the gradient of the mean loss over all ranks' images), then takes the wrapped
    optimiser's step. The constructor copies rank 0's weights to every rank. Everything else
    (``lr``, ``state_dict``, ``zero_grad``, ...) is the wrapped optimiser's."""

    def __init__(self, optimizer: Any, world: World | None = None, broadcast: bool = True) -> None:
        if not hasattr(optimizer, "step") or not hasattr(optimizer, "model"):
            raise ConfigError(
                f"DistributedOptimizer wraps a scratchcnn optimiser, got {type(optimizer).__name__}"
            )
        self.__dict__["optimizer"] = optimizer
        self.__dict__["world"] = world or init()
        if broadcast:
            broadcast_model(optimizer.model, self.world)

    def step(self, local_batch: int | None = None) -> None:
        allreduce_gradients(self.optimizer.model, local_batch, world=self.world)
        self.optimizer.step()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["optimizer"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.optimizer, name, value)  # lr set by a scheduler reaches the real one

    def __repr__(self) -> str:
        return f"DistributedOptimizer({self.optimizer!r}, {self.world!r})"


# --- the command line's process wrapper ------------------------------------------------
def run_rank(world: World, main: Callable[[], int], report: Callable[[Any], int]) -> int:
    """Run ``main`` on one rank of an MPI job and end the process the MPI way.

    A user error is printed (by ``report``: one line) by one rank only: before training the
    lowest rank that failed, during training the rank it happened on (a divergence, seen by
    all, by rank 0). A failing rank leaves with ``os._exit`` so that MPI_Finalize cannot
    wait for peers still inside a collective."""
    try:
        return main()
    except ScratchCNNError as exc:
        silent = getattr(exc, "silent", False)
        if not world.started:
            try:
                world.sync_start(None)
            except DistributedError:
                silent = silent or world.first_failed != world.rank
        elif isinstance(exc, TrainingDiverged) and world.rank != 0:
            silent = True
        status = 2 if silent else report(exc)
    except KeyboardInterrupt:
        status = 130
    except BaseException:
        import traceback

        traceback.print_exc()
        status = 1
    flush_std()
    exit_within(EXIT_GRACE_S, status)
    world.announce_failure()  # the others stop too instead of waiting for this rank
    os._exit(status)
