"""A PyTorch user's first ten minutes: the habits that must just work (docs/pytorch.md)."""

from __future__ import annotations

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.data import load_dataset
from scratchcnn.nn.zoo import lenet5, shapes_net


def test_named_parameters_are_name_array_pairs_like_torch():
    model = lenet5(seed=0)
    pairs = list(model.named_parameters())
    state = model.state_dict()
    assert [k for k, _ in pairs] == [k for k in state if not k.endswith(("running_mean",))]
    for key, array in pairs:
        assert isinstance(key, str) and isinstance(array, np.ndarray)
        np.testing.assert_array_equal(array, state[key])
    # the arrays are the model's own (updates show), not copies
    key, array = pairs[0]
    array += 1
    np.testing.assert_array_equal(model.state_dict()[key], state[key] + 1)
    # where each lives, for code that needs the gradients too
    key, layer, name = next(model.named_leaf_parameters())
    assert key == "0.weight" and layer is model.layers[0] and name == "weight"


@pytest.mark.parametrize("make", [sc.optim.SGD, sc.optim.Adam, sc.optim.AdamW])
def test_optimisers_take_model_parameters_as_torch_does(make, rng):
    x = rng.uniform(0, 1, (8, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    outs = []
    for given in ("model", "parameters"):
        model = lenet5(seed=0)
        opt = make(model if given == "model" else model.parameters(), lr=0.01)
        loss_fn = sc.CrossEntropyLoss()
        for _ in range(2):
            loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward())
            opt.step()
        outs.append(model.state_dict())
    for key in outs[0]:
        np.testing.assert_array_equal(outs[0][key], outs[1][key])
    with pytest.raises(sc.ConfigError, match=r"model.parameters\(\), got list"):
        make(list(lenet5(seed=0).parameters()), lr=0.01)


def test_sequential_takes_layers_as_arguments_or_as_a_list(rng):
    layers = lambda: [sc.Flatten(), sc.Dense(4, 3, rng=0), sc.ReLU()]  # noqa: E731
    a = sc.Sequential(*layers(), input_shape=(1, 2, 2))
    b = sc.Sequential(layers(), input_shape=(1, 2, 2))
    c = sc.Sequential(layer for layer in layers())
    assert a.config() == b.config() and len(c) == 3
    x = rng.standard_normal((2, 1, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(a.forward(x), b.forward(x))
    assert len(sc.Sequential(sc.ReLU())) == 1 and len(sc.Sequential()) == 0
    with pytest.raises(sc.ConfigError, match="is not a layer"):
        sc.Sequential(sc.ReLU(), "relu")


def test_dataset_items_are_image_label_pairs():
    data = load_dataset("mnist-5k", "train")
    x, y = data[0]
    assert x.shape == (1, 28, 28) and isinstance(y, int) and 0 <= y < 10
    assert len(data[:10]) == 10


def test_model_save_and_sequential_load(tmp_path, rng):
    model = lenet5(seed=3)
    path = model.save(tmp_path / "m.npz")
    again = sc.Sequential.load(path)
    x = rng.uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    with pytest.raises(sc.CheckpointError, match="no such checkpoint file"):
        sc.Sequential.load(tmp_path / "absent.npz")


def test_predict_proba_gives_probabilities(rng):
    model = lenet5(seed=0)
    x = rng.uniform(0, 1, (5, 1, 28, 28)).astype(np.float32)
    p = model.predict_proba(x)
    z = model.predict(x)
    assert p.shape == (5, 10)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(p.argmax(axis=1), z.argmax(axis=1))
    np.testing.assert_allclose(p, np.exp(z) / np.exp(z).sum(axis=1, keepdims=True), rtol=1e-5)
    binary = shapes_net(seed=0)  # one logit: P(class 0), P(class 1)
    images = rng.uniform(0, 1, (3, 1, 5, 5)).astype(np.float32)
    q = binary.predict_proba(images)
    logit = binary.predict(images)[:, 0]
    np.testing.assert_allclose(q[:, 1], 1 / (1 + np.exp(-logit)), rtol=1e-6)
    np.testing.assert_allclose(q.sum(axis=1), 1, rtol=1e-6)
    assert model.predict_proba(x[0]).shape == (1, 10)  # one image without a batch axis


def test_fit_evaluate_and_predict_choose_blas_threads_as_the_command_line(monkeypatch):
    """LeNet-sized work runs on one BLAS thread in every entry point (a second gains nothing
    and makes it 20-40x slower on a busy machine), and the setting is restored afterwards."""
    from scratchcnn.parallel import threads
    from scratchcnn.training import evaluate, fit

    monkeypatch.delenv("SCRATCHCNN_NUM_THREADS", raising=False)
    data = load_dataset("mnist-5k", "train")[:64]
    model = lenet5(seed=0)
    seen = []
    conv = model.layers[0]
    real = conv.forward
    monkeypatch.setattr(
        conv, "forward", lambda x: seen.append(threads._current_blas_threads()) or real(x)
    )
    if not threads.blas_libraries():
        pytest.fail("no BLAS library found by threadpoolctl")
    with threads.blas_threads(2):
        fit(model, data, epochs=1, batch_size=32, progress=False)
        assert seen and set(seen) == {1}
        assert threads._current_blas_threads() == 2  # restored
        seen.clear()
        evaluate(model, data)
        model.predict(data.images[:8])
        assert seen and set(seen) == {1}
        assert threads._current_blas_threads() == 2
        with threads.blas_threads(1):
            model.predict(data.images[:8])  # asked for 1: still 1 inside, and 1 after
            assert threads._current_blas_threads() == 1
        assert threads._current_blas_threads() == 2


def test_the_coming_from_pytorch_page_runs(tmp_path, monkeypatch):
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "pytorch.md").read_text(encoding="utf-8")
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("for x, y in DataLoader(", "for x, y in DataLoader(train[:256], ")
    code = code.replace("DataLoader(train[:256], train,", "DataLoader(train[:256],")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "docs/pytorch.md", "exec"), scope)
    assert scope["probs"].shape == (5, 10) and (tmp_path / "mnist.npz").is_file()
