"""--id_mapping=managed's bad input: each refused with a message naming the flag, no fallback."""

from __future__ import annotations

import dataclasses

import pytest
from main_runner import run_main

from dlrm_jax.config import Config, ConfigError
from dlrm_jax.data.datasets import check_data_matches_model, model_table_sizes, resolve_dataset

MANAGED = Config(id_mapping="managed")


@pytest.mark.parametrize(
  "fields,message",
  [
    (dict(managed_capacity=(("", 0),)), "--managed_capacity=0: a capacity must be in"),
    (dict(managed_capacity=(("", -1),)), "--managed_capacity=-1: a capacity must be in"),
    (dict(managed_capacity=(("C3", 2**31),)), "--managed_capacity=C3:2147483648"),
    (dict(sharding="table"), "--sharding=table: --id_mapping=managed tables are row-wise"),
    (dict(sharding="column"), "--sharding=column: --id_mapping=managed tables are row-wise"),
    (dict(sharding="replicated"), "--sharding=replicated: --id_mapping=managed tables are"),
    (dict(table_sharding=(("C3", "table"),)), "--table_sharding=C3:table: --id_mapping=managed"),
    (dict(table_sharding=(("C1", "row"), ("C7", "column"))), "--table_sharding=C7:column"),
    (dict(multi_hot_sizes=(2,) * 26), "--multi_hot_sizes needs --id_mapping=vocabulary"),
    (dict(dataset="terabyte"), "--id_mapping=managed: not yet for --dataset=terabyte"),
    (dict(eviction="fifo"), "--eviction='fifo': must be one of lru, lfu"),
    (dict(eviction="lfu", lfu_decay=0.0), r"--lfu_decay=0.0: must be in \(0, 1\]"),
    (dict(eviction="lfu", lfu_decay=1.5), r"--lfu_decay=1.5: must be in \(0, 1\]"),
    (dict(eviction="lfu", lfu_decay=float("nan")), "--lfu_decay=nan: must be in"),
    (dict(lfu_decay=0.5), "--lfu_decay=0.5: used only with --eviction=lfu"),
    (dict(hash_rows=(("", 5),)), "--hash_rows: used only with --id_mapping=hash"),
    (dict(vocabulary="reference"), "--vocabulary=reference needs --id_mapping=vocabulary"),
  ],
)
def test_config_refuses_what_managed_cannot_honour(fields, message):
  with pytest.raises(ConfigError, match=message):
    dataclasses.replace(MANAGED, **fields).validate()


@pytest.mark.parametrize(
  "mapping,fields,message",
  [
    ("vocabulary", dict(managed_capacity=(("", 5),)), "--managed_capacity: used only with"),
    ("hash", dict(managed_capacity=(("", 5),)), r"--managed_capacity: used only .* \(not hash\)"),
    ("hash", dict(eviction="lfu"), "--eviction=lfu: used only with --id_mapping=managed"),
    ("vocabulary", dict(lfu_decay=0.5), "--lfu_decay=0.5: used only with --eviction=lfu"),
  ],
)
def test_managed_flags_without_managed_are_refused(mapping, fields, message):
  with pytest.raises(ConfigError, match=message):
    Config(id_mapping=mapping, **fields).validate()


def test_good_managed_configs_pass():
  MANAGED.validate()
  dataclasses.replace(MANAGED, sharding="row", table_sharding=(("C3", "row"),)).validate()
  dataclasses.replace(MANAGED, eviction="lfu", lfu_decay=1.0).validate()


def test_capacities_per_table_and_unknown_table():
  meta = {"num_rows": {"train": 900}, "sparse_names": ["C1", "C2", "C3"]}
  # Default: min(training rows, 10M) ids, as --id_mapping=hash's rows; + 1: the unknown row.
  assert model_table_sizes(MANAGED, meta) == [901] * 3
  over = dataclasses.replace(MANAGED, managed_capacity=(("", 50), ("C2", 7)))
  assert model_table_sizes(over, meta) == [51, 8, 51]
  capped = dataclasses.replace(MANAGED, max_ind_range=30)
  assert model_table_sizes(capped, meta) == [31] * 3
  with pytest.raises(ConfigError, match="--managed_capacity=C9:5: no table C9"):
    model_table_sizes(dataclasses.replace(MANAGED, managed_capacity=(("C9", 5),)), meta)


def test_vocabulary_data_is_refused_under_managed(tmp_path):
  vocab = Config(dataset="synthetic", data_dir=str(tmp_path), synthetic_rows=700)
  processed, meta = resolve_dataset(vocab, progress=False)
  managed = dataclasses.replace(vocab, id_mapping="managed")
  with pytest.raises(ConfigError, match="--id_mapping=managed but .* id_mapping=vocabulary"):
    check_data_matches_model(managed, processed, meta)


@pytest.mark.parametrize(
  "flag,rc,message",
  [
    ("--managed_capacity=x", 2, "--managed_capacity='x': expected N (every table) or TABLE:N"),
    ("--managed_capacity=C3:", 2, "--managed_capacity='C3:': expected N"),
    ("--managed_capacity=C0:5", 2, "--managed_capacity=C0:5: no table C0"),
    ("--eviction=fifo", 1, "flag --eviction=fifo: value should be one of <lru|lfu>"),
    ("--sharding=table", 2, "--sharding=table: --id_mapping=managed tables are row-wise"),
  ],
)
def test_main_refuses_bad_flags_naming_them(tmp_path, flag, rc, message):
  proc = run_main(tmp_path / "w", tmp_path / "d", "--id_mapping=managed", flag)
  assert proc.returncode == rc and message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
