"""``export`` and ``import``: a checkpoint to an ONNX file and back (the work is in
``scratchcnn.onnx.commands``; the onnx package is imported only when one of these runs)."""

from __future__ import annotations

import argparse

from ..checkpoint import check_output_path
from .output import say as _say


def cmd_export(args: argparse.Namespace) -> int:
    from ..onnx.commands import export_checkpoint

    check_output_path(args.out, inputs=[args.checkpoint])  # before any work is done
    opset = {"opset": args.opset} if args.opset is not None else {}
    _say(export_checkpoint(args.checkpoint, args.out, **opset))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from ..onnx.commands import import_checkpoint

    check_output_path(args.out, inputs=[args.source])
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    for line in import_checkpoint(args.source, args.out, classes):
        _say(line)
    return 0
