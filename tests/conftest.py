"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

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
