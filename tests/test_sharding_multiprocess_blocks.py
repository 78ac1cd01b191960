"""2 processes x 4 CPU devices train with --shuffle=blocks: the global batches an independent
reconstruction predicts, every training row once per epoch, and a SIGKILL resume bit-identical."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from main_runner import (
  free_port,
  main_command,
  main_env,
  process_flags,
  sigkill_after_checkpoint,
)

from dlrm_jax.data.loader import BatchLoader
from dlrm_jax.data.store import open_split
from dlrm_jax.data.synthetic import prepare_synthetic

REPO = Path(__file__).resolve().parents[1]
# 1792 synthetic rows give a training split of 1536 = 48 blocks of 32 rows: 24 blocks per process,
# read 5 at a time (windows of 160 rows and a last of 128, so local batches of 128 cross windows),
# and 6 global batches of 256 per epoch with no row left over. 8 steps cross the epoch end.
ROWS, TRAIN_ROWS, BLOCK, BUFFER, STEPS = 1792, 1536, 32, 5, 8
PER_EPOCH, BLOCKS_PER_PROCESS = 6, 24
FLAGS = (
  f"--synthetic_rows={ROWS}",
  "--shuffle=blocks",
  f"--shuffle_block_rows={BLOCK}",
  f"--shuffle_buffer_blocks={BUFFER}",
  f"--max_steps={STEPS}",
  "--log_every_steps=1",
  "--eval_every_steps=0",
  "--checkpoint_every_steps=4",
)


def start_pair(work: Path, data: Path, logs: str) -> list[subprocess.Popen]:
  """Both processes of a run; each one's output goes to the file ``{logs}{process}.log`` (a
  pipe left unread while the other runs go on could fill up and stall it)."""
  port = free_port()
  procs = []
  for i in range(2):
    with open(f"{logs}{i}.log", "w") as log:
      procs.append(
        subprocess.Popen(
          main_command(
            work,
            data,
            *FLAGS,
            *process_flags(port, i),
          ),
          cwd=REPO,
          env=main_env(4),
          stdout=log,
          stderr=subprocess.STDOUT,
        )
      )
    procs[-1].log = f"{logs}{i}.log"
  return procs


def finish(procs, timeout=240) -> list[str]:
  """Each process's output once it has ended (killed if it runs past ``timeout``)."""
  try:
    for p in procs:
      p.wait(timeout=timeout)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return [Path(p.log).read_text() for p in procs]


def succeeded(procs, outs) -> None:
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == 0, out[-3000:]


