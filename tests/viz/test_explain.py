"""The cross-vs-rectangle walkthrough: its numbers are the library's own forward outputs and
backward gradients, the gradients pass finite differences, and the text and picture show
them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import scratchcnn as sc
from scratchcnn.data import make_shapes
from scratchcnn.nn.zoo import shapes_net
from scratchcnn.viz import (
    DPI,
    WALKTHROUGH_FIGSIZE,
    Walkthrough,
    format_walkthrough,
    plot_walkthrough,
    run_walkthrough,
)

SEEDS = [0, 1, 2, 3, 7]


@pytest.fixture(scope="module", params=SEEDS)
def walk(request) -> Walkthrough:
    return run_walkthrough(request.param)


def test_seeds_cover_both_classes():
    assert {run_walkthrough(s).label for s in SEEDS} == {0, 1}


def test_forward_numbers_equal_a_fresh_forward(walk):
    images, labels = make_shapes(1, walk.seed)
    assert walk.label == labels[0]
    assert walk.class_name == ("cross", "rectangle")[walk.label]
    np.testing.assert_array_equal(walk.image, images[0, 0])

    model = shapes_net(dtype=np.float64, seed=walk.seed)
    conv, dense = model.layers[0], model.layers[4]
    np.testing.assert_array_equal(walk.kernel, conv.params["weight"][0, 0])
    assert walk.conv_bias == conv.params["bias"][0] == 1.0
    np.testing.assert_array_equal(walk.dense_weight, dense.params["weight"])
    assert walk.dense_bias == dense.params["bias"][0]

    x = images.astype(np.float64)
    outs = []
    for layer in model.layers:
        x = layer.forward(x)
        outs.append(x)
    np.testing.assert_array_equal(walk.conv_out, outs[0][0, 0])
    np.testing.assert_array_equal(walk.relu_out, outs[1][0, 0])
    np.testing.assert_array_equal(walk.pooled, outs[2][0, 0])
    np.testing.assert_array_equal(walk.flat, outs[3][0])
    assert walk.logit == outs[4][0, 0]
    assert walk.prob == pytest.approx(1 / (1 + np.exp(-walk.logit)), rel=1e-12)
    y = walk.label
    bce = -(y * np.log(walk.prob) + (1 - y) * np.log(1 - walk.prob))
    assert walk.loss == pytest.approx(bce, rel=1e-9)
    # The whole model gives the same logit as the walkthrough's layer-by-layer pass: to the
    # bit as written (the reference), to rounding through the engine's routes.
    with sc.engine.using("numpy"):
        assert model.forward(images.astype(np.float64))[0, 0] == walk.logit
    assert model.forward(images.astype(np.float64))[0, 0] == pytest.approx(walk.logit, rel=1e-12)


def test_conv_result_is_the_tutorial_formula(walk):
    windows = np.lib.stride_tricks.sliding_window_view(walk.image, (3, 3))
    expected = walk.conv_bias + np.einsum("ijuv,uv->ij", windows, walk.kernel)
    np.testing.assert_allclose(walk.conv_out, expected, rtol=1e-12)


def test_pool_argmax_cells_hold_each_window_max(walk):
    rows, cols = walk.pool_argmax[..., 0], walk.pool_argmax[..., 1]
    np.testing.assert_array_equal(walk.relu_out[rows, cols], walk.pooled)
    # Each winner lies inside its own 2x2 window (stride 1: window (i, j) covers i..i+1).
    i, j = np.indices((2, 2))
    assert np.all((rows >= i) & (rows <= i + 1) & (cols >= j) & (cols <= j + 1))


def test_pool_routed_gradient_only_at_argmax_cells(walk):
    routes = walk.pool_routes
    assert routes.sum() == 4
    np.testing.assert_array_equal(walk.dL_drelu[routes == 0], 0.0)
    expected = np.zeros((3, 3))
    np.add.at(expected, (walk.pool_argmax[..., 0], walk.pool_argmax[..., 1]), walk.dL_dpooled)
    np.testing.assert_allclose(walk.dL_drelu, expected, rtol=1e-12, atol=0)


def test_gradients_are_the_library_backward_and_pass_gradcheck(walk):
    x = walk.image[None, None].copy()
    dy = np.array([[walk.dL_dlogit]])
    result = sc.gradcheck(walk.model, x, dy)
    assert result.ok, str(result)
    analytic = {c.name: c.analytic for c in result.checks}
    np.testing.assert_allclose(analytic["0.weight"], walk.dL_dkernel.ravel(), rtol=1e-12)
    np.testing.assert_allclose(analytic["0.bias"], [walk.dL_dbias], rtol=1e-12)
    np.testing.assert_allclose(analytic["4.weight"], walk.dL_dw.ravel(), rtol=1e-12)
    np.testing.assert_allclose(analytic["4.bias"], [walk.dL_db], rtol=1e-12)
    np.testing.assert_allclose(analytic["input"], walk.dL_dimage.ravel(), rtol=1e-12)

    loss_check = sc.gradcheck(
        sc.BCEWithLogitsLoss(), np.array([[walk.logit]]), target=np.array([[walk.label]])
    )
    assert loss_check.ok, str(loss_check)
    assert loss_check.checks[0].analytic[0] == pytest.approx(walk.dL_dlogit, rel=1e-12)
    assert walk.dL_dlogit == pytest.approx(walk.prob - walk.label, rel=1e-12)


def test_kernel_gradient_matches_finite_differences_of_the_loss(walk):
    """End to end: perturb each kernel weight and the conv bias, rerun model + loss."""
    model = shapes_net(dtype=np.float64, seed=walk.seed)
    x = walk.image[None, None].copy()
    target = np.array([[walk.label]], dtype=np.float64)
    loss_fn = sc.BCEWithLogitsLoss()

    def loss() -> float:
        return loss_fn.forward(model.forward(x), target)

    eps = 1e-6
    for tensor, grad in (
        (model.layers[0].params["weight"][0, 0], walk.dL_dkernel),
        (model.layers[0].params["bias"], np.array([walk.dL_dbias])),
    ):
        numeric = np.zeros(tensor.shape)
        for idx in np.ndindex(tensor.shape):
            old = tensor[idx]
            tensor[idx] = old + eps
            plus = loss()
            tensor[idx] = old - eps
            minus = loss()
            tensor[idx] = old
            numeric[idx] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_gradient_shapes(walk):
    assert walk.dL_dw.shape == (1, 4)
    assert walk.dL_dflat.shape == (4,)
    assert walk.dL_dpooled.shape == (2, 2)
    assert walk.dL_drelu.shape == walk.dL_dconv.shape == walk.dL_dkernel.shape == (3, 3)
    assert walk.pool_argmax.shape == (2, 2, 2)
    np.testing.assert_allclose(walk.dL_dw[0], walk.dL_dlogit * walk.flat, rtol=1e-12)
    assert walk.dL_db == walk.dL_dlogit
    np.testing.assert_array_equal(walk.dL_dconv, np.where(walk.conv_out > 0, walk.dL_drelu, 0))


def test_format_walkthrough_labels_and_numbers(walk):
    text = format_walkthrough(walk)
    for label in ("dL/dw", "dL/db", "dL/dkernel", "dL/dbias", "dL/dz", "routed back"):
        assert label in text
    assert f"{walk.loss:.4f}" in text
    assert f"seed {walk.seed}" in text
    assert walk.class_name in text
    # The kernel grid and the kernel gradient grid appear with 3 decimals.
    assert "  ".join(f"{v:.3f}" for v in walk.kernel[0]) in text
    assert f"dL/dbias = sum_{{i,j}} dL/dconv[i, j] = {walk.dL_dbias:.3f}" in text
    # The pooling winners are named.
    r, c = walk.pool_argmax[0, 0]
    assert f"ReLU cell ({r}, {c})" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_plot_walkthrough_writes_one_png(tmp_path):
    w = run_walkthrough(0)
    path = plot_walkthrough(w, tmp_path / "sub" / "walk.png")
    assert path == tmp_path / "sub" / "walk.png"
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (int(WALKTHROUGH_FIGSIZE[0] * DPI), int(WALKTHROUGH_FIGSIZE[1] * DPI))
        img.load()
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10  # not a blank canvas


def test_bad_seed_is_a_config_error():
    with pytest.raises(sc.ConfigError, match="-1"):
        run_walkthrough(-1)
