"""Which of the engine's paths run: ``SCRATCHCNN_KERNELS`` and the compiled kernels.

The engine has three levels, chosen by the environment variable ``SCRATCHCNN_KERNELS``
(or ``set_mode`` / the ``using`` context manager from Python):

- ``auto`` (default): the engine's routes with the compiled kernels of
  ``scratchcnn.engine._numba`` (numba, a core dependency). If numba cannot be loaded
  here, the routes run their NumPy parts and one warning says why.
- ``numpy``: no engine at all: every model runs the reference layers of ``scratchcnn.nn``,
  plain NumPy, one after another as written. The mode for teaching, and the one every
  route is tested against.
- ``numba``: as ``auto``, but an error naming the problem if numba cannot be loaded.

The kernels are compiled on first use (a few seconds, once) and cached on disk by numba
under ``$SCRATCHCNN_CACHE_DIR/numba`` (``~/.cache/scratchcnn/numba``; ``NUMBA_CACHE_DIR``
chooses another place), never inside the installed package, so later processes start at
once.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import numpy as np

from .._cache import cache_root
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
_missing: str | None = None  # why numba could not be loaded, once tried
_warned = False


def _check_mode(mode: object, where: str) -> str:
    text = str(mode).strip().lower()
    if text not in MODES:
        raise ConfigError(f"{where} must be one of {', '.join(MODES)}, got {mode!r}")
    return text


def mode() -> str:
    """The mode in force: ``auto``, ``numpy`` or ``numba``."""
    global _mode
    if _mode is None:
        _mode = _check_mode(os.environ.get(ENV, "auto") or "auto", ENV)
    return _mode


def set_mode(new: str) -> None:
    """Choose the engine's mode for this process (see the module docstring)."""
    global _mode
    new = _check_mode(new, "kernel mode")
    if new == "numba":
        _load(required=True)
    _mode = new


@contextmanager
def using(new: str) -> Iterator[None]:
    """Run a block in the given mode, then restore the previous one."""
    old = mode()
    set_mode(new)
    try:
        yield
    finally:
        set_mode(old)


def _load(required: bool) -> ModuleType | None:
    global _compiled, _missing, _warned
    if _compiled is None and _missing is None:
        with _lock:
            if _compiled is None and _missing is None:
                try:
                    _cache_outside_the_package()
                    from . import _numba
                except ImportError as exc:  # numba absent, or too old for this NumPy
                    _missing = str(exc)
                except Exception as exc:  # e.g. numba finds no writable cache directory
                    _missing = f"{type(exc).__name__}: {exc}"
                else:
                    _compiled = _numba
    if _compiled is None and required:
        raise ConfigError(
            f"the compiled kernels need numba ({_missing}): pip install numba, or set {ENV}=numpy"
        )
    if _compiled is None and not _warned:
        _warned = True
        warnings.warn(
            f"scratchcnn: numba cannot be loaded ({_missing}); the engine runs its NumPy "
            f"paths only (slower). pip install numba, or set {ENV}=numpy to silence this",
            RuntimeWarning,
            stacklevel=3,
        )
    return _compiled


def _cache_outside_the_package() -> None:
    """numba caches compiled kernels next to their source, inside the installed package,
    unless told otherwise; a reinstall then finds stale files there. Unless the user chose a
    place (``NUMBA_CACHE_DIR``), keep them under scratchcnn's cache folder instead:
    ``$SCRATCHCNN_CACHE_DIR/numba`` (set before the kernels are defined, which is when
    numba picks the place)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    import numba

    if not numba.config.CACHE_DIR:
        numba.config.CACHE_DIR = str(cache_root() / "numba")


def engine_on() -> bool:
    """Whether the engine's routes run at all (every mode but ``numpy``)."""
    return mode() != "numpy"


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
    used it); an error naming the problem if numba cannot be loaded."""
    module = _load(required=True)
    assert module is not None
    return module


def available() -> bool:
    """Whether numba can be loaded here (whatever the mode)."""
    global _warned
    quiet, _warned = _warned, True  # asking is not using: no warning
    try:
        return _load(required=False) is not None
    finally:
        _warned = quiet
