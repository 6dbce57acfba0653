"""Both notebooks run end to end on the digits default (one epoch per stage)."""

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "notebooks")
NAMES = ("01_train_and_upcycle.ipynb", "02_optimize_and_export.ipynb")


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_committed_without_outputs(name):
    import warnings

    with warnings.catch_warnings():  # e.g. MissingIDFieldWarning: a cell without an id
        warnings.simplefilter("error")
        book = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nbformat.validate(book)
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert not any("def " in cell.source or "class " in cell.source for cell in code), \
        "notebooks use the package; library code belongs in tinymoe/"


def _fitted(source, builder):
    """The names assigned from ``builder(...)`` whose ``.fit(`` the notebook calls."""
    built = re.findall(rf"^(\w+)(?:, \w+)* = {builder}\(", source, re.MULTILINE)
    return [name for name in built
            if re.search(rf"^(?:\w+ = )?{name}\.fit\(", source, re.MULTILINE)]


def test_notebooks_show_keras_fit_on_the_models_tinymoe_builds():
    """The Keras user sees their own API: compile and fit on create_model's model, the
    upcycled model and quantize_aware's model; tinymoe's runners come only as shortcuts."""
    sources = ["\n".join(cell.source for cell in nbformat.read(
        os.path.join(NOTEBOOKS, name), as_version=4).cells if cell.cell_type == "code")
        for name in NAMES]
    assert _fitted(sources[0], "create_model") == ["model"]
    assert _fitted(sources[0], "upcycle") == ["moe_model"]
    assert _fitted(sources[1], "quantize_aware") == ["qat_model"]
    assert _fitted(sources[1], "prune") == ["pruned"]
    assert "model.fit(" in sources[0] and "qat_model.fit(" in sources[1]


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
    evaluation = tmp_path / "runs" / "notebook_export" / "evaluation"
    assert (evaluation / "confusion_matrix.png").stat().st_size > 0
    assert (tmp_path / "runs" / "notebook" / "dense" / "log.csv").exists()  # fit's callbacks
