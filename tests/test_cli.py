"""The command line: train / evaluate / predict / info, and one-line errors with exit 2."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from scratchcnn.cli import main
from scratchcnn.data import load_dataset

QUICK = ["--epochs", "1", "--limit", "256", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--epochs", "2", "--limit", "1000", "--out", str(out), "--quiet"]) == 0
    return out


def test_train_writes_checkpoint_metrics_and_settings(run_dir):
    assert (run_dir / "model.npz").is_file()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["model"] == "lenet5" and run["dataset"] == "mnist-5k" and run["limit"] == 1000


def test_train_prints_progress_lines_and_where_things_are(tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--limit", "128", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "epoch   1/1" in out
    assert f"checkpoint: {tmp_path / 'model.npz'}" in out
    assert f"metrics:    {tmp_path / 'metrics.jsonl'}" in out


def test_evaluate_json(run_dir, capsys):
    assert main(["evaluate", str(run_dir / "model.npz"), "--dataset", "mnist-5k", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"accuracy", "loss", "n"}
    assert result["n"] == 1000
    assert 0.5 < result["accuracy"] <= 1.0


def test_evaluate_human_readable_defaults_to_the_training_set(run_dir, capsys):
    assert main(["evaluate", str(run_dir / "model.npz")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mnist-5k test: accuracy")
    assert "confusion matrix" in out


def test_info_prints_the_summary(run_dir, capsys):
    assert main(["info", str(run_dir / "model.npz")]) == 0
    out = capsys.readouterr().out
    assert "total parameters: 61,706" in out
    assert "epoch: 2" in out


def test_predict_reads_png_and_jpeg_of_any_size(run_dir, tmp_path, capsys):
    import scratchcnn as sc

    test = load_dataset("mnist-5k", "test")
    model = sc.load(run_dir / "model.npz")
    expected = model.predict(test.images[:12]).argmax(axis=1)
    paths = []
    for i in range(12):
        # Dark ink on light paper, 3x larger, half PNG and half JPEG: predict must invert,
        # resize and scale them back to what the model saw in training.
        img = Image.fromarray(255 - test.images[i, 0]).resize((84, 84), Image.Resampling.NEAREST)
        path = tmp_path / f"digit{i}.{'png' if i % 2 else 'jpg'}"
        img.save(path, quality=95) if path.suffix == ".jpg" else img.save(path)
        paths.append(str(path))
    assert main(["predict", str(run_dir / "model.npz"), *paths, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == paths
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)
    got = [int(r["prediction"]) for r in rows]
    assert sum(g == e for g, e in zip(got, expected, strict=True)) >= 11, (got, expected)


def test_predict_human_readable(run_dir, tmp_path, capsys):
    test = load_dataset("mnist-5k", "test")
    path = tmp_path / "digit.png"
    Image.fromarray(test.images[0, 0]).save(path)
    assert main(["predict", str(run_dir / "model.npz"), str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: ")
    assert "then" in out


def test_resume_continues_and_refuses_changes(tmp_path, capsys):
    out = str(tmp_path)
    assert main(["train", *QUICK, "--out", out]) == 0
    assert (
        main(["train", "--epochs", "2", "--limit", "256", "--quiet", "--out", out, "--resume"]) == 0
    )
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["train", *QUICK, "--out", out, "--resume", "--lr", "0.5"]) == 2
    assert "cannot change --lr" in capsys.readouterr().err


def test_existing_run_is_never_overwritten_silently(tmp_path, capsys):
    out = str(tmp_path)
    assert main(["train", *QUICK, "--out", out]) == 0
    before = (tmp_path / "model.npz").read_bytes()
    assert main(["train", *QUICK, "--out", out]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "model.npz").read_bytes() == before
    assert main(["train", *QUICK, "--out", out, "--overwrite"]) == 0


@pytest.mark.parametrize(
    "argv,message",
    [
        (["evaluate", "missing.npz"], "missing.npz: no such checkpoint file"),
        (["train", "--lr", "abc"], "argument --lr: expected a number, got 'abc'"),
        (["train", "--epochs", "0"], "expected a positive integer, got 0"),
        (["train", "--model", "resnet"], "invalid choice: 'resnet'"),
        (["train", "--dataset", "mnist", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
        (
            ["train", "--model", "shapes_net", *QUICK],
            "the model takes images (1, 5, 5) but data set 'mnist-5k' has (1, 28, 28) (model "
            "shapes_net); pick a matching --model",
        ),
        (["predict", "missing.npz", "x.png"], "missing.npz"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def run_cli(argv: list[str]) -> int:
    """Exit status of the command line, whether main returns it or argparse exits."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_predict_bad_image_file(run_dir, tmp_path, capsys):
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    assert main(["predict", str(run_dir / "model.npz"), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not-an-image.png: cannot read it as an image" in err


def test_python_dash_m_shows_no_traceback_for_a_user_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "scratchcnn", "evaluate", str(tmp_path / "nope.npz")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"scratchcnn: error: {tmp_path / 'nope.npz'}: no such checkpoint file"
    )


@pytest.mark.slow
def test_default_train_command_reaches_96_percent(tmp_path):
    """The README's main job: `scratchcnn train` with no arguments. Its speed is measured in
    benchmarks/, not asserted here: wall time depends on what else runs on the machine."""
    result = subprocess.run(
        [sys.executable, "-m", "scratchcnn", "train"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    last = json.loads(
        (tmp_path / "runs/lenet5-mnist-5k/metrics.jsonl").read_text().splitlines()[-1]
    )
    assert last["test_accuracy"] >= 0.96, result.stdout
    assert "checkpoint: runs/lenet5-mnist-5k/model.npz" in result.stdout


def test_images_are_inverted_only_when_the_background_is_light(tmp_path):
    from scratchcnn.data.images import load_image

    dark = np.zeros((28, 28), np.uint8)
    dark[10:18, 12:16] = 255
    Image.fromarray(dark).save(tmp_path / "dark.png")
    Image.fromarray(255 - dark).save(tmp_path / "light.png")
    a = load_image(tmp_path / "dark.png", (1, 28, 28), None)
    b = load_image(tmp_path / "light.png", (1, 28, 28), None)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a[0, 12, 13] == pytest.approx(1.0)


def test_explain_prints_the_walkthrough_and_saves_the_figure(tmp_path, capsys):
    assert main(["explain", "--seed", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for label in ("dL/dw", "dL/db", "dL/dkernel", "dL/dbias", "max pooling backward"):
        assert label in out
    assert (tmp_path / "explain.png").stat().st_size > 10_000


def test_filters_writes_the_sobel_figure(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray((np.indices((40, 60)).sum(axis=0) % 17 * 15).astype(np.uint8)).save(photo)
    assert main(["filters", str(photo), "--out", str(tmp_path)]) == 0
    assert f"figure: {tmp_path / 'sobel.png'}" in capsys.readouterr().out
    with Image.open(tmp_path / "sobel.png") as img:
        assert img.size[0] > 500


def test_plot_and_train_plot_write_every_picture(run_dir, tmp_path, capsys):
    assert main(["plot", str(run_dir)]) == 0
    names = {"curves.png", "confusion.png", "filters.png", "feature_maps.png", "misclassified.png"}
    assert names <= {p.name for p in run_dir.iterdir()}
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--out", str(out), "--plot"]) == 0
    assert names <= {p.name for p in out.iterdir()}
    assert main(["plot", str(tmp_path / "nothing-here")]) == 2
    assert "nothing-here" in capsys.readouterr().err


def test_momentum_with_adam_is_refused(tmp_path, capsys):
    assert run_cli(["train", *QUICK, "--optimizer", "adam", "--momentum", "0.5"]) == 2
    assert "--momentum applies to --optimizer sgd only" in capsys.readouterr().err
    assert (
        main(["train", *QUICK, "--optimizer", "adam", "--lr", "0.001", "--out", str(tmp_path)]) == 0
    )


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    import os

    from scratchcnn.checkpoint.files import remove_stale_temp_files

    target = tmp_path / "model.npz"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = tmp_path / f".model.npz.{dead}.abc123.tmp"
    live = tmp_path / f".model.npz.{os.getppid()}.def456.tmp"  # a process that runs
    other = tmp_path / f".other.npz.{dead}.abc123.tmp"
    for f in (stale, live, other):
        f.write_bytes(b"partial")
    assert remove_stale_temp_files(target) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


def test_augment_flag_and_the_resnet8_recipe(tmp_path, capsys):
    out = tmp_path / "lenet"
    assert main(["train", *QUICK, "--limit", "64", "--augment", "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["augment"] is True and run["batch_size"] == 32  # lenet5's defaults otherwise
    out = tmp_path / "resnet"
    argv = ["train", "--model", "resnet8", *QUICK, "--limit", "64", "--out", str(out)]
    assert main([*argv, "--no-augment"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["augment"] is False
    assert (run["batch_size"], run["lr"], run["weight_decay"]) == (128, 0.1, 5e-4)
    assert main([*argv, "--augment", "--resume"]) == 2  # a resumed run keeps its settings
    assert "cannot change --augment" in capsys.readouterr().err
