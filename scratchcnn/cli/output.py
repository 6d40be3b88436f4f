"""What the command line prints: a line of output, and the one line of a user error.

Text that came from a file (class names, layer and node names, messages quoting them) may
hold control characters: an ANSI escape sequence would recolour or rewrite the terminal, a
carriage return or newline would forge a line of our output. Everything printed goes
through :func:`printable`, which shows such characters as escapes (``\\x1b``, ``\\n``)
instead of sending them to the terminal.
"""

from __future__ import annotations

import re
import sys
from typing import Any

#: C0 and C1 control characters, DEL, the Unicode line/paragraph separators and the
#: bidirectional overrides (text that reads differently from how it prints).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
#: The same, less the newline and tab of our own multi-line output.
_CONTROL_IN_LINES = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def printable(text: Any, *, keep_newlines: bool = False) -> str:
    """``str(text)`` with every control character written as an escape (``\\x1b[31m`` shows
    as the characters it is made of); with ``keep_newlines`` our own newlines and tabs stay.
    Use it bare on any name that came from a file before it goes into a line."""
    return (_CONTROL_IN_LINES if keep_newlines else _CONTROL).sub(_escaped, str(text))


def say(*parts: Any) -> None:
    """One line on stdout (several if the text holds our own newlines), flushed, control
    characters escaped (progress lines reach a pipe as they happen)."""
    print(printable(" ".join(map(str, parts)), keep_newlines=True), flush=True)


def error(message: Any) -> int:
    """Print ``scratchcnn: error: ...`` as exactly one line on stderr; return status 2."""
    text = " ".join(line.strip() for line in str(message).splitlines()) or "unknown error"
    print(f"scratchcnn: error: {printable(text)}", file=sys.stderr, flush=True)
    return 2
