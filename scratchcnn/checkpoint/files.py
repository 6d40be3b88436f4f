"""Files in and out: the one bounded reader and the one atomic writer.

* :func:`read_regular_file` reads a file only if it is a regular file no larger than a cap:
  it is opened with ``O_NONBLOCK`` (so a FIFO cannot block) and checked with ``fstat`` on
  the open descriptor (so ``/dev/zero``, a directory, a socket or a FIFO is refused without
  reading a byte, and a file swapped after a check cannot slip through).
  :func:`open_regular_file` is the same guarded open, returning the open file for readers
  that read only part of it (Pillow reads an image's header first).
* :func:`atomic_write_bytes` writes every file scratchcnn produces: to a temporary file
  ``.NAME.PID.XXXXXXXX.tmp`` in the same folder, flushed and fsynced, then renamed over the
  target with ``os.replace`` and the folder fsynced, so the file on disk is always the
  previous complete version or the new complete one. Temporary files left behind by a
  writer that was killed (its PID is gone) are removed by the next successful write.
* :func:`check_output_path` is what the writer asks first, and what a command asks before it
  starts work: the target must be absent or a regular file (a device node, a FIFO, a folder
  or a socket is never replaced by a file), must not be a symbolic link (the writer never
  follows one to somewhere the user did not name, nor replaces the link), and must not be
  one of the command's inputs (``export m.npz m.npz`` would destroy what it reads).
"""

from __future__ import annotations

import glob
import os
import re
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from ..errors import CheckpointError, FileWriteError, ScratchCNNError, os_reason

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _a(kind: str) -> str:
    """``kind`` with its indefinite article: "a checkpoint file", "an ONNX file"."""
    return f"{'an' if kind[:1].lower() in 'aeio' else 'a'} {kind}"


def _refuse_special(path: Path, mode: int, kind: str, error: type[Exception]) -> None:
    """One line naming what ``path`` is, for anything but a regular file."""
    for test, what in _KINDS:
        if test(mode):
            expected = _a(kind) if what == "a directory" else f"a regular {kind}"
            raise error(f"{path}: is {what}, not {expected}")
    if not stat.S_ISREG(mode):
        raise error(f"{path}: is not a regular file")


