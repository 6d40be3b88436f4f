"""The tutorial notebooks: committed without outputs, and each one runs top to bottom with
no error (executed by nbclient on the venv's own kernel, as CI does)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = [
    "01_digit_cnn.ipynb",
    "02_cross_vs_rectangle.ipynb",
    "03_sobel_and_padding.ipynb",
    "04_lenet5_im2col.ipynb",
]


def test_one_notebook_per_tutorial_in_order():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_no_outputs(name):
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(book)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert code, "a notebook without code"
    for cell in code:
        assert cell.outputs == [], f"{name}: strip the outputs before committing"
        assert cell.execution_count is None


@pytest.mark.parametrize("name", NAMES)
def test_links_to_the_source_point_at_files(name):
    text = (NOTEBOOKS / name).read_text(encoding="utf-8")
    links = {part.split(")")[0] for part in text.split("](../")[1:]}
    assert links, f"{name} links to no source file"
    for link in links:
        assert (ROOT / link).is_file(), f"{name}: broken link ../{link}"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_without_error(name, monkeypatch):
    from nbclient import NotebookClient

    # The kernel is a child process: make it import this checkout's scratchcnn.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        book,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} drew no picture"
