"""--mode=eval, predict and export on a tiny run; the export loads without dlrm_jax."""

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_eval_mode_reproduces_final_test_metrics(trained):
  work, data, records = trained
  final = next(r for r in records if r.get("split") == "test")
  proc = run(
    work,
    data,
    "--mode=eval",
    f"--checkpoint={work}/checkpoints/40",
    "--split=test",
    "--mesh_shape=1",
  )
  assert f"test AUC {final['auc']:.4f}  log loss {final['logloss']:.4f}" in proc.stdout


def test_predict_then_export_round_trip(trained, tmp_path):
  work, data, records = trained
  proc = run(work, data, "--mode=predict", "--checkpoint=best")
  best = proc.stdout.split("(from ")[1].split(")")[0]
  assert best.startswith(f"{work}/checkpoints/")
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
