"""Run the scratchcnn command line, but freeze inside one checkpoint write, to be killed there.

Used by test_kill_resume.py as ``python tests/faults/pause_in_write.py train ...``. The
product code runs unchanged; only ``scratchcnn.checkpoint.npz.atomic_write_bytes`` is wrapped
for the
``PAUSE_AT``-th write of ``model.npz`` (1-based). ``PAUSE_MODE`` says where it freezes:

* ``mid-write``: half of the checkpoint's bytes are in the temporary file;
* ``before-rename``: the temporary file is complete and flushed, not yet renamed over
  ``model.npz``.

When frozen it writes its PID to the file ``PAUSE_FLAG`` and sleeps; if nobody kills it
within a minute it exits with status 99.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

import scratchcnn.checkpoint.npz as sio
from scratchcnn.cli import main

PAUSE_AT = int(os.environ["PAUSE_AT"])
PAUSE_MODE = os.environ["PAUSE_MODE"]
PAUSE_FLAG = Path(os.environ["PAUSE_FLAG"])
assert PAUSE_MODE in ("mid-write", "before-rename"), PAUSE_MODE

_real_atomic_write = sio.atomic_write_bytes
_writes = 0


def _freeze() -> None:
    PAUSE_FLAG.write_text(str(os.getpid()))
    time.sleep(60)
    os._exit(99)


def _atomic_write(path: Any, write: Any) -> None:
    global _writes
    if Path(path).name != "model.npz":
        return _real_atomic_write(path, write)
    _writes += 1
    if _writes != PAUSE_AT:
        return _real_atomic_write(path, write)

    def frozen_write(fh: IO[bytes]) -> None:
        if PAUSE_MODE == "mid-write":
            buf = io.BytesIO()
            write(buf)
            data = buf.getvalue()
            fh.write(data[: len(data) // 2])
        else:
            write(fh)
        fh.flush()
        os.fsync(fh.fileno())
        _freeze()

    return _real_atomic_write(path, frozen_write)


sio.atomic_write_bytes = _atomic_write  # save() looks it up at call time

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
