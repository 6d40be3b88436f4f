"""The README's "Models in and out" examples run as written."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Models in and out", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_section_has_the_three_round_trips():
    codes = _examples()
    assert len(codes) == 3
    assert "onnxruntime" in codes[0] and "torch.onnx.export" in codes[1]
    assert "safetensors" in codes[2]


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1, 2], ids=["to-onnxruntime", "from-torch", "weights"])
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            exec(compile(_examples()[index], f"README example {index + 1}", "exec"), {})
    finally:
        logging.disable(logging.NOTSET)
