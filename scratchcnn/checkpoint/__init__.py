"""Models on disk: the ``.npz`` checkpoint (``npz``), safetensors weights
(``safetensors``), the checks a file from outside passes (``safezip``, ``schema``) and the
one bounded reader and one atomic writer every file of scratchcnn goes through (``files``).

    sc.save(model, "model.npz", optimizer=opt, epoch=3)    # architecture, weights, state
    ckpt = sc.load_checkpoint("model.npz")                 # verified before anything is used
    model.save_weights("model.safetensors")                # weights only, torch's keys

Importing this package installs it into ``scratchcnn.nn.dispatch``, so that the model's own
``save_weights`` / ``load_weights`` reach it without nn importing anything above itself.
"""

from __future__ import annotations

import sys

from ..nn import dispatch as _dispatch
from .files import (
    atomic_write_bytes,
    check_output_path,
    open_regular_file,
    read_regular_file,
    remove_stale_temp_files,
)
from .npz import Checkpoint, load, load_checkpoint, save
from .safetensors import load_weights, read_safetensors, save_weights

__all__ = [
    "Checkpoint",
    "atomic_write_bytes",
    "check_output_path",
    "load",
    "load_checkpoint",
    "load_weights",
    "open_regular_file",
    "read_regular_file",
    "read_safetensors",
    "remove_stale_temp_files",
    "save",
    "save_weights",
]

_dispatch.install_storage(sys.modules[__name__])
