"""Issue 24: torchvision's models through ONNX, the new layers out to ONNX and back, external
data files, the Dropout rule, which exports keep BatchNorm, and the patterns the importer
reads (Gate, DenseConcat, channel split and shuffle, channels-last LayerNorm, GELU, folded
shape arithmetic, one-input and flattened Concats).

torchvision must be installed (``pip install torchvision==0.28.0 --no-deps``; see
``benchmarks/_torchvision.py`` for why its compiled ops are not needed). The full list of
models runs as ``benchmarks/torchvision_import.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import scratchcnn as sc
from benchmarks._torchvision import build, gradient_check, quiet_export
from scratchcnn.onnx import export, load
from scratchcnn.onnx.commands import import_checkpoint
from scratchcnn.onnx.load import model_from_proto
from tests.onnx.helpers import graph_model, rel_err, run_ort, save

N = "N"


def torch_export(net, shape, path, dynamo=False, opset=17, dtype=torch.float32, **extra):
    """torch.onnx.export with a dynamic batch axis, quiet. The dynamo exporter keeps its
    default of writing the weights to PATH.data beside the graph."""
    x = torch.randn(2, *shape, dtype=dtype)
    quiet_export(net, x, Path(path), "dynamo" if dynamo else "ts", opset, **extra)
    return Path(path)


def kinds(model) -> list[str]:
    return [type(layer).__name__ for _, layer in model.named_layers()]


def blocks(model) -> set[str]:
    """Type names of every layer and block, at every depth."""
    out, stack = set(), list(model.layers)
    while stack:
        layer = stack.pop()
        out.add(type(layer).__name__)
        for _, child in getattr(layer, "named_children", list)():
            stack.extend(getattr(child, "layers", [child]))
    return out


# --- torchvision models, both exporters ---------------------------------------------------------
# TorchScript exports take seconds; the dynamo exporter's take tens of seconds: slow.
FAST = [
    ("mobilenet_v3_small", False, 17, {"Gate", "Hardswish", "Hardsigmoid", "Residual"}),
    ("shufflenet_v2_x0_5", False, 17, {"ChannelSlice", "ChannelShuffle", "Parallel"}),
    ("densenet121", False, 17, {"DenseConcat", "BatchNorm2D"}),
    ("efficientnet_b0", False, 18, {"SiLU", "Gate"}),
]
# TorchScript exports only here: the dynamo exports of torchvision's models (35-100 s each
# on 2 cores) run in benchmarks/torchvision_import.py with every model and exporter; the
# dynamo exporter's defaults (weights in m.onnx.data) are tested on small networks in
# test_onnx_torch.py and test_onnx_blocks.py, external data itself in this file.
SLOW = [
    ("regnet_y_400mf", False, 18, {"Gate", "Residual"}),
    ("convnext_tiny", False, 17, {"LayerNorm2D", "GELU", "ChannelScale", "Residual"}),
    ("inception_v3", False, 17, {"Parallel"}),
]
SIZE = {"inception_v3": 80}


def _ids(cases):
    return [f"{m}-{'dynamo' if d else 'ts'}{o}" for m, d, o, _ in cases]


def _check_model(name, dynamo, opset, expect, tmp_path):
    size = SIZE.get(name, 32)
    net = build(name)
    path = torch_export(net, (3, size, size), tmp_path / "m.onnx", dynamo, opset)
    if dynamo:
        assert (tmp_path / "m.onnx.data").exists()  # torch's default: weights beside the graph
    model = load(path)
    assert expect <= blocks(model), blocks(model)
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert rel_err(model.predict(x), want) <= 1e-4
    # float64: the same export of the model in float64, one cross-entropy step on both
    net64 = net.double()
    path64 = torch_export(
        net64, (3, size, size), tmp_path / "d.onnx", dynamo, opset, dtype=torch.float64
    )
    result = gradient_check(load(path64), net64, x.astype(np.float64))
    assert result["grad_err"] <= 1e-9, result
    matched, total = (int(v) for v in result["matched"].split("/"))
    assert matched >= 1 and total >= matched
    return model


@pytest.mark.parametrize(("name", "dynamo", "opset", "expect"), FAST, ids=_ids(FAST))
def test_torchvision_model_imports_with_torchs_outputs_and_gradients(
    name, dynamo, opset, expect, tmp_path
):
    _check_model(name, dynamo, opset, expect, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "dynamo", "opset", "expect"), SLOW, ids=_ids(SLOW))
def test_more_torchvision_models(name, dynamo, opset, expect, tmp_path):
    _check_model(name, dynamo, opset, expect, tmp_path)


def test_imported_torchvision_model_exports_again(tmp_path):
    """An imported MobileNetV3 (Gate, Hardswish, Hardsigmoid, Residual) written back by
    scratchcnn.onnx.export runs in onnxruntime with the same outputs, and reads back in."""
    net = build("mobilenet_v3_small")
    model = load(torch_export(net, (3, 32, 32), tmp_path / "m.onnx"))
    out = export(model, tmp_path / "again.onnx")
    x = np.random.default_rng(1).uniform(0, 1, (3, 3, 32, 32)).astype(np.float32)
    ours = model.predict(x)
    assert rel_err(run_ort(out, x), ours) <= 1e-5
    back = load(out)
    assert kinds(back) == kinds(model)
    assert rel_err(back.predict(x), ours) <= 1e-6


# --- the new layers out to ONNX and back -----------------------------------------------------
def every_new_layer(gelu_tanh: bool = False) -> sc.Sequential:
    rng = np.random.default_rng(3)
    layers = [
        sc.Conv2D(3, 6, 3, padding=1, rng=0),
        sc.LayerNorm2D(6),
        sc.ChannelScale(6),
        sc.Clip(-1.0, 2.0),
        sc.Conv2D(6, 6, 1, rng=1),
        sc.ReLU6(),
        sc.Hardswish(),
        sc.Hardsigmoid(0.2, 0.4),
        sc.SiLU(),
        sc.GELU(),
        *([sc.GELU("tanh")] if gelu_tanh else []),
        sc.Gate(
            [
                sc.GlobalAvgPool2D(),
                sc.Conv2D(6, 2, 1, rng=2),
                sc.ReLU(),
                sc.Conv2D(2, 6, 1, rng=3),
                sc.Hardsigmoid(),
            ]
        ),
        sc.DenseConcat([sc.Conv2D(6, 2, 3, padding=1, rng=4), sc.ReLU()]),
        sc.ChannelShuffle(2),
        sc.Parallel([sc.ChannelSlice(0, 4), [sc.ChannelSlice(4, 8), sc.Conv2D(4, 4, 1, rng=5)]]),
        sc.GlobalAvgPool2D(),
        sc.Flatten(),
        sc.LayerNorm2D(8),
        sc.Dense(8, 3, rng=6),
    ]
    model = sc.Sequential(layers, input_shape=(3, 7, 7))
    for _, layer in model.named_layers():
        for name, value in layer.params.items():
            if name == "weight" and value.ndim == 1:
                value[...] = rng.uniform(0.5, 1.5, value.shape)
            elif name == "bias":
                value[...] = rng.normal(0, 0.1, value.shape)
    return model.eval()


@pytest.mark.parametrize("opset", [17, 20])
def test_every_new_layer_exports_runs_in_onnxruntime_and_reads_back(opset, tmp_path):
    model = every_new_layer(gelu_tanh=opset >= 20)
    path = export(model, tmp_path / "m.onnx", opset=opset)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"HardSwish", "HardSigmoid", "Clip", "Slice", "Transpose"} <= ops
    assert ("Gelu" in ops) == (opset >= 20) and ("Erf" in ops) == (opset < 20)
    for batch in (1, 5):
        x = np.random.default_rng(batch).uniform(0, 1, (batch, 3, 7, 7)).astype(np.float32)
        ours = model.predict(x)
        assert rel_err(run_ort(path, x), ours) <= 1e-5
    back = load(path)
    assert kinds(back) == kinds(model)
    assert list(back.state_dict()) == list(model.state_dict())
    np.testing.assert_allclose(back.predict(x), ours, rtol=1e-5, atol=1e-6)


def test_export_needs_opsets_for_some_layers(tmp_path):
    with pytest.raises(sc.OnnxError, match=r"LayerNorm2D .* needs opset 17"):
        export(sc.Sequential([sc.LayerNorm2D(3)], input_shape=(3, 2, 2)), tmp_path / "a.onnx", 13)
    with pytest.raises(sc.OnnxError, match=r"approximate='tanh'\) needs opset 20"):
        export(sc.Sequential([sc.GELU("tanh")], input_shape=(3,)), tmp_path / "b.onnx", 17)
    # opset 13 has no HardSwish: x * HardSigmoid(x), read back as a Gate
    model = sc.Sequential([sc.Hardswish()], input_shape=(4,))
    path = export(model, tmp_path / "c.onnx", 13)
    x = np.linspace(-5, 5, 8, dtype=np.float32).reshape(2, 4)
    assert rel_err(run_ort(path, x), model.predict(x)) <= 1e-6
    np.testing.assert_allclose(load(path).predict(x), model.predict(x), rtol=1e-6, atol=1e-7)


# --- hand-built graphs of the new operators ----------------------------------------------------
def node(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), name=f"n_{op}_{outputs[0]}", **attrs)


def f32(*values):
    return np.array(values, dtype=np.float32)


def i64(*values):
    return np.array(values, dtype=np.int64)


OPS = {
    "clip-min-only": ([node("Clip", ["x", "lo"])], [N, 4], {"lo": f32(0.5)}, "Clip"),
    "min": ([node("Min", ["x", "c"])], [N, 4], {"c": f32(1.0)}, "Clip"),
    "max": ([node("Max", ["c", "x"])], [N, 4], {"c": f32(-1.0)}, "Clip"),
    "relu-min6": (
        [node("Relu", ["x"], ["r"]), node("Min", ["r", "c"])],
        [N, 4],
        {"c": f32(6.0)},
        "ReLU6",
    ),
    "hardsigmoid": ([node("HardSigmoid", ["x"], alpha=0.3, beta=0.4)], [N, 4], {}, "Hardsigmoid"),
    "gelu-tanh": ([node("Gelu", ["x"], approximate="tanh")], [N, 4], {}, "GELU"),
    "layernorm-2d": (
        [node("LayerNormalization", ["x", "s", "b"], axis=-1, epsilon=1e-3)],
        [N, 4],
        {"s": f32(1, 2, 3, 4), "b": f32(0, 1, 0, 1)},
        "LayerNorm2D",
    ),
    "scale-per-channel": (
        [node("Div", ["x", "s"])],
        [N, 2, 3, 3],
        {"s": f32(2, 4).reshape(2, 1, 1)},
        "ChannelScale",
    ),
    "split-equal": (
        [
            node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2),
            node("Tanh", ["b"], ["t"]),
            node("Concat", ["t", "a"], axis=1),
        ],
        [N, 4, 2, 2],
        {},
        "Parallel",
    ),
    "one-input-concat": (
        [node("Concat", ["x"], ["c"], axis=1), node("Relu", ["c"])],
        [N, 3, 2, 2],
        {},
        "ReLU",
    ),
    "dense-prefix": (
        [
            node("Relu", ["x"], ["a"]),
            node("Concat", ["x", "a"], ["c1"], axis=1),
            node("Sigmoid", ["c1"], ["b"]),
            node("Concat", ["x", "a", "b"], axis=1),
        ],
        [N, 2, 2, 2],
        {},
        "DenseConcat",
    ),
}


@pytest.mark.parametrize("case", list(OPS))
def test_hand_built_graphs_of_the_new_operators_match_onnxruntime(case, tmp_path):
    nodes, in_shape, inits, kind = OPS[case]
    proto = graph_model(nodes, in_shape, None, inits, opset=20 if "gelu" in case else 18)
    path = save(proto, tmp_path / "g.onnx")
    model = load(path)
    assert kind in blocks(model), blocks(model)
    x = np.random.default_rng(0).normal(0, 3, (3, *in_shape[1:])).astype(np.float32)
    assert rel_err(model.predict(x), run_ort(path, x)) <= 1e-5
    if case == "dense-prefix":  # cat(x, a, b) = cat(cat(x, a), b): two DenseConcats
        assert [type(la).__name__ for la in model.layers] == ["DenseConcat", "DenseConcat"]


class FlattenByShape(nn.Module):
    """n, c, h, w = y.shape; y.view(n, c * h * w): shape arithmetic (Mul) to fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        n, c, h, w = y.shape
        return self.fc(y.view(n, c * h * w))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_shape_arithmetic_is_folded(dynamo, tmp_path):
    torch.manual_seed(0)
    net = FlattenByShape().eval()
    model = load(torch_export(net, (3, 6, 6), tmp_path / "f.onnx", dynamo))
    if dynamo:  # torch's default export: the weights in f.onnx.data, beside the graph
        assert (tmp_path / "f.onnx.data").exists()
        # scratchcnn import reads it as it is
        notes = import_checkpoint(tmp_path / "f.onnx", tmp_path / "f.npz")
        assert "wrote" in notes[-1]
        assert sc.load(tmp_path / "f.npz").config() == model.config()
    x = np.random.default_rng(0).uniform(0, 1, (4, 3, 6, 6)).astype(np.float32)
    with torch.no_grad():
        assert rel_err(model.predict(x), net(torch.from_numpy(x)).numpy()) <= 1e-5


