"""--mode=eval, predict and export on a tiny run; the export loads without dlrm_jax."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dlrm_reference
import numpy as np
import pytest
from main_runner import run_main


def run(work, data, *args, timeout=240):
  proc = run_main(work, data, *args, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("modes")
  work, data = root / "work", root / "data"
  run(work, data, "--checkpoint_every_steps=10")
  records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
  return work, data, records


def numpy_test_metrics(work, data, step):
  """Test-split metrics of checkpoint ``step`` by the NumPy reference (float64, pairwise AUC)."""
  processed = next(Path(data).glob("synthetic_*/processed_*"))
  names = json.loads((processed / "metadata.json").read_text())["sparse_names"]
  params, tables = dlrm_reference.read_checkpoint(work / "checkpoints" / str(step))
  load = lambda f: np.load(processed / f"test_{f}.npy")
  logits = dlrm_reference.forward(params, [tables[n] for n in names], load("dense"), load("sparse"))
  labels = load("label")
  return {
    "auc": dlrm_reference.pairwise_auc(labels, logits),
    "logloss": dlrm_reference.logloss(labels, logits),
    "accuracy": float(np.mean((logits > 0) == (labels > 0.5))),
    "num_examples": len(labels),
  }


def test_eval_mode_matches_numpy_forward_of_the_checkpoint(trained):
  """--mode=eval on another mesh and plan (8 devices, row-wise) against the NumPy reference."""
  work, data, records = trained
  ref = numpy_test_metrics(work, data, 40)
  final = next(r for r in records if r.get("split") == "test")
  # The training run's own final test line (float32 logits, rank AUC) agrees too.
  assert final["num_examples"] == ref["num_examples"] == 1429
  assert abs(final["auc"] - ref["auc"]) < 1e-4 and abs(final["logloss"] - ref["logloss"]) < 1e-5
  assert final["accuracy"] == ref["accuracy"]
  proc = run_main(
    work,
    data,
    "--mode=eval",
    f"--checkpoint={work}/checkpoints/40",
    "--split=test",
    "--mesh_shape=8",
    "--sharding=row",
    devices=8,
    timeout=240,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = re.search(r"test AUC (\S+)  log loss (\S+)  accuracy (\S+)  \((\d+) examples", proc.stdout)
  assert got, proc.stdout
  auc, logloss, accuracy, n = (float(x) for x in got.groups())
  assert n == ref["num_examples"]
  # Printed to 4 decimals: within half a unit of the last digit, plus float32 rounding.
  for printed, key in ((auc, "auc"), (logloss, "logloss"), (accuracy, "accuracy")):
    assert abs(printed - ref[key]) <= 6e-5, (key, printed, ref[key])


def test_predict_then_export_round_trip(trained, tmp_path):
  work, data, records = trained
  proc = run(work, data, "--mode=predict", "--checkpoint=best")
  best = proc.stdout.split("(from ")[1].split(")")[0]
  assert best.startswith(f"{work}/checkpoints/")
  # A read-only restore is what predict asks for: Orbax's notices about it are not shown.
  assert "read only" not in proc.stderr and "read_only" not in proc.stderr, proc.stderr
  lines = (work / "predictions_test.csv").read_text().splitlines()
  assert lines[0] == "Id,Predicted"
  table = np.loadtxt(lines[1:], delimiter=",")
  assert table.shape == (1429, 2) and np.array_equal(table[:, 0], np.arange(1429))
  assert np.all((table[:, 1] > 0) & (table[:, 1] < 1))

  out = tmp_path / "export"
  run(work, data, "--mode=export", f"--export_dir={out}", f"--checkpoint={best}")
  assert {"dlrm_loader.py", "function.jax_exported", "weights.npz", "signature.json"} <= set(
    os.listdir(out)
  )
  processed = next(Path(data).glob("synthetic_*/processed_*"))
  dense, sparse = (str(next(processed.glob(f"test*{f}*.npy"))) for f in ("dense", "sparse"))
  # Scored in a fresh interpreter that can import only the export directory.
  script = (
    f"import sys; sys.path[:] = [{str(out)!r}] + [p for p in sys.path if 'site-packages' "
    f"in p or 'lib/python' in p]\n"
    "import numpy as np, dlrm_loader\n"
    f"s = dlrm_loader.load({str(out)!r})\n"
    f"p = s(np.load({dense!r}), np.load({sparse!r}))\n"
    f"np.save({str(tmp_path / 'p.npy')!r}, p)\n"
    "assert 'dlrm_jax' not in sys.modules\n"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run(
    [sys.executable, "-c", script],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  exported = np.load(tmp_path / "p.npy")
  np.testing.assert_allclose(exported, table[:, 1], atol=1e-6)
