"""End to end: main.py with experiments/tiny.flags, and its refusals of bad input."""

import json

import main_runner
import numpy as np
import pytest
from tensorboard_testlib import assert_events_match_metrics


def run_main(tmp_path, *args, timeout=240):
  return main_runner.run_main(tmp_path / "work", tmp_path / "data", *args, timeout=timeout)


def test_tiny_run_leaves_config_and_metrics(tmp_path):
  proc = run_main(tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "test AUC" in proc.stdout
  work = tmp_path / "work"
  config = json.loads((work / "config.json").read_text())
  assert config["max_steps"] == 40 and config["dataset"] == "synthetic"
  records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if "loss" in r]
  evals = [r for r in records if "split" in r]
  assert [r["step"] for r in train] == [10, 20, 30, 40]
  assert all(r["samples_per_sec"] > 0 for r in train)
  assert {(r["step"], r["split"]) for r in evals} == {
    (20, "validation"),
    (40, "validation"),
    (40, "test"),
  }
  test = next(r for r in evals if r["split"] == "test")
  assert set(test) >= {
    "step",
    "split",
    "auc",
    "logloss",
    "accuracy",
    "num_examples",
    "best_possible_auc",
  }
  # Every test row is scored exactly once (the last batch is padded and masked).
  processed = next((tmp_path / "data").glob("synthetic_*/processed_*"))
  metadata = json.loads((processed / "metadata.json").read_text())
  assert test["num_examples"] == metadata["num_rows"]["test"] == 1429  # 20000 // 7 + 1, halved
  # Quality that can fail. The teacher's AUC on these rows (best_possible_auc) is the ceiling,
  # 0.5 (chance) the floor. 40 steps of batch 256 see half the training rows once; measured
  # 2026-11-30: test AUC 0.688 of 0.785 possible, i.e. 66% of the attainable lift over
  # chance. Demand at least half of it: a model that learnt little or nothing (a wrong
  # gradient scale, ids hitting the wrong rows) stays near 0.5 and fails.
  lift = (test["auc"] - 0.5) / (test["best_possible_auc"] - 0.5)
  assert 0.5 <= lift <= 1.05, test
  # And better calibrated than the constant prediction of the training click rate.
  labels = np.load(processed / "test_label.npy")
  rate = np.load(processed / "train_label.npy").mean()
  constant = -np.mean(labels * np.log(rate) + (1 - labels) * np.log(1 - rate))
  assert test["logloss"] < constant, (test["logloss"], constant)
  # TensorBoard holds the same numbers; the plot and the closing summary are there.
  scalars = assert_events_match_metrics(work)
  assert {"train/loss", "train/samples_per_sec", "validation/auc", "test/logloss"} <= set(scalars)
  assert (work / "curves.png").read_bytes()[:4] == b"\x89PNG"
  summary = proc.stdout[proc.stdout.index("finished 40 steps") :]
  assert f"TensorBoard: tensorboard --logdir {work}/tensorboard" in summary
  assert f"curves:      {work}/curves.png" in summary and "time: " in summary


@pytest.mark.parametrize(
  "args,needle",
  [
    (["--bottom_mlp=32,16"], "--bottom_mlp"),
    (["--optimizer=adam"], "optimizer"),
    (["--dataset=kaggle"], "data/README.md"),
    (["--mesh_shape=3"], "--mesh_shape"),
  ],
)
def test_bad_configuration_is_refused_before_work(tmp_path, args, needle):
  proc = run_main(tmp_path, *args, timeout=120)
  assert proc.returncode != 0
  assert needle in proc.stderr
  assert not (tmp_path / "work" / "metrics.jsonl").exists()
