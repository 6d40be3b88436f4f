"""Where scratchcnn keeps what it can make again: downloaded data sets, decoded images, the
engine's compiled kernels."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$SCRATCHCNN_CACHE_DIR`` (or its older name ``$SCRATCHCNN_CACHE``), else
    ``$XDG_CACHE_HOME/scratchcnn``, else ``~/.cache/scratchcnn``. Each kind of thing gets a
    subfolder of it."""
    env = os.environ.get("SCRATCHCNN_CACHE_DIR") or os.environ.get("SCRATCHCNN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "scratchcnn"
    return Path.home() / ".cache" / "scratchcnn"
