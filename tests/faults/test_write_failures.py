"""Writes that fail (disk full, file too large, folder not writeable): one line naming the
file, and the checkpoint on disk stays the last complete one, with no temporary file left."""

from __future__ import annotations

import errno
import os
import signal
import sys

import pytest

import scratchcnn as sc
from scratchcnn.checkpoint.npz import atomic_write_bytes
from scratchcnn.data import load_dataset
from scratchcnn.errors import FileWriteError
from scratchcnn.nn.zoo import shapes_net
from scratchcnn.training import fit

from .conftest import cli, error_line, run, run_cli, temp_files


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    saved = {}

    def disk_fills_up(metrics):
        saved[metrics.epoch] = (tmp_path / "model.npz").read_bytes()

        def no_space(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", no_space)

    with pytest.raises(FileWriteError) as err:
        fit(
            shapes_net(seed=0),
            load_dataset("shapes", "train")[:64],
            epochs=3,
            batch_size=32,
            out_dir=tmp_path,
            on_epoch_end=disk_fills_up,
            progress=False,
        )
    assert str(err.value) == (
        f"{tmp_path / 'model.npz'}: cannot write it (No space left on device); the file on "
        "disk, if any, is unchanged"
    )
    assert isinstance(err.value, OSError) and isinstance(err.value, sc.ScratchCNNError)
    monkeypatch.undo()
    assert (tmp_path / "model.npz").read_bytes() == saved[1]
    assert sc.load_checkpoint(tmp_path / "model.npz").epoch == 1
    assert temp_files(tmp_path) == []


def test_a_failing_writer_callback_leaves_nothing_behind(tmp_path):
    (tmp_path / "x.txt").write_text("old")

    def half_then_fail(fh):
        fh.write(b"new but")
        raise ValueError("serialisation failed")

    with pytest.raises(ValueError, match="serialisation failed"):
        atomic_write_bytes(tmp_path / "x.txt", half_then_fail)
    assert (tmp_path / "x.txt").read_text() == "old"
    assert temp_files(tmp_path) == []


def _limit_file_size() -> None:  # runs in the child, before exec
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics are Linux's")
def test_file_too_large_through_the_command_line(tmp_path):
    """A real process whose files may not exceed 200 kB: LeNet's checkpoint (with momentum,
    about 500 kB) cannot be written; the run stops with one line, the last checkpoint stays."""
    out = tmp_path / "run"
    quick = ["train", "--limit", "128", "--quiet", "--out", out]
    assert run_cli(*quick, "--epochs", "1").returncode == 0
    before = (out / "model.npz").read_bytes()
    assert len(before) > 200_000
    result = run(cli(*quick, "--epochs", "2", "--resume"), preexec_fn=_limit_file_size)
    assert error_line(result) == (
        f"scratchcnn: error: {out / 'model.npz'}: cannot write it (File too large); the file on "
        "disk, if any, is unchanged"
    )
    assert (out / "model.npz").read_bytes() == before
    assert temp_files(out) == []


def test_read_only_output_folder(tmp_path, monkeypatch, capsys):
    """A folder the user may not write to. Root may write anywhere, so instead of chmod the
    operating system's refusal is simulated where every write starts (creating the temp file)."""
    import tempfile

    from scratchcnn.cli import main

    out = tmp_path / "ro"
    out.mkdir()

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code = main(["train", "--limit", "64", "--epochs", "1", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(
        f"scratchcnn: error: {out / 'run.json'}: cannot write it (Permission denied"
    )
    assert len(err.strip().splitlines()) == 1
    assert list(out.iterdir()) == []
