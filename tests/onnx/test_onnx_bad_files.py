"""Crafted, damaged and hostile ONNX files: each is one clear OnnxError line, bounded work."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import scratchcnn as sc
from scratchcnn.nn.zoo import lenet5
from scratchcnn.onnx import export, load
from scratchcnn.onnx import load as load_module
from tests.onnx.helpers import graph_model, save

LOADER = __import__("scratchcnn.onnx.load", fromlist=["MAX_NODES"])


def _one_line(path, match=None) -> str:
    with pytest.raises(sc.OnnxError, match=match) as info:
        load(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(path)), text
    return text


@pytest.fixture(scope="module")
def lenet_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("m") / "lenet.onnx"
    export(lenet5(seed=0), path)
    return path.read_bytes()


@pytest.mark.parametrize("fraction", [0.0001, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file(lenet_bytes, fraction, tmp_path):
    path = tmp_path / "t.onnx"
    path.write_bytes(lenet_bytes[: max(1, int(len(lenet_bytes) * fraction))])
    _one_line(path)


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        b"hello, this is a text file\n" * 10,
        np.random.default_rng(0).bytes(5000),
        b"PK\x03\x04" + b"\0" * 100,
    ],
    ids=["png", "text", "random", "zip"],
)
def test_not_protobuf(data, tmp_path):
    path = tmp_path / "x.onnx"
    path.write_bytes(data)
    _one_line(path, "not an ONNX model|ONNX|opset|graph")


def test_missing_empty_and_directory(tmp_path):
    _one_line(tmp_path / "nope.onnx", "no such ONNX file")
    (tmp_path / "empty.onnx").write_bytes(b"")
    _one_line(tmp_path / "empty.onnx", "empty file")
    (tmp_path / "d.onnx").mkdir()
    _one_line(tmp_path / "d.onnx", "is a directory")


def test_file_larger_than_the_limit(monkeypatch, lenet_bytes, tmp_path):
    path = tmp_path / "big.onnx"
    path.write_bytes(lenet_bytes)
    monkeypatch.setattr(LOADER, "MAX_FILE_BYTES", 1000)
    _one_line(path, "more than the 1,000-byte limit for an ONNX file")


def _huge_initializer() -> onnx.TensorProto:
    t = TensorProto(name="B", data_type=TensorProto.FLOAT, dims=[100_000, 100_000])
    t.raw_data = b"\0" * 16
    return t


def test_huge_dims_are_never_allocated(tmp_path):
    model = graph_model([helper.make_node("Gemm", ["x", "B"], ["y"])], ["N", 100_000], None)
    model.graph.initializer.append(_huge_initializer())
    _one_line(save(model, tmp_path / "h.onnx"), r"declares dims \[100000, 100000\]")
    const = helper.make_node("Constant", [], ["c"], value=_huge_initializer())
    model = graph_model([const, helper.make_node("Add", ["x", "c"], ["y"])], ["N", 3], None)
    _one_line(save(model, tmp_path / "c.onnx"), "declares dims")
    model = graph_model([helper.make_node("Relu", ["x"], ["y"])], ["N", 10**6, 10**6, 10**6])
    _one_line(save(model, tmp_path / "i.onnx"), "too large")


def test_cycle(tmp_path):
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="first"),
        helper.make_node("Relu", ["a"], ["b"], name="second"),
        helper.make_node("Relu", ["b"], ["y"], name="third"),
    ]
    _one_line(save(graph_model(nodes, ["N", 3]), tmp_path / "c.onnx"), "cycle")


def test_undefined_and_twice_defined_values(tmp_path):
    nodes = [helper.make_node("Relu", ["ghost"], ["y"], name="r")]
    _one_line(save(graph_model(nodes, ["N", 3]), tmp_path / "u.onnx"), "'ghost' is not defined")
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Tanh", ["x"], ["y"])]
    _one_line(save(graph_model(nodes, ["N", 3]), tmp_path / "d.onnx"), "defined twice")


def test_unknown_op_and_foreign_domain(tmp_path):
    nodes = [helper.make_node("Resize", ["x"], ["y"], name="/up/Resize")]
    text = _one_line(save(graph_model(nodes, ["N", 3, 4, 4]), tmp_path / "r.onnx"))
    assert text.endswith('node "/up/Resize" (Resize) is not supported')
    nodes = [helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")]
    _one_line(save(graph_model(nodes, ["N", 3]), tmp_path / "g.onnx"), "domain 'com.microsoft'")


def test_external_data_is_refused(tmp_path):
    model = graph_model([helper.make_node("Gemm", ["x", "B"], ["y"])], ["N", 3], None)
    t = numpy_helper.from_array(np.eye(3, dtype=np.float32), "B")
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    entry = t.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    model.graph.initializer.append(t)
    _one_line(save(model, tmp_path / "e.onnx"), "external data file")


def test_old_opset_and_no_default_opset(tmp_path):
    model = graph_model([helper.make_node("Relu", ["x"], ["y"])], ["N", 3], opset=11)
    _one_line(save(model, tmp_path / "o.onnx"), "opset 11 is older than 13")
    model.opset_import[0].domain = "ai.onnx.ml"
    _one_line(save(model, tmp_path / "m.onnx"), "default ONNX operator set")


def test_too_many_nodes(monkeypatch, tmp_path):
    nodes = [helper.make_node("Identity", [f"v{i}"], [f"v{i + 1}"]) for i in range(20)]
    nodes[0].input[0], nodes[-1].output[0] = "x", "y"
    path = save(graph_model(nodes, ["N", 3]), tmp_path / "n.onnx")
    assert len(load(path)) == 0  # a chain of Identity nodes is the empty model
    monkeypatch.setattr(LOADER, "MAX_NODES", 10)
    _one_line(path, "at most 10$")


def test_long_chains_need_no_recursion(tmp_path):
    """4,000 Identity nodes on the main path and 4,000 folding a Reshape's shape input."""
    k = 4000
    nodes = [helper.make_node("Identity", [f"v{i}"], [f"v{i + 1}"]) for i in range(k)]
    nodes[0].input[0] = "x"
    nodes += [helper.make_node("Identity", [f"s{i}"], [f"s{i + 1}"]) for i in range(k)]
    nodes.append(helper.make_node("Reshape", [f"v{k}", f"s{k}"], ["y"]))
    model = graph_model(nodes, ["N", 3, 2, 2], None, {"s0": np.array([0, -1], np.int64)})
    (flatten,) = load(save(model, tmp_path / "long.onnx")).layers
    assert isinstance(flatten, sc.Flatten)


