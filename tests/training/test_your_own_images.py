"""`train --data-dir PATH` on a folder of the user's own images, CIFAR through the command
line, and the zoo built for any input: what the README's "Your own images" promises."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import scratchcnn as sc
from scratchcnn.cli import main
from scratchcnn.data.cifar import write_cifar
from scratchcnn.data.images import load_image
from scratchcnn.nn.zoo import MODELS, build_model

COLOURS = ("blue", "green", "red")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHCNN_CACHE_DIR", str(tmp_path / "cache"))


def make_photos(root: Path, per_class: int = 20, size=(20, 24), seed: int = 0) -> Path:
    """Colour photos of three classes (a dominant colour each), PNG and JPEG mixed."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(COLOURS):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 80, (*size, 3)).astype(np.uint8)
            img[..., 2 - c] += 150  # blue, green, red: channel 2, 1, 0
            Image.fromarray(img).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_train_evaluate_predict_info_on_a_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photos = make_photos(tmp_path / "photos")
    args = ["train", "--data-dir", "photos", "--epochs", "2", "--batch-size", "8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("training "))
    assert header.startswith("training lenet5 (3x20x24 -> 3 classes, ")
    assert "on the images in " in header and "(54 train / 6 test images)" in header
    run_dir = tmp_path / "runs" / "lenet5-photos"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["dataset"] == "folder" and run["data_dir"] == str(photos)
    assert run["val_split"] == 0.1 and run["image_size"] is None

    ckpt = sc.load_checkpoint(run_dir / "model.npz")
    assert ckpt.extra["classes"] == list(COLOURS)
    assert ckpt.extra["images"]["test_images"] == 6 and ckpt.extra["images"]["channels"] == 3
    first = ckpt.model.layers[0]
    assert isinstance(first, sc.Normalize)
    pixels = np.stack(
        [load_image(p, (3, 20, 24), False) for p in sorted(photos.rglob("*.*"))]
    )  # every image; the training split's statistics differ by the 6 held out only
    assert np.allclose(first.mean, pixels.mean(axis=(0, 2, 3)), atol=0.02)

    assert main(["evaluate", str(run_dir / "model.npz"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 6  # the same held-out images, read again

    red = photos / "red" / "1.png"
    assert main(["predict", str(run_dir / "model.npz"), str(red), "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert set(line["probabilities"]) == set(COLOURS)
    x = load_image(red, (3, 20, 24), invert=False)[None]  # photos are never inverted
    assert line["prediction"] == COLOURS[int(ckpt.model.predict(x).argmax())]

    assert main(["info", str(run_dir / "model.npz")]) == 0
    info = capsys.readouterr().out
    assert "classes: blue, green, red" in info and "images: 20x24 RGB" in info

    assert main(["plot", str(run_dir)]) == 0
    assert "figure: " in capsys.readouterr().out and (run_dir / "confusion.png").is_file()

    # --resume reads the same split (one more epoch)
    assert main(["train", "--data-dir", "photos", "--out", str(run_dir), "--resume",
                 "--epochs", "3", "--batch-size", "8", "--quiet"]) == 0  # fmt: skip
    assert sc.load_checkpoint(run_dir / "model.npz").epoch == 3


def test_evaluate_on_another_folder_uses_the_models_classes(tmp_path, capsys):
    photos = make_photos(tmp_path / "photos", per_class=8)
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(photos), "--epochs", "1", "--quiet",
                 "--image-size", "16", "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    other = tmp_path / "other"
    (other / "red").mkdir(parents=True)
    Image.open(photos / "red" / "1.png").save(other / "red" / "a.png")
    assert main(["evaluate", str(out / "model.npz"), "--data-dir", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 1
    (other / "cat").mkdir()
    Image.open(photos / "red" / "1.png").save(other / "cat" / "a.png")
    assert main(["evaluate", str(out / "model.npz"), "--data-dir", str(other)]) == 2
    err = capsys.readouterr().err
    assert "class 'cat' is not one of the 3 classes (blue, green, red)" in err
    assert main(["evaluate", str(out / "model.npz"), "--dataset", "mnist-5k"]) == 2
    assert "(1, 28, 28)" in capsys.readouterr().err


def test_folder_options_are_checked(tmp_path, capsys):
    photos = make_photos(tmp_path / "photos", per_class=6)
    assert main(["train", "--image-size", "16", "--quiet", "--out", str(tmp_path / "a")]) == 2
    assert "--image-size: only for a folder of your own images" in capsys.readouterr().err
    for bad in (["--image-size", "0"], ["--image-size", "2000"], ["--val-split", "1"],
                ["--channels", "2"], ["--image-size", "a,b"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main(["train", "--data-dir", str(photos), *bad])
        assert exit_.value.code == 2
    # --val-split 0: no test split; evaluate says so for the test split
    out = tmp_path / "noval"
    assert main(["train", "--data-dir", str(photos), "--val-split", "0", "--epochs", "1",
                 "--channels", "1", "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "no test split" in printed and "train accuracy" in printed
    assert sc.load_checkpoint(out / "model.npz").model.input_shape == (1, 20, 24)
    assert main(["evaluate", str(out / "model.npz")]) == 2
    assert "held out no test images" in capsys.readouterr().err
    assert main(["evaluate", str(out / "model.npz"), "--split", "train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 18


def test_cifar10_through_the_command_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for i in range(1, 6):
        write_cifar(
            folder / f"data_batch_{i}.bin",
            rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8),
            rng.integers(0, 10, 20),
        )
    write_cifar(
        folder / "test_batch.bin",
        rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8),
        rng.integers(0, 10, 10),
    )
    out = tmp_path / "run"
    argv = ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1"]
    assert main([*argv, "--model", "resnet20", "--batch-size", "10", "--out", str(out)]) == 0
    assert "training resnet20 (3x32x32 -> 10 classes, 272,474 parameters)" in (
        capsys.readouterr().out
    )
    model = sc.load(out / "model.npz")
    assert isinstance(model.layers[0], sc.Normalize)
    assert model.layers[0].mean == pytest.approx((127.5 / 255,) * 3, abs=0.01)


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"shapes_net"}))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 48)])
def test_every_zoo_model_builds_for_any_input(name, shape):
    model = build_model(name, input_shape=shape, num_classes=7, seed=0)
    assert model.input_shape == shape
    x = np.random.default_rng(0).uniform(0, 1, (2, *shape)).astype(np.float32)
    assert model.predict(x).shape == (2, 7)


def test_the_default_models_are_unchanged():
    """Built as before for their default input: same parameters, same count."""
    assert sum(p.size for _, p in build_model("lenet5").named_parameters()) == 61_706
    assert sum(p.size for _, p in build_model("resnet8").named_parameters()) == 77_754
    assert sum(p.size for _, p in build_model("resnet20").named_parameters()) == 272_474
    with pytest.raises(sc.ConfigError, match="too small"):
        build_model("lenet5", input_shape=(1, 8, 8))
    with pytest.raises(sc.ConfigError, match="shapes_net is the 5x5"):
        build_model("shapes_net", input_shape=(3, 32, 32))


def test_normalize_layer():
    layer = sc.Normalize([0.5, 0.25], [0.5, 2.0])
    x = np.random.default_rng(0).uniform(0, 1, (3, 2, 4, 4))
    y = layer.forward(x)
    np.testing.assert_allclose(y[:, 0], (x[:, 0] - 0.5) / 0.5)
    np.testing.assert_allclose(y[:, 1], (x[:, 1] - 0.25) / 2.0)
    assert sc.gradcheck(layer, x).ok
    with pytest.raises(sc.ShapeError):
        layer.forward(np.zeros((1, 3, 4, 4)))
    for mean, std in (([0.5], [0.0]), ([0.5, 0.5], [1.0]), ([float("nan")], [1.0])):
        with pytest.raises(sc.ConfigError):
            sc.Normalize(mean, std)
    again = sc.Sequential.from_config(sc.Sequential([layer], input_shape=(2, 4, 4)).config())
    np.testing.assert_array_equal(
        again.predict(x.astype(np.float32)), layer.forward(x.astype(np.float32))
    )
