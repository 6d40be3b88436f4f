"""grad_norms in metrics.jsonl: the mean over an epoch's steps of each parameter's gradient
norm, and its curve in `scratchcnn plot`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import scratchcnn as sc
from scratchcnn.data import load_dataset
from scratchcnn.nn.zoo import shapes_net
from scratchcnn.training import fit
from scratchcnn.training.gradnorms import GradNormMeter
from scratchcnn.viz import DPI, FIGSIZES
from scratchcnn.viz.plots import load_metrics, load_run, plot_grad_norms


def test_meter_averages_each_parameters_norm_over_steps():
    model = sc.Sequential([sc.Dense(3, 2)])
    meter = GradNormMeter(model)
    assert meter.means() is None
    dense = model.layers[0]
    dense.grads["weight"] = np.full((2, 3), 1.0, np.float32)  # norm sqrt(6)
    dense.grads["bias"] = np.array([3.0, 4.0], np.float32)  # norm 5
    meter.update()
    dense.grads["weight"] = np.zeros((2, 3), np.float32)
    dense.grads["bias"] = np.array([0.0, 1.0], np.float32)
    meter.update()
    assert meter.means() == pytest.approx({"0.weight": np.sqrt(6) / 2, "0.bias": 3.0})


class Spy(sc.Layer):
    """Identity that keeps a copy of every batch it sees (to replay fit's batches)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[np.ndarray] = []

    def forward(self, x):
        self.seen.append(x.copy())
        return x

    def backward(self, dy):
        return dy


def test_fit_records_the_mean_gradient_norm_of_every_parameter(tmp_path):
    """With lr 1e-30 the float32 weights never move (w - 1e-30 g rounds to w), so each
    step's gradient can be recomputed here from the batches fit used."""
    data = load_dataset("shapes", "train", seed=0)[:96]
    net = shapes_net(seed=0)
    spy = Spy()
    model = sc.Sequential([spy, *net.layers], input_shape=net.input_shape)
    fit(
        model,
        data,
        epochs=2,
        batch_size=16,
        optimizer=sc.optim.SGD(model, lr=1e-30),
        seed=3,
        out_dir=tmp_path,
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    batches = [x for x in spy.seen if len(x) == 16]  # not the shape probes (one zero image)
    assert len(records) == 2 and len(batches) == 2 * 6
    loss_fn = sc.BCEWithLogitsLoss()
    index = {tuple(img.ravel()): label for img, label in zip(data.images, data.labels, strict=True)}
    for epoch, record in enumerate(records):
        sums: dict[str, float] = {}
        for x in batches[epoch * 6 : epoch * 6 + 6]:
            y = np.array([index[tuple(img.ravel())] for img in x], np.float32)[:, None]
            net.train()
            loss_fn.forward(net.forward(x), y)
            net.backward(loss_fn.backward())
            for key, layer, name in net.named_leaf_parameters():
                sums[key] = sums.get(key, 0.0) + float(np.linalg.norm(layer.grads[name]))
        expected = {f"{int(k.split('.')[0]) + 1}.{k.split('.')[1]}": v / 6 for k, v in sums.items()}
        assert set(record["grad_norms"]) == {k for k, _, _ in model.named_leaf_parameters()}
        assert record["grad_norms"] == pytest.approx(expected, rel=1e-5)
        assert all(v > 0 for v in expected.values())


@pytest.fixture(scope="module")
def run_with_norms(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    data = load_dataset("shapes", "train", seed=0)[:64]
    model = shapes_net(seed=0)
    fit(model, data, test_data=data, epochs=3, batch_size=16, out_dir=out)
    (out / "run.json").write_text(json.dumps({"model": "shapes_net", "dataset": "shapes"}))
    return out


def test_plot_draws_the_gradient_norm_curves(run_with_norms, tmp_path):
    data = load_run(run_with_norms)
    path = plot_grad_norms(data, tmp_path / "grad_norms.png")
    w, h = FIGSIZES["grad_norms.png"]
    with Image.open(path) as png:
        assert png.size == (round(w * DPI), round(h * DPI))
        pixels = np.asarray(png.convert("RGB"))
    # Coloured curves, not the grey "no gradient norms" text on white.
    assert np.mean(np.ptp(pixels.astype(int), axis=-1) > 60) > 0.002
    old = [{k: v for k, v in m.items() if k != "grad_norms"} for m in data.metrics]
    blank = plot_grad_norms(type(data)(**{**vars(data), "metrics": old}), tmp_path / "g.png")
    with Image.open(blank) as png:
        assert np.mean(np.asarray(png.convert("L")) > 250) > 0.97


def test_bad_grad_norms_in_metrics_are_refused(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"epoch": 1, "grad_norms": {"0.weight": "big"}}) + "\n")
    with pytest.raises(sc.DataError, match="line 1: 'grad_norms' must be an object of numbers"):
        load_metrics(path)
