"""What a newcomer meets on the command line: help texts, defaults, aliases, where pictures
go, what info and evaluate say, and the BLAS thread choice."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.cli import build_parser, main
from scratchcnn.nn.zoo import lenet5, resnet8
from scratchcnn.parallel import threads as threads_module
from scratchcnn.parallel.threads import MACS_PER_THREAD, auto_threads, model_macs, resolve_threads


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_and_argument_is_described():
    subs = _subparsers()
    assert set(subs) == {
        *("train", "evaluate", "predict", "info", "explain", "filters", "plot"),
        *("export", "import"),
    }
    for name, sub in subs.items():
        assert sub.description and len(sub.description) > 30, name
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.dest)
            takes_value = action.nargs != 0 and not action.const
            optional = bool(action.option_strings) and takes_value
            if (optional and action.dest not in ("data_dir",)) or action.nargs == "?":
                assert "default" in action.help, (name, action.dest, action.help)


def test_help_states_auto_invert_and_the_numbered_out(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = "".join(capsys.readouterr().out.split())  # no wrapping
    assert "MNISTfamily:auto-invert" in text and "(photos,CIFAR):never" in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = "".join(capsys.readouterr().out.split())  # no wrapping
    assert "runs/MODEL-DATASET-2" in text and "--threadsTHREADS" in text


@pytest.mark.parametrize("alias", ["fashion", "Fashion_MNIST", "mnist5k"])
def test_dataset_aliases_work_on_the_command_line(alias):
    args = build_parser().parse_args(["train", "--dataset", alias])
    assert args.dataset in ("fashion-mnist", "mnist-5k")


def test_unknown_dataset_names_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["evaluate", "x.npz", "--dataset", "cifar"])
    assert exc.value.code == 2
    assert "'fashion-mnist'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["explain", "filters"])
def test_pictures_go_under_runs_by_default(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([command]) == 0
    name = "explain.png" if command == "explain" else "sobel.png"
    assert (tmp_path / "runs" / command / name).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]


def test_evaluate_does_not_suggest_an_option_it_lacks(tmp_path, capsys):
    model = sc.Sequential([sc.Flatten(), sc.Dense(784, 12)], input_shape=(1, 28, 28))
    sc.save(model, tmp_path / "m.npz")
    assert main(["evaluate", str(tmp_path / "m.npz"), "--dataset", "mnist-5k"]) == 2
    err = capsys.readouterr().err
    assert "12 outputs" in err and "--model" not in err


def test_info_shows_the_set_and_the_current_learning_rate(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "shapes_net", "--dataset", "shapes", "--epochs", "2"]
    assert main([*argv, "--lr", "0.05", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["info", str(out / "model.npz")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("optimizer:"))
    assert line.startswith("optimizer: SGD(lr=0.05, ") and "current lr 0.0)" in line


def test_json_output_writes_null_for_nan():
    """evaluate --json, predict --json and metrics.jsonl all go through json_line: any
    non-finite number becomes null and the line is strict JSON."""
    from scratchcnn._json import json_line

    text = json_line({"accuracy": 0.5, "loss": float("nan"), "n": np.int64(3), "x": [np.inf]})
    assert json.loads(text) == {"accuracy": 0.5, "loss": None, "n": 3, "x": [None]}
    assert "NaN" not in text and "Infinity" not in text


def test_threads_are_chosen_per_workload(monkeypatch):
    monkeypatch.delenv("SCRATCHCNN_NUM_THREADS", raising=False)
    model = lenet5(seed=0)
    macs = model_macs(model)
    assert 400_000 < macs < 450_000  # LeNet-5: ~0.42 M multiply-adds per image
    assert auto_threads(model, 32, available=8) == 1  # the default job: one thread
    big = int(4 * MACS_PER_THREAD / (3 * macs)) + 1
    assert auto_threads(model, big, available=8) == 4
    assert auto_threads(model, big, available=2) == 2
    monkeypatch.setattr(threads_module, "max_threads", lambda: 8)
    assert resolve_threads(3, model, 32) == 3  # --threads wins
    monkeypatch.setenv("SCRATCHCNN_NUM_THREADS", "2")
    assert resolve_threads(None, model, 32) == 2
    # Convolutions inside blocks count too: resnet8's 9.35 M multiply-adds per image, by hand.
    stem, stage1 = 28 * 28 * 16 * 9, 2 * 28 * 28 * 16 * 16 * 9
    stage2 = 14 * 14 * 32 * (16 * 9 + 32 * 9 + 16)  # two 3x3 convs and the 1x1 projection
    stage3 = 7 * 7 * 64 * (32 * 9 + 64 * 9 + 32)
    assert model_macs(resnet8(seed=0)) == stem + stage1 + stage2 + stage3 + 64 * 10
    assert auto_threads(resnet8(seed=0), 128, available=2) == 2  # its recipe's batch
    monkeypatch.setenv("SCRATCHCNN_NUM_THREADS", "many")
    with pytest.raises(sc.ConfigError, match="SCRATCHCNN_NUM_THREADS='many'"):
        resolve_threads(None, model, 32)


def test_thread_counts_are_capped_at_the_cores(monkeypatch):
    model = lenet5(seed=0)
    monkeypatch.setattr(threads_module, "max_threads", lambda: 2)
    with pytest.raises(sc.ConfigError, match="threads: 100000 threads, but this machine gives "):
        resolve_threads(100000, model, 32)
    monkeypatch.setenv("SCRATCHCNN_NUM_THREADS", "100000")
    with pytest.raises(sc.ConfigError, match="SCRATCHCNN_NUM_THREADS: 100000 threads"):
        resolve_threads(None, model, 32)
    with pytest.raises(sc.ConfigError, match="ask for at most 2"):
        sc.parallel.BatchSplit(model, sc.CrossEntropyLoss(), threads=3)
    assert resolve_threads(2, model, 32) == 2
