"""--dry_run --id_mapping=managed: capacities from --managed_capacity, maps in the planner's
memory, a capacity over --device_memory_gb refused naming --managed_capacity."""

import dataclasses
import re

import pytest

from dlrm_jax.config import Config, ConfigError
from dlrm_jax.run import dry_run as dr
from dlrm_jax.run import memory_plan
from dlrm_jax.sharding.managed import COUNTERS, MANAGED_FLOATS_PER_ROW, PROBES
from dlrm_jax.train.components import abstract_train_state, row_floats

# Kaggle's layout, no data: the capacities alone size the tables.
SMALL = Config(
  dataset="kaggle",
  id_mapping="managed",
  managed_capacity=(("", 999), ("C3", 49)),
  embedding_dim=8,
  bottom_mlp=(16, 8),
  top_mlp=(16, 1),
  batch_size=64,
  eval_batch_size=128,
  log_every_steps=4,
  checkpoint_every_steps=0,
  mesh_shape=(2,),
  data_dir="/nonexistent",
)


def test_capacities_size_the_tables_and_the_planner_charges_the_maps(capsys):
  sizes, names, source = dr.table_sizes(SMALL)
  assert sizes == [50 if n == "C3" else 1000 for n in names]  # + 1: the unknown row
  assert source == "--managed_capacity / --max_ind_range; no data read"
  assert dr.dry_run(SMALL) == 0
  out = capsys.readouterr().out
  assert "\n  managed id maps " in out and "\n  tables + slots + maps " in out
  assert re.search(r"\nC3 +50 row ", out)
  # The planner's figure per shard: the same tables under --id_mapping=hash, plus the maps'
  # floats for every row; it covers the maps' arrays as the compiler allocates them.
  c, _ = dr.build(SMALL, dr.simulated_devices(SMALL)[0])
  hashed = dataclasses.replace(SMALL, id_mapping="hash", managed_capacity=(), sharding="row")
  plain = dr.build_components(hashed, c.mesh, sizes, names)
  charged = c.layout.shard_bytes(row_floats(SMALL, c.sparse_opt))[0]
  extra = charged - plain.layout.shard_bytes(row_floats(hashed, plain.sparse_opt))[0]
  assert extra == c.layout.rows_per_shard * MANAGED_FLOATS_PER_ROW * 4
  state = memory_plan.state_breakdown(memory_plan.abstract_state(c, abstract_train_state(c)))
  # Not charged per row: each table's map region has up to PROBES - 1 slots (8 bytes) of
  # overhang for probes past its end, and i32 next_free and counters; the seed is u32[2].
  fixed = len(names) * ((PROBES - 1) * 8 + (1 + len(COUNTERS)) * 4) + 8
  assert 0 < state[memory_plan.MAPS] <= extra + fixed


def test_capacity_over_device_memory_is_refused_naming_the_flag(capsys):
  config = dataclasses.replace(SMALL, managed_capacity=(("", 2_000_000),), device_memory_gb=0.5)
  assert dr.dry_run(config) == dr.EXIT_OVER
  err = capsys.readouterr().err
  assert "the planner refuses --device_memory_gb=0.5: --managed_capacity=2000000: " in err
  assert "lower --managed_capacity" in err


def test_default_capacity_needs_the_data_or_a_flag():
  with pytest.raises(ConfigError, match="give --managed_capacity \\(or --max_ind_range\\)"):
    dr.table_sizes(dataclasses.replace(SMALL, managed_capacity=()))
  capped = dataclasses.replace(SMALL, managed_capacity=(("C3", 9),), max_ind_range=300)
  sizes, names, _ = dr.table_sizes(capped)
  assert sizes == [10 if n == "C3" else 301 for n in names]
  with pytest.raises(ConfigError, match="--managed_capacity=C0:9: no table C0"):
    dr.table_sizes(dataclasses.replace(capped, managed_capacity=(("C0", 9),)))
