"""The process backend of BatchSplit (scratchcnn.parallel.procsplit): the same step as the thread
backend, errors and deaths of workers reported without a hang, no worker left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn import models
from scratchcnn.errors import ConfigError
from scratchcnn.parallel import procsplit
from scratchcnn.parallel.split import BatchSplit, resolve_backend

pytestmark = pytest.mark.skipif(not procsplit.available(), reason="x86-64 Linux only")


@pytest.fixture(autouse=True)
def _three_slices_allowed(monkeypatch):
    """Some cases split a batch into three slices on a two-core machine: they test the
    slicing's arithmetic, not the cap on threads at the core count (tests/test_cli_help.py)."""
    monkeypatch.setattr(sc.parallel.threads, "max_threads", lambda: 4)


def grads(model):
    return [layer.grads[k].copy() for _, layer in model.named_layers() for k in sorted(layer.grads)]


def run(build, backend, threads, x, y, steps=1, lr=0.05):
    """``steps`` SGD steps on (x, y), then inference on x: everything to compare."""
    model = build()
    opt = sc.optim.SGD(model, lr=lr, momentum=0.9)
    out = []
    with BatchSplit(model, sc.CrossEntropyLoss(), threads, backend=backend) as bs:
        for _ in range(steps):
            model.train()
            loss, logits = bs.step(x, y)
            out.append((loss, logits.copy(), grads(model)))
            opt.step()
        model.eval()
        out.append(bs.forward(x))
    state = {k: v.copy() for k, v in model.state_dict().items()}
    return out, state


@pytest.mark.parametrize(
    ("name", "threads", "n"), [("resnet8", 2, 24), ("resnet8", 3, 25), ("lenet5", 2, 19)]
)
def test_processes_compute_what_threads_compute(rng, name, threads, n):
    x = rng.standard_normal((n, 1, 28, 28))
    y = rng.integers(0, 10, n)

    def build():
        return getattr(models, name)(seed=0, dtype=np.float64)

    ref, ref_state = run(build, "threads", threads, x, y, steps=3)
    new, new_state = run(build, "processes", threads, x, y, steps=3)
    for (la, ya, ga), (lb, yb, gb) in zip(ref[:-1], new[:-1], strict=True):
        assert abs(la - lb) <= 1e-12 * abs(la)
        np.testing.assert_allclose(ya, yb, rtol=1e-10, atol=1e-12)
        for a, b in zip(ga, gb, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ref[-1], new[-1], rtol=1e-9, atol=1e-12)
    # Running statistics (updated once, by this process) and the weights after 3 steps.
    for key in ref_state:
        np.testing.assert_allclose(ref_state[key], new_state[key], rtol=1e-9, atol=1e-12)


