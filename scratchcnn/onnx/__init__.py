"""ONNX export and import.

``export(model, path, opset=17)`` writes a model as an ONNX graph that onnxruntime (or any
ONNX runtime) runs; ``load(path)`` reads an ONNX graph (from ``torch.onnx.export`` or built
by hand) back into a :class:`~scratchcnn.Sequential` whose gradients come from scratchcnn's
own backward passes, so it can be fine-tuned here.

The ``onnx`` package is optional (``pip install -e '.[onnx]'`` in a clone) and imported only when
one of these functions runs; ``import scratchcnn.onnx`` itself works without it. Nothing
else in scratchcnn imports this package.
"""

from __future__ import annotations

from .export import DEFAULT_OPSET, MIN_OPSET, export
from .load import load

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "export", "load"]
