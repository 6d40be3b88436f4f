"""safetensors weights: torch -> scratchcnn and back, dtypes, non-contiguous arrays, and
crafted or truncated files that must give one clear error line."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import scratchcnn as sc
from scratchcnn.checkpoint.safetensors import read_safetensors
from scratchcnn.nn.zoo import lenet5


def torch_twin(model: sc.Sequential) -> nn.Sequential:
    """torch's nn.Sequential of the same layers: same indices, so the same state_dict keys."""

    def twin(layer: sc.Layer) -> nn.Module:
        kind = type(layer).__name__
        if kind == "Conv2D":
            (pt, _), (pl, _) = layer.pad
            return nn.Conv2d(
                layer.in_channels,
                layer.out_channels,
                layer.kernel_size,
                layer.stride,
                (pt, pl),
                layer.dilation,
                layer.groups,
            )
        if kind == "MaxPool2D":
            return nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
        simple = {
            "Dense": lambda: nn.Linear(layer.in_features, layer.out_features),
            "BatchNorm2D": lambda: nn.BatchNorm2d(layer.num_features),
            "ReLU": nn.ReLU,
            "GlobalAvgPool2D": lambda: nn.AdaptiveAvgPool2d(1),
            "Flatten": lambda: nn.Flatten(layer.start_dim),
        }
        return simple[kind]()

    return nn.Sequential(*(twin(layer) for layer in model.layers))


def bn_model() -> sc.Sequential:
    """A model with BatchNorm2D (running statistics and num_batches_tracked)."""
    return sc.Sequential(
        [
            sc.Conv2D(3, 4, 3, padding=1),
            sc.BatchNorm2D(4),
            sc.ReLU(),
            sc.Conv2D(4, 4, 3, padding=1, groups=4),
            sc.GlobalAvgPool2D(),
            sc.Flatten(),
            sc.Dense(4, 3),
        ]
    )


def assert_same_outputs(ours: sc.Sequential, theirs: nn.Module, x: np.ndarray) -> None:
    theirs.eval()
    ours.eval()
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    got = ours.forward(x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_torch_lenet5_weights_load_and_give_torch_outputs(tmp_path, rng):
    torch.manual_seed(0)
    net = torch_twin(lenet5())
    path = tmp_path / "lenet.safetensors"
    save_file(net.state_dict(), path)
    model = lenet5(seed=1)
    model.load_weights(path)
    assert_same_outputs(model, net, rng.random((4, 1, 28, 28), dtype=np.float32))


def test_torch_batchnorm_model_loads_with_its_running_statistics(tmp_path, rng):
    torch.manual_seed(0)
    model = bn_model()
    net = torch_twin(model).train()
    with torch.no_grad():  # a few batches, so running stats and num_batches_tracked move
        for _ in range(3):
            net(torch.randn(8, 3, 6, 6) * 2 + 1)
    path = tmp_path / "bn.safetensors"
    save_file(net.state_dict(), path)
    model.load_weights(path)
    assert model.layers[1].buffers["num_batches_tracked"] == 3
    assert model.layers[1].buffers["num_batches_tracked"].dtype == np.int64
    assert_same_outputs(model, net, rng.standard_normal((5, 3, 6, 6)).astype(np.float32))


@pytest.mark.parametrize("which", ["lenet5", "batchnorm"])
def test_our_weights_load_into_torch_strictly(which, tmp_path, rng):
    if which == "lenet5":
        model = lenet5(seed=3)
        x = rng.random((3, 1, 28, 28), dtype=np.float32)
    else:
        model = bn_model().train()
        for _ in range(2):  # move the running statistics away from their initial values
            model.forward(rng.standard_normal((6, 3, 5, 5)).astype(np.float32))
        x = rng.standard_normal((3, 3, 5, 5)).astype(np.float32)
    path = tmp_path / "ours.safetensors"
    model.save_weights(path)
    net = torch_twin(model)
    net.load_state_dict(load_file(path), strict=True)
    assert_same_outputs(model, net, x)


def test_dtypes_are_kept(tmp_path):
    model = sc.Sequential(
        [sc.Conv2D(1, 2, 3, dtype=np.float64), sc.BatchNorm2D(2, dtype=np.float64)]
    )
    path = tmp_path / "w.safetensors"
    model.save_weights(path)
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])
    assert header["0.weight"]["dtype"] == "F64"
    assert header["1.num_batches_tracked"]["dtype"] == "I64"
    assert header["1.num_batches_tracked"]["shape"] == []
    assert set(header) - {"__metadata__"} == set(model.state_dict())
    loaded = read_safetensors(path)
    assert loaded["0.weight"].dtype == np.float64 and loaded["1.num_batches_tracked"].shape == ()


