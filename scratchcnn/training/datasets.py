"""The data of a run: a named data set (``mnist``, ``cifar10``, ...) or a folder of the user's
own images, and what the model needs to know about it.

``train --data-dir PATH`` with PATH a folder of class folders (``PATH/<class>/*.png``, or
``PATH/train/<class>/`` with ``PATH/test/<class>/``) trains on those images: the data set is
recorded as ``"folder"`` in run.json, with the image size, channels, held-out fraction and
whether unreadable files are skipped, so ``--resume`` and ``evaluate`` read exactly the same
split again.

For image folders and CIFAR the training split's per-channel mean and standard deviation are
computed (pixels in [0, 1]) and the model starts with a :class:`~scratchcnn.nn.layers.Normalize`
layer holding them, so the saved model takes plain images everywhere: ``predict``,
``evaluate``, ``explain`` and the ONNX export apply it without being told. The grey digit
sets keep their models as they were (pixels in [0, 1], no normalisation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset, ImageFolder, image_folder_splits, load_dataset
from ..data.folders import looks_like_image_folder
from ..errors import ConfigError
from ..nn.layers import Normalize
from ..nn.layers.sequential import Sequential

#: run.json's data set name for a folder of the user's own images (``--data-dir PATH``).
FOLDER = "folder"
#: Named data sets whose models get the training split's per-channel normalisation.
NORMALISED = ("cifar10", "cifar100")
#: The settings that only an image folder takes.
FOLDER_SETTINGS = ("image_size", "channels", "val_split", "skip_bad_images")


@dataclass
class RunData:
    """A run's training and test splits and what the model is built for."""

    train: Dataset
    test: Dataset | None
    #: per-channel mean and std of the training split (pixels in [0, 1]), or None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    #: for an image folder: ``ImageFolderInfo.to_dict()`` (kept in the checkpoint)
    folder: dict[str, Any] | None
    #: one line describing the data, for the ``train`` header
    description: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.train.classes)


def dataset_for(explicit: dict[str, Any]) -> str | None:
    """The data set a ``train`` command means when ``--dataset`` is not given: ``folder``
    when ``--data-dir`` is a folder of class folders, else None (the default)."""
    if "dataset" in explicit or explicit.get("data_dir") is None:
        return None
    return FOLDER if looks_like_image_folder(explicit["data_dir"]) else None


def check_folder_settings(run: dict[str, Any], explicit: dict[str, Any]) -> None:
    """``--image-size`` and friends are for image folders only: one line otherwise."""
    if run["dataset"] == FOLDER:
        if not run.get("data_dir"):
            raise ConfigError("--dataset folder needs --data-dir PATH (a folder of class folders)")
        return
    given = [k for k in FOLDER_SETTINGS if explicit.get(k) not in (None, False)]
    if given:
        names = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(
            f"{names}: only for a folder of your own images (--data-dir PATH holding one "
            f"folder per class), not for --dataset {run['dataset']}"
        )


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple, tuple]:
    """Per-channel mean and (population) standard deviation of uint8 images (N, C, H, W),
    pixels scaled to [0, 1], summed in float64 over chunks of images (bounded memory)."""
    n, c = images.shape[:2]
    total = np.zeros(c)
    squares = np.zeros(c)
    for start in range(0, n, chunk):
        block = np.asarray(images[start : start + chunk], dtype=np.float64) / 255.0
        total += block.sum(axis=(0, 2, 3))
        squares += np.square(block).sum(axis=(0, 2, 3))
    count = n * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)


