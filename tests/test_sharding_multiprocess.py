"""2 processes x 4 CPU devices (jax.distributed on 127.0.0.1, gloo) train like 1 process x 8."""

import json
import os
import subprocess
import sys
from pathlib import Path

from main_runner import free_port, process_flags
from tensorboard_testlib import assert_events_match_metrics

REPO = Path(__file__).resolve().parents[1]
STEPS = 6


def main_cmd(workdir: Path, data_dir: Path, *args: str) -> list[str]:
  return [
    sys.executable,
    str(REPO / "main.py"),
    f"--flagfile={REPO}/experiments/tiny.flags",
    f"--workdir={workdir}",
    f"--data_dir={data_dir}",
    "--noprogress",
    f"--max_steps={STEPS}",
    "--log_every_steps=1",
    "--eval_every_steps=0",
    *args,
  ]


def env_for(devices: int, **extra: str) -> dict[str, str]:
  env = dict(
    os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"
  )
  env.update(extra)
  return env


def records(workdir: Path) -> tuple[list[float], dict]:
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in lines if "loss" in r]
  test = next(r for r in lines if r.get("split") == "test")
  return losses, test


def test_sharding_two_processes_match_one(tmp_path):
  data = tmp_path / "data"
  # One process first: it also generates the synthetic data both runs read.
  single = subprocess.run(
    main_cmd(tmp_path / "one", data),
    cwd=REPO,
    env=env_for(8),
    capture_output=True,
    text=True,
    timeout=240,
  )
  assert single.returncode == 0, single.stderr[-3000:]

  # Both processes share one workdir, as hosts share a filesystem: Orbax's
  # multi-process checkpoint commit waits for every process's part there.
  port = free_port()
  work = tmp_path / "two"
  flags_proc = subprocess.Popen(
    main_cmd(work, data, *process_flags(port, 0)),
    cwd=REPO,
    env=env_for(4),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  # The second process reads the usual environment variables instead of flags.
  env_proc = subprocess.Popen(
    main_cmd(work, data),
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env_for(
      4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1"
    ),
  )
  try:
    outs = [p.communicate(timeout=240) for p in (flags_proc, env_proc)]
  finally:
    for p in (flags_proc, env_proc):
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip((flags_proc, env_proc), outs, strict=True):
    assert p.returncode == 0, err[-3000:]
  assert "test AUC" in outs[0][0]
  assert "test AUC" not in outs[1][0]  # process 0 alone prints the summary
  # Process 0 alone writes TensorBoard (two writers would duplicate every step) and the plot.
  assert len(list((work / "tensorboard").glob("events.out.tfevents.*"))) == 1
  assert_events_match_metrics(work)
  assert (work / "curves.png").exists()

  losses_1, test_1 = records(tmp_path / "one")
  losses_2, test_2 = records(work)
  assert len(losses_1) == len(losses_2) == STEPS
  # Same mesh (1, 8), same plan, same global batches: only the transport
  # differs (gloo between processes), so the losses agree to float rounding.
  for a, b in zip(losses_1, losses_2, strict=True):
    assert abs(a - b) <= 1e-5, (losses_1, losses_2)
  assert test_1["num_examples"] == test_2["num_examples"]
  assert abs(test_1["auc"] - test_2["auc"]) <= 1e-5
  assert abs(test_1["logloss"] - test_2["logloss"]) <= 1e-5
