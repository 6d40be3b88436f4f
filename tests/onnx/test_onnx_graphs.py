"""Hand-built ONNX graphs, one per supported op and attribute, checked against onnxruntime."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from onnx import TensorProto, helper

import scratchcnn as sc
from scratchcnn.onnx import load
from tests.onnx.helpers import graph_model, rel_err, run_ort, save

N = "N"
R = np.random.default_rng(7)


def w(*shape: int) -> np.ndarray:
    return R.standard_normal(shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def node(op: str, inputs: list[str], out: str = "y", **attrs) -> object:
    return helper.make_node(op, inputs, [out], name=f"/{op}", **attrs)


def _supports(feature: str) -> bool:
    """Whether this version of the layers has a feature some ONNX attributes need."""
    if feature == "asym":
        try:
            sc.Conv2D(1, 1, 3, padding=((0, 1), (0, 1)))
        except sc.ConfigError:
            return False
        return True
    cls, arg = {
        "dilation": (sc.Conv2D, "dilation"),
        "groups": (sc.Conv2D, "groups"),
        "ceil_mode": (sc.MaxPool2D, "ceil_mode"),
        "pool_dilation": (sc.MaxPool2D, "dilation"),
        "count_include_pad": (sc.AvgPool2D, "count_include_pad"),
    }[feature]
    return arg in inspect.signature(cls).parameters


CONV_W, CONV_B = w(4, 3, 3, 3), w(4)
C2 = {"W": CONV_W, "B": CONV_B}
X4 = [N, 3, 9, 9]

#: name -> (nodes, input shape, initializers, feature the layers need or None, attribute)
CASES = {
    "conv-pads-strides": (
        [node("Conv", ["x", "W", "B"], pads=[1, 1, 1, 1], strides=[2, 2])], X4, C2),
    "conv-no-bias": ([node("Conv", ["x", "W"], kernel_shape=[3, 3])], X4, C2),
    "conv-auto-pad-same-upper": ([node("Conv", ["x", "W", "B"], auto_pad="SAME_UPPER")], X4, C2),
    "conv-auto-pad-same-lower-stride": (
        [node("Conv", ["x", "W", "B"], auto_pad="SAME_LOWER", strides=[2, 2])], X4, C2),
    "conv-auto-pad-valid": ([node("Conv", ["x", "W", "B"], auto_pad="VALID")], X4, C2),
    "conv-asymmetric-pads": (
        [node("Conv", ["x", "W", "B"], pads=[1, 0, 2, 1])], X4, C2, "asym", "pads"),
    "conv-even-kernel-same-upper": (
        [node("Conv", ["x", "W2"], auto_pad="SAME_UPPER")], X4, {"W2": w(2, 3, 2, 2)}, "asym",
        "pads"),
    "conv-dilations": (
        [node("Conv", ["x", "W", "B"], dilations=[2, 2])], X4, C2, "dilation", "dilations"),
    "conv-group": (
        [node("Conv", ["x", "Wg"], group=3, pads=[1, 1, 1, 1])], X4, {"Wg": w(6, 1, 3, 3)},
        "groups", "group"),
    "conv-weights-from-constant-node": (
        [helper.make_node("Constant", [], ["Wc"], value=helper.make_tensor(
            "Wc", TensorProto.FLOAT, [2, 3, 1, 1], w(2, 3, 1, 1).ravel())),
         node("Conv", ["x", "Wc"])], X4, {}),
    "relu": ([node("Relu", ["x"])], X4, {}),
    "leaky-relu": ([node("LeakyRelu", ["x"], alpha=0.3)], X4, {}),
    "leaky-relu-default": ([node("LeakyRelu", ["x"])], X4, {}),
    "sigmoid": ([node("Sigmoid", ["x"])], X4, {}),
    "tanh": ([node("Tanh", ["x"])], X4, {}),
    "maxpool": ([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                X4, {}),
    "maxpool-default-stride-1": ([node("MaxPool", ["x"], kernel_shape=[2, 2])], X4, {}),
    "maxpool-ceil": (
        [node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)], X4, {},
        "ceil_mode", "ceil_mode"),
    "maxpool-dilations": (
        [node("MaxPool", ["x"], kernel_shape=[2, 2], dilations=[2, 2])], X4, {}, "pool_dilation",
        "dilations"),
    "avgpool": ([node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[3, 3])], X4, {}),
    "avgpool-count-include-pad": (
        [node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)],
        X4, {}),
    "avgpool-exclude-pad": (
        [node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], X4, {},
        "count_include_pad", "count_include_pad"),
    "avgpool-ceil": (
        [node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)], X4, {},
        "ceil_mode", "ceil_mode"),
    "global-average-pool": ([node("GlobalAveragePool", ["x"])], X4, {}),
    "reduce-mean-hw": (
        [node("ReduceMean", ["x"], axes=[2, 3], keepdims=0)], X4, {}),
    "gemm-transB-alpha-beta": (
        [node("Gemm", ["x", "B", "C"], transB=1, alpha=0.5, beta=2.0)], [N, 6],
        {"B": w(4, 6), "C": w(4)}),
    "gemm-plain-row-bias": ([node("Gemm", ["x", "B", "C"])], [N, 6], {"B": w(6, 4), "C": w(1, 4)}),
    "gemm-scalar-bias": ([node("Gemm", ["x", "B", "C"], beta=0.5)], [N, 6],
                         {"B": w(6, 4), "C": w(1)}),
    "gemm-no-bias": ([node("Gemm", ["x", "B"], alpha=3.0)], [N, 6], {"B": w(6, 4)}),
    "matmul-add": (
        [node("MatMul", ["x", "M"], "h"), node("Add", ["h", "b"])], [N, 6],
        {"M": w(6, 3), "b": w(3)}),
    "matmul": ([node("MatMul", ["x", "M"])], [N, 6], {"M": w(6, 3)}),
    "conv-then-channel-add": (
        [node("Conv", ["x", "W"], "h"), node("Add", ["h", "cb"])], X4,
        {"W": CONV_W, "cb": w(1, 4, 1, 1)}),
    "flatten": ([node("Flatten", ["x"], axis=1)], X4, {}),
    "flatten-negative-axis": ([node("Flatten", ["x"], axis=-3)], X4, {}),
    "reshape-minus-one-first": ([node("Reshape", ["x", "s"])], X4, {"s": i64(-1, 243)}),
    "reshape-zero-minus-one": ([node("Reshape", ["x", "s"])], X4, {"s": i64(0, -1)}),
    "reshape-from-shape-arithmetic": (
        [node("Shape", ["x"], "sh"), node("Gather", ["sh", "zero"], "n", axis=0),
         node("Unsqueeze", ["n", "ax"], "n1"), node("Concat", ["n1", "m1"], "s", axis=0),
         node("Reshape", ["x", "s"])], X4,
        {"zero": np.array(0, np.int64), "ax": i64(0), "m1": i64(-1)}),
    "batchnorm": (
        [node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)], X4,
        {"s": w(3), "b": w(3), "m": w(3), "v": np.abs(w(3)) + 0.5}),
    "dropout-ratio": ([node("Dropout", ["x", "r"])], X4, {"r": np.array(0.3, np.float32)}),
    "identity": ([node("Identity", ["x"])], X4, {}),
    "softmax-end": ([node("Flatten", ["x"], "f"), node("Softmax", ["f"])], X4, {}),
    "logsoftmax-end": ([node("Flatten", ["x"], "f"), node("LogSoftmax", ["f"], axis=1)], X4, {}),
    "scale-shift": (
        [node("Sub", ["x", "m"], "a"), node("Div", ["a", "s"], "b"), node("Mul", ["b", "k"], "c"),
         node("Add", ["c", "o"])], X4,
        {"m": np.array(0.5, np.float32), "s": np.array([0.25], np.float32),
         "k": np.array(3.0, np.float32), "o": np.array(1.0, np.float32)}),
    "lenet-like-chain": (
        [node("Conv", ["x", "W", "B"], "c", pads=[1, 1, 1, 1]), node("Relu", ["c"], "r"),
         node("MaxPool", ["r"], "p", kernel_shape=[3, 3], strides=[3, 3]),
         node("Flatten", ["p"], "f"), node("Gemm", ["f", "G", "g"], "z", transB=1),
         node("LogSoftmax", ["z"])], X4, {**C2, "G": w(10, 36), "g": w(10)}),
}  # fmt: skip


def _case(name):
    spec = CASES[name]
    nodes, in_shape, inits = spec[:3]
    feature, attr = (spec[3], spec[4]) if len(spec) > 3 else (None, None)
    return graph_model(nodes, in_shape, None, inits), in_shape, feature, attr


@pytest.mark.parametrize("name", sorted(CASES))
def test_hand_built_graph_matches_onnxruntime(name, tmp_path):
    proto, in_shape, feature, attr = _case(name)
    path = save(proto, tmp_path / f"{name}.onnx")
    if feature is not None and not _supports(feature):
        with pytest.raises(sc.OnnxError, match=rf'node "/\w+" \(\w+\) is not supported .*{attr}'):
            load(path)
        return
    model = load(path)
    assert not model.training
    for batch in (1, 5):
        x = R.uniform(-1, 1, (batch, *in_shape[1:])).astype(np.float32)
        want = run_ort(proto, x)
        got = model.predict(x)
        assert got.shape == want.shape
        assert rel_err(got, want) <= 1e-5, name


def test_scalar_ops_merge_into_one_rescale(tmp_path):
    model = load(save(_case("scale-shift")[0], tmp_path / "s.onnx"))
    assert [type(la).__name__ for la in model] == ["Rescale"]
    assert model[0].scale == pytest.approx(12.0) and model[0].offset == pytest.approx(-5.0)


def test_matmul_add_and_channel_add_fold_into_the_bias(tmp_path):
    (dense,) = load(save(_case("matmul-add")[0], tmp_path / "m.onnx")).layers
    np.testing.assert_array_equal(dense.params["bias"], CASES["matmul-add"][2]["b"])
    (conv,) = load(save(_case("conv-then-channel-add")[0], tmp_path / "c.onnx")).layers
    assert isinstance(conv, sc.Conv2D) and conv.params["bias"].shape == (4,)


def test_gemm_folds_alpha_beta_and_transpose(tmp_path):
    (dense,) = load(save(_case("gemm-transB-alpha-beta")[0], tmp_path / "g.onnx")).layers
    inits = CASES["gemm-transB-alpha-beta"][2]
    np.testing.assert_allclose(dense.params["weight"], 0.5 * inits["B"])
    np.testing.assert_allclose(dense.params["bias"], 2.0 * inits["C"])


def test_float64_graph_gives_float64_model(tmp_path):
    proto = graph_model(
        [node("Gemm", ["x", "B"])], [N, 3], None, {"B": np.eye(3)}, elem=TensorProto.DOUBLE
    )
    model = load(save(proto, tmp_path / "d.onnx"))
    assert model.dtype == np.float64
    x = R.standard_normal((2, 3))
    np.testing.assert_allclose(model.predict(x), x, rtol=1e-15)


@pytest.mark.parametrize(
    ("nodes", "in_shape", "inits", "message"),
    [
        ([node("Gemm", ["x", "B"], transA=1)], [N, 3], {"B": w(3, 3)}, "attribute transA"),
        ([node("Flatten", ["x"], axis=2)], [N, 3, 4, 4], {}, "attribute axis=2"),
        ([node("Softmax", ["x"], axis=0)], [N, 3], {}, "attribute axis=0"),
        ([node("Add", ["x", "c"])], [N, 3], {"c": w(2, 3)}, "input B has shape"),
        # a per-channel Mul is a ChannelScale now; one along the last axis of (N, C, L) is not
        ([node("Mul", ["x", "c"])], [N, 3, 4], {"c": w(4)}, "input B has shape"),
        ([node("Reshape", ["x", "s"])], [N, 3, 4], {"s": i64(3, -1)}, "input shape="),
        ([node("Conv", ["x", "W"])], [N, 3, 4, 4], {"W": w(2, 3, 1, 1)}, None),
        ([node("Conv", ["x", "W"], foo=1)], [N, 3, 4, 4], {"W": w(2, 3, 1, 1)}, "attribute foo"),
        ([node("Resize", ["x"])], [N, 3, 4, 4], {}, r"\(Resize\) is not supported"),
        ([node("MaxPool", ["x"], kernel_shape=[2, 2], storage_order=1)], [N, 1, 4, 4], {},
         "storage_order"),
    ],
    ids=["transA", "flatten-axis2", "softmax-batch", "add-batch", "mul-vector", "reshape",
         "conv-ok", "unknown-attribute", "resize", "storage-order"],
)  # fmt: skip
def test_unsupported_nodes_are_one_clear_line(nodes, in_shape, inits, message, tmp_path):
    path = save(graph_model(nodes, in_shape, None, inits), tmp_path / "u.onnx")
    if message is None:
        load(path)  # the control case of the list: it is supported
        return
    with pytest.raises(sc.OnnxError, match=message) as info:
        load(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(path))
    assert f'node "/{nodes[-1].op_type}" ({nodes[-1].op_type})' in text


def test_constant_first_add_mul_sub(tmp_path):
    nodes = [
        node("Mul", ["k", "x"], "a"),
        node("Add", ["o", "a"], "b"),
        node("Sub", ["o", "b"]),
    ]
    inits = {"k": np.array(2.0, np.float32), "o": np.array(1.0, np.float32)}
    proto = graph_model(nodes, [N, 3], None, inits)
    model = load(save(proto, tmp_path / "c.onnx"))
    assert [type(la).__name__ for la in model] == ["Rescale"]  # 1 - (1 + 2x) = -2x
    x = R.standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), run_ort(proto, x), rtol=1e-6)
    nodes = [node("Conv", ["x", "W"], "h"), node("Sub", ["cb", "h"])]
    proto = graph_model(nodes, X4, None, {"W": CONV_W, "cb": w(1, 4, 1, 1)})
    with pytest.raises(sc.OnnxError, match=r'node "/Sub" \(Sub\) is not supported'):
        load(save(proto, tmp_path / "s.onnx"))


@pytest.mark.parametrize("shape", [(4, 1), (4,), (1, 4, 9, 9)])
def test_biases_that_are_not_per_channel_are_refused(shape, tmp_path):
    nodes = [node("Conv", ["x", "W"], "h", pads=[1, 1, 1, 1]), node("Add", ["h", "cb"])]
    inits = {"W": CONV_W, "cb": np.ones(shape, np.float32)}
    with pytest.raises(sc.OnnxError, match=r'node "/Add" \(Add\) is not supported'):
        load(save(graph_model(nodes, X4, None, inits), tmp_path / "b.onnx"))
