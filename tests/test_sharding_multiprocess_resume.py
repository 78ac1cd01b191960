"""2 processes x 4 CPU devices save, are killed with SIGKILL, resume, and end like 1 x 8;
that checkpoint then restores onto 1 device."""

import json
import re
import subprocess
from pathlib import Path

import dlrm_reference
import numpy as np
from main_runner import (
  free_port,
  main_command,
  main_env,
  process_flags,
  run_main,
  sigkill_after_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
STEPS = 12
# Tables split every way across both processes: row-wise and column-wise shards live on
# devices of both processes, so each process writes (and later reads) part of every table.
FLAGS = (
  f"--max_steps={STEPS}",
  "--checkpoint_every_steps=4",
  "--log_every_steps=4",
  "--eval_every_steps=0",
  "--table_sharding=C1:row,C2:column,C3:row,C4:replicated",
)


def start_pair(work: Path, data: Path) -> list[subprocess.Popen]:
  port = free_port()
  return [
    subprocess.Popen(
      main_command(
        work,
        data,
        *FLAGS,
        *process_flags(port, i),
      ),
      cwd=REPO,
      env=main_env(4),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


def finish(procs, timeout=120) -> list[tuple[str, str]]:
  try:
    return [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def records(work: Path) -> list[dict]:
  return [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]


def test_sharding_two_processes_killed_resume_like_one_then_restore_onto_one_device(tmp_path):
  data = tmp_path / "data"
  # The uninterrupted reference, 1 process x 8 devices (it also generates the data).
  one = tmp_path / "one"
  proc = run_main(one, data, *FLAGS, devices=8, timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]

  two = tmp_path / "two"
  procs = start_pair(two, data)
  sigkill_after_checkpoint(procs, two / "checkpoints" / "4", finish)
  assert not (two / "checkpoints" / str(STEPS)).exists(), "killed too late to test anything"

  procs = start_pair(two, data)
  outs = finish(procs, timeout=240)
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err[-3000:]
  assert "resuming from" in outs[0][0] + outs[0][1]

  # The same trajectory: every logged loss (no duplicates) and the final metrics. Only the
  # transport differs (gloo between processes), so equal up to float rounding.
  ref, got = records(one), records(two)
  assert [(r["step"], "split" in r) for r in got] == [(r["step"], "split" in r) for r in ref]
  for a, b in zip(ref, got, strict=True):
    for k in ("loss", "auc", "logloss"):
      if k in a:
        assert abs(a[k] - b[k]) <= 1e-5, (a, b)
  # Every saved weight agrees, read back through the recorded layout by plain NumPy.
  params_1, tables_1 = dlrm_reference.read_checkpoint(one / "checkpoints" / str(STEPS))
  params_2, tables_2 = dlrm_reference.read_checkpoint(two / "checkpoints" / str(STEPS))
  assert tables_1.keys() == tables_2.keys()
  for name in tables_1:
    np.testing.assert_allclose(tables_2[name], tables_1[name], atol=1e-6, err_msg=name)
  for part in ("bottom_mlp", "top_mlp"):
    for layer in params_1[part]:
      for w in ("kernel", "bias"):
        np.testing.assert_allclose(
          params_2[part][layer][w], params_1[part][layer][w], atol=1e-5, err_msg=f"{part} {w}"
        )

  # The two-process checkpoint on one device, another plan: the reference's test metrics.
  proc = run_main(
    two,
    data,
    *FLAGS,
    "--mode=eval",
    f"--checkpoint={two}/checkpoints/{STEPS}",
    "--split=test",
    "--mesh_shape=1",
    devices=1,
    timeout=240,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  test = next(r for r in ref if r.get("split") == "test")
  printed = re.search(r"test AUC (\S+)  log loss (\S+)", proc.stdout)
  assert printed, proc.stdout
  assert abs(float(printed[1]) - test["auc"]) <= 6e-5
  assert abs(float(printed[2]) - test["logloss"]) <= 6e-5
