"""gradcheck itself: it must pass correct layers and catch wrong ones, including a user's."""

import numpy as np
import pytest

import scratchcnn as sc


class Square(sc.Layer):
    """A user's layer: y = x^2, dL/dx = 2 x dy."""

    def forward(self, x):
        self._cache = x
        return x * x

    def backward(self, dy):
        return 2 * self._require_cache() * dy


class WrongSquare(Square):
    def backward(self, dy):
        return 2.1 * self._require_cache() * dy  # 5% off


class Scale(sc.Layer):
    """A user's layer with a parameter and a deliberately wrong weight gradient."""

    def __init__(self, wrong: bool = False):
        super().__init__()
        self.params["weight"] = np.array([1.5])
        self.grads["weight"] = np.zeros(1)
        self.wrong = wrong

    def forward(self, x):
        self._cache = x
        return x * self.params["weight"][0]

    def backward(self, dy):
        x = self._require_cache()
        self.grads["weight"] = np.array([np.sum(x * dy) * (0.0 if self.wrong else 1.0)])
        return dy * self.params["weight"][0]


def test_user_layer_passes(rng):
    result = sc.gradcheck(Square(), rng.standard_normal((3, 4)))
    assert result.ok
    assert result.max_rel_error < 1e-7


def test_wrong_input_gradient_is_caught(rng):
    result = sc.gradcheck(WrongSquare(), rng.standard_normal((3, 4)))
    assert not result.ok
    assert result.errors()["input"] == pytest.approx(0.1 / 2.1, rel=1e-3)
    assert "NO" in str(result)


def test_wrong_parameter_gradient_is_caught(rng):
    x = rng.standard_normal((2, 3))
    assert sc.gradcheck(Scale(), x).ok
    bad = sc.gradcheck(Scale(wrong=True), x)
    assert not bad.ok
    assert [c.name for c in bad.checks if not c.ok] == ["weight"]


def test_gradcheck_converts_a_float32_copy_and_leaves_the_original(rng):
    conv = sc.Conv2D(1, 2, 3)
    before = conv.params["weight"].copy()
    result = sc.gradcheck(conv, rng.standard_normal((1, 1, 4, 4)).astype(np.float32))
    assert result.ok
    assert conv.params["weight"].dtype == np.float32
    np.testing.assert_array_equal(conv.params["weight"], before)


def test_gradcheck_of_a_model_with_sampling(rng):
    model = sc.Sequential(
        [
            sc.Conv2D(1, 3, 3, dtype=np.float64),
            sc.Tanh(),
            sc.Flatten(),
            sc.Dense(27, 2, dtype=np.float64),
        ]
    )
    result = sc.gradcheck(model, rng.standard_normal((2, 1, 5, 5)), max_per_tensor=10)
    assert result.ok
    assert {c.name: c.checked for c in result.checks}["3.weight"] == 10


def test_gradcheck_argument_errors(rng):
    with pytest.raises(sc.DTypeError):
        sc.gradcheck(Square(), np.ones((2, 2), np.int64))
    with pytest.raises(sc.ConfigError, match="target"):
        sc.gradcheck(sc.CrossEntropyLoss(), rng.standard_normal((2, 3)))
    with pytest.raises(sc.ConfigError, match="eps"):
        sc.gradcheck(Square(), rng.standard_normal((2, 2)), eps=0)