def records(work: Path) -> list[dict]:
  return [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
  """Two 2-process runs side by side: one uninterrupted, one SIGKILLed after its step-4
  checkpoint and then resumed. Shared by the tests below (each run costs seconds)."""
  root = tmp_path_factory.mktemp("blocks")
  data = root / "data"
  # Prepared here once, so that the two pairs' processes 0 do not race to write it.
  processed = prepare_synthetic(str(data), ROWS, seed=0, progress=False)
  whole, killed = root / "whole", root / "killed"
  whole_procs = start_pair(whole, data, f"{root}/whole")
  killed_procs = start_pair(killed, data, f"{root}/killed")
  try:
    sigkill_after_checkpoint(killed_procs, killed / "checkpoints" / "4", finish)
    assert not (killed / "checkpoints" / str(STEPS)).exists(), "killed too late to test anything"
    resumed_procs = start_pair(killed, data, f"{root}/resumed")
    resumed_outs = finish(resumed_procs)
    whole_outs = finish(whole_procs)
  finally:
    for p in whole_procs + killed_procs:
      if p.poll() is None:
        p.kill()
  succeeded(whole_procs, whole_outs)
  succeeded(resumed_procs, resumed_outs)
  return {
    "data": data,
    "processed": processed,
    "whole": whole,
    "whole_out": whole_outs[0],
    "killed": killed,
    "resumed_out": resumed_outs[0],
  }


def row_index(arrays) -> dict[bytes, int]:
  """Each training row's bytes (dense, ids, label) -> its row number; asserts they are unique."""
  keys = [key(arrays.dense[i], arrays.sparse[i], arrays.label[i]) for i in range(arrays.num_rows)]
  index = {k: i for i, k in enumerate(keys)}
  assert len(index) == arrays.num_rows, "duplicate rows: positions cannot be told apart"
  return index


def key(dense, sparse, label) -> bytes:
  return dense.tobytes() + sparse.tobytes() + np.float32(label).tobytes()


def batch_rows(batch, index) -> list[int]:
  rows = zip(batch["dense"], batch["sparse"], batch["label"], strict=True)
  return [index[key(d, s, y)] for d, s, y in rows]


def reference_config(work: Path, data: Path):
  """The runs' Config, parsed from the same command line with main.py's own flags."""
  from dlrm_jax import flags as dlrm_flags

  try:
    dlrm_flags.FLAGS(["main.py", *main_command(work, data, *FLAGS)[2:]])
    return dlrm_flags.config_from_flags().validate(num_devices=8)
  finally:
    dlrm_flags.FLAGS.unparse_flags()


def train_on(config, *runs) -> list[list[float]]:
  """Per-step losses of 1 process x 8 devices trained from the start on each of ``runs`` (lists
  of global host batches), through the library's state and step."""
  from dlrm_jax.train.components import abstract_train_state, initial_state, load_components
  from dlrm_jax.train.step import make_train_step, to_global

  c, _, _ = load_components(config, progress=False)
  assert c.mesh.devices.shape == (1, 8)
  step = make_train_step(
    c.model, c.layout, c.sparse_opt, c.dense_tx, c.mesh, abstract_train_state(c)
  )
  results = []
  for global_batches in runs:
    state, losses = initial_state(c), []
    for batch in global_batches:
      batch = {**batch, "sparse": c.check_ids(batch["sparse"])}
      state, metrics = step(state, to_global(batch, c.mesh))
      losses.append(float(metrics["loss"]))
    results.append(losses)
  return results


def test_sharding_two_processes_train_the_predicted_block_shuffled_batches(runs):
  assert (
    f"training order: blocks shuffle of {BLOCK} rows, {BUFFER} per buffer (--shuffle=blocks"
    in (runs["whole_out"])
  )
  arrays = open_split(runs["processed"], "train")
  assert arrays.num_rows == TRAIN_ROWS
  # Each process's loader as the run builds it, here in one process; process p reads only its
  # own blocks. A step's global batch is both processes' local rows, as to_global places each on
  # that process's devices (in process order; the loss, a mean over the batch, would differ
  # only in float rounding if they came the other way round).
  loaders = [
    BatchLoader(
      arrays,
      256,
      shuffle=True,
      seed=0,
      process_index=p,
      process_count=2,
      order="blocks",
      block_rows=BLOCK,
      buffer_blocks=BUFFER,
    )
    for p in range(2)
  ]
  assert [ld.batches_per_epoch for ld in loaders] == [PER_EPOCH, PER_EPOCH]
  local = [[ld.get_batch(s) for s in range(STEPS)] for ld in loaders]
  global_batches = [
    {k: np.concatenate([local[0][s][k], local[1][s][k]]) for k in local[0][s]} for s in range(STEPS)
  ]

  # Within each epoch the two processes together use every training row exactly once, and no
  # block is read by both.
  index = row_index(arrays)
  for epoch in range(2):
    per_process = [
      [
        r
        for s in range(epoch * PER_EPOCH, (epoch + 1) * PER_EPOCH)
        for r in batch_rows(ld.get_batch(s), index)
      ]
      for ld in loaders
    ]
    used = per_process[0] + per_process[1]
    assert len(used) == TRAIN_ROWS and set(used) == set(range(TRAIN_ROWS))
    blocks = [{r // BLOCK for r in rows} for rows in per_process]
    assert len(blocks[0]) == len(blocks[1]) == BLOCKS_PER_PROCESS and not blocks[0] & blocks[1]

  config = reference_config(runs["whole"], runs["data"])
  assert (config.shuffle, config.shuffle_block_rows, config.batch_size) == ("blocks", BLOCK, 256)
  # What both processes would train on had each read process 0's blocks: the comparison below
  # must tell it from the right batches.
  doubled = [
    {k: np.concatenate([local[0][s][k], local[0][s][k]]) for k in local[0][s]} for s in (0, 1)
  ]
  expected, wrong = train_on(config, global_batches, doubled)
  got = [r["loss"] for r in records(runs["whole"]) if "loss" in r]
  assert len(got) == STEPS
  # Same mesh, plan and global batches as 1 x 8: only the transport differs (gloo between
  # processes), so the losses agree to float rounding.
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
  assert np.max(np.abs(np.asarray(wrong) - got[:2])) > 1e-3


def test_sharding_two_processes_block_shuffle_resume_bit_identical(runs):
  out = runs["resumed_out"]
  assert re.search(r"resuming from \S+ \(step 4\)", out), out[-3000:]
  whole, resumed = records(runs["whole"]), records(runs["killed"])
  # Every logged step once, then the evaluations: the same lines, and the same values bit for
  # bit (the same two processes, plan and batches; only the interruption differs).
  assert [(r["step"], r.get("split")) for r in resumed] == [
    (r["step"], r.get("split")) for r in whole
  ]
  for a, b in zip(whole, resumed, strict=True):
    for k in ("loss", "accuracy", "auc", "logloss", "num_examples"):
      assert a.get(k) == b.get(k), (k, a, b)
  assert any("split" in r and r["split"] == "test" for r in whole)
