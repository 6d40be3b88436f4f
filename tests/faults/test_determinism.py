"""Determinism: the same seed and the same BLAS thread count give bit-identical weights, in
separate processes (see docs/robustness.md for what this depends on)."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import SMALL_RUN, assert_bit_identical, checkpoint_arrays, run_cli


def test_same_seed_same_threads_same_bits(tmp_path, reference):
    ref, _ = reference
    result = run_cli(*SMALL_RUN, "--out", tmp_path, threads=1)
    assert result.returncode == 0, result.stderr
    assert_bit_identical(tmp_path / "model.npz", ref / "model.npz")


@pytest.mark.slow
def test_same_seed_two_threads_same_bits(tmp_path):
    for name in ("a", "b"):
        result = run_cli(*SMALL_RUN, "--out", tmp_path / name, threads=2)
        assert result.returncode == 0, result.stderr
    assert_bit_identical(tmp_path / "a" / "model.npz", tmp_path / "b" / "model.npz")


def test_another_seed_gives_other_weights(tmp_path, reference):
    """The comparison is not vacuous: the seed does reach the weights and the shuffling."""
    ref, _ = reference
    result = run_cli(*SMALL_RUN, "--seed", "1", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    a, b = checkpoint_arrays(tmp_path / "model.npz"), checkpoint_arrays(ref / "model.npz")
    assert not np.array_equal(a["model/0.weight"], b["model/0.weight"])
