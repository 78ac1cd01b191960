"""notebooks/custom_model.ipynb runs: a two-tower model from the public API alone, its tables
split over 8 fake CPU devices, learns (test AUC well above chance)."""

import os
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "custom_model.ipynb"


def test_sharding_custom_model_notebook_runs(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
    "commit the notebook without outputs"
  )
  assert 'REPO_URL = ""' in nb.cells[1].source  # the one cell a Colab user edits
  own = "\n".join(c.source for c in nb.cells[3:] if c.cell_type == "code")
  # Built from the public API: no import of dlrm_jax's internal modules.
  assert re.findall(r"from dlrm_jax\.\w+|import dlrm_jax\.", own) == []
  repo = str(NOTEBOOK.parents[1])
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [repo, os.getenv("PYTHONPATH")])))
  monkeypatch.setenv("CUSTOM_MODEL_DATA_DIR", str(tmp_path / "data"))
  NotebookClient(
    nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
  ).execute()
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert "tables split over 8 devices" in text
  # The big tables' rows (the "sharded" buffer) and columns ("column") lie in 8 different shards.
  assert re.search(r"sharded: .*spec P\('model', None\), 8 different shard", text), text
  auc = float(re.search(r"test AUC (\S+)", text).group(1))
  assert 0.6 < auc <= 1.0, text  # chance is 0.5
