"""The ``scratchcnn`` command line: train, evaluate, predict, info, explain, filters, plot,
export, import. One module per group of commands (``train``, ``checkpoints``,
``pictures``, ``onnx``), the parser in ``parser``. The command line only parses and
reports; the work is in the packages below it.

A user error (bad argument, missing or malformed file, diverged training) prints one line
``scratchcnn: error: ...`` on stderr and exits with status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from ..errors import ScratchCNNError, os_reason
from .output import error as _error
from .output import printable
from .parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scratchcnn`` command; returns the exit status.

    User errors (``ScratchCNNError``, and operating-system errors about a named file: missing,
    unreadable, disk full) print one line and return 2; anything else is a bug and propagates
    with its traceback."""
    args = build_parser().parse_args(argv)
    try:
        # A warning, ours or a library's (numpy, matplotlib, PIL), is printed as one line of
        # ours when it happens, each distinct one once, with no source line or file path.
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _ShowWarning()
            return args.func(args)
    except ScratchCNNError as exc:
        return _error(exc)
    except BrokenPipeError:
        # The reader of our output went away (`scratchcnn info x.npz | head -1`): not an error
        # worth a traceback. Point stdout at devnull so the interpreter's final flush is quiet.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except OSError as exc:
        if exc.filename is None:  # not about a file the user named: a bug, keep the traceback
            raise
        return _error(f"{exc.filename}: {os_reason(exc)}")
    except KeyboardInterrupt:
        print("scratchcnn: interrupted", file=sys.stderr)
        return 130


class _ShowWarning:
    """``warnings.showwarning`` for the command line: ``scratchcnn: warning: ...``."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        text = " ".join(str(message).split())
        if text not in self.seen:
            self.seen.add(text)
            print(f"scratchcnn: warning: {printable(text)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
