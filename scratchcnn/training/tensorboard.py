"""TensorBoard event files for a training run, written through tensorboardX (no torch, no
TensorFlow; ``pip install -e '.[tensorboard]'``). Imported only when asked for.

``TensorBoardLogger(model, run_dir)`` is a callable for ``fit(..., on_epoch_end=...)``. Per
epoch (the step is the epoch number) it writes

* scalars ``loss/train``, ``loss/test``, ``accuracy/train``, ``accuracy/test``, ``lr`` and
  ``grad_norm/<key>`` (the epoch's mean gradient norm of each parameter, when recorded);
* histograms ``weights/<key>`` and ``grads/<key>`` of every parameter (``<key>`` as in
  ``state_dict``; the gradients are those of the epoch's last step);
* the first convolution's filters as one image, ``filters/<key>``.

Resuming after epoch E opens the writer with ``purge_step=E + 1``: TensorBoard then drops any
event a killed run had written for a later step, so a resumed run has no duplicate steps.
``tensorboard --logdir runs/`` shows every run folder.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..errors import MissingDependencyError
from ..nn.layers import Conv2D
from ..nn.layers.base import leaf_layers

INSTALL_HINT = (
    "pip install tensorboardX (the [tensorboard] extra: pip install -e '.[tensorboard]' in a clone)"
)


def _summary_writer() -> Any:
    try:
        from tensorboardX import SummaryWriter
    except ImportError as exc:
        raise MissingDependencyError(
            f"TensorBoard logging needs tensorboardX: {INSTALL_HINT}"
        ) from exc
    return SummaryWriter


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
        writer_class = _summary_writer()
        self.model = model
        # Event files are named by the second they were opened in: a run resumed within the
        # same second would overwrite the earlier file without a suffix of its own.
        self.writer = writer_class(
            logdir=os.fspath(log_dir),
            purge_step=resume_epoch + 1 if resume_epoch else None,
            filename_suffix=f".{os.getpid()}.{time.time_ns()}",
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
                w.add_scalar(tag, float(value), step)
        for key, layer, name in self.model.named_leaf_parameters():
            w.add_histogram(f"weights/{key}", np.asarray(layer.params[name]), step)
            if name in layer.grads:
                w.add_histogram(f"grads/{key}", np.asarray(layer.grads[name]), step)
        if self._first_conv is not None:
            prefix, conv = self._first_conv
            grid = filter_grid(conv.params["weight"])
            w.add_image(f"filters/{prefix}.weight", grid, step, dataformats="HWC")
        w.flush()

    def close(self) -> None:
        self.writer.close()
