"""Bad data: broken IDX files, inconsistent arrays, NaN/inf, labels out of range, empty sets,
missing folders. Each is a clear one-line error before training starts: nothing is written."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.cli import main
from scratchcnn.data import Dataset, load_dataset, write_idx
from scratchcnn.nn.zoo import lenet5, shapes_net
from scratchcnn.training import fit

from .conftest import captured_error, error_line, run_cli

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"


def write_mnist(folder: Path, n_train: int = 48, n_test: int = 16) -> Path:
    """A tiny, valid MNIST in IDX files (gzipped), both splits."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), np.uint8)
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, np.uint8))
    return folder


def train_argv(data_dir: Path, out: Path) -> list[str]:
    return [
        "train", "--dataset", "mnist", "--data-dir", str(data_dir), "--epochs", "1",
        "--quiet", "--out", str(out),
    ]  # fmt: skip


def test_the_tiny_mnist_trains(tmp_path, capsys):
    """The fixture is valid: every failure below comes from the one thing broken in it."""
    data = write_mnist(tmp_path / "data")
    assert main(train_argv(data, tmp_path / "out")) == 0
    assert sc.load_checkpoint(tmp_path / "out" / "model.npz").epoch == 1


def _gz(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def _truncate(folder: Path) -> str:
    p = folder / TRAIN_IMAGES
    p.write_bytes(gzip.compress(_gz(p)[:-100]))
    return f"{p}: truncated: expected 37632 bytes of data for shape 48x28x28, found 37532"


def _extra_bytes(folder: Path) -> str:
    p = folder / TRAIN_LABELS
    p.write_bytes(gzip.compress(_gz(p) + b"\0\0"))
    return f"{p}: 2 extra bytes: expected 48 bytes of data for shape 48, found 50"


def _cut_gzip(folder: Path) -> str:
    p = folder / TRAIN_IMAGES
    p.write_bytes(p.read_bytes()[:200])
    return f"{p}: corrupt gzip stream (Compressed file ended before the end-of-stream marker was reached)"  # noqa: E501


def _swapped(folder: Path) -> str:
    images, labels = folder / TRAIN_IMAGES, folder / TRAIN_LABELS
    data = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(data)
    return f"{images}: bad magic number 2049 (expected 2051 for images)"


def _not_idx(folder: Path) -> str:
    p = folder / TRAIN_IMAGES
    p.write_bytes(gzip.compress(b"<html>Not Found</html>"))
    return f"{p}: bad magic number 1013478509 (expected 2051 for images)"


def _empty_file(folder: Path) -> str:
    p = folder / TRAIN_LABELS
    p.write_bytes(b"")
    return f"{p}: too short for an IDX header: 0 bytes (need at least 4)"


def _counts(folder: Path) -> str:
    write_idx(folder / TRAIN_LABELS, np.zeros(40, np.uint8))
    return f"{folder / TRAIN_IMAGES} holds 48 images but {folder / TRAIN_LABELS} holds 40 labels"


def _label_range(folder: Path) -> str:
    labels = np.zeros(48, np.uint8)
    labels[[5, 9]] = [10, 255]
    write_idx(folder / TRAIN_LABELS, labels)
    return f"{folder / TRAIN_LABELS}: label 10 at index 5 is out of range [0, 10) (2 bad labels in all)"  # noqa: E501


def _no_images(folder: Path) -> str:
    write_idx(folder / TRAIN_IMAGES, np.zeros((0, 28, 28), np.uint8))
    write_idx(folder / TRAIN_LABELS, np.zeros(0, np.uint8))
    return f"{folder / TRAIN_IMAGES}: holds 0 images"


def _image_size(folder: Path) -> str:
    write_idx(folder / TRAIN_IMAGES, np.zeros((48, 32, 32), np.uint8))
    return f"{folder / TRAIN_IMAGES}: expected 28x28 images, found 32x32"


def _test_split(folder: Path) -> str:
    p = folder / "t10k-labels-idx1-ubyte.gz"
    write_idx(p, np.full(16, 12, np.uint8))
    return f"{p}: label 12 at index 0 is out of range [0, 10) (16 bad labels in all)"


def _missing_file(folder: Path) -> str:
    (folder / TRAIN_LABELS).unlink()
    return (
        f"{folder}: missing train-labels-idx1-ubyte.gz (or train-labels-idx1-ubyte) for mnist "
        f"train (looked in {folder} and {folder / 'mnist'})"
    )


@pytest.mark.parametrize(
    "damage",
    [
        _truncate,
        _extra_bytes,
        _cut_gzip,
        _swapped,
        _not_idx,
        _empty_file,
        _counts,
        _label_range,
        _no_images,
        _image_size,
        _test_split,
        _missing_file,
    ],
)
def test_broken_idx_files_stop_before_training(tmp_path, capsys, damage):
    data = write_mnist(tmp_path / "data")
    message = damage(data)
    out = tmp_path / "out"
    assert main(train_argv(data, out)) == 2
    assert captured_error(capsys) == f"scratchcnn: error: {message}"
    assert not out.exists(), "something was written before the data was checked"


def test_data_dir_that_does_not_exist_or_is_a_file(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(train_argv(missing, tmp_path / "out")) == 2
    assert captured_error(capsys) == (
        f"scratchcnn: error: {missing}: data directory does not exist (looked for "
        "train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] of mnist train there)"
    )
    afile = tmp_path / "file"
    afile.write_text("x")
    assert main(train_argv(afile, tmp_path / "out")) == 2
    assert captured_error(capsys) == (
        f"scratchcnn: error: {afile}: is a file, not a data directory (looked for "
        "train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] of mnist train there)"
    )
    assert not (tmp_path / "out").exists()


def test_broken_data_as_a_real_process(tmp_path):
    data = write_mnist(tmp_path / "data")
    message = _counts(data)
    result = run_cli(*train_argv(data, tmp_path / "out"))
    assert error_line(result) == f"scratchcnn: error: {message}"


def test_evaluate_on_broken_data(tmp_path, capsys):
    data = write_mnist(tmp_path / "data")
    assert main(train_argv(data, tmp_path / "out")) == 0
    capsys.readouterr()
    message = _test_split(data)
    assert main(["evaluate", str(tmp_path / "out" / "model.npz")]) == 2
    assert captured_error(capsys) == f"scratchcnn: error: {message}"


# --- the Python API: fit checks the data before the first step ---------------------------------
@pytest.fixture
def shapes() -> Dataset:
    return load_dataset("shapes", "train")[:64]


def fit_into(out: Path, model: sc.Sequential, data: Dataset, **kwargs) -> None:
    fit(model, data, epochs=1, batch_size=16, out_dir=out, progress=False, **kwargs)


def test_nan_or_inf_written_into_a_dataset_after_it_was_built(tmp_path, shapes):
    images = shapes.images.copy()
    data = Dataset(images, shapes.labels, shapes.classes, "shapes")
    images[7, 0, 2, 2] = np.nan
    images[9, 0, 1, 1] = -np.inf
    with pytest.raises(sc.DataError) as err:
        fit_into(tmp_path / "out", shapes_net(seed=0), data)
    assert (
        str(err.value)
        == "dataset 'shapes': image 7 contains NaN or inf (2 non-finite values in all)"
    )
    assert not (tmp_path / "out").exists()


def test_labels_changed_after_the_dataset_was_built(tmp_path, shapes):
    labels = shapes.labels.copy()
    data = Dataset(shapes.images, labels, shapes.classes, "shapes")
    labels[3] = 2
    with pytest.raises(sc.DataError) as err:
        fit_into(tmp_path / "out", shapes_net(seed=0), data)
    assert str(err.value) == (
        "dataset 'shapes': label 2 at index 3 is out of range [0, 2) (1 bad labels in all)"
    )


def test_labels_the_model_has_no_output_for(tmp_path):
    digits = load_dataset("mnist-5k", "train")[:64]
    five = sc.Sequential([sc.Flatten(), sc.Dense(784, 5)], input_shape=(1, 28, 28))
    with pytest.raises(sc.ConfigError) as err:
        fit_into(tmp_path / "out", five, digits)
    assert str(err.value) == (
        "the model has 5 outputs but training data 'mnist-5k' has 10 classes (largest label 9)"
    )
    # More outputs than classes: a spare output would be predicted for a class the
    # confusion matrix has no row for; refused before the first step too.
    twelve = sc.Sequential([sc.Flatten(), sc.Dense(784, 12)], input_shape=(1, 28, 28))
    with pytest.raises(sc.ConfigError, match="has 12 outputs but training data 'mnist-5k' has 10"):
        fit_into(tmp_path / "out", twelve, digits)
    with pytest.raises(sc.ConfigError, match="has 12 outputs but data 'mnist-5k' has 10"):
        sc.train.evaluate(twelve, digits)
    binary = sc.Sequential([sc.Flatten(), sc.Dense(784, 1)], input_shape=(1, 28, 28))
    with pytest.raises(sc.ConfigError) as err:
        fit_into(tmp_path / "out", binary, digits)
    assert str(err.value) == (
        "the model is a binary classifier (one output) but training data 'mnist-5k' has "
        "10 classes (largest label 9)"
    )
    assert not (tmp_path / "out").exists()


def test_images_the_model_cannot_take(tmp_path, shapes):
    with pytest.raises(sc.ConfigError) as err:
        fit_into(tmp_path / "out", lenet5(seed=0), shapes)
    assert str(err.value) == (
        "the model takes images (1, 28, 28) but training data 'shapes' has (1, 5, 5)"
    )
    shapeless = sc.Sequential([sc.Conv2D(1, 2, 7), sc.Flatten(), sc.Dense(2, 1)])
    with pytest.raises(sc.ConfigError) as err:
        fit_into(tmp_path / "out", shapeless, shapes)
    assert str(err.value) == (
        "training data 'shapes' (images (1, 5, 5)) does not fit the model: layer 0 (Conv2D(1, "
        "2, kernel_size=(7, 7), stride=(1, 1))) cannot take input (1, 1, 5, 5): Conv2D(1, 2, "
        "kernel_size=(7, 7), stride=(1, 1)): kernel 7x7 is larger than the padded input 5x5 "
        "(input 5x5, padding (0, 0), (0, 0))"
    )
    digits = load_dataset("mnist-5k", "test")[:16]
    with pytest.raises(sc.ConfigError) as err:
        fit_into(tmp_path / "out", shapes_net(seed=0), shapes, test_data=digits)
    assert str(err.value) == (
        "the model takes images (1, 5, 5) but test data 'mnist-5k' has (1, 28, 28)"
    )
    assert not (tmp_path / "out").exists()


def test_an_empty_dataset_cannot_even_be_built(shapes):
    with pytest.raises(sc.DataError, match=r"^dataset 'shapes' is empty$"):
        shapes[100:]
    with pytest.raises(sc.DataError, match=r"^dataset 'x' is empty$"):
        Dataset(np.zeros((0, 1, 5, 5), np.float32), np.zeros(0, np.int64), ("a",), "x")
