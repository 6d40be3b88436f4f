"""The version, in one place (the package, the CLI and ONNX files read it)."""

__version__ = "0.1.0"