def test_shape_arithmetic_on_the_batch_size_is_refused(tmp_path):
    nodes = [
        node("Shape", ["x"], ["s"]),
        node("Gather", ["s", "zero"], ["n"], axis=0),
        node("Mul", ["n", "two"], ["m"]),
        node("Unsqueeze", ["m", "ax"], ["u"]),
        node("Reshape", ["x", "u"]),
    ]
    inits = {"zero": i64(0).reshape(()), "two": i64(2).reshape(()), "ax": i64(0)}
    with pytest.raises(sc.OnnxError, match=r"\(Mul\) is not supported \(arithmetic on the batch"):
        load(save(graph_model(nodes, [N, 3], None, inits), tmp_path / "b.onnx"))


# --- Dropout, BatchNorm ----------------------------------------------------------------------
def _dropout_graph(training: bool, ratio: float) -> onnx.ModelProto:
    nodes = [node("Dropout", ["x", "r", "t"])]
    inits = {"r": f32(ratio).reshape(()), "t": np.array(training)}
    return graph_model(nodes, [N, 3], None, inits, opset=13)


def test_a_training_mode_dropout_is_refused_never_silently_identity(tmp_path):
    with pytest.raises(sc.OnnxError, match=r"\(Dropout\) is not supported \(input training_mode"):
        load(save(_dropout_graph(True, 0.3), tmp_path / "t.onnx"))
    assert kinds(load(save(_dropout_graph(False, 0.3), tmp_path / "e.onnx"))) == ["Dropout"]
    assert kinds(load(save(_dropout_graph(True, 0.0), tmp_path / "z.onnx"))) == []