def test_processes_are_deterministic_and_follow_the_model(rng):
    x = rng.standard_normal((32, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    a, _ = run(lambda: models.resnet8(seed=0), "processes", 2, x, y, steps=2)
    b, _ = run(lambda: models.resnet8(seed=0), "processes", 2, x, y, steps=2)
    for (la, ya, _ga), (lb, yb, _gb) in zip(a[:-1], b[:-1], strict=True):
        assert la == lb
        np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(a[-1], b[-1])
    # The second step saw the optimiser's update: its loss differs from the first's.
    assert a[0][0] != a[1][0]


def test_new_weights_and_bigger_batches_reach_the_workers(rng):
    model = models.lenet5(seed=0, dtype=np.float64)
    x = rng.standard_normal((40, 1, 28, 28))
    with BatchSplit(model, sc.CrossEntropyLoss(), 2, backend="processes") as bs:
        model.eval()
        bs.forward(x[:16])
        model.load_state_dict(models.lenet5(seed=1, dtype=np.float64).state_dict())
        np.testing.assert_allclose(bs.forward(x), model.forward(x), rtol=1e-12, atol=1e-12)


def test_replaced_parameter_arrays_and_dicts_reach_the_workers(rng):
    """The per-call copy looks parameters up by layer and name each call, so an array or a
    whole ``params`` dict put in place of the old one is what the workers see."""
    model = models.lenet5(seed=0, dtype=np.float64).eval()
    x = rng.standard_normal((16, 1, 28, 28))
    other = models.lenet5(seed=1, dtype=np.float64)
    with BatchSplit(model, sc.CrossEntropyLoss(), 2, backend="processes") as bs:
        bs.forward(x)
        model.layers[0].params["weight"] = other.layers[0].params["weight"].copy()
        model.layers[-1].params = {k: v.copy() for k, v in other.layers[-1].params.items()}
        np.testing.assert_allclose(bs.forward(x), model.forward(x), rtol=1e-12, atol=1e-12)


def test_an_error_in_a_worker_is_raised_here_and_the_next_call_works(rng, monkeypatch):
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    monkeypatch.setenv(procsplit.FAULT_ENV, "raise")
    model = models.resnet8(seed=0)
    with BatchSplit(model, sc.CrossEntropyLoss(), 2, backend="processes") as bs:
        with pytest.raises(RuntimeError, match="injected fault in split worker 1"):
            bs.step(x, y)
        monkeypatch.delenv(procsplit.FAULT_ENV)
        bs._procs.close()  # new workers, without the fault
        loss, _ = bs.step(x, y)
        assert np.isfinite(loss)


def test_a_worker_that_dies_gives_one_error_not_a_hang(rng, monkeypatch):
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    model = models.resnet8(seed=0)
    with BatchSplit(model, sc.CrossEntropyLoss(), 2, backend="processes") as bs:
        bs.step(x, y)
        worker = bs._procs._procs[0]
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        with pytest.raises(procsplit.SplitWorkerError, match=r"split worker 1 .* signal 9"):
            bs.step(x, y)
        loss, _ = bs.step(x, y)  # a fresh worker takes over
        assert np.isfinite(loss)
    monkeypatch.setenv(procsplit.FAULT_ENV, "exit")
    with BatchSplit(models.resnet8(seed=0), sc.CrossEntropyLoss(), 2, backend="processes") as bs:
        with pytest.raises(procsplit.SplitWorkerError, match="status 7"):
            bs.step(x, y)


def test_an_error_here_releases_the_workers(rng):
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    model = models.resnet8(seed=0)
    with BatchSplit(model, sc.CrossEntropyLoss(), 2, backend="processes") as bs:
        bs.step(x, y)
        layer = model.layers[3]  # a block after the first BatchNorm: the workers wait there
        real = layer.forward

        def fail(z):
            raise ValueError("boom here")

        layer.forward = fail
        with pytest.raises(ValueError, match="boom here"):
            bs.step(x, y)
        layer.forward = real
        loss, _ = bs.step(x, y)
        assert np.isfinite(loss)


def test_close_ends_the_workers_and_so_does_our_death(tmp_path):
    model = models.lenet5(seed=0)
    bs = BatchSplit(model, sc.CrossEntropyLoss(), 2, backend="processes")
    model.eval()
    bs.forward(np.zeros((16, 1, 28, 28), np.float32))
    procs = list(bs._procs._procs)
    bs.close()  # parked for the next split of this model (fit makes one per epoch)
    assert all(p.poll() is None for p in procs)
    with BatchSplit(model, sc.CrossEntropyLoss(), 2, backend="processes") as again:
        again.forward(np.zeros((16, 1, 28, 28), np.float32))
        assert again._procs._procs == procs  # the same workers, no new start
    procsplit.shutdown()
    assert all(p.wait(timeout=5) is not None for p in procs)
    # Parked workers end with their model.
    bs = BatchSplit(model, sc.CrossEntropyLoss(), 2, backend="processes")
    bs.forward(np.zeros((16, 1, 28, 28), np.float32))
    procs = list(bs._procs._procs)
    bs.close()
    del bs, model, again
    import gc

    gc.collect()
    assert all(p.wait(timeout=5) is not None for p in procs)
    # A parent killed outright takes its workers with it.
    script = textwrap.dedent(
        """
        import os, sys, time, numpy as np
        import scratchcnn as sc
        from scratchcnn import models
        from scratchcnn.parallel.split import BatchSplit
        m = models.lenet5(seed=0); m.eval()
        bs = BatchSplit(m, sc.CrossEntropyLoss(), 2, backend="processes")
        bs.forward(np.zeros((16, 1, 28, 28), np.float32))
        print(bs._procs._procs[0].pid, flush=True)
        time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the worker outlived its parent")


def test_backend_choice_is_validated(monkeypatch):
    monkeypatch.setenv("SCRATCHCNN_SPLIT", "fibres")
    with pytest.raises(ConfigError, match="SCRATCHCNN_SPLIT must be one of auto, threads"):
        resolve_backend()
    monkeypatch.setenv("SCRATCHCNN_SPLIT", "Threads")
    assert resolve_backend() == "threads"
    monkeypatch.delenv("SCRATCHCNN_SPLIT")
    assert resolve_backend() == "processes"  # auto, here
    with pytest.raises(ConfigError, match="backend must be one of"):
        resolve_backend("gpu")


def test_custom_layers_stay_on_threads(rng):
    class Twice(sc.Layer):
        def forward(self, x):
            return 2 * x

        def backward(self, dy):
            return 2 * dy

    model = sc.Sequential([Twice(), *models.lenet5(seed=0).layers])
    model.eval()
    with BatchSplit(model, sc.CrossEntropyLoss(), 2, backend="processes") as bs:
        x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
        np.testing.assert_allclose(bs.forward(x), model.forward(x), rtol=1e-5, atol=1e-6)
        assert bs._procs is None  # no worker started


def test_workers_that_cannot_start_fall_back_to_threads(rng, monkeypatch):
    def no_memfd(*args):
        raise OSError("memfd_create: function not implemented")

    monkeypatch.setattr(os, "memfd_create", no_memfd)
    model = models.lenet5(seed=0, dtype=np.float64)
    x = rng.standard_normal((16, 1, 28, 28))
    y = rng.integers(0, 10, 16)
    with BatchSplit(model, sc.CrossEntropyLoss(), 2, backend="processes") as bs:
        with pytest.warns(RuntimeWarning, match="could not start: memfd_create.*threads instead"):
            loss, _ = bs.step(x, y)
        assert bs.backend == "threads" and np.isfinite(loss)
        bs.step(x, y)  # no second warning: pytest's default would show it; and it works


@pytest.mark.parametrize("where", ["loss", "backward"])
def test_an_interrupt_between_the_phases_leaves_no_worker_waiting(rng, where):
    # Ctrl-C in a notebook arrives anywhere: in the loss, while the worker waits for its
    # rows of dL/dlogits, or in this process's own backward while the worker runs its
    # rows. The next call must not hang on that worker.
    import faulthandler

    faulthandler.dump_traceback_later(120, exit=True)  # a hang fails loudly, not silently
    try:
        x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, 16)
        loss_fn = sc.CrossEntropyLoss()
        model = models.lenet5(seed=0)
        with BatchSplit(model, loss_fn, 2, backend="processes") as bs:
            if where == "loss":
                owner, name = loss_fn, "forward"
            else:
                owner, name = model.layers[-1], "backward"
            real = getattr(owner, name)

            def interrupted(*args, **kwargs):
                raise KeyboardInterrupt

            setattr(owner, name, interrupted)
            with pytest.raises(KeyboardInterrupt):
                bs.step(x, y)
            setattr(owner, name, real)
            loss, _ = bs.step(x, y)
            assert np.isfinite(loss)
    finally:
        faulthandler.cancel_dump_traceback_later()
