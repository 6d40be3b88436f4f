"""scratchcnn.onnx.export: every layer kind, checked by the ONNX checker and onnxruntime."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest

import scratchcnn as sc
from scratchcnn.onnx import DEFAULT_OPSET, MIN_OPSET, export
from scratchcnn.onnx.export import CLASSES_KEY
from tests.onnx.helpers import rel_err, run_ort


def _bn(c: int, affine: bool = True) -> sc.BatchNorm2D:
    """BatchNorm2D with non-trivial statistics and affine parameters."""
    rng = np.random.default_rng(c)
    bn = sc.BatchNorm2D(c, eps=1e-3, momentum=0.2, affine=affine)
    bn.buffers["running_mean"][...] = rng.standard_normal(c)
    bn.buffers["running_var"][...] = rng.uniform(0.5, 2.0, c)
    if affine:
        bn.params["weight"][...] = rng.uniform(0.5, 1.5, c)
        bn.params["bias"][...] = rng.standard_normal(c)
    return bn


def _head(c: int, hw: int, n: int = 5) -> list[sc.Layer]:
    return [sc.Flatten(), sc.Dense(c * hw * hw, n)]


#: One model per layer kind (the kind under test first, in a context that makes it matter).
MODELS = {
    "Conv2D": lambda: [sc.Conv2D(3, 4, 3, stride=2, padding=1), *_head(4, 4)],
    "Conv2D-no-bias-same": lambda: [sc.Conv2D(3, 4, 4, padding="same", bias=False), *_head(4, 8)],
    "MaxPool2D": lambda: [sc.MaxPool2D(3, stride=2, padding=1), *_head(3, 4)],
    "AvgPool2D": lambda: [sc.AvgPool2D(2, padding=1), *_head(3, 5)],
    "Dense": lambda: [sc.Flatten(), sc.Dense(192, 7), sc.Dense(7, 3, bias=False)],
    "ReLU": lambda: [sc.Rescale(2.0, -1.0), sc.ReLU(), *_head(3, 8)],
    "LeakyReLU": lambda: [sc.Rescale(2.0, -1.0), sc.LeakyReLU(0.3), *_head(3, 8)],
    "Sigmoid": lambda: [sc.Sigmoid(), *_head(3, 8)],
    "Tanh": lambda: [sc.Rescale(4.0, -2.0), sc.Tanh(), *_head(3, 8)],
    "Softmax": lambda: [*_head(3, 8), sc.Softmax()],
    "LogSoftmax": lambda: [*_head(3, 8), sc.LogSoftmax()],
    "Flatten": lambda: [sc.Flatten()],
    "BatchNorm2D": lambda: [_bn(3), *_head(3, 8)],
    "BatchNorm2D-no-affine": lambda: [_bn(3, affine=False), *_head(3, 8)],
    "Dropout": lambda: [sc.Dropout(0.5), *_head(3, 8), sc.Dropout(0.2)],
    "Rescale": lambda: [sc.Rescale(1 / 255, -0.5), sc.Rescale(3.0), sc.Rescale(1.0, 0.25)],
    "only-Dropout": lambda: [sc.Dropout(0.5)],
    "Normalize": lambda: [sc.Normalize([0.5, 0.25, 0.1], [0.2, 0.3, 2.0]), *_head(3, 8)],
    # The layer arguments that interop needs.
    "Conv2D-dilation-groups": lambda: [
        sc.Conv2D(3, 6, 3, dilation=2, groups=3, padding=((1, 2), (0, 1))),
        sc.Flatten(),
        sc.Dense(6 * 7 * 5, 5),
    ],
    "Conv2D-depthwise": lambda: [sc.Conv2D(3, 3, 3, groups=3, stride=2), *_head(3, 3)],
    "MaxPool2D-ceil-dilation": lambda: [
        sc.MaxPool2D(2, stride=2, ceil_mode=True, dilation=2, padding=((1, 0), (0, 1))),
        *_head(3, 4),
    ],
    "AvgPool2D-ceil-include-pad": lambda: [
        sc.AvgPool2D(3, stride=2, padding=1, ceil_mode=True),
        *_head(3, 5),
    ],
    "AvgPool2D-exclude-pad": lambda: [
        sc.AvgPool2D(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        *_head(3, 5),
    ],
    "GlobalAvgPool2D": lambda: [sc.GlobalAvgPool2D(), *_head(3, 1)],
    "Flatten-start-dim": lambda: [sc.Flatten(start_dim=2), sc.Softmax(axis=2)],
}


def _model(kind: str, dtype=np.float32) -> sc.Sequential:
    sc.manual_seed(0)
    model = sc.Sequential(MODELS[kind](), input_shape=(3, 8, 8)).astype(dtype)
    return model.eval()


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_layer_kind_runs_in_onnxruntime(kind, tmp_path, rng):
    model = _model(kind)
    path = export(model, tmp_path / "m.onnx")
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    for batch in (1, 64):
        x = rng.uniform(0, 1, (batch, 3, 8, 8)).astype(np.float32)
        ours, theirs = model.predict(x), run_ort(path, x)
        assert ours.shape == theirs.shape
        assert rel_err(theirs, ours) <= 1e-5, kind


def test_normalize_comes_back_as_normalize(tmp_path, rng):
    """The input's normalisation (Sub of the mean, Div by the std) imports as one Normalize
    with the same statistics, whether we wrote it or torch did (torchvision's recipe)."""
    torch = pytest.importorskip("torch")
    model = _model("Normalize")
    back = sc.onnx.load(export(model, tmp_path / "m.onnx"))
    np.testing.assert_allclose(back.layers[0].mean, [0.5, 0.25, 0.1], rtol=1e-7)
    np.testing.assert_allclose(back.layers[0].std, [0.2, 0.3, 2.0], rtol=1e-7)
    x = rng.uniform(0, 1, (3, 3, 8, 8)).astype(np.float32)
    assert rel_err(back.predict(x), model.predict(x)) <= 1e-6

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1))
            self.conv = torch.nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv((x - self.mean) / self.std)

    net = Net().eval()
    path = tmp_path / "t.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 8, 8), path, dynamo=False)
    imported = sc.onnx.load(path)
    assert type(imported.layers[0]).__name__ == "Normalize"
    np.testing.assert_allclose(imported.layers[0].mean, [0.485, 0.456, 0.406], rtol=1e-6)
    np.testing.assert_allclose(imported.layers[0].std, [0.229, 0.224, 0.225], rtol=1e-6)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    assert rel_err(imported.predict(x), expected) <= 1e-5


