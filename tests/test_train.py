"""The training loop: metrics, checkpoints, exact resume, divergence, evaluation."""

import json

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.data import Dataset, load_dataset, make_shapes
from scratchcnn.nn.zoo import lenet5, shapes_net
from scratchcnn.training import (
    METRICS_NAME,
    evaluate,
    fit,
    make_optimizer,
    make_scheduler,
)


@pytest.fixture(scope="module")
def digits():
    train = load_dataset("mnist-5k", "train")[:256]
    test = load_dataset("mnist-5k", "test")[:128]
    return train, test


def dropout_net(seed=0):
    """A small net with every kind of state: BatchNorm buffers and a Dropout generator."""
    return sc.Sequential(
        [
            sc.Conv2D(1, 4, 3, stride=2, rng=seed),
            sc.BatchNorm2D(4),
            sc.ReLU(),
            sc.MaxPool2D(2),
            sc.Flatten(),
            sc.Dropout(0.3, rng=seed),
            sc.Dense(4 * 6 * 6, 10, rng=seed + 1),
        ],
        input_shape=(1, 28, 28),
    )


def train_run(model, data, out, epochs, resume=False, optimizer="sgd", augment=False):
    train, test = data
    opt = make_optimizer(optimizer, model, 0.05, momentum=0.9)
    sched = make_scheduler("cosine", opt, 4)
    return fit(
        model,
        train,
        test_data=test,
        epochs=epochs,
        batch_size=32,
        optimizer=opt,
        scheduler=sched,
        seed=7,
        out_dir=out,
        resume=resume,
        progress=False,
        augment=augment,
    )


def test_fit_writes_metrics_and_checkpoint(tmp_path, digits):
    history = train_run(lenet5(seed=0), digits, tmp_path, epochs=2)
    lines = (tmp_path / METRICS_NAME).read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert set(first) >= {
        "epoch",
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "seconds",
    }
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert history.last.train_loss < first["train_loss"] + 1e-9 or history.last.epoch == 2
    ckpt = sc.load_checkpoint(tmp_path / "model.npz")
    assert ckpt.epoch == 2
    assert ckpt.optimizer_state["steps"] == 2 * 8


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, digits):
    straight = dropout_net()
    train_run(straight, digits, tmp_path / "a", epochs=4)
    # Interrupted after epoch 2, resumed in a fresh process-like state: new objects.
    train_run(dropout_net(), digits, tmp_path / "b", epochs=2)
    resumed = dropout_net(seed=99)  # different initial weights: the checkpoint must win
    history = train_run(resumed, digits, tmp_path / "b", epochs=4, resume=True)
    assert history.resumed_from_epoch == 2
    for (k, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=k)
    a = (tmp_path / "a" / METRICS_NAME).read_text().splitlines()
    b = (tmp_path / "b" / METRICS_NAME).read_text().splitlines()
    assert [json.loads(x)["train_loss"] for x in a] == [json.loads(x)["train_loss"] for x in b]


def test_resume_without_checkpoint_starts_fresh(tmp_path, digits):
    history = train_run(lenet5(seed=0), digits, tmp_path, epochs=1, resume=True)
    assert history.resumed_from_epoch == 0
    assert (tmp_path / "model.npz").exists()


def test_resume_refuses_another_architecture(tmp_path, digits):
    train_run(lenet5(seed=0), digits, tmp_path, epochs=1)
    with pytest.raises(sc.CheckpointError, match="architecture differs"):
        train_run(dropout_net(), digits, tmp_path, epochs=2, resume=True)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    train, _ = digits
    model = lenet5(seed=0)
    opt = sc.optim.SGD(model, lr=0.01, momentum=0.9)
    saved = {}

    def explode(metrics):
        # After a good first epoch the learning rate jumps to a value that diverges.
        saved["bytes"] = (tmp_path / "model.npz").read_bytes()
        opt.lr = 1e6

    with pytest.raises(sc.TrainingDiverged, match=r"loss became (nan|inf) at epoch 2") as err:
        fit(
            model,
            train,
            epochs=3,
            optimizer=opt,
            out_dir=tmp_path,
            on_epoch_end=explode,
            progress=False,
        )
    assert "last good checkpoint is epoch 1" in str(err.value)
    assert (tmp_path / "model.npz").read_bytes() == saved["bytes"]
    assert sc.load_checkpoint(tmp_path / "model.npz").epoch == 1