@pytest.mark.parametrize(
    ("nodes", "in_shape", "out_shape", "match"),
    [
        ([("Relu", ["x"], ["y"]), ("Tanh", ["x"], ["t"])], ["N", 3], None, "never joins"),
        ([("Relu", ["x"], ["y"])], ["N", 3], ["N", 4], r"declared \['N', 4\]"),
        ([("Relu", ["x"], ["y"])], ["N"], None, "at least 2 axes"),
        ([("Relu", ["x"], ["y"])], ["N", "C"], None, "fixed positive size"),
    ],
    ids=["dangling-branch", "declared-output", "rank-1", "symbolic-features"],
)  # fmt: skip
def test_graph_structure_checks(nodes, in_shape, out_shape, match, tmp_path):
    made = [helper.make_node(op, i, o) for op, i, o in nodes]
    _one_line(save(graph_model(made, in_shape, out_shape), tmp_path / "s.onnx"), match)


def test_inputs_outputs_and_types(tmp_path):
    model = graph_model([helper.make_node("Add", ["x", "z"], ["y"])], ["N", 3])
    model.graph.input.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3]))
    _one_line(save(model, tmp_path / "two.onnx"), "exactly one input")
    model = graph_model([helper.make_node("Relu", ["x"], ["y"])], ["N", 3])
    model.graph.output.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]))
    _one_line(save(model, tmp_path / "out.onnx"), "exactly one output")
    model = graph_model([helper.make_node("Relu", ["x"], ["y"])], ["N", 3], elem=TensorProto.INT64)
    _one_line(save(model, tmp_path / "int.onnx"), "type INT64")


def test_weights_that_do_not_fit_name_the_node(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "B"], ["y"], name="fc")]
    model = graph_model(nodes, ["N", 3], None, {"B": np.ones((4, 2), np.float32)})
    _one_line(
        save(model, tmp_path / "g.onnx"), r'node "fc" \(Gemm\): input B \[4, 2\] does not fit'
    )
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="c")]
    model = graph_model(nodes, ["N", 3, 4, 4], None, {"W": np.ones((2, 5, 1, 1), np.float32)})
    _one_line(save(model, tmp_path / "c.onnx"), r'node "c" \(Conv\): attribute group=1')
    nodes = [helper.make_node("Gemm", ["x", "B"], ["y"], name="nan")]
    model = graph_model(nodes, ["N", 2], None, {"B": np.full((2, 2), np.nan, np.float32)})
    _one_line(save(model, tmp_path / "n.onnx"), "NaN")


def test_load_module_is_the_public_function():
    assert load_module is load


def test_declared_intermediate_shapes_must_match(tmp_path):
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flat"),
        helper.make_node("Relu", ["f"], ["y"]),
    ]
    model = graph_model(nodes, ["N", 2, 3])
    model.graph.value_info.append(helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 6]))
    assert len(load(save(model, tmp_path / "ok.onnx"))) == 2
    model.graph.value_info[0].type.tensor_type.shape.dim[1].dim_value = 7
    _one_line(
        save(model, tmp_path / "bad.onnx"), r'node "flat" \(Flatten\): output .* \[\'N\', 7\]'
    )


def _reshape_by(nodes, tmp_path, name):
    """x (N, 1, 8, 8) reshaped by the value ``t`` that ``nodes`` fold."""
    made = [*nodes, helper.make_node("Reshape", ["x", "t"], ["y"])]
    return save(graph_model(made, [1, 1, 8, 8]), tmp_path / f"{name}.onnx")


