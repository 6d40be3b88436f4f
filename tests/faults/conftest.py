"""Helpers of the fault-injection suite: real ``python -m scratchcnn`` processes with the
BLAS thread count pinned, and checks of the one-line error contract."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import scratchcnn as sc

#: Variables that set the thread count of every BLAS numpy may be built against.
THREAD_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

#: A small run with several checkpoints: LeNet-5 on 512 images of mnist-5k, 4 epochs.
SMALL_RUN = ("train", "--limit", "512", "--epochs", "4", "--batch-size", "32", "--quiet")


def child_env(threads: int = 1, **extra: str) -> dict[str, str]:
    """The environment of a child process: BLAS threads pinned, no colour or pager tricks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    for var in THREAD_VARS:
        env[var] = str(threads)
    env["SCRATCHCNN_NUM_THREADS"] = str(threads)  # or the CLI would choose per workload
    env.update(extra)
    return env


def cli(*args: Any) -> list[str]:
    """argv of ``python -m scratchcnn ARGS``."""
    return [sys.executable, "-m", "scratchcnn", *map(str, args)]


def run(
    argv: Sequence[str], *, threads: int = 1, timeout: float = 120, **kwargs: Any
) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        env=kwargs.pop("env", None) or child_env(threads),
        timeout=timeout,
        **kwargs,
    )


def run_cli(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess:
    return run(cli(*args), **kwargs)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one stderr line of a user error, after checking exit status 2 and no traceback."""
    err = result.stderr
    assert "Traceback" not in err, err
    assert result.returncode == 2, (result.returncode, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def captured_error(capsys: Any) -> str:
    """The same check for an in-process ``main()`` call, from pytest's capsys."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def checkpoint_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a checkpoint, read through ``load_checkpoint``: weights and buffers
    (``model/...``) and optimiser buffers (``optim/...``)."""
    ckpt = sc.load_checkpoint(path)
    arrays = {f"model/{k}": v for k, v in ckpt.model.state_dict().items()}
    if ckpt.optimizer_state is not None:
        arrays.update({f"optim/{k}": v for k, v in ckpt.optimizer_state["buffers"].items()})
    return arrays


def assert_bit_identical(a: Path, b: Path) -> None:
    """Two checkpoints hold the same arrays, bit for bit, and the same training state."""
    xa, xb = checkpoint_arrays(a), checkpoint_arrays(b)
    assert sorted(xa) == sorted(xb)
    for key in xa:
        assert xa[key].dtype == xb[key].dtype, key
        np.testing.assert_array_equal(xa[key], xb[key], err_msg=key, strict=True)
        assert xa[key].tobytes() == xb[key].tobytes(), key  # bit for bit: 0.0 is not -0.0
    ca, cb = sc.load_checkpoint(a), sc.load_checkpoint(b)
    assert ca.epoch == cb.epoch
    assert ca.optimizer_state["steps"] == cb.optimizer_state["steps"]
    assert ca.optimizer_state["hyper"] == cb.optimizer_state["hyper"]
    assert ca.scheduler_state == cb.scheduler_state
    assert ca.rng == cb.rng  # the data loader's generator: same future shuffles


def temp_files(folder: Path) -> list[Path]:
    """Temporary files an atomic writer leaves while it runs (or when killed)."""
    return sorted(folder.glob(".*.tmp"))


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """``SMALL_RUN`` run once, uninterrupted, with one BLAS thread: the run folder and its wall
    time in seconds. Every resumed or repeated run must end with exactly its weights."""
    out = tmp_path_factory.mktemp("reference")
    start = time.perf_counter()
    result = run_cli(*SMALL_RUN, "--out", out)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    return out, elapsed
