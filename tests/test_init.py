"""Initialisers: bounds and variances by name, custom callables, seeding."""

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.nn.init import INITIALIZERS, initialize


@pytest.mark.parametrize(
    "name,bound",
    [
        ("default", lambda fi, fo: 1 / np.sqrt(fi)),
        ("he_uniform", lambda fi, fo: np.sqrt(6 / fi)),
        ("glorot_uniform", lambda fi, fo: np.sqrt(6 / (fi + fo))),
        ("lecun_uniform", lambda fi, fo: np.sqrt(3 / fi)),
    ],
)
def test_uniform_bounds(name, bound):
    w = initialize(name, (200, 300), 300, 200, np.random.default_rng(0), np.dtype(np.float64))
    b = bound(300, 200)
    assert np.abs(w).max() <= b
    assert np.abs(w).max() > 0.99 * b
    assert w.var() == pytest.approx(b * b / 3, rel=0.02)


@pytest.mark.parametrize(
    "name,var",
    [
        ("he_normal", 2 / 300),
        ("glorot_normal", 2 / 500),
        ("lecun_normal", 1 / 300),
        ("tutorial", 1 / 300**2),
    ],
)
def test_normal_variances(name, var):
    w = initialize(name, (200, 300), 300, 200, np.random.default_rng(0), np.dtype(np.float64))
    assert w.var() == pytest.approx(var, rel=0.02)


def test_conv_fans_follow_torch():
    conv = sc.Conv2D(6, 16, 5, rng=0)
    bound = 1 / np.sqrt(6 * 25)
    assert np.abs(conv.params["weight"]).max() <= bound
    assert np.abs(conv.params["bias"]).max() <= bound


def test_seeding_is_reproducible_and_dtype_independent():
    a = sc.Dense(5, 3, rng=42, dtype=np.float32).params["weight"]
    b = sc.Dense(5, 3, rng=42, dtype=np.float64).params["weight"]
    np.testing.assert_allclose(a, b, rtol=1e-7)
    sc.manual_seed(3)
    c = sc.Dense(5, 3).params["weight"]
    sc.manual_seed(3)
    np.testing.assert_array_equal(c, sc.Dense(5, 3).params["weight"])


def test_custom_and_bad_initializers():
    layer = sc.Dense(2, 2, weight_init=sc.init.constant(0.5), bias_init="zeros")
    np.testing.assert_array_equal(layer.params["weight"], 0.5)
    with pytest.raises(sc.ConfigError, match="unknown initializer 'nope'"):
        sc.Dense(2, 2, weight_init="nope")
    with pytest.raises(sc.ConfigError, match="shape"):
        sc.Dense(2, 2, weight_init=lambda shape, fi, fo, rng: np.zeros(3))
    with pytest.raises(sc.ConfigError, match="rng"):
        sc.Dense(2, 2, rng="seed")
    assert set(INITIALIZERS) >= {"he_normal", "glorot_uniform", "lecun_normal"}


def test_negative_seed_is_a_config_error():
    with pytest.raises(sc.ConfigError, match="non-negative"):
        sc.Dense(2, 2, rng=-1)
