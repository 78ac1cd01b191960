"""notebooks/quickstart.ipynb runs top to bottom, in its small version (QUICKSTART_SMALL=1)."""

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
    "commit the notebook without outputs"
  )
  assert 'REPO_URL = ""' in nb.cells[2].source  # the one cell a Colab user edits
  # The kernel inherits this environment: a tiny run into tmp_path, one CPU device, and the
  # checkout importable without a pip install into the test's environment.
  for key, value in {
    "QUICKSTART_SMALL": "1",
    "QUICKSTART_WORKDIR": str(tmp_path / "work"),
    "QUICKSTART_DATA_DIR": str(tmp_path / "data"),
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "",
  }.items():
    monkeypatch.setenv(key, value)
  NotebookClient(
    nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
  ).execute()
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert "OK: the exported model scores the test split as the trained one did." in text
  assert " row  P(click)  label" in text and "test AUC" in text
  assert (tmp_path / "work" / "curves.png").exists()
  assert (tmp_path / "work" / "export" / "dlrm_loader.py").exists()