def test_which_exports_keep_batchnorm(tmp_path):
    """Eval-mode exports fold BatchNorm into the convolutions; the TorchScript exporter with
    do_constant_folding=False keeps it, and so does a training-mode export (of a model
    without Dropout: a training-mode Dropout is refused)."""
    net = build("mobilenet_v2")
    count = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    folded = load(torch_export(net, (3, 32, 32), tmp_path / "a.onnx"))
    assert "BatchNorm2D" not in kinds(folded)
    kept = load(torch_export(net, (3, 32, 32), tmp_path / "b.onnx", do_constant_folding=False))
    assert kinds(kept).count("BatchNorm2D") == count
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert rel_err(kept.predict(x), want) <= 1e-4
    train = {"training": torch.onnx.TrainingMode.TRAINING, "do_constant_folding": False}
    trained = torch_export(net, (3, 32, 32), tmp_path / "c.onnx", **train)
    with pytest.raises(sc.OnnxError, match="training_mode=true"):
        load(trained)  # MobileNetV2's classifier has a Dropout
    net.classifier[0] = nn.Identity()
    trained = torch_export(net, (3, 32, 32), tmp_path / "d.onnx", **train)
    model = load(trained)
    assert kinds(model).count("BatchNorm2D") == count
    # BatchNorm kept: every parameter is torch's, and every gradient equals torch's (float64)
    net64 = net.eval().double()
    path64 = torch_export(
        net64, (3, 32, 32), tmp_path / "e.onnx", dtype=torch.float64, do_constant_folding=False
    )
    result = gradient_check(load(path64), net64, x.astype(np.float64))
    assert result["grad_err"] <= 1e-9, result
    matched, total = (int(v) for v in result["matched"].split("/"))
    assert matched == total == sum(1 for _ in net64.parameters())


