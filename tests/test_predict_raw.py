"""End to end.

Train tiny, then --mode=predict on a raw unlabeled Kaggle-format file -> submission CSV.
"""

import json

import dlrm_reference
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
  # The same rows through the processed training split, scored by the NumPy reference
  # with the checkpoint's weights: the raw file was encoded with the training vocabulary.
  processed = next(data.glob("synthetic_*/processed_*"))
  names = json.loads((processed / "metadata.json").read_text())["sparse_names"]
  params, tables = dlrm_reference.read_checkpoint(work / "checkpoints" / "10")
  rows = slice(0, 3001)
  logits = dlrm_reference.forward(
    params,
    [tables[n] for n in names],
    np.load(processed / "train_dense.npy", mmap_mode="r")[rows],
    np.load(processed / "train_sparse.npy", mmap_mode="r")[rows],
  )
  np.testing.assert_allclose(table[:, 1], 1 / (1 + np.exp(-logits)), atol=2e-6)
  assert np.ptp(table[:, 1]) > 0.1  # the rows are told apart, not all scored alike
  # A labelled file where an unlabeled one is expected: a clear error, no traceback.
  proc = run(
    work, data, "--mode=predict", f"--predict_file={next(data.glob('synthetic_*/train.txt'))}"
  )
  assert proc.returncode == 2 and "label column" in proc.stderr and "Traceback" not in proc.stderr