@pytest.mark.parametrize("layout", ["fortran", "strided"])
def test_non_contiguous_parameters_save_correctly(layout, tmp_path, rng):
    """safetensors' numpy writer stores raw memory as if C-ordered (safetensors#825)."""
    model = sc.Sequential([sc.Dense(5, 4, rng=0)])
    w = rng.standard_normal((4, 5)).astype(np.float32)
    if layout == "fortran":
        model.layers[0].params["weight"] = np.asfortranarray(w)
    else:
        big = np.zeros((8, 10), np.float32)
        big[::2, ::2] = w
        model.layers[0].params["weight"] = big[::2, ::2]
    assert not model.layers[0].params["weight"].flags.c_contiguous
    path = tmp_path / "w.safetensors"
    model.save_weights(path)
    np.testing.assert_array_equal(safetensors.numpy.load_file(path)["0.weight"], w)
    fresh = sc.Sequential([sc.Dense(5, 4, rng=1)])
    fresh.load_weights(path)
    np.testing.assert_array_equal(fresh.layers[0].params["weight"], w)


def test_half_precision_torch_files_load(tmp_path):
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(3, 2))
    for dtype in (torch.float16, torch.bfloat16):
        path = tmp_path / f"{dtype}.safetensors"
        save_file(lin.to(dtype).state_dict(), path)
        model = sc.Sequential([sc.Dense(3, 2)])
        model.load_weights(path)
        expected = lin.state_dict()["0.weight"].float().numpy()
        np.testing.assert_array_equal(model.layers[0].params["weight"], expected)