# --- external data -----------------------------------------------------------------------------
def _external_model(folder: Path, location: str = "w.bin") -> tuple[onnx.ModelProto, np.ndarray]:
    """Conv(x, W) with W stored in ``location`` beside the graph (the file is written at
    folder / "w.bin" whatever ``location`` says)."""
    w = np.random.default_rng(0).normal(size=(2, 3, 1, 1)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "w.bin").write_bytes(b"\0" * 16 + w.tobytes())
    tensor = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=w.shape)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "16"), ("length", str(w.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    proto = graph_model([node("Conv", ["x", "W"])], [N, 3, 2, 2])
    proto.graph.initializer.append(tensor)
    return proto, w


def _set_entry(proto: onnx.ModelProto, key: str, value: str) -> None:
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == key:
            entry.value = value
            return
    entry = proto.graph.initializer[0].external_data.add()
    entry.key, entry.value = key, value


def test_external_data_beside_the_graph_loads(tmp_path):
    proto, w = _external_model(tmp_path / "m")
    model = load(save(proto, tmp_path / "m" / "m.onnx"))
    np.testing.assert_array_equal(model.layers[0].params["weight"], w)
    sub = tmp_path / "n"
    proto, w = _external_model(sub)
    (sub / "data").mkdir()
    os.replace(sub / "w.bin", sub / "data" / "w.bin")
    _set_entry(proto, "location", "data/w.bin")
    model = load(save(proto, sub / "m.onnx"))
    np.testing.assert_array_equal(model.layers[0].params["weight"], w)
    # onnx's own writer, and its checker's view of the file, agree
    proto2 = onnx.load(str(sub / "m.onnx"))
    assert numpy_helper.to_array(proto2.graph.initializer[0]).shape == (2, 3, 1, 1)


BAD_EXTERNAL = {
    "parent": ({"location": "../w.bin"}, "must be a relative path inside the model's folder"),
    "absolute": ({"location": "/etc/passwd"}, "must be a relative path inside"),
    "length": ({"length": "20"}, "length 20 is not the 24 bytes"),
    "offset": ({"offset": "100"}, "lie beyond the end of w.bin"),
    "missing": ({"location": "nothere.bin"}, "no such external data file"),
    "key": ({"colour": "red"}, "external data key 'colour' is unknown"),
    "number": ({"offset": "-1"}, "offset='-1' is not a byte count"),
}


@pytest.mark.parametrize("case", list(BAD_EXTERNAL))
def test_bad_external_data_is_one_line(case, tmp_path):
    entries, message = BAD_EXTERNAL[case]
    proto, _ = _external_model(tmp_path / "m")
    for key, value in entries.items():
        _set_entry(proto, key, value)
    path = save(proto, tmp_path / "m" / "m.onnx")
    with pytest.raises(sc.OnnxError, match=message) as info:
        load(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))


def test_external_data_never_leaves_the_folder_nor_reads_a_fifo(tmp_path):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"\0" * 64)
    proto, _ = _external_model(tmp_path / "m")
    (tmp_path / "m" / "link.bin").symlink_to(outside)
    _set_entry(proto, "location", "link.bin")
    with pytest.raises(sc.OnnxError, match="leads out of the model's folder"):
        load(save(proto, tmp_path / "m" / "m.onnx"))
    proto, _ = _external_model(tmp_path / "f")
    os.mkfifo(tmp_path / "f" / "pipe")
    _set_entry(proto, "location", "pipe")
    with pytest.raises(sc.OnnxError, match="is a FIFO"):
        load(save(proto, tmp_path / "f" / "m.onnx"))  # returns at once: never blocks
    _set_entry(proto, "location", ".")
    with pytest.raises(sc.OnnxError, match="is a directory"):
        load(save(proto, tmp_path / "f" / "m.onnx"))
    with pytest.raises(sc.OnnxError, match=r"read the model with load\(path\)"):
        model_from_proto(onnx, _external_model(tmp_path / "p")[0])