def test_evaluate_confusion_matrix(digits):
    _, test = digits
    result = evaluate(lenet5(seed=0), test)
    assert result.confusion.shape == (10, 10)
    assert result.confusion.sum() == result.n == len(test)
    assert np.trace(result.confusion) == round(result.accuracy * result.n)
    np.testing.assert_array_equal(
        result.confusion.sum(axis=1), np.bincount(test.labels, minlength=10)
    )
    assert result.loss == pytest.approx(np.log(10), abs=0.15)  # untrained: about ln 10


def test_binary_model_uses_bce_and_thresholds():
    images, labels = make_shapes(64, seed=0)
    data = Dataset(images, labels, ("cross", "rectangle"), "shapes")
    result = evaluate(shapes_net(seed=0), data)
    assert result.confusion.shape == (2, 2)
    assert set(np.unique(result.predictions)) <= {0, 1}


def test_bad_arguments():
    with pytest.raises(sc.ConfigError, match="epochs"):
        fit(lenet5(), load_dataset("shapes"), epochs=0)
    with pytest.raises(sc.ConfigError, match="unknown optimizer 'rmsprop'"):
        make_optimizer("rmsprop", lenet5(), 0.1)
    with pytest.raises(sc.ConfigError, match="unknown schedule 'linear'"):
        make_scheduler("linear", make_optimizer("sgd", lenet5(), 0.1), 3)


def test_check_data_fits_refuses_what_the_model_cannot_take():
    from scratchcnn.training import check_data_fits, default_loss, is_binary

    shapes = load_dataset("shapes", "test")
    assert is_binary(shapes_net()) and not is_binary(lenet5())
    assert isinstance(default_loss(shapes_net()), sc.BCEWithLogitsLoss)
    check_data_fits(shapes_net(), shapes, default_loss(shapes_net()))
    with pytest.raises(sc.ConfigError, match=r"takes images \(1, 28, 28\) but data 'shapes'"):
        check_data_fits(lenet5(), shapes, default_loss(lenet5()))
    digits = load_dataset("mnist-5k", "test")
    small = sc.Sequential([sc.Flatten(), sc.Dense(784, 3)], input_shape=(1, 28, 28))
    with pytest.raises(
        sc.ConfigError,
        match=r"has 3 outputs but data 'mnist-5k' has 10 classes \(largest label 9\)",
    ):
        check_data_fits(small, digits, default_loss(small))
    with pytest.raises(sc.ConfigError, match=r"must be a scratchcnn\.data\.Dataset"):
        check_data_fits(lenet5(), (digits.images, digits.labels))


def block_net(seed=0):
    """A residual net with a Dropout inside a block (its generator must resume too)."""
    body = [sc.Conv2D(4, 4, 3, padding=1, rng=seed), sc.BatchNorm2D(4), sc.Dropout(0.3, rng=seed)]
    return sc.Sequential(
        [
            sc.Conv2D(1, 4, 3, stride=2, rng=seed),
            sc.Residual(body),
            sc.ReLU(),
            sc.MaxPool2D(2),
            sc.Flatten(),
            sc.Dense(4 * 6 * 6, 10, rng=seed + 1),
        ],
        input_shape=(1, 28, 28),
    )


def test_resume_of_a_block_model_with_augmentation_is_bit_identical(tmp_path, digits):
    def run(out, epochs, resume=False):
        model = block_net()
        return model, train_run(model, digits, out, epochs, resume=resume, augment=True)

    full, history = run(tmp_path / "a", 3)
    run(tmp_path / "b", 1)
    resumed, _ = run(tmp_path / "b", 3, resume=True)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=k)
    # The test split is never augmented: the recorded accuracy is the plain evaluation's.
    assert history.last.test_accuracy == evaluate(full, digits[1]).accuracy
