"""TensorBoard event files for a training run, written through tensorboardX (no torch, no
TensorFlow; ``pip install -e '.[tensorboard]'``). Imported only when asked for.

``TensorBoardLogger(model, run_dir)`` is a callable for ``fit(..., on_epoch_end=...)``. Per
epoch (the step is the epoch number) it writes

* scalars ``loss/train``, ``loss/test``, ``accuracy/train``, ``accuracy/test``, ``lr`` and
  ``grad_norm/<key>`` (the epoch's mean gradient norm of each parameter, when recorded);
* histograms ``weights/<key>`` and ``grads/<key>`` of every parameter (``<key>`` as in
  ``state_dict``; the gradients are those of the epoch's last step);
* the first convolution's filters as one image, ``filters/<key>``.

Resuming after epoch E starts the event file with a ``purge_step`` of E + 1: TensorBoard then
drops any event a killed run had written for a later step, so a resumed run has no duplicate
steps. ``tensorboard --logdir runs/`` shows every run folder.

Events are written in the training thread, not by tensorboardX's background thread: when the
disk is full (or the folder goes away) the write fails where it happens and training stops with
one line (:class:`~scratchcnn.errors.FileWriteError`) instead of blocking for ever on a queue
that a dead thread no longer reads.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import FileWriteError, MissingDependencyError, os_reason
from ..nn.layers import Conv2D
from ..nn.layers.base import leaf_layers

INSTALL_HINT = (
    "pip install tensorboardX (the [tensorboard] extra: pip install -e '.[tensorboard]' in a clone)"
)


def _tensorboardx() -> Any:
    try:
        import tensorboardX
    except ImportError as exc:
        raise MissingDependencyError(
            f"TensorBoard logging needs tensorboardX: {INSTALL_HINT}"
        ) from exc
    return tensorboardX


def _default_bins() -> list[float]:
    """TensorBoard's histogram buckets (as tensorboardX's ``bins="tensorflow"``): +-1e-12
    growing by 10 % up to 1e20, and 0."""
    edges = 1e-12 * 1.1 ** np.arange(int(np.ceil(np.log(1e32) / np.log(1.1))))
    edges = edges[edges < 1e20]
    return [*(-edges[::-1]).tolist(), 0.0, *edges.tolist()]


class EventFile:
    """One TensorBoard event file, written synchronously: every ``add`` and ``flush`` either
    reaches the file or raises a one-line :class:`FileWriteError` naming the folder."""

    def __init__(self, log_dir: str | os.PathLike, purge_step: int | None, suffix: str) -> None:
        tbx = _tensorboardx()
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        self.log_dir = os.fspath(log_dir)
        self._event, self._summary = Event, tbx.summary
        self._bins = _default_bins()
        with self._writing():
            os.makedirs(self.log_dir, exist_ok=True)
            self._writer = EventsWriter(os.path.join(self.log_dir, "events"), suffix)
            if purge_step is not None:
                self._write(Event(step=purge_step, file_version="brain.Event:2"))
                self._write(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """An OSError (disk full, folder gone) becomes one line naming the folder."""
        try:
            yield
        except OSError as exc:
            raise FileWriteError(
                f"{self.log_dir}: cannot write TensorBoard events ({os_reason(exc)}); "
                "training stopped, the last checkpoint is intact"
            ) from exc

    def _write(self, event: Any) -> None:
        event.wall_time = time.time()
        self._writer.write_event(event)

    def scalar(self, tag: str, value: float, step: int) -> None:
        with self._writing():
            self._write(self._event(summary=self._summary.scalar(tag, value), step=step))

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        values = np.asarray(values, dtype=np.float64)
        if not np.isfinite(values).all():  # a histogram of inf/nan has no buckets
            values = values[np.isfinite(values)]
            if values.size == 0:
                return
        with self._writing():
            summary = self._summary.histogram(tag, values, self._bins)
            self._write(self._event(summary=summary, step=step))

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        with self._writing():
            summary = self._summary.image(tag, image, dataformats="HWC")
            self._write(self._event(summary=summary, step=step))

    def flush(self) -> None:
        with self._writing():
            self._writer.flush()

    def close(self) -> None:
        with self._writing():
            self._writer.close()


def filter_grid(weight: np.ndarray, cell: int = 32) -> np.ndarray:
    """Conv filters (O, C, KH, KW) as one (H, W, 3) uint8 image: one tile per filter, grey
    (or colour for 3 input channels, else the mean over them), 50 % grey = 0, each tile
    scaled up to about ``cell`` pixels, 1-pixel white gaps."""
    w = np.asarray(weight, dtype=np.float64)
    o, c, kh, kw = w.shape
    tiles = w.transpose(0, 2, 3, 1) if c == 3 else np.repeat(w.mean(axis=1)[..., None], 3, -1)
    limit = float(np.abs(tiles).max()) or 1.0
    tiles = 0.5 + 0.5 * tiles / limit
    scale = max(1, cell // max(kh, kw))
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    cols = int(np.ceil(np.sqrt(o)))
    rows = int(np.ceil(o / cols))
    th, tw = tiles.shape[1:3]
    grid = np.ones((rows * (th + 1) + 1, cols * (tw + 1) + 1, 3))
    for f in range(o):  # one tile per filter, a handful: not a hot path
        r, q = divmod(f, cols)
        grid[1 + r * (th + 1) : (r + 1) * (th + 1), 1 + q * (tw + 1) : (q + 1) * (tw + 1)] = tiles[
            f
        ]
    return np.round(grid * 255).astype(np.uint8)


class TensorBoardLogger:
    """Writes one epoch's scalars, histograms and filter image per call (see the module
    docstring); ``resume_epoch`` = the epoch a resumed run continues after."""

    def __init__(self, model: Any, log_dir: str | os.PathLike, resume_epoch: int = 0) -> None:
        self.model = model
        # Event files are named by the second they were opened in: a run resumed within the
        # same second would overwrite the earlier file without a suffix of its own.
        self.writer = EventFile(
            log_dir,
            purge_step=resume_epoch + 1 if resume_epoch else None,
            suffix=f".{os.getpid()}.{time.time_ns()}",
        )
        conv = [(p, la) for p, la in leaf_layers(model) if isinstance(la, Conv2D)]
        self._first_conv = conv[0] if conv else None

    def __call__(self, metrics: Any) -> None:
        step = int(metrics.epoch)
        w = self.writer
        scalars = {
            "loss/train": metrics.train_loss,
            "loss/test": metrics.test_loss,
            "accuracy/train": metrics.train_accuracy,
            "accuracy/test": metrics.test_accuracy,
            "lr": metrics.lr,
        }
        for key, norm in (getattr(metrics, "grad_norms", None) or {}).items():
            scalars[f"grad_norm/{key}"] = norm
        for tag, value in scalars.items():
            if value is not None:
                w.scalar(tag, float(value), step)
        trainable = {key for key, _, _ in self.model.named_trainable_parameters()}
        for key, layer, name in self.model.named_leaf_parameters():
            w.histogram(f"weights/{key}", layer.params[name], step)
            if key in trainable and name in layer.grads:  # frozen layers compute none
                w.histogram(f"grads/{key}", layer.grads[name], step)
        if self._first_conv is not None:
            prefix, conv = self._first_conv
            grid = filter_grid(conv.params["weight"])
            w.image(f"filters/{prefix}.weight", grid, step)
        w.flush()

    def close(self) -> None:
        self.writer.close()