def _open_checked(
    path: Path, max_bytes: int, kind: str, error: type[Exception], limit_hint: str
) -> tuple[int, int]:
    """(descriptor, size) of ``path`` opened read-only and non-blocking, after ``fstat`` on
    the open descriptor showed a regular file of at most ``max_bytes`` bytes; else one
    ``error`` line (nothing is read, the descriptor is closed)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise error(f"{path}: no such {kind}") from exc
    except IsADirectoryError as exc:  # Windows cannot open a folder
        raise error(f"{path}: is a directory, not {_a(kind)}") from exc
    except OSError as exc:
        try:  # a socket cannot even be opened: say what it is
            _refuse_special(path, os.stat(path).st_mode, kind, error)
        except OSError:
            pass
        raise error(f"{path}: cannot read it ({os_reason(exc)})") from exc
    try:
        st = os.fstat(fd)
        _refuse_special(path, st.st_mode, kind, error)
        if st.st_size > max_bytes:
            raise error(
                f"{path}: is {st.st_size:,} bytes, more than the {max_bytes:,}-byte limit for "
                f"{_a(kind)}{limit_hint}"
            )
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, OSError) and not isinstance(exc, ScratchCNNError):
            raise error(f"{path}: cannot read it ({os_reason(exc)})") from exc
        raise
    return fd, st.st_size


def open_regular_file(
    path: str | os.PathLike,
    max_bytes: int,
    kind: str = "checkpoint file",
    error: type[Exception] = CheckpointError,
    limit_hint: str = "",
) -> IO[bytes]:
    """``path`` opened for reading (a binary file object, to close) if it is a regular file
    of at most ``max_bytes`` bytes: the same guarded open as :func:`read_regular_file`
    (``O_NONBLOCK``, ``fstat`` on the open descriptor), for readers that take a file object
    and read only what they need (an image's header, then its pixels)."""
    fd, _ = _open_checked(Path(path), max_bytes, kind, error, limit_hint)
    return os.fdopen(fd, "rb")


def read_regular_file(
    path: Path,
    max_bytes: int,
    kind: str = "checkpoint file",
    error: type[Exception] = CheckpointError,
    limit_hint: str = "",
) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes`` bytes; else one
    line (an ``error``, naming the file as a ``kind``). Opened with ``O_NONBLOCK`` (a FIFO
    cannot block) and checked with ``fstat`` on the open descriptor (``/dev/zero``, a
    directory, a socket or a FIFO is refused without reading a byte, and a file swapped
    after a check cannot slip through); a file that grows while it is read is refused."""
    fd, size = _open_checked(path, max_bytes, kind, error, limit_hint)
    try:
        chunks, left = [], size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:  # the file shrank while it was read
                break
            chunks.append(chunk)
            left -= len(chunk)
        # One byte more than fstat said means it grew while it was read: refuse, never read on.
        if left == 0 and os.read(fd, 1):
            raise error(f"{path}: the file changed while it was read")
    except OSError as exc:
        raise error(f"{path}: cannot read it ({os_reason(exc)})") from exc
    finally:
        os.close(fd)
    return b"".join(chunks)


def check_output_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """``path`` as a Path if a file may be written there; else one :class:`FileWriteError`
    line. Refused: an existing target that is not a regular file, a symbolic link (to
    anything, even a missing file), and a target that is the same file as one of ``inputs``
    (by device and inode, so another name for the same file is caught too)."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise FileWriteError(f"{path}: cannot write it ({os_reason(exc)})") from exc
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise FileWriteError(
                f"{path}: is a symbolic link; refusing to write through it or replace it "
                "(name the real file, or remove the link)"
            )
        for test, what in _KINDS:
            if test(st.st_mode):
                raise FileWriteError(
                    f"{path}: is {what}, not a regular file; refusing to write over it"
                )
        if not stat.S_ISREG(st.st_mode):
            raise FileWriteError(f"{path}: is not a regular file; refusing to write over it")
        for source in inputs:
            try:
                same = os.path.samefile(path, source)
            except OSError:
                continue
            if same:
                raise FileWriteError(
                    f"{path}: is also the input {os.fspath(source)}; refusing to overwrite "
                    "what is being read (choose another output path)"
                )
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the existence check (POSIX)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, owned by someone else
        return True
    return True


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files ``.NAME.PID.XXXXXXXX.tmp`` that writers of ``path`` killed
    mid-write left next to it (those whose PID no longer runs); returns what was removed.

    POSIX only (elsewhere there is no safe way to ask whether a PID runs): returns []."""
    if os.name != "posix":
        return []
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[A-Za-z0-9_]+\.tmp")
    removed = []
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    except OSError:
        return []
    for tmp in candidates:
        match = pattern.fullmatch(tmp.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            tmp.unlink()
        except OSError:
            continue
        removed.append(tmp)
    return removed


_UMASK_LOCK = threading.Lock()


def _new_file_mode(path: Path) -> int:
    """The permissions ``open(path, "w")`` would leave: the existing file's, else 0o666 less
    the umask (``mkstemp`` alone creates 0600 files)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        pass
    with _UMASK_LOCK:  # reading the umask means setting it; keep the window closed
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(
    path: str | os.PathLike,
    write: Callable[[IO[bytes]], Any],
    *,
    inputs: Iterable[str | os.PathLike] = (),
) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then atomically replace
    ``path`` with it (after flush + fsync), fsync the folder, and remove temporary files that
    killed writers of ``path`` left behind. On any error the temporary file is removed and
    ``path`` is untouched; an ``OSError`` (disk full, file too large, permission denied)
    becomes a one-line :class:`FileWriteError` naming ``path``. The file gets the
    permissions a plain write would give it (the umask's, or the replaced file's).

    The target is checked first (:func:`check_output_path`): never a device, FIFO, folder
    or symbolic link, never one of ``inputs``."""
    path = check_output_path(path, inputs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = _new_file_mode(path)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
        )
    except OSError as exc:
        raise FileWriteError(f"{path}: cannot write it ({os_reason(exc)})") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), mode)
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, ScratchCNNError):
            raise FileWriteError(
                f"{path}: cannot write it ({os_reason(exc)}); the file on disk, if any, is "
                "unchanged"
            ) from exc
        raise
    _fsync_dir(path.parent)
    remove_stale_temp_files(path)
