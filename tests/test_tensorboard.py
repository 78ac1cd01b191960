"""TensorBoard events mirror metrics.jsonl, also across a resume; tensorboard's reader checks."""

import pytest
from tensorboard_testlib import assert_events_match_metrics, read_events

from dlrm_jax.config import Config
from dlrm_jax.reporting.metrics_log import MetricsLog


def train_record(step, loss):
  return {"step": step, "loss": loss, "samples_per_sec": 1000.0 + step, "lr": 0.1, "accuracy": 0.7}


def eval_record(step, split, auc):
  return {
    "step": step,
    "split": split,
    "auc": auc,
    "logloss": 0.5,
    "accuracy": 0.75,
    "num_examples": 1429,
    "best_possible_auc": 0.8,
  }


def start(workdir, resume_step=None):
  log = MetricsLog(str(workdir), resume_step=resume_step)
  config = Config(workdir=str(workdir))
  (workdir / "config.json").write_text(config.to_json() + "\n")
  log.write_config(config, resume_step or 0)
  return log


def test_events_equal_metrics_jsonl(tmp_path):
  log = start(tmp_path)
  for step in (10, 20, 30, 40):
    log.write(train_record(step, 1.0 / step))
  log.write(eval_record(20, "validation", 0.61))
  log.write(eval_record(20, "validation", 0.99))  # a redone evaluation is written once
  log.write(eval_record(40, "validation", 0.72))
  log.write(eval_record(40, "test", 0.7))
  log.write({"step": 50, "loss": float("nan"), "samples_per_sec": 5.0})  # null in the jsonl
  log.close()
  scalars = assert_events_match_metrics(tmp_path)
  assert scalars["validation/auc"] == {20: pytest.approx(0.61), 40: pytest.approx(0.72)}
  assert scalars["test/auc"] == {40: pytest.approx(0.7)}
  assert set(scalars["train/lr"]) == {10, 20, 30, 40}
  assert 50 not in scalars["train/loss"] and 50 in scalars["train/samples_per_sec"]


def test_resume_drops_the_lost_steps_in_both(tmp_path):
  log = start(tmp_path)
  for step in (10, 20, 30):  # 30 was logged, then the process died; checkpoint at 20
    log.write(train_record(step, 9.0))
  log.write(eval_record(20, "validation", 0.6))
  log.close()
  log = start(tmp_path, resume_step=20)
  for step in (30, 40):
    log.write(train_record(step, 0.25))
  log.write(eval_record(40, "validation", 0.7))
  log.close()
  scalars = assert_events_match_metrics(tmp_path)
  assert scalars["train/loss"] == {10: 9.0, 20: 9.0, 30: 0.25, 40: 0.25}
  assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_fresh_run_replaces_old_events(tmp_path):
  log = start(tmp_path)
  log.write(train_record(10, 3.0))
  log.close()
  log = start(tmp_path)  # no checkpoint to resume: a fresh run, a fresh metrics.jsonl
  log.write(train_record(10, 0.5))
  log.close()
  assert assert_events_match_metrics(tmp_path)["train/loss"] == {10: 0.5}


def test_other_processes_write_nothing(tmp_path):
  log = MetricsLog(str(tmp_path), enabled=False)
  log.write(train_record(10, 0.5))
  log.write_config(Config(), 0)
  log.close()
  assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "metrics.jsonl").exists()
  assert read_events(tmp_path)[0] == {}
