"""--dry_run: the per-device memory table, exit 0 / 2, the compiler's figures, bad input."""

import dataclasses
import subprocess
import sys

import jax
import numpy as np
import pytest
from main_runner import REPO, main_env, run_main

from dlrm_jax.config import Config, ConfigError
from dlrm_jax.data import criteo_format as cf
from dlrm_jax.run import dry_run as dr
from dlrm_jax.run import memory_plan
from dlrm_jax.train.components import abstract_train_state

# Kaggle's published sizes capped at 1000 rows: no data, seconds to compile.
SMALL = Config(
  dataset="kaggle",
  max_ind_range=1000,
  embedding_dim=8,
  bottom_mlp=(16, 8),
  top_mlp=(16, 1),
  batch_size=64,
  eval_batch_size=128,
  log_every_steps=4,
  checkpoint_every_steps=0,
  mesh_shape=(2, 4),
  data_dir="/nonexistent",
)


def _main(*args, devices=1, timeout=240):
  return subprocess.run(
    [sys.executable, str(REPO / "main.py"), "--dataset=kaggle", "--max_ind_range=1000",
     "--embedding_dim=8", "--bottom_mlp=16,8", "--top_mlp=16,1", "--batch_size=64",
     "--eval_batch_size=128", "--data_dir=/nonexistent", "--dry_run", *args],
    cwd=REPO, env=main_env(devices), capture_output=True, text=True, timeout=timeout,
  )  # fmt: skip


def test_fits_in_a_new_process_that_simulates_the_mesh():
  # The process starts with 1 CPU device; the dry run itself makes the 4 of --mesh_shape.
  r = _main("--mesh_shape=4", "--device_memory_gb=1", "--steps_per_call=4")
  assert r.returncode == 0, r.stderr
  assert "4 simulated XLA:CPU devices" in r.stdout
  assert "Kaggle's published sizes" in r.stdout
  for program in ("init", "train (K=4)", "train 1 step (K=1)", "eval", "checkpoint"):
    assert f"\n  {program} " in r.stdout, program
  assert "fits: peak" in r.stdout and "--device_memory_gb=1" in r.stdout


def test_over_the_limit_exits_2_naming_the_program_and_device(capsys):
  # Dense layers of 64 MiB, tables of 1000 rows: the planner accepts 10 MiB, the init does not.
  config = dataclasses.replace(SMALL, top_mlp=(4096, 4096, 1), device_memory_gb=0.01)
  assert dr.dry_run(config) == dr.EXIT_OVER
  out = capsys.readouterr().err
  assert "error: does not fit: program 'init' needs" in out
  assert "every device (0-7" in out and "over --device_memory_gb=0.01" in out


def test_planner_refusal_still_shows_the_compiler_figures(capsys):
  config = dataclasses.replace(SMALL, device_memory_gb=1e-6)
  assert dr.dry_run(config) == dr.EXIT_OVER
  out = capsys.readouterr()
  assert "the planner refuses --device_memory_gb=1e-06" in out.err
  assert "\n  train (K=4) " in out.out


