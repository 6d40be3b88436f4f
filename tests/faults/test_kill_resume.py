"""Kill -9 during training, at random points and inside a checkpoint write, then --resume:
the run finishes with weights bit-identical to an uninterrupted run, and the checkpoint on
disk is always the last complete one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import scratchcnn as sc

from .conftest import (
    SMALL_RUN,
    assert_bit_identical,
    child_env,
    cli,
    run_cli,
    temp_files,
)

PAUSER = Path(__file__).with_name("pause_in_write.py")

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and PIDs are POSIX's")


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(out: Path, ref: Path, epochs: int = 4) -> None:
    assert_bit_identical(out / "model.npz", ref / "model.npz")
    got, want = metrics(out), metrics(ref)
    assert [m["epoch"] for m in got] == list(range(1, epochs + 1))
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"):
        assert [m[key] for m in got] == [m[key] for m in want], key
    assert temp_files(out) == [], "a killed writer's temporary file was left behind"


def checkpoint_epoch(out: Path) -> int:
    """Epoch of the checkpoint on disk (0: none yet); it must always load."""
    path = out / "model.npz"
    return sc.load_checkpoint(path).epoch if path.exists() else 0


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path, reference):
    ref, elapsed = reference
    # Where the time goes in the reference run: start-up, then each epoch (train + test).
    per_epoch = [m["seconds"] for m in metrics(ref)]
    startup = max(elapsed - sum(per_epoch), 0.1)
    ends = [sum(per_epoch[:e]) for e in range(len(per_epoch) + 1)]  # training time at epoch e
    # Eight kill points spread over the whole run (negative: during start-up), in training
    # time; each is reached from wherever the last checkpoint left the run.
    rng = random.Random(20240611)
    targets = sorted(rng.uniform(-0.5 * startup, ends[-1]) for _ in range(8))
    out = tmp_path / "run"
    kills, finished, seen = 0, False, []
    for _ in range(40):
        proc = subprocess.Popen(
            cli(*SMALL_RUN, "--out", out, "--resume"),
            env=child_env(1),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if kills < len(targets):
            done = ends[checkpoint_epoch(out)]
            delay = startup + max(targets[kills] - done, rng.uniform(-0.5 * startup, 0))
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            epoch = checkpoint_epoch(out)  # after every kill: a complete checkpoint or none
            assert not seen or epoch >= seen[-1]
            seen.append(epoch)
            continue
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err
        finished = True
        break
    assert finished
    assert kills >= 4, f"only {kills} kills landed (checkpoint epochs seen: {seen})"
    assert len(set(seen)) >= 2, f"the kills did not land across epochs: {seen}"
    assert_same_run(out, ref)


def kill_inside_write(
    args: tuple[str, ...], out: Path, flag: Path, write: int, mode: str
) -> tuple[subprocess.Popen, bytes | None]:
    """Run ``scratchcnn ARGS --out OUT`` frozen inside its ``write``-th checkpoint write
    (``mode`` as in pause_in_write.py), SIGKILL it there; returns the dead process and the
    bytes of ``model.npz`` while it was frozen (None if there was none yet)."""
    env = child_env(1, PAUSE_AT=str(write), PAUSE_MODE=mode, PAUSE_FLAG=str(flag))
    proc = subprocess.Popen(
        [sys.executable, str(PAUSER), *args, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the writer never reached the pause"
            time.sleep(0.02)
        path = out / "model.npz"
        before = path.read_bytes() if path.exists() else None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return proc, before


@pytest.mark.parametrize(
    "write,mode",
    [(1, "mid-write"), (3, "mid-write"), (3, "before-rename")],
)
def test_sigkill_inside_a_checkpoint_write(tmp_path, reference, write, mode):
    ref, _ = reference
    out = tmp_path / "run"
    proc, before = kill_inside_write(SMALL_RUN, out, tmp_path / "paused", write, mode)

    # The target is still the previous complete checkpoint (or absent before the first one);
    # the killed writer's temporary file is next to it.
    (tmp,) = temp_files(out)
    assert tmp.name.startswith(f".model.npz.{proc.pid}.")
    if write == 1:
        assert not (out / "model.npz").exists()
    else:
        assert (out / "model.npz").read_bytes() == before
        assert sc.load_checkpoint(out / "model.npz").epoch == write - 1
    if mode == "mid-write":
        with pytest.raises(sc.CheckpointError, match="truncated or corrupt checkpoint"):
            sc.load_checkpoint(tmp)
    else:
        assert sc.load_checkpoint(tmp).epoch == write  # complete, only never renamed

    # The killed run is usable as it is, and --resume finishes it exactly.
    if write > 1:
        info = run_cli("info", out / "model.npz")
        assert info.returncode == 0 and f"epoch: {write - 1}" in info.stdout
    # --resume alone: the run's settings come from its run.json.
    result = run_cli("train", "--out", out, "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    assert_same_run(out, ref)


#: resnet8 (Residual blocks, BatchNorm) with its recipe's augmentation, on a few images.
RESNET_RUN = (
    *("train", "--model", "resnet8", "--limit", "96", "--epochs", "3"),
    *("--batch-size", "32", "--quiet"),
)


@pytest.mark.slow
def test_resnet8_with_augmentation_killed_then_resumed_is_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    result = run_cli(*RESNET_RUN, "--out", ref)
    assert result.returncode == 0, result.stderr
    assert json.loads((ref / "run.json").read_text())["augment"] is True
    out = tmp_path / "run"
    kill_inside_write(RESNET_RUN, out, tmp_path / "paused", 2, "mid-write")
    assert sc.load_checkpoint(out / "model.npz").epoch == 1
    result = run_cli("train", "--out", out, "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    assert_same_run(out, ref, epochs=3)


def test_resume_of_a_finished_run_changes_nothing(tmp_path, reference):
    ref, _ = reference
    out = tmp_path / "run"
    assert run_cli(*SMALL_RUN, "--out", out).returncode == 0
    before = (out / "model.npz").read_bytes()
    result = run_cli(*SMALL_RUN, "--out", out, "--resume")
    assert result.returncode == 0, result.stderr
    assert (out / "model.npz").read_bytes() == before
    assert_same_run(out, ref)


def test_stale_temp_files_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    from scratchcnn.checkpoint.npz import atomic_write_bytes

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "model.npz"
    stale = tmp_path / f".model.npz.{dead.pid}.abcd1234.tmp"
    live = tmp_path / ".model.npz.1.abcd1234.tmp"  # PID 1 always runs
    other = tmp_path / f".metrics.jsonl.{dead.pid}.abcd1234.tmp"  # another file's
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    atomic_write_bytes(target, lambda fh: fh.write(b"new"))
    assert target.read_bytes() == b"new"
    assert not stale.exists()
    assert live.exists() and other.exists()
