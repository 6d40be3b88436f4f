"""Exception types.

Every error caused by the user's input, data or files derives from
:class:`ScratchCNNError`; the command line prints those as one line and exits
with status 2. Anything else is a bug and keeps its traceback.

Each class also derives from the built-in exception a Python user would expect
(``ValueError`` for bad values and shapes, ``TypeError`` for bad dtypes), so
``except ValueError`` keeps working.
"""

from __future__ import annotations


class ScratchCNNError(Exception):
    """Base class of every user-facing error raised by scratchcnn."""


class ShapeError(ScratchCNNError, ValueError):
    """An array has the wrong number of dimensions or the wrong size."""


class DTypeError(ScratchCNNError, TypeError):
    """An array has a dtype the operation cannot take (integer, object, or a
    float type other than the layer's own)."""


class ConfigError(ScratchCNNError, ValueError):
    """A hyper-parameter or constructor argument is invalid."""


class StateError(ScratchCNNError, RuntimeError):
    """An operation was called out of order (for example backward before forward)."""


class DataError(ScratchCNNError, ValueError):
    """A dataset or data file is missing, malformed or inconsistent."""


class CheckpointError(ScratchCNNError, ValueError):
    """A checkpoint file is missing, truncated, corrupt, or not a scratchcnn file."""


class TrainingDiverged(ScratchCNNError, RuntimeError):
    """The training loss became NaN or infinite."""


class FileWriteError(ScratchCNNError, OSError):
    """A file could not be written (disk full, file too large, permission denied, read-only
    file system). Written atomically, the previous version of the file is left unchanged."""


class OnnxError(ScratchCNNError, ValueError):
    """An ONNX file cannot be read, uses an operator or attribute scratchcnn does not
    support, or a model cannot be exported."""


class MissingDependencyError(ScratchCNNError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class DistributedError(ScratchCNNError, RuntimeError):
    """An MPI data-parallel run cannot go on: another process stopped or hung, mpi4py is
    missing under ``mpiexec``, or the processes do not hold the same training state."""


def os_reason(exc: BaseException) -> str:
    """The reason an operating-system error gives, for a one-line message: "No such file or
    directory", "Permission denied", "No space left on device" (the text, not the number)."""
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).strip()
