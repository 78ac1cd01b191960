"""notebooks/sharding.ipynb runs top to bottom (its last cell asserts sharded == one device)."""

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "sharding.ipynb"


def test_sharding_notebook_runs(monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
    "commit the notebook without outputs"
  )
  # The kernel imports the checkout without a pip install into the test's environment.
  repo = str(NOTEBOOK.parents[1])
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [repo, os.getenv("PYTHONPATH")])))
  NotebookClient(
    nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
  ).execute()
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert "OK: the sharded model trains exactly like the single-device one." in text
