"""The one check every file from outside passes before it is opened."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from scratchcnn.errors import DataError, os_reason


def regular_file_size(path: Path, kind: str) -> int:
    """The size of ``path`` if it is a regular file, else one DataError line naming ``kind``
    ("an image file", "an IDX file"). Decided from ``stat``, without opening: a folder, a
    FIFO (opening it would block) or a device such as /dev/zero (it never ends) is refused."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected {kind})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({os_reason(exc)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{path}: is a directory, expected {kind}")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path}: not a regular file (a device, FIFO or socket), expected {kind}")
    return st.st_size
