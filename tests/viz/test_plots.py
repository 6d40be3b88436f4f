"""Plots of a training run folder: five PNGs of the promised sizes from a real (tiny) run,
binary models handled, and clear errors for broken folders."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import scratchcnn as sc
from scratchcnn.data import DataLoader, load_dataset
from scratchcnn.errors import DataError
from scratchcnn.nn.zoo import lenet5, shapes_net, tiny_cnn
from scratchcnn.viz import DPI, FIGSIZES, load_metrics, load_run, plot_run
from scratchcnn.viz.plots import (
    confusion_matrix,
    plot_feature_maps,
    plot_filters,
    plot_misclassified,
)

NAMES = [
    "curves.png",
    "confusion.png",
    "filters.png",
    "feature_maps.png",
    "misclassified.png",
    "grad_norms.png",
]


def make_run(
    out: Path,
    model: sc.Sequential,
    dataset: str,
    n: int,
    epochs: int = 1,
    with_test: bool = True,
    train: bool = True,
) -> Path:
    """A run folder like `scratchcnn train --out` writes: a few SGD steps of the library,
    then model.npz, metrics.jsonl (one line per epoch) and run.json."""
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(dataset, "train", seed=0)[:n]
    binary = model.layers[-1].params["weight"].shape[0] == 1
    loss_fn = sc.BCEWithLogitsLoss() if binary else sc.CrossEntropyLoss()
    opt = sc.optim.SGD(model, lr=0.05, momentum=0.9)
    lines = []
    for epoch in range(1, epochs + 1):
        total, correct = 0.0, 0
        for x, y in DataLoader(data, batch_size=32, seed=epoch):
            logits = model.forward(x)
            target = y[:, None].astype(np.float32) if binary else y
            loss = loss_fn.forward(logits, target)
            if train:
                model.backward(loss_fn.backward())
                opt.step()
            total += loss * len(y)
            pred = logits[:, 0] > 0 if binary else logits.argmax(axis=1)
            correct += int(np.sum(pred == y))
        record = {
            "epoch": epoch,
            "train_loss": total / n,
            "train_accuracy": correct / n,
            "test_loss": total / n * 1.1 if with_test else None,
            "test_accuracy": correct / n * 0.9 if with_test else None,
            "seconds": 0.1,
            "lr": 0.05,
        }
        lines.append(json.dumps(record))
    sc.save(model, out / "model.npz")
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    run = {"model": None, "dataset": dataset, "data_dir": None, "seed": 0, "epochs": epochs}
    (out / "run.json").write_text(json.dumps(run))
    return out


@pytest.fixture(scope="module")
def lenet_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("lenet") / "run", lenet5(seed=0), "mnist-5k", 256)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "run"
    return make_run(out, shapes_net(seed=0), "shapes", 512, epochs=3, with_test=False)


def check_png(path: Path, name: str) -> np.ndarray:
    assert path.name == name and path.is_file()
    w, h = FIGSIZES[name]
    with Image.open(path) as img:
        assert img.format == "PNG"
        if name in ("filters.png", "misclassified.png"):  # sized to the panels, at most
            assert img.size[0] <= int(w * DPI) and img.size[1] <= int(h * DPI)
            assert img.size[0] >= 7 * DPI and img.size[1] >= 4 * DPI
        else:
            assert img.size == (int(w * DPI), int(h * DPI))
        img.load()
        return np.asarray(img.convert("RGB"))


def test_plot_run_lenet_writes_the_six_pngs(lenet_dir):
    paths = plot_run(lenet_dir)
    assert paths == [lenet_dir / name for name in NAMES]
    for path, name in zip(paths, NAMES, strict=True):
        pixels = check_png(path, name)
        assert pixels.std() > 5, f"{name} looks blank"


def test_plot_run_shapes_net_is_binary(shapes_dir):
    paths = plot_run(str(shapes_dir))  # a str works too
    for path, name in zip(paths, NAMES, strict=True):
        check_png(path, name)
    data = load_run(shapes_dir)
    assert data.logits.shape == (500, 1)
    np.testing.assert_array_equal(data.predicted, (data.logits[:, 0] > 0).astype(np.int64))
    assert data.test.classes == ("cross", "rectangle")
    assert data.accuracy == pytest.approx(np.mean(data.predicted == data.test.labels))


def test_predictions_are_the_models(lenet_dir):
    data = load_run(lenet_dir)
    model = sc.load(lenet_dir / "model.npz")
    test = load_dataset("mnist-5k", "test")
    np.testing.assert_array_equal(data.predicted, model.predict(test.images).argmax(axis=1))
    assert len(data.metrics) == 1 and data.metrics[0]["epoch"] == 1


def test_confusion_matrix_counts():
    labels = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 0, 2])
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    np.testing.assert_array_equal(confusion_matrix(labels, predicted, 3), expected)
    assert confusion_matrix(labels, predicted, 3).sum() == len(labels)


def test_no_misclassified_says_so(shapes_dir, tmp_path):
    data = load_run(shapes_dir)
    perfect = dataclasses.replace(data, predicted=data.test.labels.copy())
    pixels = check_png(plot_misclassified(perfect, tmp_path / NAMES[4]), NAMES[4])
    # Only a line of text on white: almost every pixel is white.
    assert np.mean(np.all(pixels > 250, axis=-1)) > 0.97


def test_tiny_cnn_maps_without_activation(tmp_path):
    """tiny_cnn: a Rescale before the first Conv2D, no bias, no activation after it."""
    run = make_run(tmp_path / "run", tiny_cnn(seed=0), "mnist-5k", 64, train=False)
    data = load_run(run)
    check_png(plot_feature_maps(data, tmp_path / NAMES[3]), NAMES[3])
    check_png(plot_filters(data, tmp_path / NAMES[2]), NAMES[2])


def test_model_without_conv_says_so(tmp_path):
    model = sc.Sequential([sc.Flatten(), sc.Dense(784, 10)], input_shape=(1, 28, 28))
    run = make_run(tmp_path / "run", model, "mnist-5k", 32, train=False)
    paths = plot_run(run)
    for path, name in zip(paths, NAMES, strict=True):
        pixels = check_png(path, name)
        if name in ("filters.png", "feature_maps.png"):
            assert np.mean(np.all(pixels > 250, axis=-1)) > 0.97  # one line of text


# --- errors ------------------------------------------------------------------------


def test_missing_run_dir(tmp_path):
    missing = tmp_path / "no-such-run"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        plot_run(missing)


def test_no_metrics(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "run" / "metrics.jsonl"))):
        plot_run(tmp_path / "run")


def test_malformed_metrics_line_is_named(lenet_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.npz", "run.json"):
        (run / name).write_bytes((lenet_dir / name).read_bytes())
    good = json.dumps({"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5})
    (run / "metrics.jsonl").write_text(good + "\n{not json\n")
    with pytest.raises(DataError, match=r"metrics\.jsonl: line 2 is not valid JSON"):
        plot_run(run)
    (run / "metrics.jsonl").write_text(good + "\n\n" + json.dumps({"loss": 1}) + "\n")
    with pytest.raises(DataError, match="line 3 is not a metrics record"):
        plot_run(run)
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": "high"}))
    with pytest.raises(DataError, match="line 1: 'train_loss' must be a number"):
        plot_run(run)
    (run / "metrics.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no epochs"):
        plot_run(run)
    assert not any(run.glob("*.png"))


def test_load_metrics_reads_nulls_and_skips_blank_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"epoch": 1, "train_loss": 0.5, "test_loss": None}, {"epoch": 2, "train_loss": 0.25}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_metrics(path) == rows


def test_no_model(lenet_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.jsonl", "run.json"):
        (run / name).write_bytes((lenet_dir / name).read_bytes())
    with pytest.raises(DataError, match=r"model\.npz.*scratchcnn train --out"):
        plot_run(run)


def test_no_run_json(lenet_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.jsonl", "model.npz"):
        (run / name).write_bytes((lenet_dir / name).read_bytes())
    with pytest.raises(DataError, match=re.escape(str(run / "run.json"))):
        plot_run(run)
    (run / "run.json").write_text(json.dumps({"model": "lenet5"}))
    with pytest.raises(DataError, match="no 'dataset'"):
        plot_run(run)


def test_model_that_does_not_fit_the_data(shapes_dir, lenet_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.jsonl", "run.json"):
        (run / name).write_bytes((shapes_dir / name).read_bytes())
    (run / "model.npz").write_bytes((lenet_dir / "model.npz").read_bytes())
    with pytest.raises(DataError, match=r"\(1, 28, 28\).*\(1, 5, 5\)"):
        plot_run(run)


@pytest.mark.parametrize(
    "locs, expected",
    [
        ([70.0, 72.5, 75.0], ["70.0%", "72.5%", "75.0%"]),
        ([55.0, 60.0, 65.0], ["55%", "60%", "65%"]),
        ([90.0, 90.25, 90.5], ["90.00%", "90.25%", "90.50%"]),
    ],
)
def test_percent_ticks_keep_the_decimals_their_step_needs(locs, expected):
    from scratchcnn.viz.plots import StepPercent

    fmt = StepPercent()
    fmt.set_locs(locs)
    assert [fmt(v) for v in locs] == expected
