"""`scratchcnn train --tensorboard`: the events read back with TensorBoard's own reader, tags
and values, and a resume that appends without duplicate steps."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboardX import SummaryWriter

from scratchcnn import load
from scratchcnn.cli import main
from scratchcnn.nn.zoo import lenet5
from scratchcnn.training.tensorboard import filter_grid

QUICK = ["--limit", "128", "--batch-size", "32", "--quiet", "--tensorboard"]
SCALARS = {"loss/train", "loss/test", "accuracy/train", "accuracy/test", "lr"}


def _events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_tensorboard_writes_scalars_histograms_and_filters(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--out", str(out), *QUICK]) == 0
    assert json.loads((out / "run.json").read_text())["tensorboard"] is True
    acc = _events(out)
    tags = acc.Tags()
    keys = list(lenet5().state_dict())  # the default model; it has no buffers
    assert SCALARS <= set(tags["scalars"])
    assert {f"grad_norm/{k}" for k in keys} <= set(tags["scalars"])
    assert set(tags["histograms"]) == {f"{kind}/{k}" for kind in ("weights", "grads") for k in keys}
    assert tags["images"] == ["filters/0.weight"]
    metrics = _metrics(out)
    for tag, field in [
        ("loss/train", "train_loss"),
        ("loss/test", "test_loss"),
        ("accuracy/train", "train_accuracy"),
        ("accuracy/test", "test_accuracy"),
        ("lr", "lr"),
    ]:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([m[field] for m in metrics], rel=1e-6)
    norms = acc.Scalars("grad_norm/0.weight")
    assert [e.value for e in norms] == pytest.approx(
        [m["grad_norms"]["0.weight"] for m in metrics], rel=1e-6
    )
    hist = acc.Histograms("weights/11.bias")[-1].histogram_value
    bias = load(out / "model.npz").layers[11].params["bias"]
    assert hist.num == bias.size
    assert hist.sum == pytest.approx(float(bias.sum()), rel=1e-5, abs=1e-6)
    image = acc.Images("filters/0.weight")[-1]
    assert image.step == 2 and image.width > 6 * 5 and image.height > 5


@pytest.mark.slow
def test_resume_appends_without_duplicate_steps(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--out", str(out), *QUICK]) == 0
    # A killed run may have logged an epoch whose checkpoint never landed: a stray step 3.
    with SummaryWriter(logdir=str(out)) as stray:
        stray.add_scalar("loss/train", 99.0, 3)
    assert main(["train", "--epochs", "3", "--out", str(out), "--resume", *QUICK]) == 0
    acc = _events(out)
    metrics = _metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    for tag, field in [("loss/train", "train_loss"), ("accuracy/test", "test_accuracy")]:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3]
        assert [e.value for e in events] == pytest.approx([m[field] for m in metrics], rel=1e-6)
    assert [h.step for h in acc.Histograms("grads/0.weight")] == [1, 2, 3]


def test_tensorboard_can_be_switched_on_when_resuming(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--limit", "64", "--batch-size", "32", "--quiet", "--out", str(out)]
    assert main(["train", "--epochs", "1", *base]) == 0
    assert not list(out.glob("events.out.tfevents.*"))
    assert main(["train", "--epochs", "2", "--resume", "--tensorboard", *base]) == 0
    acc = _events(out)
    assert [e.step for e in acc.Scalars("loss/train")] == [2]
    assert main(["train", "--epochs", "3", "--resume", "--lr", "0.1", *base]) == 2
    assert "only --epochs, --tensorboard" in capsys.readouterr().err


def test_filter_grid_tiles_every_filter_with_zero_as_mid_grey():
    weight = np.zeros((6, 1, 5, 5))
    weight[0, 0, 2, 2] = 1.0
    weight[5, 0, 0, 0] = -1.0
    grid = filter_grid(weight, cell=10)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 11 + 1, 3 * 11 + 1, 3)
    assert grid[1 + 4, 1 + 4].tolist() == [255, 255, 255]  # filter 0, centre: +max = white
    assert grid[1 + 2, 1 + 2].tolist() == [128, 128, 128]  # zero weight: mid grey
    assert grid[12, 23].tolist() == [0, 0, 0]  # filter 5 (row 1, col 2), corner: -max = black
    assert (grid[0] == 255).all() and (grid[:, 0] == 255).all()  # white gaps


def test_import_scratchcnn_does_not_import_tensorboardx():
    code = (
        "import sys, scratchcnn, scratchcnn.cli, scratchcnn.training.loop; "
        "assert 'tensorboardX' not in sys.modules and 'tensorboard' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_tensorboardx_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), *QUICK]) == 2
    err = capsys.readouterr().err
    assert err == (
        "scratchcnn: error: TensorBoard logging needs tensorboardX: pip install tensorboardX "
        "(the [tensorboard] extra: pip install -e '.[tensorboard]' in a clone)\n"
    )
    assert not (out / "model.npz").exists()
