"""Run many ``scratchcnn`` commands in one process and report each one's outcome.

``python tests/faults/cli_driver.py CASES.json`` reads a list of argv lists, runs
``scratchcnn.cli.main(argv)`` for each with stdout/stderr captured and a per-command alarm
(a command that blocks or loops is reported as ``"hang"``, not waited for), and prints one
JSON object: ``{"results": [{"argv", "status", "stderr"}...], "peak_mb": ...}`` where
``peak_mb`` is this process's own peak resident memory (``peak.own_peak_kib``) after all of
them. One process instead of one per command: each start-up costs about a second of imports.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import sys
import traceback

from peak import own_peak_kib

from scratchcnn.cli import main

#: Seconds one command may take before it counts as a hang.
PER_COMMAND_LIMIT = 60


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` swallows it."""


def _alarm(signum, frame):
    raise Hang


def run_one(argv: list[str]) -> dict:
    err, out = io.StringIO(), io.StringIO()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(PER_COMMAND_LIMIT)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                status = main(argv)
            except SystemExit as exc:
                status = exc.code
    except Hang:
        status = "hang"
    except BaseException:  # a traceback: a bug, reported as such
        status = "crash"
        err.write(traceback.format_exc())
    finally:
        signal.alarm(0)
    return {"argv": argv, "status": status, "stderr": err.getvalue()}


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as fh:
        cases = json.load(fh)
    results = [run_one(argv) for argv in cases]
    peak_kb = own_peak_kib()  # not ru_maxrss: see peak.py
    json.dump({"results": results, "peak_mb": peak_kb / 1024}, sys.stdout)
