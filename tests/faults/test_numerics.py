"""Divergence: a learning rate so high that the loss blows up stops the run with one line and
keeps the last good checkpoint; weights that blow up in an epoch's last step are never saved."""

from __future__ import annotations

import re

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.data import load_dataset
from scratchcnn.nn.zoo import tiny_cnn
from scratchcnn.training import fit

from .conftest import error_line, run_cli


def test_too_high_a_learning_rate_stops_the_command_and_keeps_the_last_good_checkpoint(tmp_path):
    # tiny_cnn has no non-linearity to saturate: at lr 0.5 it survives epoch 1, then diverges.
    out = tmp_path / "run"
    args = ["--model", "tiny_cnn", "--limit", "512", "--epochs", "4", "--schedule", "none"]
    result = run_cli("train", *args, "--lr", "0.5", "--quiet", "--out", out)
    line = error_line(result)
    match = re.fullmatch(
        r"scratchcnn: error: loss became (nan|inf) at epoch (\d+), step \d+ \(lr 0\.5\); the "
        r"last good checkpoint is epoch (\d+) at (.+); try a lower learning rate or gradient "
        r"clipping",
        line,
    )
    assert match, line
    epoch, last, path = int(match[2]), int(match[3]), match[4]
    assert epoch >= 2 and last == epoch - 1 and path == str(out / "model.npz")
    ckpt = sc.load_checkpoint(out / "model.npz")  # loads: finite weights, complete file
    assert ckpt.epoch == last
    assert len((out / "metrics.jsonl").read_text().splitlines()) == last
    # Resuming the same run diverges the same way (deterministic), never past the good state.
    again = run_cli("train", *args, "--lr", "0.5", "--quiet", "--out", out, "--resume")
    assert error_line(again) == line
    assert sc.load_checkpoint(out / "model.npz").epoch == last


class _BlowUpAt:
    """An SGD step hook that ruins the weights on one step (the last of epoch 2)."""

    def __init__(self, opt: sc.optim.SGD, step: int, value: float) -> None:
        self.opt, self.step_no, self.value = opt, step, value
        self._step = opt.step
        opt.step = self  # type: ignore[method-assign]

    def __call__(self) -> None:
        self._step()
        if self.opt.steps == self.step_no:
            for layer in self.opt.model.layers:
                for p in layer.params.values():
                    p[...] = self.value


@pytest.mark.parametrize(
    "value,what",
    [
        (np.inf, r"weights became NaN or inf \(1\.weight, 4\.weight, 4\.bias\) during epoch 2"),
        # Finite weights whose logits overflow: the test loss shows it.
        (3e38, r"test loss became nan after epoch 2"),
    ],
)
def test_weights_ruined_by_an_epochs_last_step_are_never_saved(tmp_path, value, what):
    train = load_dataset("mnist-5k", "train")[:64]
    test = load_dataset("mnist-5k", "test")[:32]
    model = tiny_cnn(seed=0)
    opt = sc.optim.SGD(model, lr=0.01)
    _BlowUpAt(opt, step=4, value=value)  # 2 steps per epoch: the last step of epoch 2
    saved = {}

    def keep(metrics):
        saved[metrics.epoch] = (tmp_path / "model.npz").read_bytes()

    with pytest.raises(sc.TrainingDiverged) as err:
        fit(
            model,
            train,
            test_data=test,
            epochs=3,
            batch_size=32,
            optimizer=opt,
            out_dir=tmp_path,
            on_epoch_end=keep,
            progress=False,
        )
    assert re.fullmatch(
        what + r" \(lr 0\.01\); the last good checkpoint is epoch 1 at .*model\.npz; try a "
        r"lower learning rate or gradient clipping",
        str(err.value),
    ), str(err.value)
    assert list(saved) == [1]
    assert (tmp_path / "model.npz").read_bytes() == saved[1]
    assert sc.load_checkpoint(tmp_path / "model.npz").epoch == 1


def test_divergence_in_the_first_epoch_writes_no_checkpoint(tmp_path):
    result = run_cli(
        "train", "--model", "tiny_cnn", "--limit", "512", "--epochs", "2", "--schedule",
        "none", "--lr", "8", "--quiet", "--out", tmp_path,
    )  # fmt: skip
    line = error_line(result)
    assert re.fullmatch(
        r"scratchcnn: error: (loss became (nan|inf) at epoch 1, step \d+|test loss became nan "
        r"after epoch 1) \(lr 8\); try a lower learning rate or gradient clipping",
        line,
    ), line
    assert not (tmp_path / "model.npz").exists()


def test_gradient_clipping_keeps_the_same_run_finite(tmp_path):
    """The advice in the message works: the diverging run, clipped, finishes."""
    result = run_cli(
        "train", "--model", "tiny_cnn", "--limit", "512", "--epochs", "2", "--schedule",
        "none", "--lr", "0.5", "--clip", "1", "--quiet", "--out", tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not sc.train.non_finite_tensors(sc.load(tmp_path / "model.npz"))
