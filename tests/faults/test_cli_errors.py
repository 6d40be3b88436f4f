"""The command line: a user error is one line on stderr and exit status 2, never a traceback;
an internal error (a bug) keeps its traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import scratchcnn.cli.checkpoints as cli_module  # where evaluate / info do their work
from scratchcnn.cli import main
from scratchcnn.errors import DataError

from .conftest import captured_error, child_env, cli, error_line, run, run_cli

QUICK = ["--epochs", "1", "--limit", "64", "--quiet"]


def exit_status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse
        return int(exc.code)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished one-epoch run of shapes_net (fast)."""
    out = tmp_path / "run"
    argv = ["train", "--model", "shapes_net", "--dataset", "shapes", "--quiet", "--out", str(out)]
    assert main([*argv, "--epochs", "1"]) == 0
    return out


def bad_settings(out: Path, text: str | bytes) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    data = text if isinstance(text, bytes) else text.encode()
    (out / "run.json").write_bytes(data)
    return out / "run.json"


@pytest.mark.parametrize(
    "setup,argv,message",
    [
        (
            lambda t: (t / "afile").write_text("x"),
            ["train", *QUICK, "--out", "{t}/afile"],
            "scratchcnn: error: --out {t}/afile: exists and is not a folder; choose another --out",
        ),
        (
            lambda t: (t / "afile").write_text("x"),
            ["train", *QUICK, "--out", "{t}/afile/run"],
            "scratchcnn: error: {t}/afile/run: Not a directory",
        ),
        (
            None,
            ["train", *QUICK, "--seed", "-1"],
            "scratchcnn train: error: argument --seed: expected an integer >= 0, got -1 (see "
            "scratchcnn train --help)",
        ),
        (
            None,
            ["explain", "--seed", "x"],
            "scratchcnn explain: error: argument --seed: expected an integer >= 0, got 'x' (see "
            "scratchcnn explain --help)",
        ),
        (
            lambda t: bad_settings(t / "r", "[]"),
            ["train", "--out", "{t}/r", "--resume", "--quiet"],
            "scratchcnn: error: {t}/r/run.json: the run's settings must be a JSON object, got []",
        ),
        (
            lambda t: bad_settings(t / "r", '{"model": "lenet5", "lr": "fast"}'),
            ["train", "--out", "{t}/r", "--resume", "--quiet"],
            "scratchcnn: error: {t}/r/run.json: bad value 'fast' for 'lr' in the run's settings",
        ),
        (
            lambda t: bad_settings(t / "r", '{"model": "resnet50"}'),
            ["train", "--out", "{t}/r", "--resume", "--quiet"],
            "scratchcnn: error: {t}/r/run.json: bad value 'resnet50' for 'model' in the run's "
            "settings",
        ),
        (
            lambda t: bad_settings(t / "r", '{"modle": "lenet5"}'),
            ["train", "--out", "{t}/r", "--resume", "--quiet"],
            "scratchcnn: error: {t}/r/run.json: unknown setting 'modle' in the run's settings",
        ),
        (
            lambda t: bad_settings(t / "r", '{"model": "len'),
            ["train", "--out", "{t}/r", "--resume", "--quiet"],
            "scratchcnn: error: {t}/r/run.json: cannot read the run's settings (Unterminated "
            "string starting at: line 1 column 11 (char 10))",
        ),
        (
            lambda t: bad_settings(t / "r", b"\xff\xfe{"),
            ["train", "--out", "{t}/r", "--resume", "--quiet"],
            "scratchcnn: error: {t}/r/run.json: cannot read the run's settings ('utf-8' codec "
            "can't decode byte 0xff in position 0: invalid start byte)",
        ),
        (
            lambda t: (t / "img").mkdir(),
            ["filters", "{t}/img"],
            "scratchcnn: error: {t}/img: is a directory, expected an image file",
        ),
    ],
)
def test_user_errors_are_one_line_with_status_2(tmp_path, capsys, setup, argv, message):
    if setup is not None:
        setup(tmp_path)
    argv = [a.replace("{t}", str(tmp_path)) for a in argv]
    assert exit_status(argv) == 2
    assert captured_error(capsys) == message.replace("{t}", str(tmp_path))