def test_float64_model_exports_float64_graph(tmp_path, rng):
    model = _model("BatchNorm2D", np.float64)
    path = export(model, tmp_path / "m.onnx")
    graph = onnx.load(path).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert {t.data_type for t in graph.initializer} == {onnx.TensorProto.DOUBLE}
    x = rng.uniform(0, 1, (4, 3, 8, 8))
    # ONNX stores epsilon as a float32 attribute: 1e-3 becomes 1.00000005e-3.
    assert rel_err(run_ort(path, x), model.predict(x)) <= 1e-9


def test_graph_interface_input_output_dynamic_batch_and_keys(tmp_path):
    from scratchcnn.nn.zoo import lenet5

    model = lenet5(seed=0)
    path = export(model, tmp_path / "m.onnx", classes=list("abcdefghij"))
    proto = onnx.load(path)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and out.name == "output"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 1, 28, 28]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 10]
    assert {t.name for t in proto.graph.initializer} == set(model.state_dict())
    assert proto.opset_import[0].version == DEFAULT_OPSET
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta[CLASSES_KEY] == '["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]'


@pytest.mark.parametrize("opset", [MIN_OPSET, 15, 21])
def test_opsets(opset, tmp_path, rng):
    model = _model("BatchNorm2D")
    path = export(model, tmp_path / "m.onnx", opset=opset)
    assert onnx.load(path).opset_import[0].version == opset
    x = rng.uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)
    assert rel_err(run_ort(path, x), model.predict(x)) <= 1e-5


@pytest.mark.parametrize("opset", [12, 10_000, "17"])
def test_bad_opset_is_refused(opset, tmp_path):
    with pytest.raises(sc.ConfigError, match="opset"):
        export(_model("ReLU"), tmp_path / "m.onnx", opset=opset)
    assert not (tmp_path / "m.onnx").exists()


