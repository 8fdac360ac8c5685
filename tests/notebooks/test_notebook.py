"""notebooks/quickstart.ipynb runs top to bottom (nbclient) and is committed with outputs cleared."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NB = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def test_committed_without_outputs():
    nb = nbformat.read(NB, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


@pytest.mark.slow
def test_notebook_executes(monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("LTAUG_NOTEBOOK_SCALE", "0.03")
    nb = nbformat.read(NB, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NB.parent)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "augmented" in text and "requested" in text
    assert sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})) >= 6
