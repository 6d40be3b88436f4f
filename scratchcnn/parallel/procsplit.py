"""Split one batch over worker *processes* that share memory with this one (Linux).

Why processes and not threads (``parallel.BatchSplit``'s other backend): two Python threads
stepping through a model meet at the GIL between every two NumPy calls, and at every
BatchNorm barrier; each meeting that finds the other thread asleep costs a wake-up, and on
a virtual machine a wake-up takes 50-200 us (measured here: a threading.Event round trip
took 150 us). A resnet8 step has hundreds of such meetings. Processes have no GIL in
common, and they meet only at points we choose, where they spin on shared memory instead of
sleeping: a meeting costs about a microsecond.

The protocol, for ``parts`` = P slices: this process runs slice 0; P - 1 workers (started
once, with ``python -m``, never by fork) run the others. Everything they share lives in one
memory-mapped file (``memfd``): the model's parameters and buffers (copied in before every
call, so an optimiser step or ``load_state_dict`` on the real model is always seen), each
worker's input slice, its logits and its parameter gradients, and the per-channel sums of
BatchNorm. A training step is:

1. workers: forward on their slice; this process: forward on slice 0 at the same time.
   BatchNorm layers total their sums over all slices (``_ProcSync``, in slice order).
2. this process: the loss and dL/dlogits over the *whole* batch (so any loss works, and
   the loss is exactly the whole batch's); each worker gets its rows of dL/dlogits.
3. all: backward on their slice; this process adds the workers' gradients to its own, in
   slice order. Results are deterministic for a given number of parts.

Each side waits by spinning (with ``sched_yield``) on counters in the shared memory; a
counter has one writer, so no atomic operations are needed beyond x86's ordered stores
(the backend is used on x86-64 Linux only). A worker idle for more than ``IDLE_SPIN_S``
sleeps in short naps, so it costs nothing between epochs. A worker that dies is noticed
within milliseconds and reported as one error; an error inside a worker's slice is raised
here with its own type and message. Workers exit when this process closes the split or dies
(``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import platform
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..engine import batch_statistics, loss_route, modes
from ..errors import ScratchCNNError
from ..nn.layers.base import leaf_layers
from ..nn.layers.normalization import BatchNorm1D, BatchNorm2D

#: A worker waiting for its next call spins this long before it starts to nap.
IDLE_SPIN_S = 0.05
#: Test aid: makes every worker fail its first call ("raise") or die in it ("exit").
FAULT_ENV = "SCRATCHCNN_SPLIT_TEST_FAULT"
#: Seconds a worker may take to start (import NumPy and scratchcnn, build the model).
START_TIMEOUT_S = 120.0

# ctl: int64 counters in the shared memory, one row per process (row 0: this process).
_JOB, _KIND, _N, _TRAIN, _FWD, _DY, _DONE, _STATUS, _ERRLEN, _READY, _ABORT, _ARRIVE = range(12)
_CTL_COLS = 16
_KIND_STEP, _KIND_FORWARD, _KIND_STOP = 1, 2, 3
_ALIGN = 64


class SplitWorkerError(ScratchCNNError):
    """A worker process of a split batch died or could not start."""


class SplitStartError(SplitWorkerError):
    """The first workers of a split could not start here (``BatchSplit`` then uses
    threads)."""


def available() -> bool:
    """Whether the process backend can run here (x86-64 Linux with memfd)."""
    return (
        sys.platform.startswith("linux")
        and platform.machine().lower() in ("x86_64", "amd64")
        and hasattr(os, "memfd_create")
    )


def _leaves(model: Any) -> Iterator[Any]:
    return (layer for _, layer in leaf_layers(model))


def _state_slots(leaves: list[Any]) -> list[tuple[Any, str, str]]:
    """(layer, "params" or "buffers", key) of every parameter and buffer, in the fixed order
    of the shared copy's ``state{j}`` arrays."""
    return [
        (layer, store, k)
        for layer in leaves
        for store in ("params", "buffers")
        for k in sorted(getattr(layer, store))
    ]


def _state_arrays(leaves: list[Any]) -> list[np.ndarray]:
    """Every parameter and buffer, in ``_state_slots``'s order."""
    return [getattr(layer, store)[k] for layer, store, k in _state_slots(leaves)]


