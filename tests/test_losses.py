"""Losses: finite differences, numerical safety and input errors (torch parity is in
test_parity_torch.py)."""

import numpy as np
import pytest

import scratchcnn as sc


def test_cross_entropy_gradcheck(rng):
    z = rng.standard_normal((5, 4))
    assert sc.gradcheck(sc.CrossEntropyLoss(), z, target=rng.integers(0, 4, 5)).ok
    assert sc.gradcheck(sc.CrossEntropyLoss("sum"), z, target=rng.integers(0, 4, 5)).ok


def test_bce_and_mse_gradcheck(rng):
    z = rng.standard_normal((6, 1))
    assert sc.gradcheck(sc.BCEWithLogitsLoss(), z, target=rng.uniform(0, 1, (6, 1))).ok
    assert sc.gradcheck(sc.MSELoss(), z, target=rng.standard_normal((6, 1))).ok


def test_untrained_uniform_logits_give_ln10():
    assert sc.CrossEntropyLoss().forward(np.zeros((3, 10)), np.array([0, 5, 9])) == pytest.approx(
        np.log(10)
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_never_overflows(dtype):
    z = np.array([[1e30, -1e30, 0.0], [-3e38 if dtype == np.float32 else -1e300, 0.0, 5.0]], dtype)
    fn = sc.CrossEntropyLoss()
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss = fn.forward(z, np.array([0, 2]))
        grad = fn.backward()
    assert np.isfinite(loss)
    assert np.all(np.isfinite(grad))
    assert grad.dtype == dtype


def test_bce_extreme_logits_are_finite():
    fn = sc.BCEWithLogitsLoss()
    with np.errstate(over="raise", invalid="raise"):
        loss = fn.forward(np.array([[1e4], [-1e4]]), np.array([[0.0], [1.0]]))
    assert loss == pytest.approx(1e4)


def test_cross_entropy_label_errors():
    fn = sc.CrossEntropyLoss()
    z = np.zeros((3, 4), np.float32)
    with pytest.raises(sc.ShapeError, match=r"label 7 at index 1 is out of range for 4 classes"):
        fn.forward(z, np.array([0, 7, 1]))
    with pytest.raises(sc.ShapeError, match=r"label -1 at index 0"):
        fn.forward(z, np.array([-1, 0, 1]))
    with pytest.raises(sc.ShapeError, match=r"logits have 3 rows but labels have 2"):
        fn.forward(z, np.array([0, 1]))
    with pytest.raises(sc.DTypeError, match="labels must be integers, got dtype float64"):
        fn.forward(z, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(sc.ShapeError, match=r"logits of shape \(N, classes\)"):
        fn.forward(np.zeros((3, 4, 1), np.float32), np.array([0, 1, 2]))
    with pytest.raises(sc.DTypeError, match="int64"):
        fn.forward(np.zeros((3, 4), np.int64), np.array([0, 1, 2]))


def test_loss_backward_before_forward():
    for fn in (sc.CrossEntropyLoss(), sc.BCEWithLogitsLoss(), sc.MSELoss()):
        with pytest.raises(sc.StateError, match="backward called before forward"):
            fn.backward()


def test_bce_and_mse_shape_errors():
    with pytest.raises(sc.ShapeError, match="does not match"):
        sc.BCEWithLogitsLoss().forward(np.zeros((4, 1)), np.zeros(3))
    with pytest.raises(sc.ShapeError, match=r"\[0, 1\]"):
        sc.BCEWithLogitsLoss().forward(np.zeros((2, 1)), np.array([[0.0], [2.0]]))
    with pytest.raises(sc.ShapeError, match="target shape"):
        sc.MSELoss().forward(np.zeros((4, 2)), np.zeros((4,)))
    with pytest.raises(sc.ConfigError, match="reduction"):
        sc.MSELoss(reduction="none")


def test_cross_entropy_loss_is_finite_beyond_the_float32_range():
    # The logits are 6e38 apart, more than float32 can hold; the loss is still a number.
    fn = sc.CrossEntropyLoss()
    loss = fn.forward(np.array([[3e38, -3e38]], np.float32), np.array([1]))
    assert loss == pytest.approx(6e38, rel=1e-6)
    np.testing.assert_array_equal(fn.backward(), [[1.0, -1.0]])


@pytest.mark.parametrize(
    "fn,logits,target",
    [
        (sc.CrossEntropyLoss(), np.zeros((0, 10)), np.zeros(0, np.int64)),
        (sc.CrossEntropyLoss(), np.zeros((4, 0)), np.zeros(4, np.int64)),
        (sc.BCEWithLogitsLoss(), np.zeros((0, 1)), np.zeros((0, 1))),
        (sc.MSELoss(reduction="sum"), np.zeros((0, 3)), np.zeros((0, 3))),
    ],
)
def test_empty_batches_are_one_clear_error(fn, logits, target):
    with pytest.raises(sc.ShapeError, match=r"empty batch \(.* of shape \(\d+, \d+\)\)") as err:
        fn.forward(logits, target)
    assert type(fn).__name__ in str(err.value)


def test_bce_targets_must_have_the_logits_shape_and_be_finite():
    fn = sc.BCEWithLogitsLoss()
    with pytest.raises(sc.ShapeError, match=r"targets shape \(4,\) does not match .* \(4, 1\)"):
        fn.forward(np.zeros((4, 1)), np.zeros(4))  # same size, other shape: no silent reshape
    with pytest.raises(sc.ShapeError, match=r"targets shape \(1, 4\)"):
        fn.forward(np.zeros((4, 1)), np.zeros((1, 4)))
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(sc.ShapeError, match="NaN or infinite"):
            fn.forward(np.zeros((2, 1)), np.array([[0.0], [bad]]))