def test_strict_lists_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "w.safetensors"
    sc.Sequential([sc.Dense(3, 2), sc.ReLU(), sc.Dense(2, 2)]).save_weights(path)
    model = sc.Sequential([sc.Dense(3, 2), sc.BatchNorm2D(2)])
    with pytest.raises(sc.ScratchCNNError) as info:
        model.load_weights(path)
    text = str(info.value)
    assert str(path) in text and "\n" not in text
    assert "missing keys: 1.weight, 1.bias, 1.running_mean" in text
    assert "unexpected keys: " in text and "2.weight" in text and "2.bias" in text
    partial = sc.Sequential([sc.Dense(3, 2, rng=5)])
    partial.load_weights(path, strict=False)
    np.testing.assert_array_equal(
        partial.layers[0].params["weight"], read_safetensors(path)["0.weight"]
    )


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    sc.Sequential([sc.Dense(3, 2, rng=0)]).save_weights(path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(sc.FileWriteError, match="No space left"):
        sc.Sequential([sc.Dense(3, 2, rng=1)]).save_weights(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_missing_extra_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(sc.MissingDependencyError, match=r"pip install -e '\.\[safetensors\]'"):
        sc.Sequential([sc.Dense(3, 2)]).save_weights(tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()


def test_import_scratchcnn_does_not_import_safetensors():
    code = "import sys, scratchcnn; sys.exit('safetensors' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


# --- crafted and truncated files -----------------------------------------------------------
def craft(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


CRAFTED = [
    (b"", "only 0 bytes"),
    (b"\x10\x00\x00", "only 3 bytes"),
    (struct.pack("<Q", 2**63) + b"{}", "over the 104857600-byte limit"),
    (struct.pack("<Q", 1000) + b'{"a": 1}', "truncated: the header needs 1000 bytes"),
    (craft(b"[1, 2]"), "not a JSON object"),
    (craft(b'{"a": '), "unreadable header"),
    (craft(b"\xff\xfe{}"), "not a JSON object"),
    (craft(b'{"\xff": 1}'), "unreadable header"),
    (craft(b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}'), "NaN"),
    (craft(b'{"w": 1, "w": 2}'), "duplicate key 'w'"),
    (craft(b"{" + b'"a":' * 1 + b"[" * 100000 + b"]" * 100000 + b"}"), "unreadable header"),
    (craft({"w": entry(dtype="F128")}, bytes(8)), "dtype 'F128'"),
    (craft({"w": entry(shape=(-2,))}, bytes(8)), "shape must be a list"),
    (craft({"w": entry(shape=(2.0,))}, bytes(8)), "shape must be a list"),
    (craft({"w": entry(shape=[1] * 9, offsets=(0, 4))}, bytes(4)), "at most 8 sizes"),
    (craft({"w": entry(shape=(0, 2**62), offsets=(0, 0))}), "sizes from 0 to"),
    (craft({"w": {"dtype": "F32", "shape": [2]}}, bytes(8)), "exactly dtype, shape and data"),
    (craft({"w": {**entry(), "extra": 1}}, bytes(8)), "exactly dtype, shape and data"),
    (craft({"w": entry(offsets=(0, 16))}, bytes(8)), "outside the 8 data bytes"),
    (craft({"w": entry(offsets=(4, 0))}, bytes(8)), "outside the 8 data bytes"),
    (craft({"w": entry(offsets=(True, 8))}, bytes(8)), "outside the 8 data bytes"),
    (craft({"w": entry(shape=(3,))}, bytes(8)), "F32 (3,) needs 12 bytes, data_offsets give 8"),
    (craft({"w": entry(), "v": entry()}, bytes(8)), "overlaps another tensor"),
    (craft({"w": entry(offsets=(4, 12))}, bytes(12)), "4 unused bytes before tensor 'w'"),
    (craft({"w": entry()}, bytes(12)), "4 bytes after the last tensor"),
    (craft({"__metadata__": {"a": 1}}), "__metadata__ must map strings to strings"),
    (b"PK\x03\x04" + bytes(40), "zip archive or a pickle"),
    (b"\x80\x02" + bytes(40), "zip archive or a pickle"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
]


@pytest.mark.parametrize("data,match", CRAFTED)
def test_crafted_files_give_one_clear_line(data, match, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    model = sc.Sequential([sc.Dense(2, 1)])
    before = model.state_dict()
    with pytest.raises(sc.CheckpointError) as info:
        model.load_weights(path)
    text = str(info.value)
    assert match in text, text
    assert text.startswith(f"{path}: ") and "\n" not in text and len(text) < 400
    for key, arr in model.state_dict().items():
        np.testing.assert_array_equal(arr, before[key])


def test_every_truncation_of_a_real_file_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    model = sc.Sequential([sc.Conv2D(1, 2, 3), sc.BatchNorm2D(2)])
    model.save_weights(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for n in range(len(data)):
        cut.write_bytes(data[:n])
        with pytest.raises(sc.CheckpointError, match="not a valid safetensors file"):
            read_safetensors(cut)
    assert set(read_safetensors(path)) == set(model.state_dict())


def test_special_files_are_refused(tmp_path):
    with pytest.raises(sc.CheckpointError, match="is a directory"):
        read_safetensors(tmp_path)
    with pytest.raises(sc.CheckpointError, match="no such safetensors file"):
        read_safetensors(tmp_path / "absent.safetensors")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(sc.CheckpointError, match=r"is a FIFO .*, not a regular safetensors file"):
        read_safetensors(fifo)
    if os.path.exists("/dev/zero"):
        with pytest.raises(sc.CheckpointError, match="device, not a regular safetensors file"):
            read_safetensors("/dev/zero")


def test_mis_shaped_tensor_is_refused_before_anything_is_copied(tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors.numpy.save_file({"0.weight": np.ones((3, 2), np.float32)}, path)
    model = sc.Sequential([sc.Dense(3, 2, bias=False)])
    with pytest.raises(sc.ShapeError, match=r"0.weight: checkpoint \(3, 2\) vs model \(2, 3\)"):
        model.load_weights(path)
