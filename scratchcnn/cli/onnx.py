"""``export`` and ``import``: a checkpoint to an ONNX file and back (the work is in
``scratchcnn.onnx.commands``; the onnx package is imported only when one of these runs)."""

from __future__ import annotations

import argparse

from ..checkpoint import check_output_path
from ..checkpoint.schema import MAX_CLASS_NAME, MAX_CLASSES
from ..errors import ConfigError
from .output import say as _say


def cmd_export(args: argparse.Namespace) -> int:
    from ..onnx.commands import export_checkpoint

    check_output_path(args.out, inputs=[args.checkpoint])  # before any work is done
    opset = {"opset": args.opset} if args.opset is not None else {}
    _say(export_checkpoint(args.checkpoint, args.out, **opset))
    return 0


def parse_classes(text: str | None) -> list[str] | None:
    """``--classes a,b,c`` as a list of names, each non-empty and at most
    ``schema.MAX_CLASS_NAME`` characters (what a checkpoint holds); else one line. Whether
    their count fits the model's outputs is checked once the model is read."""
    if text is None:
        return None
    names = [c.strip() for c in text.split(",")]
    if len(names) > MAX_CLASSES:
        raise ConfigError(f"--classes: {len(names):,} names, more than {MAX_CLASSES:,}")
    for i, name in enumerate(names, 1):
        if not name:
            raise ConfigError(f"--classes: name {i} of {len(names)} is empty")
        if len(name) > MAX_CLASS_NAME:
            raise ConfigError(
                f"--classes: name {i} is {len(name):,} characters long; a checkpoint holds "
                f"names of at most {MAX_CLASS_NAME}"
            )
    return names


def cmd_import(args: argparse.Namespace) -> int:
    from ..onnx.commands import import_checkpoint

    check_output_path(args.out, inputs=[args.source])
    classes = parse_classes(args.classes)
    for line in import_checkpoint(args.source, args.out, classes):
        _say(line)
    return 0
