"""Runs many ``scratchcnn`` command lines in ONE process (saving the import time of one
process per case) and reports, per case, the exit status, stdout and stderr, then the
process's peak memory.

    python hostile_driver.py CASES.json RESULT.json

CASES.json is a list of argv lists. Each case runs ``scratchcnn.cli.main(argv)`` with stdout
and stderr captured and a 60-second alarm (a hang fails the case instead of the suite).
RESULT.json: {"cases": [{"argv", "status", "stdout", "stderr"}], "maxrss_kib": int}.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import sys
import traceback

from peak import own_peak_kib


class Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang("no result within 60 s")


def run_case(argv: list[str]) -> dict[str, object]:
    from scratchcnn.cli import main

    out, err = io.StringIO(), io.StringIO()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(argv)
            except SystemExit as exc:  # argparse
                status = exc.code if isinstance(exc.code, int) else 2
            except Hang:
                status = "hang"
            except BaseException:  # a traceback: the case fails, the driver goes on
                traceback.print_exc()
                status = "traceback"
    finally:
        signal.alarm(0)
    return {"argv": argv, "status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as fh:
        cases = json.load(fh)
    results = [run_case(argv) for argv in cases]
    peak = own_peak_kib()  # not ru_maxrss: see peak.py
    with open(sys.argv[2], "w", encoding="utf-8") as fh:
        json.dump({"cases": results, "maxrss_kib": peak}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
