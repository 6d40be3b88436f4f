"""What ``scratchcnn export`` and ``scratchcnn import`` do (the command line only parses)."""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint import load_checkpoint, save
from ..checkpoint.schema import SchemaError, check_class_names, check_model_config
from ..errors import ConfigError, OnnxError
from ..nn.layers import LogSoftmax, Softmax
from .export import CLASSES_KEY, DEFAULT_OPSET, export
from .load import classes_from, load_with_graph


def export_checkpoint(
    checkpoint: str | os.PathLike, out: str | os.PathLike, opset: int = DEFAULT_OPSET
) -> str:
    """Export a checkpoint's model (and its class names) to ONNX; returns a one-line report."""
    ckpt = load_checkpoint(checkpoint)
    classes = ckpt.extra.get("classes")
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        classes = None
    model = ckpt.model
    export(model, out, opset, classes=classes)
    dims = ", ".join(str(d) for d in model.input_shape or ())
    return f"wrote {out}: ONNX opset {opset}, input (N, {dims}) {model.dtype.name}"


def import_checkpoint(
    source: str | os.PathLike, out: str | os.PathLike, classes: list[str] | None = None
) -> list[str]:
    """Read an ONNX file and save it as a scratchcnn checkpoint; returns report lines.

    scratchcnn checkpoints hold models that output logits (``predict`` and ``evaluate``
    apply the softmax, training uses CrossEntropyLoss), so a final Softmax or LogSoftmax is
    dropped: the predicted classes and probabilities stay exactly the same."""
    source = Path(source)
    model, graph = load_with_graph(source)
    notes = []
    if len(model) and isinstance(model.layers[-1], (Softmax, LogSoftmax)):
        last = model.layers.pop()
        notes.append(
            f"dropped the final {type(last).__name__}: scratchcnn checkpoints output logits "
            "(predict and evaluate apply the softmax)"
        )
    if not len(model):
        raise ConfigError(f"{source}: the graph has no layers to save")
    n_out = model.output_shapes()[-1]
    given = classes is not None
    if classes is None:
        try:
            classes = classes_from(graph)
        except OnnxError as exc:
            raise OnnxError(f"{source}: {exc}") from None
    if classes is not None and (len(n_out) != 2 or len(classes) != max(n_out[1], 2)):
        named = "--classes gives" if given else f"the file's metadata ({CLASSES_KEY}) gives"
        raise ConfigError(
            f"{source}: {named} {len(classes)} class names but the model has output shape "
            f"(N, {', '.join(str(d) for d in n_out[1:])})"
        )
    # What we write, we can read: the checkpoint loader's own limits, with a line that says
    # which one (npz.save checks the bytes again before writing, as a last safety net).
    try:
        check_model_config(model.config())
        if classes is not None:
            check_class_names("class names" if given else CLASSES_KEY, list(classes))
    except SchemaError as exc:
        raise OnnxError(f"{source}: cannot be saved as a scratchcnn checkpoint: {exc}") from None
    extra: dict = {"source": {"onnx": source.name, "opset": graph.opset}}
    if classes is not None:
        extra["classes"] = list(classes)
    save(model, out, extra=extra)
    dims = ", ".join(str(d) for d in model.input_shape or ())
    notes.append(
        f"wrote {out}: {len(model)} layers, {model.num_params():,} parameters, input "
        f"(N, {dims}) {model.dtype.name}" + ("" if classes else ", classes unknown")
    )
    return notes
