"""The one door between the formulas in ``scratchcnn.nn`` and the packages above them.

The layers here are the reference: plain NumPy, each read beside its formula. Making them
fast is the engine's job (``scratchcnn.engine``), writing them to disk the checkpoint
package's (``scratchcnn.checkpoint``), choosing BLAS threads the parallel package's
(``scratchcnn.parallel.threads``). ``nn`` imports none of them: imports point down
(docs/architecture.md). Instead each of them *installs* itself here when ``import
scratchcnn`` loads it, and nn asks through the functions below. With nothing installed
(``SCRATCHCNN_KERNELS=numpy`` makes the engine decline too) every model runs exactly the
code of its layers, in the order they were given.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..errors import MissingDependencyError

_engine: Any = None
_storage: Any = None
_threads: Any = None


def install_engine(engine: Any) -> None:
    """Called by ``scratchcnn.engine``: an object with ``plan(model)`` and
    ``optimizer_update(optimizer)``."""
    global _engine
    _engine = engine


def install_storage(storage: Any) -> None:
    """Called by ``scratchcnn.checkpoint``: an object with ``save_weights``,
    ``load_weights``, ``save`` and ``load``."""
    global _storage
    _storage = storage


def install_threads(choose: Any) -> None:
    """Called by ``scratchcnn.parallel``: ``choose(model, batch_size)``, a context manager
    that applies the BLAS thread count chosen for that work (``parallel.threads``)."""
    global _threads
    _threads = choose


def threads(model: Any, batch_size: int) -> Any:
    """The BLAS threads for running ``model`` on batches of ``batch_size``, as a context
    (the count ``scratchcnn.parallel.threads`` chooses; nothing installed: unchanged)."""
    return contextlib.nullcontext() if _threads is None else _threads(model, batch_size)


def plan(model: Any) -> Any:
    """How the engine runs ``model``'s layers: an object with ``forward(x)`` and
    ``backward(dy, input_grad)``, or None (run the layers as written, one after another)."""
    return None if _engine is None else _engine.plan(model)


def optimizer_update(optimizer: Any) -> Any:
    """The engine's update ``f(p, g, state)`` for ``optimizer``, or None (its own)."""
    return None if _engine is None else _engine.optimizer_update(optimizer)


def storage() -> Any:
    """The checkpoint package (what ``Sequential.save`` and ``load_weights`` use)."""
    if _storage is None:  # only when scratchcnn.nn is used without ``import scratchcnn``
        raise MissingDependencyError("saving and loading need scratchcnn.checkpoint loaded")
    return _storage