class Doubler(sc.Layer):
    def forward(self, x):
        return 2 * x


def test_unexportable_layer_leaves_no_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "m.onnx"
    model = sc.Sequential([sc.Flatten(), Doubler()], input_shape=(3, 8, 8))
    with pytest.raises(sc.OnnxError, match=r"layer 1 \(Doubler\) has no ONNX equivalent"):
        export(model, path)
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"old")
    with pytest.raises(sc.OnnxError):
        export(model, path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_model_without_input_shape_needs_one(tmp_path, rng):
    model = sc.Sequential([sc.Flatten(), sc.Dense(12, 2)])
    with pytest.raises(sc.ConfigError, match="input_shape"):
        export(model, tmp_path / "m.onnx")
    path = export(model, tmp_path / "m.onnx", input_shape=(3, 2, 2))
    x = rng.standard_normal((5, 3, 2, 2)).astype(np.float32)
    assert rel_err(run_ort(path, x), model.predict(x)) <= 1e-5


def test_missing_onnx_package_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(sc.MissingDependencyError, match=r"pip install -e '\.\[onnx\]'"):
        export(_model("ReLU"), tmp_path / "m.onnx")
    with pytest.raises(sc.MissingDependencyError, match="pip install onnx"):
        sc_onnx_load(tmp_path / "m.onnx")


def sc_onnx_load(path):
    from scratchcnn.onnx import load

    return load(path)


def test_import_scratchcnn_does_not_import_onnx():
    import subprocess

    code = "import sys, scratchcnn, scratchcnn.onnx; print('onnx' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def _blocks_model() -> sc.Sequential:
    """Residual (identity and projection shortcuts), Parallel (concat, add), nesting and
    BatchNorm1D: every block kind scratchcnn has."""
    sc.manual_seed(3)
    inner = sc.Residual([sc.Conv2D(4, 4, 3, padding=1), sc.ReLU()])
    layers = [
        sc.Conv2D(3, 4, 3, padding=1),
        sc.Residual([sc.Conv2D(4, 4, 3, padding=1), _bn(4), sc.ReLU(), inner]),
        sc.Residual(
            [sc.Conv2D(4, 6, 3, stride=2, padding=1), _bn(6)],
            shortcut=[sc.Conv2D(4, 6, 1, stride=2, bias=False), _bn(6)],
        ),
        sc.Parallel(
            [sc.Conv2D(6, 2, 1), [sc.MaxPool2D(3, stride=1, padding=1), sc.Conv2D(6, 3, 1)]]
        ),
        sc.Parallel([sc.Conv2D(5, 5, 1), sc.Tanh(), sc.Sigmoid()], merge="add"),
        sc.GlobalAvgPool2D(),
        sc.Flatten(),
        sc.BatchNorm1D(5),
        sc.Dense(5, 3),
    ]
    bn1 = layers[-2]
    bn1.buffers["running_mean"][...] = [0.1, -0.2, 0.3, 0.0, 0.5]
    bn1.buffers["running_var"][...] = [1.5, 0.5, 1.0, 2.0, 0.7]
    return sc.Sequential(layers, input_shape=(3, 8, 8)).eval()


def test_blocks_export_and_run_in_onnxruntime(tmp_path, rng):
    model = _blocks_model()
    path = export(model, tmp_path / "b.onnx")
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    # Three Residual sums, and one Sum for the three-branch Parallel(merge="add").
    assert ops.count("Concat") == ops.count("Sum") == 1 and ops.count("Add") == 3
    assert {t.name for t in proto.graph.initializer} >= set(model.state_dict()) - {
        k for k in model.state_dict() if k.endswith("num_batches_tracked")
    }
    for batch in (1, 64):
        x = rng.uniform(0, 1, (batch, 3, 8, 8)).astype(np.float32)
        assert rel_err(run_ort(path, x), model.predict(x)) <= 1e-5


def test_resnet8_exports(tmp_path, rng):
    from scratchcnn.nn.zoo import resnet8

    model = resnet8(seed=0).eval()
    path = export(model, tmp_path / "r.onnx")
    x = rng.uniform(0, 1, (64, 1, 28, 28)).astype(np.float32)
    assert rel_err(run_ort(path, x), model.predict(x)) <= 1e-5
