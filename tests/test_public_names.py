"""What users wrote against keeps working after the package was laid out anew: the names
``scratchcnn`` exports, the documented module paths, and checkpoints written before."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

import scratchcnn as sc

FILES = Path(__file__).parent / "files"


@pytest.mark.parametrize(
    "old, new, names",
    [
        ("scratchcnn.models", "scratchcnn.nn.zoo", ["lenet5", "resnet8", "build_model", "RECIPES"]),
        ("scratchcnn.kernels", "scratchcnn.engine", ["using", "set_mode", "mode", "available"]),
        ("scratchcnn.distributed", "scratchcnn.parallel.mpi", ["init", "shard"]),
        ("scratchcnn.train", "scratchcnn.training", ["fit", "evaluate", "EpochMetrics"]),
        ("scratchcnn.optim", "scratchcnn.nn.optim", ["SGD", "Adam", "CosineAnnealingLR"]),
        ("scratchcnn.init", "scratchcnn.nn.init", ["manual_seed", "INITIALIZERS"]),
    ],
)
def test_documented_module_paths_are_the_new_modules(old, new, names):
    module = importlib.import_module(old)
    assert module is importlib.import_module(new)  # the same module, not a copy
    assert getattr(sc, old.split(".")[1]) is module
    for name in names:
        assert hasattr(module, name), f"{old}.{name}"
    exec(f"from {old} import {names[0]}", {})  # the form the README uses


@pytest.mark.parametrize("name", ["scratchcnn.data", "scratchcnn.onnx", "scratchcnn.viz"])
def test_other_documented_packages_import(name):
    assert importlib.import_module(name).__name__ == name


def test_every_exported_name_is_there():
    for name in sc.__all__:
        assert hasattr(sc, name), name
    assert sc.__version__ == "0.1.0"


@pytest.mark.parametrize("mode", ["numpy", "auto"])
def test_a_checkpoint_written_before_the_move_loads_and_resumes(mode, tmp_path):
    """tests/files/checkpoint_bb2b7ae.npz was written by the code of commit bb2b7ae (before
    nn/ and engine/ existed): blocks, BatchNorm, Dropout, an optimiser state; its outputs on
    four images were saved beside it."""
    expected = np.load(FILES / "checkpoint_bb2b7ae_outputs.npz")
    with sc.engine.using(mode):
        ckpt = sc.load_checkpoint(FILES / "checkpoint_bb2b7ae.npz")
        model = ckpt.model.eval()
        np.testing.assert_allclose(
            model.forward(expected["x"]), expected["y"], rtol=1e-5, atol=1e-6
        )
        opt = sc.optim.SGD(model, lr=0.05, momentum=0.9)
        ckpt.restore_training_state(opt)
        assert opt.steps == 3 and ckpt.epoch == 3
        sc.save(model, tmp_path / "again.npz", optimizer=opt, epoch=ckpt.epoch)
        again = sc.load_checkpoint(tmp_path / "again.npz").model.eval()
        np.testing.assert_array_equal(again.forward(expected["x"]), model.forward(expected["x"]))