def _grad_names(model: Any, leaves: list[Any]) -> list[tuple[int, str]]:
    """(leaf index, parameter name) of every gradient a step computes: none for the leaves
    of frozen layers (``Sequential.freeze``), which come first in forward order."""
    frozen = getattr(model, "frozen", 0)
    first = sum(len(leaf_layers(la)) for la in model.layers[:frozen]) if frozen else 0
    return [(i, k) for i, layer in enumerate(leaves) if i >= first for k in sorted(layer.params)]


class _Layout:
    """Where each shared array lives in the mapped file: a JSON-able plan, so the worker
    maps exactly what this process wrote."""

    def __init__(self) -> None:
        self.size = 0
        self.entries: dict[str, list[Any]] = {}

    def add(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
        dtype = np.dtype(dtype)
        self.size = -(-self.size // _ALIGN) * _ALIGN
        self.entries[name] = [self.size, list(shape), dtype.str]
        self.size += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize

    def views(self, buf: Any) -> dict[str, np.ndarray]:
        return {
            name: np.ndarray(tuple(shape), dtype=np.dtype(dt), buffer=buf, offset=off)
            for name, (off, shape, dt) in self.entries.items()
        }


def _plan(model: Any, parts: int, item_shape: tuple[int, ...], dtype: Any, cap: int) -> _Layout:
    """The shared file for ``parts`` slices of at most ``cap`` items each."""
    leaves = list(_leaves(model))
    arrays = _state_arrays(leaves)
    lay = _Layout()
    lay.add("ctl", (parts, _CTL_COLS), np.int64)
    widths = [2 * layer.num_features + 1 for layer in _norms(model)] or [1]
    lay.add("sync", (2, parts, max(widths)), np.float64)
    for j, a in enumerate(arrays):
        lay.add(f"state{j}", a.shape, a.dtype)
    out_shape = tuple(model.output_shapes(item_shape)[-1][1:])
    # Logits come out in the model's float dtype (the first float parameter's).
    out_dtype = next((a.dtype for a in arrays if a.dtype.kind == "f"), np.dtype(dtype))
    for k in range(1, parts):
        lay.add(f"x{k}", (cap, *item_shape), dtype)
        lay.add(f"out{k}", (cap, *out_shape), out_dtype)
        lay.add(f"dy{k}", (cap, *out_shape), out_dtype)
        for i, name in _grad_names(model, leaves):
            g = leaves[i].params[name]
            lay.add(f"g{k}.{i}.{name}", g.shape, g.dtype)
        lay.add(f"err{k}", (1 << 16,), np.uint8)
    return lay


def _norms(model: Any) -> list[Any]:
    """The BatchNorm layers: their per-channel sums pass through the shared ``sync`` slots."""
    return [layer for layer in _leaves(model) if isinstance(layer, (BatchNorm1D, BatchNorm2D))]


class _Spin:
    """Spin-wait on shared counters; ``check()`` (worker alive? aborted?) every few ms."""

    def __init__(self, check: Any) -> None:
        self.check = check

    def until(self, ready: Any) -> None:
        i = 0
        next_check = time.monotonic() + 0.002
        while not ready():
            i += 1
            if i & 15 == 0:
                os.sched_yield()
                now = time.monotonic()
                if now >= next_check:
                    self.check()
                    next_check = now + 0.002


class _ProcSync:
    """The totaller of slice k (``scratchcnn.engine.batch_statistics``): sums of per-channel
    vectors over all slices, through the shared ``sync`` slots (two sets, alternating, as
    ``split.SliceSync``) and the ``_ARRIVE`` counter of each process."""

    def __init__(self, ctl: np.ndarray, slots: np.ndarray, k: int, spin: _Spin) -> None:
        self.ctl, self.slots, self.k, self.spin = ctl, slots, k, spin
        self.lead = k == 0
        self.calls = int(ctl[k, _ARRIVE])

    def total(self, v: np.ndarray) -> np.ndarray:
        s = self.slots[self.calls % 2]
        self.calls += 1
        n = len(v)
        s[self.k, :n] = v
        self.ctl[self.k, _ARRIVE] = self.calls
        arrive = self.ctl[:, _ARRIVE]
        calls = self.calls
        self.spin.until(lambda: arrive.min() >= calls)
        total = s[0, :n].copy()
        for j in range(1, len(s)):
            total += s[j, :n]
        return total


class ProcessSplit:
    """The process backend of ``parallel.BatchSplit``: same ``step``/``forward`` contract."""

    def __init__(self, model: Any, loss_fn: Any, parts: int) -> None:
        self.model, self.loss_fn, self.parts = model, loss_fn, parts
        self._procs: list[subprocess.Popen] = []
        self._fd: int | None = None
        self._mm: Any = None
        self._key: Any = None
        self._cap = 0
        self._views: dict[str, np.ndarray] = {}
        self._leaf_list: list[Any] = []
        self._leaf_ids: tuple[int, ...] = ()
        self._slots: list[tuple[Any, str, str]] = []
        self._norm_list: list[Any] = []
        self._grad_list: list[tuple[Any, str]] = []
        self._lock = threading.Lock()
        self._finalizer: Any = None
        self._started = False  # workers have started once (a later failure is an error)
        self._model_ref: Any = None  # while parked (``release``): the model, weakly

    # --- workers --------------------------------------------------------------------------
    def _signature(self, x: np.ndarray, arrays: list[np.ndarray]) -> Any:
        """What the workers were built for: the leaf layers, every state array's shape and
        dtype, the input's item shape and dtype; checked on every call."""
        leaves = tuple(map(id, _leaves(self.model)))
        if leaves != self._leaf_ids:
            return None  # a layer was replaced: rebuild
        # A parameter or buffer added or removed changes the count.
        count = sum([len(layer.params) + len(layer.buffers) for layer in self._leaf_list])
        shapes = tuple([(a.shape, a.dtype) for a in arrays])
        frozen = getattr(self.model, "frozen", 0)
        return leaves, count, shapes, x.shape[1:], x.dtype.str, frozen

    def _arrays(self) -> list[np.ndarray]:
        """The state arrays, looked up by the ``_state_slots`` found when the workers were
        built: a few microseconds per call instead of tens (sorting every layer's keys).
        A key gone raises KeyError (``_ensure`` rebuilds)."""
        return [getattr(layer, store)[k] for layer, store, k in self._slots]

    def _ensure(self, x: np.ndarray, cap: int) -> list[np.ndarray]:
        """Workers ready for ``x`` (restarted if the model or the input changed shape);
        returns the state arrays to copy in."""
        if self._procs and cap <= self._cap:
            try:
                arrays = self._arrays()
            except KeyError:  # a parameter or buffer gone: rebuild
                pass
            else:
                if self._signature(x, arrays) == self._key:
                    return arrays
        self._leaf_list = list(_leaves(self.model))
        self._leaf_ids = tuple(map(id, self._leaf_list))
        self._slots = _state_slots(self._leaf_list)
        self._grad_list = [
            (self._leaf_list[i], name) for i, name in _grad_names(self.model, self._leaf_list)
        ]
        arrays = self._arrays()
        key = self._signature(x, arrays)
        self.close()
        cap = max(cap, self._cap)
        try:
            self._start(x, cap)
        except (OSError, SplitWorkerError) as exc:
            self.close()
            if self._started:
                raise
            raise SplitStartError(f"split workers could not start: {exc}") from exc
        self._key, self._cap, self._started = key, cap, True
        return arrays

    def _start(self, x: np.ndarray, cap: int) -> None:
        lay = _plan(self.model, self.parts, x.shape[1:], x.dtype, cap)
        import mmap

        fd = os.memfd_create("scratchcnn-split", os.MFD_CLOEXEC)
        os.ftruncate(fd, lay.size)
        self._fd, self._mm = fd, mmap.mmap(fd, lay.size)
        self._views = lay.views(self._mm)
        self._views["ctl"][:] = 0
        self._state_views = [self._views[f"state{j}"] for j in range(len(self._arrays()))]
        self._grad_views = [
            [
                self._views[f"g{k}.{i}.{name}"]
                for i, name in _grad_names(self.model, self._leaf_list)
            ]
            for k in range(1, self.parts)
        ]
        header = json.dumps({"config": self.model.config(), "layout": lay.entries})
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"
        # The worker imports this very copy of scratchcnn (a checkout on sys.path, too).
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        env[modes.ENV] = modes.mode()
        self._procs = []
        for k in range(1, self.parts):
            code = (
                "from scratchcnn.parallel.procsplit import _worker_main; "
                f"_worker_main({fd}, {k}, {os.getpid()})"
            )
            proc = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                pass_fds=(fd,),
                env=env,
            )
            assert proc.stdin is not None
            self._procs.append(proc)
            try:
                proc.stdin.write(header.encode())
                proc.stdin.close()
            except BrokenPipeError:  # it died at once: reported below
                pass
        self._finalizer = weakref.finalize(self, _stop, self._procs, self._views["ctl"])
        ctl = self._views["ctl"]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(ctl[k, _READY] for k in range(1, self.parts)):
            self._check_alive()
            if time.monotonic() > deadline:
                self.close()
                raise SplitWorkerError(
                    f"a split worker did not start within {START_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.002)
        for k in range(1, self.parts):
            self._raise_worker_error(k)

    def _check_alive(self) -> None:
        for k, proc in enumerate(self._procs, start=1):
            code = proc.poll()
            if code is not None:
                self._views["ctl"][0, _ABORT] = 1
                self.close()
                how = f"signal {-code}" if code < 0 else f"status {code}"
                raise SplitWorkerError(
                    f"split worker {k} (pid {proc.pid}) ended with {how} during a step; "
                    "set SCRATCHCNN_SPLIT=threads to split over threads instead"
                )

    def _raise_worker_error(self, k: int) -> None:
        ctl = self._views["ctl"]
        if ctl[k, _STATUS] != 1:
            return
        data = bytes(self._views[f"err{k}"][: int(ctl[k, _ERRLEN])])
        try:
            exc = pickle.loads(data)  # written by our own worker process, in our own format
        except Exception:
            exc = SplitWorkerError(f"split worker {k} failed: {data[:500]!r}")
        raise exc

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._procs = []
        # The mapping goes when its last view does (closing it with views alive would fail).
        self._views = {}
        self._mm = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._key = None

    # --- one call ---------------------------------------------------------------------------
    def _post(self, kind: int, slices: list[slice], x: np.ndarray, arrays: list[np.ndarray]) -> int:
        v, ctl = self._views, self._views["ctl"]
        # Workers are idle once they report the last call done (after an error here, they
        # may still be on their way out of it).
        self._wait(_DONE, int(ctl[0, _JOB]))
        ctl[:, _ARRIVE] = 0
        for a, shared in zip(arrays, self._state_views, strict=True):
            np.copyto(shared, a)
        seq = int(ctl[0, _JOB]) + 1
        ctl[0, _ABORT] = 0
        for k in range(1, self.parts):
            s = slices[k]
            n = s.stop - s.start
            np.copyto(v[f"x{k}"][:n], x[s])
            ctl[k, _KIND], ctl[k, _N], ctl[k, _TRAIN] = kind, n, int(self.model.training)
            ctl[k, _STATUS] = 0
        ctl[0, _JOB] = seq  # last: workers start when they see it
        return seq

    def _wait(self, col: int, seq: int) -> None:
        ctl = self._views["ctl"]
        rows = ctl[1:, col]
        spin = _Spin(self._check_alive)
        spin.until(lambda: rows.min() >= seq)

    def _run_local(self, fn: Any) -> Any:
        """Run slice 0 here with BatchNorm totalled over the processes; on an error, set
        the abort flag, so no worker keeps waiting for us at a barrier."""
        ctl = self._views["ctl"]

        def check() -> None:
            self._check_alive()
            for k in range(1, self.parts):
                if ctl[k, _STATUS] == 1:
                    raise _PeerFailed(k)

        member = _ProcSync(ctl, self._views["sync"], 0, _Spin(check))
        try:
            with batch_statistics(member):
                return fn()
        except BaseException:
            ctl[0, _ABORT] = 1
            raise

    @contextmanager
    def _call(self, kind: int, x: np.ndarray, slices: list[slice]) -> Iterator[int]:
        """One call: workers (re)started if needed, the job posted; a worker's failure is
        raised here, and an error here (or Ctrl-C) releases the workers."""
        with self._lock:
            arrays = self._ensure(x, max(s.stop - s.start for s in slices[1:]))
            seq = self._post(kind, slices, x, arrays)
            try:
                yield seq
            except _PeerFailed as exc:
                self._finish_failed(seq, exc.k)
            except BaseException:
                self._release(seq)
                raise
            for k in range(1, self.parts):
                self._raise_worker_error(k)

    def _outputs(self, slices: list[slice]) -> list[np.ndarray]:
        """The workers' logits, as views of the shared memory."""
        return [
            self._views[f"out{k}"][: slices[k].stop - slices[k].start] for k in range(1, self.parts)
        ]

    def forward(self, x: np.ndarray, slices: list[slice]) -> np.ndarray:
        with self._call(_KIND_FORWARD, x, slices) as seq:
            mine = self._run_local(lambda: self.model.forward(x[slices[0]]))
            self._wait(_DONE, seq)
        return np.concatenate([mine, *self._outputs(slices)])

    def step(self, x: np.ndarray, y: Any, targets: Any, slices: list[slice]) -> tuple[float, Any]:
        with self._call(_KIND_STEP, x, slices) as seq:
            ctl = self._views["ctl"]
            mine = self._run_local(lambda: self.model.forward(x[slices[0]]))
            self._wait(_FWD, seq)
            for k in range(1, self.parts):
                self._raise_worker_error(k)
            logits = np.concatenate([mine, *self._outputs(slices)])
            loss_fn = loss_route(self.loss_fn)
            loss = loss_fn.forward(logits, targets(logits, y))
            finite = bool(np.isfinite(loss))
            if finite:
                dy = loss_fn.backward()
                for k in range(1, self.parts):
                    s = slices[k]
                    np.copyto(self._views[f"dy{k}"][: s.stop - s.start], dy[s])
            for k in range(1, self.parts):
                ctl[k, _DY] = seq if finite else -seq
            if finite:
                d0 = dy[slices[0]]
                self._run_local(lambda: self.model.backward(d0, input_grad=False))
            self._wait(_DONE, seq)
        if finite:
            for views in self._grad_views:
                for (layer, name), g in zip(self._grad_list, views, strict=True):
                    layer.grads[name] += g
        return loss, logits

    def _release(self, seq: int) -> None:
        """An error (or Ctrl-C) here, mid-call: let every worker stop waiting for us; the
        next call waits until they have."""
        ctl = self._views.get("ctl")
        if ctl is None:  # closed meanwhile (a worker died)
            return
        ctl[0, _ABORT] = 1
        for j in range(1, self.parts):
            ctl[j, _DY] = -seq

    def _finish_failed(self, seq: int, k: int) -> None:
        """Worker k failed mid-call: release the others, wait for all, raise k's error."""
        self._release(seq)
        self._wait(_DONE, seq)
        self._raise_worker_error(k)
        raise SplitWorkerError(f"split worker {k} failed")


# --- reuse across BatchSplits ------------------------------------------------------------------
# ``fit`` makes a BatchSplit per epoch and ``evaluate`` one per call; starting workers takes
# about a second each time. A closed BatchSplit therefore parks its workers here, keyed by
# its model, for the next BatchSplit of that model; parked workers nap, hold only a weak
# reference to the model, and end when the model is garbage-collected, at ``shutdown()``,
# or at exit.
_IDLE: dict[tuple[int, int], ProcessSplit] = {}
_IDLE_LOCK = threading.Lock()


def acquire(model: Any, loss_fn: Any, parts: int) -> ProcessSplit:
    """Parked workers for ``model`` and ``parts``, or a new (not yet started) split."""
    with _IDLE_LOCK:
        ps = _IDLE.pop((id(model), parts), None)
    if ps is not None:
        if ps._model_ref is not None and ps._model_ref() is model:
            ps.model, ps.loss_fn, ps._model_ref = model, loss_fn, None
            return ps
        ps.close()  # the id of a model that is gone, reused
    return ProcessSplit(model, loss_fn, parts)


def release(ps: ProcessSplit) -> None:
    """Park ``ps``'s workers (or close it, if it has none running)."""
    if not ps._procs:
        ps.close()
        return
    model = ps.model
    key = (id(model), ps.parts)
    ps._model_ref, ps.model = weakref.ref(model, lambda _ref: _discard(key, ps)), None
    with _IDLE_LOCK:
        old = _IDLE.pop(key, None)
        _IDLE[key] = ps
    if old is not None and old is not ps:
        old.close()


def _discard(key: tuple[int, int], ps: ProcessSplit) -> None:
    with _IDLE_LOCK:
        if _IDLE.get(key) is not ps:
            return
        del _IDLE[key]
    ps.close()


def shutdown() -> None:
    """End every parked worker now."""
    with _IDLE_LOCK:
        parked = list(_IDLE.values())
        _IDLE.clear()
    for ps in parked:
        ps.close()


class _PeerFailed(Exception):
    def __init__(self, k: int) -> None:
        super().__init__(k)
        self.k = k


def _stop(procs: list[subprocess.Popen], ctl: np.ndarray) -> None:
    """Tell the workers to exit, then make sure they have (at most 2 s)."""
    try:
        for k in range(1, len(procs) + 1):
            ctl[k, _KIND] = _KIND_STOP
        ctl[0, _JOB] += 1
        ctl[0, _ABORT] = 1
    except (ValueError, TypeError):  # the mapping is already gone
        pass
    deadline = time.monotonic() + 2.0
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the worker process ------------------------------------------------------------------------
def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass


def _worker_main(fd: int, k: int, parent: int) -> None:
    import mmap

    _die_with_parent()
    # Ctrl-C reaches the whole process group: the caller handles it (and closes us).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    header = json.loads(sys.stdin.buffer.read().decode())
    from ..nn.layers.sequential import Sequential

    lay = _Layout()
    lay.entries = header["layout"]
    size = os.fstat(fd).st_size
    mm = mmap.mmap(fd, size)
    v = lay.views(mm)
    ctl = v["ctl"]
    model = Sequential.from_config(header["config"])
    leaves = list(_leaves(model))
    for j, (layer, store, key) in enumerate(_state_slots(leaves)):
        getattr(layer, store)[key] = v[f"state{j}"]
    names = _grad_names(model, leaves)

    def check() -> None:
        if ctl[0, _ABORT]:
            raise _Aborted
        if os.getppid() != parent:
            os._exit(3)

    spin = _Spin(check)
    # Fault injection for the tests only: "raise" (an error in the slice) or "exit" (death).
    fault = os.environ.get(FAULT_ENV, "")
    ctl[k, _READY] = 1
    seen = int(ctl[0, _JOB])
    while True:
        # Wait for the next call: spin a while, then nap (nothing to do between epochs).
        t0, nap = time.monotonic(), 1e-4
        while int(ctl[0, _JOB]) <= seen:
            if time.monotonic() - t0 > IDLE_SPIN_S:
                time.sleep(nap)  # naps grow to 20 ms: 50 wake-ups a second when parked
                nap = min(2 * nap, 0.02)
                if os.getppid() != parent:
                    os._exit(3)
            else:
                os.sched_yield()
        seq = seen = int(ctl[0, _JOB])
        kind = int(ctl[k, _KIND])
        if kind == _KIND_STOP:
            return
        n = int(ctl[k, _N])
        model.train(bool(ctl[k, _TRAIN]))
        member = _ProcSync(ctl, v["sync"], k, spin)
        try:
            if fault == "raise":
                raise RuntimeError(f"injected fault in split worker {k}")
            if fault == "exit":
                os._exit(7)
            with batch_statistics(member):
                out = model.forward(v[f"x{k}"][:n])
                np.copyto(v[f"out{k}"][:n], out)
                if kind == _KIND_STEP:
                    ctl[k, _FWD] = seq
                    spin.until(lambda seq=seq: abs(int(ctl[k, _DY])) >= seq)
                    if int(ctl[k, _DY]) > 0:
                        model.backward(v[f"dy{k}"][:n].copy(), input_grad=False)
                        for i, name in names:
                            np.copyto(v[f"g{k}.{i}.{name}"], leaves[i].grads[name])
        except _Aborted:
            ctl[k, _STATUS] = 2
        except BaseException as exc:
            try:
                data = pickle.dumps(exc)
            except Exception:
                data = pickle.dumps(SplitWorkerError(f"{type(exc).__name__}: {exc}"))
            err = v[f"err{k}"]
            data = data[: len(err)]
            err[: len(data)] = np.frombuffer(data, np.uint8)
            ctl[k, _ERRLEN] = len(data)
            ctl[k, _STATUS] = 1
        finally:
            # Keep the barrier counter in step with the others for the next call.
            ctl[k, _FWD] = max(int(ctl[k, _FWD]), seq)
            ctl[k, _DONE] = seq


class _Aborted(Exception):
    pass
