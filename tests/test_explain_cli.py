"""`scratchcnn explain CHECKPOINT IMAGE` end to end on a small trained model, and the viz
side of the attribution pictures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import scratchcnn as sc
from scratchcnn.cli import main
from scratchcnn.data import load_dataset
from scratchcnn.nn.zoo import tiny_cnn
from scratchcnn.training import fit
from scratchcnn.viz import DPI, EXPLAIN_FIGSIZES, explain_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """tiny_cnn after one epoch on 300 digits (a checkpoint like `scratchcnn train` writes)."""
    folder = tmp_path_factory.mktemp("run")
    data = load_dataset("mnist-5k", "train")
    model = tiny_cnn(seed=0)
    fit(
        model,
        data[:300],
        epochs=1,
        batch_size=8,
        optimizer=sc.optim.SGD(model, lr=0.05),
        out_dir=folder,
        extra={"classes": list(data.classes)},
    )
    test = load_dataset("mnist-5k", "test")
    image = folder / "digit.png"
    Image.fromarray(test.images[0, 0]).save(image)
    return folder / "model.npz", image, int(test.labels[0])


def test_explain_checkpoint_image_writes_three_pictures_and_the_table(trained, tmp_path, capsys):
    ckpt, image, _ = trained
    out = tmp_path / "why"
    assert main(["explain", str(ckpt), str(image), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    model = sc.load(ckpt)
    x = np.asarray(Image.open(image), dtype=np.float32)[None] / 255
    probs = sc.nn.attribution.class_probabilities(model.predict(x))[0]
    best = np.argsort(probs)[::-1][:3]
    first = text.splitlines()[0]
    assert first == f"{image}: " + ", ".join(f"{i} {probs[i]:.1%}" for i in best)
    for prefix, name in (("0", "Rescale"), ("1", "Conv2D"), ("2", "MaxPool2D"), ("4", "Dense")):
        assert any(line.split()[:2] == [prefix, name] for line in text.splitlines())
    assert "Grad-CAM on layer 1" in text
    for name, (w, h) in EXPLAIN_FIGSIZES.items():
        with Image.open(out / name) as png:
            assert png.size == (round(w * DPI), round(h * DPI))
            assert np.asarray(png).std() > 10  # a picture, not a blank page


def test_explain_default_folder_is_named_after_the_run(trained, tmp_path, capsys, monkeypatch):
    ckpt, image, _ = trained
    monkeypatch.chdir(tmp_path)
    assert main(["explain", str(ckpt), str(image), "--target", "3", "--layer", "1"]) == 0
    assert "explaining class 3" in capsys.readouterr().out
    folder = tmp_path / "runs" / f"explain-{ckpt.parent.name}"
    assert sorted(p.name for p in folder.iterdir()) == sorted(EXPLAIN_FIGSIZES)


def test_explain_a_model_without_4d_activation_says_there_is_no_gradcam(tmp_path, capsys):
    model = sc.Sequential(
        [sc.Flatten(), sc.Dense(28 * 28, 10), sc.ReLU(), sc.Dense(10, 10)], input_shape=(1, 28, 28)
    )
    ckpt = tmp_path / "mlp.npz"
    sc.save(model, ckpt)
    image = tmp_path / "x.png"
    Image.fromarray((np.arange(28 * 28) % 256).astype(np.uint8).reshape(28, 28)).save(image)
    assert main(["explain", str(ckpt), str(image), "--out", str(tmp_path / "o")]) == 0
    text = capsys.readouterr().out
    assert "no Grad-CAM: Grad-CAM needs a 4-D (N, C, H, W) activation" in text
    assert (tmp_path / "o" / "gradcam.png").is_file()
    assert (tmp_path / "o" / "saliency.png").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "needs an IMAGE too"),
        (["missing.png"], "file not found (expected an image file)"),
        (["IMG", "--layer", "7"], "no layer '7'"),
        (["IMG", "--target", "10"], r"class in 0..9"),
    ],
)
def test_explain_user_errors_are_one_line(trained, capsys, extra, message):
    ckpt, image, _ = trained
    argv = ["explain", str(ckpt), *[str(image) if a == "IMG" else a for a in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchcnn: error: ") and message in err
    assert err.count("\n") == 1


def test_explain_model_in_python(trained, tmp_path):
    ckpt, image, label = trained
    model = sc.load(ckpt)
    x = np.asarray(Image.open(image), dtype=np.float32)[None] / 255
    result = explain_model(model, x, tmp_path, classes=[f"digit {i}" for i in range(10)])
    assert result.target == result.top[0][0]
    assert result.top[0][0].startswith("digit ")
    assert sum(p for _, p in result.top) <= 1 + 1e-9
    assert [p.name for p in result.files] == list(EXPLAIN_FIGSIZES)
    assert label in range(10)


def test_explain_a_model_with_residual_blocks(trained, tmp_path, capsys):
    from scratchcnn.nn.zoo import resnet8

    _, image, _ = trained
    ckpt = tmp_path / "resnet8.npz"
    sc.save(resnet8(seed=0), ckpt)
    assert main(["explain", str(ckpt), str(image), "--out", str(tmp_path / "o")]) == 0
    text = capsys.readouterr().out
    assert "Grad-CAM on layer 7.body.3" in text
    rows = {line.split()[0] for line in text.splitlines() if line[:1].isdigit()}
    assert {"3.body.0", "5.shortcut.0", "7.body.4", "11"} <= rows
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(EXPLAIN_FIGSIZES)
