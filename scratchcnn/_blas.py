"""The BLAS's thread count: read it and set it for a block (threadpoolctl, the library
handles looked up once). Below everything that needs it: the engine (an inference plan
splits a batch over the threads the BLAS was given) and ``parallel.threads`` (which chooses
the count for every entry point)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_LIBS: list[Any] | None = None


def blas_libraries() -> list[Any]:
    """threadpoolctl's controllers of the BLAS libraries loaded in this process, looked up
    once (looking them up again costs more than a small step: 21 against 9.5 us a call)."""
    global _LIBS
    if _LIBS is None:
        from threadpoolctl import ThreadpoolController

        _LIBS = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _LIBS


def current_blas_threads() -> int | None:
    """The smallest thread count among the BLAS libraries loaded (None if none is seen)."""
    counts = [n for n in (lib.num_threads for lib in blas_libraries()) if n is not None]
    return min(counts) if counts else None


@contextmanager
def blas_threads(n: int) -> Iterator[int]:
    """Within this block the BLAS runs ``n`` threads; afterwards, what it ran before.
    Nothing is set where it runs ``n`` already."""
    changed = []
    try:
        for lib in blas_libraries():
            old = lib.num_threads
            if old is not None and old != n:
                lib.set_num_threads(n)
                changed.append((lib, old))
        yield n
    finally:
        for lib, old in changed:
            lib.set_num_threads(old)
