"""BatchSplit on models with BatchNorm: the slices share the whole batch's statistics."""

import threading

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.nn.zoo import resnet8
from scratchcnn.parallel.split import BatchSplit


@pytest.fixture(autouse=True)
def _three_slices_allowed(monkeypatch):
    """Some cases split a batch into three slices on a two-core machine: they test the
    slicing's arithmetic, not the cap on threads at the core count (tests/test_cli_help.py)."""
    monkeypatch.setattr(sc.parallel.threads, "max_threads", lambda: 4)


def _batch(n, shape=(1, 12, 12), seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, *shape)), rng.integers(0, 10, n)


def _state(model):
    grads = {
        f"grad:{k}": layer.grads[name].copy() for k, layer, name in model.named_leaf_parameters()
    }
    return {**grads, **{k: np.array(v) for k, v in model.state_dict().items()}}


def _dense_bn_net(seed=0):
    rng = np.random.default_rng(seed)
    return sc.Sequential(
        [
            sc.Flatten(),
            sc.Dense(144, 20, rng=rng),
            sc.BatchNorm1D(20),
            sc.ReLU(),
            sc.Dense(20, 10, rng=rng),
        ]
    )


@pytest.mark.parametrize(
    "build, threads, n", [(resnet8, 2, 16), (resnet8, 3, 25), (_dense_bn_net, 2, 19)]
)
def test_split_step_equals_whole_batch_step_float64(build, threads, n):
    x, y = _batch(n)
    whole, split = build(seed=1).astype(np.float64), build(seed=1).astype(np.float64)
    loss_fn = sc.CrossEntropyLoss()
    ref_loss = loss_fn.forward(whole.forward(x), y)
    whole.backward(loss_fn.backward(), input_grad=False)
    with BatchSplit(split, sc.CrossEntropyLoss(), threads=threads) as bs:
        assert bs._parts(n, True) == threads  # really split
        loss, logits = bs.step(x, y)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    assert logits.shape == (n, 10)
    whole.eval()
    split.eval()
    ref, got = _state(whole), _state(split)
    assert ref.keys() == got.keys()
    for key in ref:  # gradients, running statistics and num_batches_tracked
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-10, atol=1e-13, err_msg=key)
    np.testing.assert_allclose(split.forward(x), whole.forward(x), rtol=1e-10)


def _trained(threads, x, y, steps=3):
    """resnet8's state after ``steps`` SGD steps with the batch split over ``threads``."""
    model = resnet8(seed=3)
    opt = sc.optim.SGD(model, lr=0.05, momentum=0.9)
    with BatchSplit(model, sc.CrossEntropyLoss(), threads=threads) as bs:
        for _ in range(steps):
            bs.step(x, y)
            opt.step()
    return model.state_dict()


def test_split_batchnorm_training_is_deterministic_and_follows_the_whole_batch():
    x, y = _batch(32)
    whole, split, again = (_trained(t, x.astype(np.float32), y) for t in (1, 2, 2))
    assert int(split["1.num_batches_tracked"]) == 3  # updated once per step, not per slice
    for key in whole:
        np.testing.assert_allclose(split[key], whole[key], rtol=1e-3, atol=1e-4, err_msg=key)
        np.testing.assert_array_equal(again[key], split[key])  # same threads: bit-identical


class FailsOnMarker(sc.Layer):
    """Identity, except that it raises on a slice whose first value is the marker 7."""

    def forward(self, x):
        if x[0, 0, 0, 0] == 7:
            raise ValueError("marker seen")
        return x

    def backward(self, dy):
        return dy


def test_an_error_in_one_slice_is_raised_and_never_leaves_a_thread_waiting():
    x, y = _batch(16)
    x = x.astype(np.float32)
    x[8, 0, 0, 0] = 7  # the first item of the second slice
    model = sc.Sequential(
        [
            FailsOnMarker(),  # fails in thread 1 while thread 0 waits in BatchNorm2D
            sc.Conv2D(1, 4, 3, rng=0),
            sc.BatchNorm2D(4),
            sc.Flatten(),
            sc.Dense(400, 10, rng=1),
        ]
    )
    bs = BatchSplit(model, sc.CrossEntropyLoss(), threads=2)
    caught = []

    def run():
        try:
            bs.step(x, y)
        except Exception as exc:
            caught.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "BatchSplit deadlocked"
    assert len(caught) == 1 and isinstance(caught[0], ValueError), caught
    assert all(layer.sync is None for _, layer in model.named_layers() if hasattr(layer, "sync"))
    x[8, 0, 0, 0] = 0
    loss, _ = bs.step(x, y)  # the next step runs normally
    assert np.isfinite(loss)
    bs.close()
