"""What the command line prints: a line of output, and the one line of a user error."""

from __future__ import annotations

import sys
from typing import Any


def say(*parts: Any) -> None:
    """One line on stdout, flushed (progress lines reach a pipe as they happen)."""
    print(*parts, flush=True)


def error(message: Any) -> int:
    """Print ``scratchcnn: error: ...`` as exactly one line on stderr; return status 2."""
    text = " ".join(line.strip() for line in str(message).splitlines()) or "unknown error"
    print(f"scratchcnn: error: {text}", file=sys.stderr, flush=True)
    return 2
