"""Both notebooks run end to end on the digits default (one epoch per stage)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "notebooks")
NAMES = ("01_train_and_upcycle.ipynb", "02_optimize_and_export.ipynb")


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_committed_without_outputs(name):
    book = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert not any("def " in cell.source or "class " in cell.source for cell in code), \
        "notebooks use the package; library code belongs in tinymoe/"


def test_notebooks_run_on_digits(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYMOE_NOTEBOOK_EPOCHS", "1")
    for name in NAMES:  # notebook 2 picks up the model notebook 1 trained
        book = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
        NotebookClient(book, timeout=1200, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
        errors = [output for cell in book.cells for output in cell.get("outputs", [])
                  if output.get("output_type") == "error"]
        assert not errors, errors
    firmware = tmp_path / "runs" / "notebook_export" / "firmware"
    assert (firmware / "model_data.cc").stat().st_size > 100_000
    assert "kTensorArenaSize" in (firmware / "model_settings.h").read_text()
    assert (tmp_path / "runs" / "notebook" / "analysis" / "analysis.json").exists()
    assert "g_species_model_data" in (firmware / "model_data.h").read_text()
