"""ONNX's own backend node test cases, run through scratchcnn.onnx.load.

``onnx.backend.test.loader.load_model_tests(kind="node")`` builds every node test case in
memory by importing one generator module per operator; we import only the generator
modules of the operators scratchcnn reads (the same TestCase objects, filtered; importing
all ~200 modules would take half a minute more). Each single-node case of those operators
either matches its expected output or is refused with one clean OnnxError line; both are
counted, and a minimum number must pass.

How a case becomes a scratchcnn model: its first graph input is the image batch; the other
inputs (weights, shapes, ratios) become initializers holding the case's test values, since
scratchcnn models have exactly one input.
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
from onnx import numpy_helper

import scratchcnn as sc
from scratchcnn.onnx import load

OPS = {
    "Conv": "conv",
    "MaxPool": "maxpool",
    "AveragePool": "averagepool",
    "GlobalAveragePool": "globalaveragepool",
    "Gemm": "gemm",
    "MatMul": "matmul",
    "Add": "add",
    "Sub": "sub",
    "Mul": "mul",
    "Div": "div",
    "Flatten": "flatten",
    "Reshape": "reshape",
    "BatchNormalization": "batch_normalization",
    "Dropout": "dropout",
    "Identity": "identity",
    "Softmax": "softmax",
    "LogSoftmax": "logsoftmax",
    "Relu": "relu",
    "LeakyRelu": "leakyrelu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    # issue 24
    "Clip": "clip",
    "Min": "min",
    "Max": "max",
    "HardSigmoid": "hardsigmoid",
    "HardSwish": "hardswish",
    "Gelu": "gelu",
    "Erf": "erf",
    "LayerNormalization": "layernormalization",
    "Transpose": "transpose",
    "Slice": "slice",
    "Split": "split",
}

#: Cases whose expected output comes from ONNX's random number generator (a dropout mask in
#: training mode): no other implementation can reproduce it, so a mismatch is expected.
RANDOM = {"test_training_dropout", "test_training_dropout_default"}

#: At least this many cases must match their expected outputs (measured: see the report).
MIN_PASSED = 72


def _node_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module in OPS.values():
            importlib.import_module(f"onnx.backend.test.case.node.{module}")
    from onnx.backend.test.case.node import _NodeTestCases

    return [
        c
        for c in _NodeTestCases
        if len(c.model.graph.node) == 1 and c.model.graph.node[0].op_type in OPS
    ]


def _as_single_input(case):
    """The case's model with inputs 1.. turned into initializers holding the test values."""
    model = type(case.model)()
    model.CopyFrom(case.model)
    inputs, _ = case.data_sets[0]
    graph = model.graph
    for value_info, value in zip(list(graph.input)[1:], inputs[1:], strict=False):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), value_info.name))
    return model


def _training(model) -> bool:
    """Whether the node asks for training-mode behaviour (BatchNorm batch statistics, an
    active Dropout), which in scratchcnn is the model's train() mode."""
    node = model.graph.node[0]
    if any(a.name == "training_mode" and a.i for a in node.attribute):
        return True
    if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
        init = {t.name: t for t in model.graph.initializer}
        return bool(numpy_helper.to_array(init[node.input[2]]))
    return False


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backend")
    result: dict[str, list[str]] = {"passed": [], "refused": [], "mismatch": []}
    for case in _node_cases():
        model_proto = _as_single_input(case)
        path = folder / f"{case.name}.onnx"
        path.write_bytes(model_proto.SerializeToString())
        try:
            model = load(path)
        except sc.OnnxError as exc:
            text = str(exc)
            assert "\n" not in text and text.startswith(str(path)), text
            result["refused"].append(f"{case.name}: {text[len(str(path)) + 2 :]}")
            continue
        inputs, outputs = case.data_sets[0]
        x = np.asarray(inputs[0]).astype(model.dtype)
        got = model.train(_training(model_proto)).forward(x)
        want = np.asarray(outputs[0])
        close = got.shape == want.shape and np.allclose(
            got, want, rtol=max(case.rtol, 1e-5), atol=max(case.atol, 1e-6)
        )
        result["passed" if close else "mismatch"].append(case.name)
    return result


def test_backend_node_cases_pass_or_are_refused_cleanly(outcomes):
    report = {k: len(v) for k, v in outcomes.items()}
    print("ONNX backend node cases:", report)
    print("\n".join(outcomes["refused"]))
    assert set(outcomes["mismatch"]) <= RANDOM, outcomes["mismatch"]
    assert report["passed"] >= MIN_PASSED, report


@pytest.mark.parametrize(
    "name",
    [
        "test_basic_conv_with_padding",
        "test_conv_with_strides_padding",
        "test_maxpool_2d_strides",
        "test_maxpool_2d_precomputed_same_upper",
        "test_averagepool_2d_strides",
        "test_averagepool_2d_ceil",
        "test_averagepool_2d_precomputed_same_upper",
        "test_maxpool_2d_ceil_output_size_reduce_by_one",
        "test_maxpool_2d_dilations",
        "test_globalaveragepool",
        "test_gemm_transposeB",
        "test_gemm_alpha",
        "test_matmul_2d",
        "test_flatten_axis1",
        "test_batchnorm_example",
        "test_batchnorm_epsilon",
        "test_logsoftmax_axis_1",
        "test_softmax_large_number",
        "test_leakyrelu",
        "test_dropout_default",
    ],
)
def test_core_cases_pass(outcomes, name):
    assert name in outcomes["passed"]
