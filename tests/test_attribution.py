"""Saliency against finite differences, Grad-CAM against a hand computation, and the
bookkeeping: nothing about the model is changed by explaining it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scratchcnn as sc
from scratchcnn.nn.attribution import (
    class_probabilities,
    format_layer_table,
    gradcam_layer,
    layer_statistics,
    leaf_layers,
    trace,
    upsample,
)
from tests.conftest import distinct


def _small_cnn(rng: np.random.Generator) -> sc.Sequential:
    model = sc.Sequential(
        [
            sc.Conv2D(2, 3, 3, padding=1, dtype=np.float64),
            sc.Tanh(),
            sc.MaxPool2D(2),
            sc.Conv2D(3, 4, 2, dtype=np.float64),
            sc.Tanh(),
            sc.Flatten(),
            sc.Dense(4 * 2 * 2, 5, dtype=np.float64),
        ],
        input_shape=(2, 6, 6),
    )
    for _, layer, name in model.named_leaf_parameters():
        layer.params[name][...] = rng.normal(0, 0.7, layer.params[name].shape)
    return model


def _scores(model: sc.Sequential, x: np.ndarray, target: np.ndarray) -> float:
    logits = model.eval().forward(x)
    return float(logits[np.arange(len(x)), target].sum())


def _numeric_input_grad(model, x, target, eps=1e-6) -> np.ndarray:
    """d score / d x by central differences, one input entry at a time."""
    numeric = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        hi, lo = x.copy(), x.copy()
        hi[idx] += eps
        lo[idx] -= eps
        numeric[idx] = (_scores(model, hi, target) - _scores(model, lo, target)) / (2 * eps)
    return numeric


def test_saliency_is_the_absolute_finite_difference_gradient(rng):
    model = _small_cnn(rng)
    x = distinct((2, 2, 6, 6), rng)
    target = np.array([1, 4])
    sal = sc.saliency(model, x, target=target)
    assert sal.shape == x.shape
    numeric = _numeric_input_grad(model, x, target)
    np.testing.assert_allclose(sal, np.abs(numeric), rtol=1e-5, atol=1e-8)
    assert np.abs(numeric).max() > 1e-3  # the test looks at real gradients


def test_saliency_defaults_to_the_predicted_class_and_takes_one_image(rng):
    model = _small_cnn(rng)
    x = distinct((2, 6, 6), rng)
    predicted = int(model.predict(x).argmax())
    one = sc.saliency(model, x)
    assert one.shape == (2, 6, 6)
    np.testing.assert_array_equal(one, sc.saliency(model, x[None], target=predicted)[0])
    other = (predicted + 1) % 5
    assert not np.allclose(one, sc.saliency(model, x, target=other))


def test_binary_model_explains_class_zero_with_the_negated_logit(rng):
    model = sc.Sequential([sc.Flatten(), sc.Dense(4, 1, dtype=np.float64)], input_shape=(1, 2, 2))
    x = rng.normal(size=(1, 2, 2))
    w = model.layers[1].params["weight"].reshape(1, 2, 2)
    t = trace(model, x, target=0)
    np.testing.assert_allclose(t.input_grad[0], -w)
    np.testing.assert_allclose(sc.saliency(model, x, target=1), np.abs(w))
    probs = class_probabilities(t.logits)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert probs[0, 1] == pytest.approx(1 / (1 + np.exp(-t.logits[0, 0])))


def test_gradcam_equals_a_hand_computation_on_a_tiny_model(rng):
    conv = sc.Conv2D(1, 2, 2, dtype=np.float64)
    dense = sc.Dense(8, 3, dtype=np.float64)
    model = sc.Sequential([conv, sc.Flatten(), dense], input_shape=(1, 3, 3))
    x = rng.normal(size=(1, 3, 3))
    w, b = conv.params["weight"], conv.params["bias"]
    # The convolution's output by hand: A[c, i, j] = b[c] + sum_{u,v} w[c, 0, u, v] x[i+u, j+v]
    a = np.zeros((2, 2, 2))
    for c in range(2):
        for i in range(2):
            for j in range(2):
                a[c, i, j] = b[c] + np.sum(w[c, 0] * x[0, i : i + 2, j : j + 2])
    logits = dense.params["weight"] @ a.ravel() + dense.params["bias"]
    target = int(np.argmax(logits))
    # score = W[target] . flatten(A) + b, so d score / d A = W[target] reshaped to (2, 2, 2)
    alpha = dense.params["weight"][target].reshape(2, 2, 2).mean(axis=(1, 2))
    expected = np.maximum(alpha[0] * a[0] + alpha[1] * a[1], 0)
    cam = sc.gradcam(model, x)
    assert cam.shape == (2, 2)
    np.testing.assert_allclose(cam, expected, rtol=1e-12, atol=1e-12)
    for other in range(3):
        alpha = dense.params["weight"][other].reshape(2, 2, 2).mean(axis=(1, 2))
        np.testing.assert_allclose(
            sc.gradcam(model, x, target=other),
            np.maximum(alpha[0] * a[0] + alpha[1] * a[1], 0),
            atol=1e-12,
        )


def test_gradcam_picks_the_last_conv_and_takes_a_prefix_index_or_layer(rng):
    model = _small_cnn(rng)
    x = distinct((2, 6, 6), rng)
    assert gradcam_layer(model) == "3"
    default = sc.gradcam(model, x)
    assert default.shape == (2, 2)
    np.testing.assert_array_equal(default, sc.gradcam(model, x, layer="3"))
    np.testing.assert_array_equal(default, sc.gradcam(model, x, layer=model.layers[3]))
    first = sc.gradcam(model, x, layer=0)
    assert first.shape == (6, 6)
    assert (first >= 0).all()
    with pytest.raises(sc.ConfigError, match="no layer '9'"):
        sc.gradcam(model, x, layer="9")
    with pytest.raises(sc.ConfigError, match=r"4-D.*layer 5 outputs"):
        sc.gradcam(model, x, layer=5)


def test_gradcam_without_a_4d_activation_says_so():
    model = sc.Sequential([sc.Flatten(), sc.Dense(4, 3), sc.ReLU()], input_shape=(1, 2, 2))
    with pytest.raises(sc.ConfigError, match=r"needs a 4-D \(N, C, H, W\) activation.*none"):
        sc.gradcam(model, np.ones((1, 2, 2), np.float32))
    # A model without Conv2D but with a 4-D activation uses the last one.
    pooled = sc.Sequential([sc.MaxPool2D(2), sc.Flatten(), sc.Dense(4, 3)], input_shape=(1, 4, 4))
    assert sc.gradcam(pooled, np.ones((1, 4, 4), np.float32)).shape == (2, 2)


def test_explaining_leaves_the_model_as_it_was(rng):
    model = _small_cnn(rng)
    model.train()
    x = distinct((3, 2, 6, 6), rng)
    model.forward(x)
    model.backward(np.ones((3, 5)))
    before = {k: la.grads[n].copy() for k, la, n in model.named_leaf_parameters()}
    sc.gradcam(model, x)
    sc.saliency(model, x)
    assert model.training and all(la.training for la in model.layers)
    for key, layer, name in model.named_leaf_parameters():
        np.testing.assert_array_equal(layer.grads[name], before[key])
    for layer in model.layers:
        assert "forward" not in vars(layer) and "backward" not in vars(layer)


def test_bad_targets_and_inputs_are_one_line_errors(rng):
    model = _small_cnn(rng)
    x = distinct((2, 6, 6), rng)
    with pytest.raises(sc.ConfigError, match=r"class in 0\.\.4"):
        sc.saliency(model, x, target=5)
    with pytest.raises(sc.ConfigError, match="class index"):
        sc.saliency(model, x, target=1.5)
    with pytest.raises(sc.DTypeError, match=r"numpy\.ndarray"):
        sc.saliency(model, x.tolist())
    with pytest.raises(sc.DTypeError, match="scale integer images first"):
        sc.saliency(model, (x * 255).astype(np.uint8))


def test_layer_statistics_and_table(rng):
    model = sc.Sequential(
        [
            sc.Conv2D(1, 4, 3, dtype=np.float64),
            sc.ReLU(),
            sc.Flatten(),
            sc.Dense(64, 3, dtype=np.float64),
        ],
        input_shape=(1, 6, 6),
    )
    x = rng.normal(size=(1, 6, 6))
    t = trace(model, x)
    stats = layer_statistics(t)
    assert [s.prefix for s in stats] == ["0", "1", "2", "3"]
    relu = stats[1]
    out = np.maximum(model.layers[0].forward(x[None]), 0)
    assert relu.dead_fraction == pytest.approx(np.mean(out == 0))
    assert relu.act_mean == pytest.approx(out.mean())
    assert stats[0].dead_fraction is None
    assert stats[3].grad_mean == pytest.approx(1 / 3)  # d score / d logits is one-hot
    table = format_layer_table(stats)
    assert "ReLU" in table and f"{relu.dead_fraction:.1%}" in table
    assert len(table.splitlines()) == len(stats) + 2
    assert [p for p, _ in leaf_layers(model)] == ["0", "1", "2", "3"]


def test_upsample_matches_torch_bilinear(rng):
    maps = rng.normal(size=(2, 5, 4))
    ours = upsample(maps, (28, 19))
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(maps)[None], size=(28, 19), mode="bilinear", align_corners=False
    )[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def _residual_model(rng: np.random.Generator) -> sc.Sequential:
    model = sc.Sequential(
        [
            sc.Conv2D(1, 2, 3, padding=1, dtype=np.float64),
            sc.Residual(
                [sc.Conv2D(2, 2, 3, padding=1, dtype=np.float64), sc.Tanh()],
                shortcut=[sc.Conv2D(2, 2, 1, dtype=np.float64)],
            ),
            sc.Tanh(),
            sc.GlobalAvgPool2D(),
            sc.Flatten(),
            sc.Dense(2, 3, dtype=np.float64),
        ],
        input_shape=(1, 5, 5),
    )
    for _, layer, name in model.named_leaf_parameters():
        layer.params[name][...] = rng.normal(0, 0.8, layer.params[name].shape)
    return model


def test_saliency_and_gradcam_walk_into_blocks(rng):
    model = _residual_model(rng)
    x = distinct((2, 1, 5, 5), rng)
    target = np.array([2, 0])
    sal = sc.saliency(model, x, target=target)
    numeric = _numeric_input_grad(model, x, target)
    np.testing.assert_allclose(sal, np.abs(numeric), rtol=1e-5, atol=1e-8)
    # The default is the body's conv, not the later 1x1 projection shortcut.
    assert gradcam_layer(model) == "1.body.0"
    t = trace(model, x, target)
    assert set(t.activations) == {p for p, _ in leaf_layers(model)}
    a, g = t.activations["1.body.0"], t.gradients["1.body.0"]
    expected = np.maximum(np.einsum("nc,nchw->nhw", g.mean(axis=(2, 3)), a), 0)
    np.testing.assert_allclose(sc.gradcam(model, x, target=target), expected)
    assert sc.gradcam(model, x, layer="1.shortcut.0", target=target).shape == (2, 5, 5)
    for _, layer in leaf_layers(model):
        assert "forward" not in vars(layer) and "backward" not in vars(layer)