def test_user_errors_as_real_processes(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = run_cli("train", *QUICK, "--out", tmp_path / "afile")
    assert error_line(result) == (
        f"scratchcnn: error: --out {tmp_path / 'afile'}: exists and is not a folder; choose "
        "another --out"
    )
    result = run_cli("train", *QUICK, "--seed", "-3")
    assert error_line(result) == (
        "scratchcnn train: error: argument --seed: expected an integer >= 0, got -3 (see "
        "scratchcnn train --help)"
    )
    bad_settings(tmp_path / "r", "[1, 2]")
    result = run_cli("train", "--out", tmp_path / "r", "--resume")
    assert error_line(result) == (
        f"scratchcnn: error: {tmp_path / 'r' / 'run.json'}: the run's settings must be a JSON "
        "object, got [1, 2]"
    )


def test_a_message_with_newlines_is_still_one_line(monkeypatch, capsys, run_dir):
    def fail(*args, **kwargs):
        raise DataError("first line\nsecond line")

    monkeypatch.setattr(cli_module, "load_checkpoint", fail)
    assert main(["info", str(run_dir / "model.npz")]) == 2
    assert captured_error(capsys) == "scratchcnn: error: first line second line"


def test_an_internal_error_keeps_its_traceback(monkeypatch, run_dir):
    def bug(*args, **kwargs):
        raise RuntimeError("internal bug")

    monkeypatch.setattr(cli_module, "evaluate", bug)
    with pytest.raises(RuntimeError, match="internal bug"):
        main(["evaluate", str(run_dir / "model.npz")])
    # An OSError that names no file is not the user's either: it propagates too.
    monkeypatch.setattr(cli_module, "evaluate", lambda *a, **k: (_ for _ in ()).throw(OSError(5)))
    with pytest.raises(OSError):
        main(["evaluate", str(run_dir / "model.npz")])


def test_an_internal_error_shows_a_traceback_as_a_real_process(run_dir):
    code = (
        "import sys, scratchcnn.cli as c, scratchcnn.cli.checkpoints as k\n"
        "def bug(*a, **k):\n"
        "    raise RuntimeError('internal bug')\n"
        "k.evaluate = bug\n"
        f"sys.exit(c.main(['evaluate', {str(run_dir / 'model.npz')!r}]))\n"
    )
    result = run([sys.executable, "-c", code])
    assert result.returncode == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert result.stderr.rstrip().endswith("RuntimeError: internal bug")


def test_keyboard_interrupt_is_one_line(monkeypatch, capsys, run_dir):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "load_checkpoint", interrupted)
    assert main(["info", str(run_dir / "model.npz")]) == 130
    assert capsys.readouterr().err == "scratchcnn: interrupted\n"


def test_a_closed_pipe_is_not_a_traceback(run_dir):
    """`scratchcnn info model.npz | head -0`: the reader is gone before anything is written."""
    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "wb") as stdout:
        result = subprocess.run(
            cli("info", run_dir / "model.npz"),
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=child_env(1),
            timeout=60,
        )
    assert b"Traceback" not in result.stderr, result.stderr.decode()
    assert result.stderr == b""
    assert result.returncode == 141


def test_resume_settings_survive_a_round_trip(tmp_path):
    """run.json as written by train is accepted by the checks on --resume."""
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--out", str(out)]) == 0
    saved = json.loads((out / "run.json").read_text())
    assert saved["limit"] == 64
    argv = ["train", "--epochs", "2", "--limit", "64", "--quiet", "--out", str(out), "--resume"]
    assert main(argv) == 0
