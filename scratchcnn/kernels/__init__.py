"""Optional compiled kernels for the memory-bound passes; NumPy stays the reference.

Most of a CNN step that is not a matrix product is a handful of sweeps over the activations:
BatchNorm's sums and its normalisation, max pooling and its scatter, ReLU's mask, the window
copy before each convolution's GEMM, its weight reorders and bias, the softmax
cross-entropy over the logits. In NumPy each sweep is one or more array operations, each a
full pass over memory with a temporary, a Python call and (for two threads splitting a
batch) a trip through the GIL. With the ``fast`` extra installed (``pip install
'scratchcnn[fast]'``, which brings numba), the layers run those sweeps as small compiled
loops instead: one pass where NumPy needs several, no temporaries, and the GIL released for
the whole loop. The formulas are the same; only the
order of float additions differs, so results agree with the NumPy path to float rounding
(tests/test_kernels.py checks every kernel against it) and stay deterministic run to run.

Which path runs is chosen by the environment variable ``SCRATCHCNN_KERNELS``:

- ``auto`` (default): the compiled kernels if numba can be imported, else NumPy;
- ``numpy``: always the NumPy reference (what to use when comparing or teaching);
- ``numba``: the compiled kernels, and an error naming the extra if numba is missing.

``set_mode`` and the ``using`` context manager change it from Python. The kernels are
compiled on first use (a few seconds, once) and cached on disk by numba, so later processes
start at once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import numpy as np

from ..errors import ConfigError

ENV = "SCRATCHCNN_KERNELS"
MODES = ("auto", "numpy", "numba")
#: Shortest innermost run for which a compiled loop vectorises well enough to beat NumPy
#: (measured on max pooling: at 8 it loses, at 16 it wins).
MIN_VECTOR = 16
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

_lock = threading.Lock()
_mode: str | None = None  # None: read ENV on first use
_compiled: ModuleType | None = None
_missing: str | None = None  # why numba could not be imported, once tried


def _check_mode(mode: object, where: str) -> str:
    text = str(mode).strip().lower()
    if text not in MODES:
        raise ConfigError(f"{where} must be one of {', '.join(MODES)}, got {mode!r}")
    return text


def mode() -> str:
    """The kernel mode in force: ``auto``, ``numpy`` or ``numba``."""
    global _mode
    if _mode is None:
        _mode = _check_mode(os.environ.get(ENV, "auto") or "auto", ENV)
    return _mode


def set_mode(new: str) -> None:
    """Choose the kernels for this process (see the module docstring)."""
    global _mode
    new = _check_mode(new, "kernel mode")
    if new == "numba":
        _load(required=True)
    _mode = new


@contextmanager
def using(new: str) -> Iterator[None]:
    """Run a block with the given kernel mode, then restore the previous one."""
    old = mode()
    set_mode(new)
    try:
        yield
    finally:
        set_mode(old)


def _load(required: bool) -> ModuleType | None:
    global _compiled, _missing
    if _compiled is None and _missing is None:
        with _lock:
            if _compiled is None and _missing is None:
                try:
                    from . import _numba
                except ImportError as exc:  # numba absent, or too old for this NumPy
                    _missing = str(exc)
                except Exception as exc:  # e.g. numba finds no writable cache directory
                    _missing = f"{type(exc).__name__}: {exc}"
                else:
                    _compiled = _numba
    if _compiled is None and required:
        raise ConfigError(
            f"compiled kernels need numba: pip install 'scratchcnn[fast]' ({_missing}), "
            f"or set {ENV}=numpy"
        )
    return _compiled


def active() -> ModuleType | None:
    """The compiled kernel module when it is to be used, else None (use NumPy)."""
    m = mode()
    if m == "numpy":
        return None
    return _load(required=m == "numba")


def for_dtype(dtype: np.dtype) -> ModuleType | None:
    """``active()``, for arrays of ``dtype``: the kernels handle float32 and float64 only."""
    return active() if dtype in _FLOATS else None


def compiled() -> ModuleType:
    """The compiled kernel module whatever the mode (for the backward of a forward that
    used it); an error naming the extra if numba is missing."""
    module = _load(required=True)
    assert module is not None
    return module


def available() -> bool:
    """Whether numba can be imported here (whatever the mode)."""
    return _load(required=False) is not None
