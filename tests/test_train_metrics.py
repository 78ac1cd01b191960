"""The train step's metrics (lr, accuracy sums) and the training lines of metrics.jsonl."""

import json

import main_runner
import numpy as np
from sharding_testlib import LR, Sharded, make_batch


def test_step_returns_accuracy_sums_over_unmasked_examples():
  s = Sharded((1,), "table", "adagrad")
  batch = make_batch(0)
  batch["mask"][::3] = 0.0  # padded examples count for nothing
  logits = np.asarray(s.eval_step(s.state, s.put(batch)))  # the step's forward pass
  s.state, metrics = s.train_step(s.state, s.put(batch))
  right = (logits > 0) == (batch["label"] > 0.5)
  assert float(metrics["count"]) == batch["mask"].sum()
  assert float(metrics["correct"]) == np.sum(right * batch["mask"])
  assert float(metrics["lr"]) == np.float32(LR)


def test_training_lines_carry_lr_and_accuracy(tmp_path):
  base, warmup, start, decay = 0.05, 15, 20, 15
  proc = main_runner.run_main(
    tmp_path / "work",
    tmp_path / "data",
    "--optimizer=adagrad",
    f"--learning_rate={base}",
    f"--lr_warmup_steps={warmup}",
    f"--lr_decay_start_step={start}",
    f"--lr_decay_steps={decay}",
    "--eval_every_steps=0",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()
  train = [r for r in map(json.loads, lines) if "loss" in r]
  assert [r["step"] for r in train] == [10, 20, 30, 40]
  # The rate of the last update of each line (step s uses the reference's count s + 1).
  want = {
    10: base * 10 / 15,  # warmup
    20: base,  # count 20: the decay's first, ((15 - 0) / 15) ** 2
    30: base * (5 / 15) ** 2,
    40: base * (1 / 15) ** 2,  # held after the decay's last count, 34
  }
  for r in train:
    assert abs(r["lr"] - want[r["step"]]) <= 1e-6 * want[r["step"]], r
    assert 0.0 < r["accuracy"] < 1.0, r
