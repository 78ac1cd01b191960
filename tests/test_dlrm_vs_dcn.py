"""experiments/dlrm_vs_dcn.py: aggregation checked by hand, every arm's flags, a smoke run."""

import importlib.util
import json
import math
import sys

import main_runner
import pytest

EXPERIMENTS = main_runner.REPO / "experiments"
SCRIPT = EXPERIMENTS / "dlrm_vs_dcn.py"


def _load(name: str):
  """experiments/<name>.py as module ``name`` (the script imports its sibling ``comparison``)."""
  spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
  spec.loader.exec_module(module)
  return module


comparison = _load("comparison")


def _script():
  return _load("dlrm_vs_dcn")


def _train(step, acc):
  return {"step": step, "loss": 0.5, "samples_per_sec": 1000.0 * step, "accuracy": acc}


def test_train_accuracy_is_the_mean_over_the_last_tenth_of_steps():
  # 100 steps: the window is steps 91..100. The line at 93 covers 89..93 (3 steps inside),
  # the line at 100 covers 94..100 (7 inside); lines before 89 are outside.
  records = [
    {"step": 0, "parameters": {"dense": 5, "embedding": 7, "total": 12}},
    _train(30, 0.1),
    _train(60, 0.2),
    _train(88, 0.3),
    {"step": 88, "split": "validation", "auc": 0.6, "logloss": 0.5, "accuracy": 0.7},
    _train(93, 0.8),
    _train(100, 0.9),
    {"step": 100, "split": "validation", "auc": 0.7, "logloss": 0.4, "accuracy": 0.75},
    {"step": 100, "split": "test", "auc": 0.71, "logloss": 0.41, "accuracy": 0.76},
  ]
  got = comparison.train_accuracy_last_fraction(records, 100)
  assert math.isclose(got, (0.8 * 3 + 0.9 * 7) / 10)
  # 7 steps: ceil(0.7) = the last step only.
  assert comparison.train_accuracy_last_fraction([_train(5, 0.2), _train(7, 0.6)], 7) == 0.6
  # Lines without "accuracy" (an older main.py) give None, not 0.
  assert comparison.train_accuracy_last_fraction([{"step": 10, "loss": 0.5}], 10) is None

  summary = comparison.summarise_arm(records, 100, wall_s=12.5)
  assert summary["params"] == 12
  assert summary["validation_accuracy"] == 0.75 and summary["test_auc"] == 0.71
  assert summary["test_logloss"] == 0.41 and summary["test_accuracy"] == 0.76
  # Median of 60k, 88k, 93k, 100k: the first line (30k, compilation included) is left out.
  assert summary["samples_per_sec"] == (88_000.0 + 93_000.0) / 2
  assert summary["wall_s"] == 12.5
  assert comparison.is_finished(records) and not comparison.is_finished(records[:-1])


def test_read_metrics_skips_a_line_cut_short(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 10, "loss": 0.5}\n{"step": 20, "lo')
  assert comparison.read_metrics(str(path)) == [{"step": 10, "loss": 0.5}]
  assert comparison.read_metrics(str(tmp_path / "absent.jsonl")) == []


@pytest.mark.parametrize("smoke", [False, True])
def test_every_arm_is_a_valid_main_py_configuration(smoke):
  """Each arm's flags parse with main.py's own flag definitions and pass Config.validate."""
  from dlrm_jax import flags as dlrm_flags

  script = _script()
  args = script.parse_args(["--smoke"] if smoke else [])
  assert len(script.ARMS) == 7
  models = {(a.model, a.optimizer, a.learning_rate) for a in script.ARMS}
  assert models == {
    ("dlrm", "sgd", 0.1),
    ("dcn", "sgd", 0.1),
    ("dlrm", "adagrad", 0.01),
    ("dcn", "adagrad", 0.01),
    ("dcnv2", "sgd", 0.1),
    ("dcnv2", "adagrad", 0.01),
    ("dlrm_nns", "sgd", 0.1),
  }
  for arm in script.ARMS:
    flags = script.arm_flags(arm, args, 1000, f"runs/x/{arm.name}")
    try:
      dlrm_flags.FLAGS(["main.py", *flags])
      config = dlrm_flags.config_from_flags().validate(num_devices=1)
    finally:
      dlrm_flags.FLAGS.unparse_flags()
    assert config.optimizer == arm.optimizer and config.learning_rate == arm.learning_rate
    assert config.num_epochs == 1 and config.eval_every_steps == -(-1000 // args.evals_per_epoch)
    expected = {"dlrm": "dot", "dlrm_nns": "dot", "dcn": "dcn", "dcnv2": "dcnv2"}[arm.model]
    assert config.interaction == expected
    assert bool(config.embedding_mlp) == (arm.model == "dlrm_nns")


def _run(tmp_path, capsys, *args) -> tuple[int, str, str]:
  """The script's main() in this process; its main.py runs are subprocesses on 1 CPU device."""
  capsys.readouterr()
  rc = _script().main(
    ["--smoke", f"--data_dir={tmp_path / 'data'}", f"--workdir={tmp_path / 'cmp'}", *args]
  )
  out, err = capsys.readouterr()
  return rc, out, err


def test_smoke_comparison_writes_results_and_resumes(tmp_path, capsys, monkeypatch):
  for name, value in main_runner.main_env(1).items():
    monkeypatch.setenv(name, value)
  rc, out, err = _run(tmp_path, capsys, "--arms=1")
  assert rc == 0, out[-2000:] + err[-3000:]
  work = tmp_path / "cmp"
  arm1 = work / "1_dlrm_sgd"
  assert "main.py --flagfile=" in out  # each arm's command is printed
  mtime = (arm1 / "metrics.jsonl").stat().st_mtime_ns

  # Arm 1 is finished: a larger comparison in the same workdir does not retrain it.
  rc, out, err = _run(tmp_path, capsys, "--arms=1,3")
  assert rc == 0, out[-2000:] + err[-3000:]
  assert "arm 1 (1_dlrm_sgd): finished earlier, not retrained" in out
  assert (arm1 / "metrics.jsonl").stat().st_mtime_ns == mtime
  assert len(json.loads((arm1 / "arm.json").read_text())["runs"]) == 1

  results = json.loads((work / "results.json").read_text())
  assert [a["arm"] for a in results["arms"]] == [1, 3]
  for arm in results["arms"]:
    assert set(arm) >= set(comparison.ARM_KEYS)
    assert arm["status"] == "done"
    assert arm["model"] == "dlrm" and arm["optimizer"] in ("sgd", "adagrad")
    for key in ("validation_accuracy", "test_auc", "test_logloss", "test_accuracy"):
      assert 0 < arm[key] < 1, (key, arm)
    assert arm["samples_per_sec"] > 0 and arm["wall_s"] > 0
    assert arm["params"] > 0 and 0 < arm["train_accuracy"] < 1
  assert (work / "accuracy.png").stat().st_size > 10_000
  assert "| 3 | dlrm | adagrad | 0.01 |" in (work / "results.md").read_text()

  # Other flags in the same workdir are refused, naming the arm directory.
  rc, out, err = _run(tmp_path, capsys, "--arms=1", "--seed=1")
  assert rc == 2 and "1_dlrm_sgd was trained with other flags" in err
