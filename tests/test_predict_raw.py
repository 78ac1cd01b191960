"""End to end.

Train tiny, then --mode=predict on a raw unlabeled Kaggle-format file -> submission CSV.
"""

import numpy as np
from main_runner import run_main


def run(work, data, *args, timeout=240):
  return run_main(work, data, "--max_steps=10", "--eval_every_steps=0", *args, timeout=timeout)


def test_train_tiny_then_predict_unlabeled_raw_file(tmp_path):
  work, data = tmp_path / "work", tmp_path / "data"
  proc = run(work, data)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Kaggle's test.txt layout: the training file's rows without their label column.
  train = next(data.glob("synthetic_*/train.txt")).read_text().splitlines()
  test_file = tmp_path / "test.txt"
  test_file.write_text("\n".join(line.split("\t", 1)[1] for line in train[:3001]) + "\n")
  out = tmp_path / "submission.csv"
  proc = run(
    work,
    data,
    "--mode=predict",
    f"--predict_file={test_file}",
    f"--predictions_file={out}",
    "--first_test_id=60000000",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = out.read_text().splitlines()
  assert lines[0] == "Id,Predicted" and len(lines) == 3002
  table = np.loadtxt(lines[1:], delimiter=",")
  np.testing.assert_array_equal(table[:, 0], 60_000_000 + np.arange(3001))
  assert np.all((table[:, 1] > 0) & (table[:, 1] < 1))
  # A labelled file where an unlabeled one is expected: a clear error, no traceback.
  proc = run(
    work, data, "--mode=predict", f"--predict_file={next(data.glob('synthetic_*/train.txt'))}"
  )
  assert proc.returncode == 2 and "label column" in proc.stderr and "Traceback" not in proc.stderr


def test_target_auc_stops_training_at_the_first_validation_reaching_it(tmp_path):
  import json

  work = tmp_path / "work"
  proc = run(
    work, tmp_path / "data", "--max_steps=40", "--eval_every_steps=10", "--target_auc=0.01"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
  evals = [(r["step"], r["split"]) for r in records if "split" in r]
  assert evals == [(10, "validation"), (10, "test")]
  assert max(r["step"] for r in records if "loss" in r) == 10
