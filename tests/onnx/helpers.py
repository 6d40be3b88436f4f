"""Shared helpers of the ONNX tests: build graphs by hand, run them in onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def run_ort(path_or_proto: Any, x: np.ndarray) -> np.ndarray:
    """The output of the model for input ``x`` under onnxruntime's CPU provider."""
    if isinstance(path_or_proto, (str, Path)):
        source = str(path_or_proto)
    else:
        source = path_or_proto.SerializeToString()
    sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: x})[0]


def graph_model(
    nodes: list[Any],
    in_shape: list[Any],
    out_shape: list[Any] | None = None,
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 17,
    elem: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """A model with input ``x`` and output ``y`` made of ``nodes`` and initializers."""
    inputs = [helper.make_tensor_value_info("x", elem, in_shape)]
    outputs = [helper.make_tensor_value_info("y", elem, out_shape)]
    initializer = [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializer)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
