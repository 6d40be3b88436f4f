"""A newcomer's first hour with the command line: resume past the schedule, fine-tuning's
rate, BatchNorm's eval-mode gap explained, the header and help texts."""

from __future__ import annotations

import json

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.cli import build_parser, main
from scratchcnn.training.job import eval_gap_hint
from scratchcnn.training.runs import EpochMetrics

SMALL = ["--limit", "128", "--batch-size", "32"]


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_past_a_cosine_schedule_stretches_it_and_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "--epochs", "4", "--out", str(out), "--resume"]) == 0
    text = capsys.readouterr().out
    assert "cosine schedule was made for 2 epochs: stretched to 4" in text
    lrs = [m["lr"] for m in _metrics(out)]
    # epochs 1-2 on the 2-epoch cosine (0.05, 0.025), then epochs 3-4 on the 4-epoch one at
    # epochs 2 and 3: never the bottom of the curve (0.0), never climbing back
    cosine = lambda e, t: 0.05 * (1 + np.cos(np.pi * e / t)) / 2  # noqa: E731
    np.testing.assert_allclose(lrs, [0.05, cosine(1, 2), cosine(2, 4), cosine(3, 4)], rtol=1e-9)
    assert min(lrs) > 0.005
    ckpt = sc.load_checkpoint(out / "model.npz")
    assert ckpt.scheduler_state["T_max"] == 4


def test_init_fine_tunes_at_a_tenth_of_the_recipes_rate(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["train", *SMALL, "--epochs", "1", "--quiet", "--out", str(first)]) == 0
    tuned = tmp_path / "tuned"
    argv = ["train", *SMALL, "--epochs", "1", "--init", str(first / "model.npz")]
    assert main([*argv, "--out", str(tuned)]) == 0
    text = capsys.readouterr().out
    assert "lr 0.005 (fine-tuning: 0.1 x the recipe's rate; --lr sets another)" in text
    assert "for 1 epoch," in text  # one epoch, not "1 epochs"
    assert json.loads((tuned / "run.json").read_text())["lr"] == pytest.approx(0.005)
    chosen = tmp_path / "chosen"
    assert main([*argv, "--lr", "0.02", "--quiet", "--out", str(chosen)]) == 0
    assert json.loads((chosen / "run.json").read_text())["lr"] == 0.02


def test_eval_far_below_train_with_batchnorm_is_explained():
    with_bn = sc.Sequential(sc.Conv2D(1, 2, 3), sc.BatchNorm2D(2), sc.Flatten())
    with_bn.layers[1].buffers["num_batches_tracked"][...] = 16
    gap = EpochMetrics(1, 0.5, 0.9, 2.3, 0.11, 1.0, 0.1)
    hint = eval_gap_hint(with_bn, gap)
    assert "BatchNorm normalises with its running statistics, which have seen 16 steps" in hint
    assert eval_gap_hint(sc.Sequential(sc.Flatten()), gap) == ""  # no BatchNorm: no hint
    close = EpochMetrics(1, 0.5, 0.9, 0.6, 0.85, 1.0, 0.1)
    assert eval_gap_hint(with_bn, close) == ""


def test_every_train_option_has_its_own_help_text():
    parser = build_parser()
    train = next(
        a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "train"
    )[1]
    helps = [a.help for a in train._actions if a.help and a.option_strings != ["-h", "--help"]]
    assert len(helps) == len(set(helps)), [h for h in helps if helps.count(h) > 1]