def _hand_shard_bytes(c, state) -> int:
  """Per-device bytes of the state from its shapes and the mesh, without JAX's sharding code."""
  data, model = c.mesh.shape["data"], c.mesh.shape["model"]
  total = 0
  for name, buf in state.tables.items():
    rows, dim = buf.shape
    per = {"sharded": rows // model * dim, "column": rows * (dim // model)}.get(name, rows * dim)
    total += per * 4
    for slot in state.slots[name].values():
      if slot.ndim == 2:
        total += per * 4
      else:  # row-wise accumulator: split with the rows only in the sharded buffer
        total += (slot.shape[0] // model if name == "sharded" else slot.shape[0]) * 4
  dense = jax.tree.leaves((state.params, state.opt_state, state.step))
  total += sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in dense)
  assert data * model == 8
  return total


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_compiler_arguments_equal_the_state_and_batch_computed_by_hand(optimizer):
  config = dataclasses.replace(SMALL, optimizer=optimizer, table_sharding=(("C1", "column"),))
  c, _ = dr.build(config, jax.devices()[:8])
  state = abstract_train_state(c)
  figures, _ = memory_plan.compile_programs(c, state)
  programs = {p.name: p for p in figures}
  want_state = _hand_shard_bytes(c, state)
  ids = len(cf.SPARSE_NAMES)
  per_example = 4 * (cf.NUM_DENSE + ids + 2)  # dense, sparse, label, mask; 4 bytes each
  k = config.resolved_steps_per_call
  train = programs[f"train (K={k})"]
  assert train.arguments == want_state + k * config.batch_size // 8 * per_example
  assert train.aliased == want_state  # the state is donated: written in place
  train_batch = k * config.batch_size // 8 * per_example
  assert train.resident == train_batch  # the next call's batch, put on the devices ahead
  # jit drops arguments eval does not read (labels, the step), but they stay allocated.
  ev = programs["eval"]
  assert ev.arguments + ev.resident == want_state + config.eval_batch_size // 8 * per_example
  assert ev.arguments <= want_state + config.eval_batch_size // 8 * (4 * (cf.NUM_DENSE + ids))
  ckpt = programs["checkpoint"]  # reads every float (not the step)
  assert ckpt.arguments + ckpt.resident == want_state and ckpt.resident == 4
  # XLA counts the output tuple's table of pointers too: 8 bytes per array.
  leaves = len(jax.tree.leaves(state))
  assert want_state <= programs["init"].outputs <= want_state + 8 * leaves
  breakdown = memory_plan.state_breakdown(memory_plan.abstract_state(c, state))
  assert sum(breakdown.values()) == want_state


def test_bad_mesh_and_data_exit_2_naming_the_flag():
  r = _main(f"--mesh_shape={dr.MAX_SIMULATED_DEVICES + 1}")
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert f"--mesh_shape={dr.MAX_SIMULATED_DEVICES + 1} needs" in r.stderr
  r = _main("--device_memory_gb=-1")
  assert r.returncode == 2 and "--device_memory_gb=-1: must be >= 0" in r.stderr


def test_unknown_tables_and_fixed_device_counts_name_the_flag():
  tb = dataclasses.replace(SMALL, dataset="terabyte", max_ind_range=3_000_000)
  with pytest.raises(ConfigError, match="--max_ind_range=3000000: Criteo Terabyte"):
    dr.dry_run(tb)
  with pytest.raises(ConfigError, match="--dataset=synthetic: its table sizes"):
    dr.dry_run(dataclasses.replace(SMALL, dataset="synthetic"))
  # This process started JAX with conftest's 8 devices: 16 cannot be made any more.
  with pytest.raises(ConfigError, match="--mesh_shape=16 needs 16 devices, but JAX already"):
    dr.dry_run(dataclasses.replace(SMALL, mesh_shape=(16,)))


def test_published_sizes():
  sizes, _, source = dr.table_sizes(
    dataclasses.replace(SMALL, dataset="terabyte", max_ind_range=40_000_000)
  )
  assert sum(sizes) == 204_184_588 and "no data read" in source
  capped, _, source = dr.table_sizes(
    dataclasses.replace(SMALL, dataset="terabyte", max_ind_range=10_000_000)
  )
  assert max(capped) == 10_000_000 and "upper bounds" in source


def test_a_real_run_checks_before_it_allocates(tmp_path):
  data = tmp_path / "data"
  r = run_main(tmp_path / "fits", data, "--device_memory_gb=1", "--max_steps=4", devices=2)
  assert r.returncode == 0, r.stderr
  # Dense layers of 64 MiB: the planner accepts the tables, the compiler refuses the init.
  r = run_main(
    tmp_path / "over", data, "--device_memory_gb=0.01", "--top_mlp=4096,4096,1", devices=2
  )
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
  assert "error: program 'init' needs" in r.stderr and "add --dry_run" in r.stderr
  assert "finished" not in r.stdout
