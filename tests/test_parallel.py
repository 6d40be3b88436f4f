"""BatchSplit: a batch split over threads gives the whole batch's loss and gradients."""

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.nn.zoo import lenet5
from scratchcnn.parallel.split import BatchSplit


def _batch(n, shape=(1, 28, 28), seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, *shape)), rng.integers(0, 10, n)


def _grads(model):
    return {k: layer.grads[name].copy() for k, layer, name in model.named_leaf_parameters()}


@pytest.mark.parametrize("threads, n", [(2, 64), (3, 50), (2, 17)])
def test_split_step_equals_whole_batch_step_float64(threads, n, monkeypatch):
    # Three slices on a two-core machine: the slicing's arithmetic, not the machine's cores
    monkeypatch.setattr(sc.parallel.threads, "max_threads", lambda: 4)
    x, y = _batch(n)
    whole = lenet5(seed=1).astype(np.float64)
    split = lenet5(seed=1).astype(np.float64)
    loss_fn = sc.CrossEntropyLoss()
    ref_loss = loss_fn.forward(whole.forward(x), y)
    whole.backward(loss_fn.backward(), input_grad=False)
    with BatchSplit(split, sc.CrossEntropyLoss(), threads=threads) as bs:
        loss, logits = bs.step(x, y)
    assert logits.shape == (n, 10)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(logits, whole.forward(x), rtol=1e-12)
    ref, got = _grads(whole), _grads(split)
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-10, atol=1e-14, err_msg=key)


def test_training_with_split_follows_the_same_path_and_is_deterministic():
    x, y = _batch(64)
    x = x.astype(np.float32)
    runs = []
    for threads in (1, 2, 2):
        model = lenet5(seed=3)
        opt = sc.optim.SGD(model, lr=0.05, momentum=0.9)
        with BatchSplit(model, sc.CrossEntropyLoss(), threads=threads) as bs:
            for _ in range(5):
                bs.step(x, y)
                opt.step()
        runs.append(model.state_dict())
    for key in runs[0]:
        np.testing.assert_allclose(runs[1][key], runs[0][key], rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(runs[2][key], runs[1][key])  # same threads: bit-identical


def test_batchnorm_and_dropout_models_are_not_split_in_training():
    x, y = _batch(32, (1, 8, 8))
    x = x.astype(np.float32)

    def net():
        first = [sc.Conv2D(1, 4, 3, rng=0), sc.BatchNorm2D(4), sc.ReLU(), sc.Flatten()]
        return sc.Sequential([*first, sc.Dropout(0.5, rng=1), sc.Dense(144, 10, rng=2)])

    whole, split = net(), net()
    loss_fn = sc.engine.loss_route(sc.CrossEntropyLoss())  # the loss a split step computes
    ref = loss_fn.forward(whole.forward(x), y)
    with BatchSplit(split, sc.CrossEntropyLoss(), threads=2) as bs:
        loss, _ = bs.step(x, y)
        assert loss == ref  # the same single pass: batch statistics and masks unchanged
        split.eval()
        whole.eval()
        np.testing.assert_allclose(bs.forward(x), whole.forward(x), rtol=1e-5, atol=1e-6)


def test_split_inference_equals_forward():
    x, _ = _batch(40)
    model = lenet5(seed=0).astype(np.float64).eval()
    with BatchSplit(model, sc.CrossEntropyLoss(), threads=2) as bs:
        np.testing.assert_allclose(bs.forward(x), model.forward(x), rtol=1e-12)


def test_threads_are_validated():
    with pytest.raises(sc.ConfigError, match="threads"):
        BatchSplit(lenet5(), sc.CrossEntropyLoss(), threads=0)
    assert BatchSplit(lenet5(), sc.CrossEntropyLoss()).threads == 1  # default: no splitting


def test_slices_are_linspace_rounded_half_to_even():
    """The slice edges are those of np.linspace(0, n, parts + 1).round(), computed in
    integers (cheaper per step), e.g. 5 items in 2 parts: 2.5 rounds to 2."""
    import itertools

    for n in range(130):
        for parts in range(1, 9):
            edges = np.linspace(0, n, parts + 1).round().astype(int)
            expected = [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]
            assert BatchSplit._slices(n, parts) == expected, (n, parts)
    assert BatchSplit._slices(5, 2) == [slice(0, 2), slice(2, 5)]


def test_one_blas_thread_limits_and_restores():
    from threadpoolctl import threadpool_info, threadpool_limits

    from scratchcnn.parallel.split import OneBlasThread

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    assert blas_threads(), "NumPy's BLAS is not visible to threadpoolctl"
    limit = OneBlasThread()
    with threadpool_limits(limits=2, user_api="blas"):
        with limit():
            assert blas_threads() == [1] * len(blas_threads())
        assert blas_threads() == [2] * len(blas_threads())
        with pytest.raises(RuntimeError), limit():
            raise RuntimeError("restored on the way out of an error too")
        assert blas_threads() == [2] * len(blas_threads())
        with threadpool_limits(limits=1, user_api="blas"), limit():  # already one: kept
            assert blas_threads() == [1] * len(blas_threads())
