"""The tutorials' results, reproduced end to end with the library (slow: they train)."""

import pytest

import scratchcnn as sc
from scratchcnn.data import load_dataset
from scratchcnn.nn.zoo import shapes_net, tiny_cnn
from scratchcnn.training import evaluate, fit


def test_untrained_tiny_cnn_is_at_chance_with_loss_ln10():
    result = evaluate(tiny_cnn(seed=0), load_dataset("mnist-5k", "test"))
    assert 0.03 < result.accuracy < 0.2
    assert result.loss == pytest.approx(2.302, abs=0.05)


@pytest.mark.slow
def test_tiny_cnn_one_image_at_a_time_reaches_the_tutorials_80_percent():
    """Conv3x3x8 -> MaxPool2 -> softmax, SGD lr 0.005 one image at a time, 1,000 training
    images, 10 epochs (the tutorial reports 80.8% on 1,000 test images)."""
    model = tiny_cnn(seed=0)
    history = fit(
        model,
        load_dataset("mnist-5k", "train")[:1000],
        test_data=load_dataset("mnist-5k", "test"),
        epochs=10,
        batch_size=1,
        optimizer=sc.optim.SGD(model, lr=0.005),
        progress=False,
    )
    assert history.last.test_accuracy >= 0.80


@pytest.mark.slow
def test_shapes_net_separates_crosses_from_rectangles():
    model = shapes_net(seed=0)
    history = fit(
        model,
        load_dataset("shapes", "train"),
        test_data=load_dataset("shapes", "test"),
        epochs=10,
        batch_size=16,
        optimizer=sc.optim.SGD(model, lr=0.1, momentum=0.9),
        progress=False,
    )
    assert history.last.test_accuracy >= 0.98