def load_run_data(run: dict[str, Any], *, progress: bool | None = None) -> RunData:
    """The splits of a run's data set (settings as in run.json)."""
    name, data_dir = run["dataset"], run.get("data_dir")
    if name == FOLDER:
        train, test, info = image_folder_splits(
            data_dir,
            image_size=run.get("image_size"),
            channels=run.get("channels"),
            val_split=run.get("val_split", 0.1),
            seed=run["seed"],
            skip_bad_images=run.get("skip_bad_images", False),
            progress=progress,
        )
        return RunData(train, test, info.mean, info.std, info.to_dict(), info.summary())
    train = load_dataset(name, "train", data_dir=data_dir, seed=run["seed"])
    test = load_dataset(name, "test", data_dir=data_dir, seed=run["seed"])
    mean = std = None
    if name in NORMALISED:
        mean, std = channel_stats(train.images)
    return RunData(train, test, mean, std, None, f"{name}")


def with_normalisation(model: Sequential, data: RunData) -> Sequential:
    """``model`` with a leading Normalize of the data's statistics (when it has them)."""
    if data.mean is None:
        return model
    first = Normalize(data.mean, data.std)
    return Sequential([first, *model.layers], input_shape=model.input_shape)


def evaluation_data(
    recorded: dict[str, Any],
    model: Sequential,
    classes: list[str] | None,
    split: str,
    name: str | None,
    data_dir: str | os.PathLike[str] | None,
    *,
    progress: bool | None = None,
) -> Dataset:
    """The split ``evaluate`` measures a checkpoint on.

    ``recorded`` is the run's settings as the checkpoint saved them (``extra["run"]``);
    ``name``/``data_dir`` what the command line gave. A folder of images is read at the
    model's own input size and channels, labelled by the checkpoint's class names: the run's
    own folder gives back the run's split (the same held-out images); another folder is read
    whole (or its ``test``/``train`` part), and a class the model does not know is refused.
    """
    seed = recorded.get("seed", 0)
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 0
    if name is None and data_dir is not None and looks_like_image_folder(data_dir):
        name = FOLDER
    name = name or recorded.get("dataset")
    if name is None:
        raise ConfigError("the checkpoint does not record its data set; pass --dataset")
    if data_dir is None:
        data_dir = recorded.get("data_dir")
        data_dir = data_dir if isinstance(data_dir, str) else None
    if name != FOLDER:
        return load_dataset(name, split, data_dir=data_dir, seed=seed)
    if data_dir is None:
        raise ConfigError("--dataset folder needs --data-dir PATH (a folder of class folders)")
    if model.input_shape is None or len(model.input_shape) != 3:
        raise ConfigError(
            "the model does not take images (C, H, W); it cannot be evaluated on a folder"
        )
    channels, h, w = model.input_shape
    if classes is None:
        raise ConfigError(
            "the checkpoint does not record its class names, so a folder's class folders "
            "cannot be matched to its outputs"
        )
    same_run = recorded.get("dataset") == FOLDER and _same_folder(
        recorded.get("data_dir"), data_dir
    )
    if same_run:
        train, test, info = image_folder_splits(
            data_dir,
            image_size=(h, w),
            channels=channels,
            val_split=recorded.get("val_split", 0.1),
            seed=seed,
            skip_bad_images=recorded.get("skip_bad_images", False),
            progress=progress,
        )
        if tuple(info.classes) != tuple(classes):
            raise ConfigError(
                f"{data_dir}: its class folders are now {_names(info.classes)}, the model was "
                f"trained on {_names(classes)}"
            )
        chosen = train if split == "train" else test
        if chosen is None:
            raise ConfigError(
                f"{data_dir}: the run held out no test images (--val-split 0); evaluate "
                "--split train, or on another folder"
            )
        return chosen
    root = Path(data_dir)
    part = root / split
    if not part.is_dir() and split == "test" and (root / "val").is_dir():
        part = root / "val"
    folder = part if part.is_dir() else root
    return ImageFolder(
        folder, image_size=(h, w), channels=channels, classes=classes, progress=progress
    )


def _same_folder(a: Any, b: Any) -> bool:
    if not isinstance(a, str) or b is None:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _names(classes: Any) -> str:
    classes = list(classes)
    shown = ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "")
    return f"[{shown}] ({len(classes)})"
