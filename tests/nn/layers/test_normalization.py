"""BatchNorm2D (train and eval) and Dropout."""

import numpy as np
import pytest

import scratchcnn as sc
from tests.conftest import noncontiguous


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 3, 3), (4, 2, 1, 1)])
def test_batchnorm_train_gradcheck(shape, rng):
    bn = sc.BatchNorm2D(shape[1], dtype=np.float64)
    bn.params["weight"][:] = rng.uniform(0.5, 2, shape[1])
    bn.params["bias"][:] = rng.standard_normal(shape[1])
    result = sc.gradcheck(bn, rng.standard_normal(shape) * 3 + 1)
    assert result.ok, f"\n{result}"


def test_batchnorm_eval_gradcheck(rng):
    bn = sc.BatchNorm2D(3, dtype=np.float64)
    bn.buffers["running_mean"][:] = rng.standard_normal(3)
    bn.buffers["running_var"][:] = rng.uniform(0.5, 2, 3)
    bn.eval()
    x = noncontiguous(rng.standard_normal((2, 3, 4, 3)))
    assert sc.gradcheck(bn, x).ok


def test_batchnorm_without_affine(rng):
    bn = sc.BatchNorm2D(2, affine=False, dtype=np.float64)
    assert bn.params == {}
    assert sc.gradcheck(bn, rng.standard_normal((3, 2, 2, 2))).ok


def test_batchnorm_normalises_and_tracks_running_stats(rng):
    bn = sc.BatchNorm2D(2, momentum=0.5, dtype=np.float64)
    x = rng.standard_normal((8, 2, 3, 3)) * 4 + 10
    y = bn.forward(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, atol=1e-3)
    m = 8 * 9
    np.testing.assert_allclose(bn.buffers["running_mean"], 0.5 * x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(
        bn.buffers["running_var"], 0.5 + 0.5 * x.var(axis=(0, 2, 3)) * m / (m - 1)
    )
    assert int(bn.buffers["num_batches_tracked"]) == 1
    bn.eval()
    before = bn.buffers["running_mean"].copy()
    bn.forward(x)
    np.testing.assert_array_equal(bn.buffers["running_mean"], before)  # eval never updates


def test_batchnorm_single_value_per_channel_in_training():
    with pytest.raises(sc.ShapeError, match="more than one value per channel"):
        sc.BatchNorm2D(2).forward(np.zeros((1, 2, 1, 1), np.float32))


def test_batchnorm_channel_mismatch_and_bad_args():
    with pytest.raises(sc.ShapeError, match="expects 3 input channels, got 2"):
        sc.BatchNorm2D(3).forward(np.zeros((2, 2, 2, 2), np.float32))
    with pytest.raises(sc.ConfigError, match="eps"):
        sc.BatchNorm2D(3, eps=0)
    with pytest.raises(sc.ConfigError, match="momentum"):
        sc.BatchNorm2D(3, momentum=1.5)


def test_dropout_train_scales_and_eval_is_identity(rng):
    d = sc.Dropout(0.25, rng=0)
    x = np.ones((200, 50), np.float32)
    y = d.forward(x)
    kept = y != 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    dx = d.backward(np.ones_like(x))
    np.testing.assert_array_equal(dx, y)  # same mask, same scale
    d.eval()
    assert d.forward(x) is x


def test_dropout_gradcheck_and_determinism(rng):
    x = rng.standard_normal((3, 4))
    assert sc.gradcheck(sc.Dropout(0.5, rng=3), x).ok
    a = sc.Dropout(0.5, rng=7).forward(x)
    b = sc.Dropout(0.5, rng=7).forward(x)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("p", [-0.1, 1.0, 2, "0.5", True])
def test_dropout_bad_probability(p):
    with pytest.raises(sc.ConfigError, match="p must be in"):
        sc.Dropout(p)


def test_batchnorm_non_numeric_arguments_are_config_errors():
    with pytest.raises(sc.ConfigError, match="eps must be a finite number"):
        sc.BatchNorm2D(2, eps="a")
    with pytest.raises(sc.ConfigError, match="momentum must be a finite number"):
        sc.BatchNorm2D(2, momentum=None)