def _const(name, array):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array))


@pytest.mark.parametrize(
    ("source", "to", "match"),
    [
        (np.array([np.inf, 1], np.float32), TensorProto.INT64, "casts NaN or inf to int64"),
        (np.array([1e20, 1], np.float64), TensorProto.INT32, r"casts values in \[1, 1e\+20\]"),
        (np.array([2**40, 1], np.int64), TensorProto.INT32, "beyond its range"),
        (np.array([1e300, 1], np.float64), TensorProto.FLOAT, "to float32, beyond its range"),
    ],
    ids=["inf-int64", "1e20-int32", "2^40-int32", "1e300-float32"],
)
def test_folded_casts_that_do_not_fit_are_refused_without_warnings(source, to, match, tmp_path):
    nodes = [_const("c", source), helper.make_node("Cast", ["c"], ["t"], to=to)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning fails the test
        _one_line(_reshape_by(nodes, tmp_path, "cast"), match)


def test_folded_results_are_sized_before_they_are_allocated(tmp_path, monkeypatch):
    ops = __import__("scratchcnn.onnx.ops", fromlist=["MAX_FOLDED_TOTAL"])
    half = np.array([1, -1] * 4, np.int64)
    nodes = [_const("c", half), helper.make_node("Concat", ["c"] * 9, ["t"], axis=0)]
    monkeypatch.setattr(ops, "MAX_FOLDED_ELEMENTS", 71)
    _one_line(_reshape_by(nodes, tmp_path, "one"), "folds to 72 values; too many")
    monkeypatch.setattr(ops, "MAX_FOLDED_ELEMENTS", 1000)
    monkeypatch.setattr(ops, "MAX_FOLDED_TOTAL", 100)
    chain = [_const("c0", half)]
    for i in range(20):  # 20 x 8 values: each within the per-value cap, 160 in all
        chain.append(helper.make_node("Concat", [f"c{i}"], [f"c{i + 1}"], axis=0))
    chain.append(helper.make_node("Slice", ["c20", "s0", "s1"], ["t"]))
    model = graph_model(
        [*chain, helper.make_node("Reshape", ["x", "t"], ["y"])],
        [1, 1, 8, 8],
        None,
        {"s0": np.array([0], np.int64), "s1": np.array([2], np.int64)},
    )
    _one_line(save(model, tmp_path / "total.onnx"), "beyond the 100 that the constants")
    monkeypatch.setattr(ops, "MAX_FOLDED_TOTAL", 1000)
    assert len(load(tmp_path / "total.onnx")) == 1  # the same graph under a larger cap


@pytest.mark.parametrize(
    ("node", "inits", "match"),
    [
        (("Range", ["a", "inf", "b"]), {}, "must be finite numbers"),
        (("Dropout", ["x", "r"]), {"r": np.ones((1, 2), np.float32)}, "input ratio has shape"),
        (("Dropout", ["x", "", "m"]), {"m": np.ones(3, np.bool_)}, "training_mode has shape"),
    ],
    ids=["range-inf", "dropout-ratio", "dropout-training-mode"],
)
def test_constant_inputs_of_the_wrong_form_are_one_line(node, inits, match, tmp_path):
    op, inputs = node
    if op == "Range":
        nodes = [
            _const("a", np.array(0.0, np.float32)),
            _const("inf", np.array(np.inf, np.float32)),
            _const("b", np.array(1.0, np.float32)),
            helper.make_node("Range", inputs, ["t"]),
        ]
        path = _reshape_by(nodes, tmp_path, "range")
    else:
        made = [helper.make_node(op, inputs, ["y"])]
        path = save(graph_model(made, ["N", 4], None, inits), tmp_path / "n.onnx")
    _one_line(path, match)


def test_attributes_and_layers_beyond_the_models_range(tmp_path):
    nodes = [helper.make_node("LeakyRelu", ["x"], ["y"], alpha=float("nan"))]
    _one_line(save(graph_model(nodes, ["N", 4]), tmp_path / "a.onnx"), "alpha=nan is not a")
    mul = [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Mul", ["m", "s"], ["y"])]
    big = {"s": np.array(1e30, np.float32)}
    path = save(graph_model(mul, ["N", 4], None, big), tmp_path / "m.onnx")
    _one_line(path, r"layer 0 \(Rescale\) would have scale=1e\+60")
    in64 = graph_model(mul, ["N", 4], None, {"s": np.array(1e30)}, elem=TensorProto.DOUBLE)
    scale = load(save(in64, tmp_path / "m64.onnx")).layers[0].scale
    assert scale == pytest.approx(1e60)  # a float64 model holds it
    conv = [helper.make_node("Conv", ["x", "W"], ["y"], strides=[5000, 1])]
    w = {"W": np.ones((1, 1, 1, 1), np.float32)}
    path = save(graph_model(conv, ["N", 1, 4, 4], None, w), tmp_path / "c.onnx")
    _one_line(path, r"strides=\[5000, 1\]: at most 4,096")
