"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def noncontiguous(a: np.ndarray) -> np.ndarray:
    """The same values as ``a`` in a non-contiguous array (every other element of a bigger one)."""
    big = np.zeros((*a.shape[:-1], a.shape[-1] * 2), dtype=a.dtype)
    big[..., ::2] = a
    view = big[..., ::2]
    assert not view.flags.c_contiguous
    return view


def distinct(shape, rng: np.random.Generator, dtype=np.float64) -> np.ndarray:
    """Values in random order, pairwise at least 0.01 apart, no tie and away from zero
    (finite differences are undefined at max-pool ties and the ReLU kink)."""
    n = int(np.prod(shape))
    vals = (np.arange(n) - n / 2 + 0.25) * (4.0 / n + 0.01)
    return rng.permutation(vals).reshape(shape).astype(dtype)


# --- environment: no test writes the real cache; the Debian data is optional locally ------
#: Set by .ci/run: the Fashion-MNIST tests must run (fail, not skip, without the data).
REQUIRE_DATA = os.environ.get("SCRATCHCNN_REQUIRE_DATA") == "1"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point the data cache (for this process and the subprocesses it starts) at a fresh
    folder, so no test reads or writes the real ~/.cache/scratchcnn."""
    folder = tmp_path_factory.mktemp("scratchcnn-cache")
    old = os.environ.get("SCRATCHCNN_CACHE_DIR")
    os.environ["SCRATCHCNN_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("SCRATCHCNN_CACHE_DIR", None)
    else:
        os.environ["SCRATCHCNN_CACHE_DIR"] = old


@pytest.fixture
def fashion_mnist_dir() -> Path:
    """The folder with Debian's dataset-fashion-mnist files ($SCRATCHCNN_FASHION_MNIST_DIR or
    /usr/share/datasets/fashion-mnist). Skips, with the reason, when they are absent, unless
    SCRATCHCNN_REQUIRE_DATA=1 (CI) makes that a failure."""
    from scratchcnn.data.sources import IDX_FILES, fashion_mnist_dir

    folder = fashion_mnist_dir()
    stems = [s for pair in IDX_FILES.values() for s in pair]
    missing = [s for s in stems if not any((folder / f"{s}{x}").is_file() for x in (".gz", ""))]
    if missing:
        why = (
            f"Fashion-MNIST files not found in {folder} (missing {', '.join(missing)}): install "
            "Debian's dataset-fashion-mnist or set SCRATCHCNN_FASHION_MNIST_DIR"
        )
        if REQUIRE_DATA:
            pytest.fail(f"{why}; SCRATCHCNN_REQUIRE_DATA=1 requires them")
        pytest.skip(why)
    return folder
