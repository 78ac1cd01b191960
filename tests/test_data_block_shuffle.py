"""Block-shuffled training order: coverage, exact resume, per-process rows, (seed, epoch) only,
refused flags, damaged files."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest

from dlrm_jax.config import Config, ConfigError
from dlrm_jax.data import block_shuffle
from dlrm_jax.data.loader import BatchLoader, resolve_shuffle
from dlrm_jax.data.store import SplitArrays, open_split, split_file
from dlrm_jax.data.synthetic import prepare_synthetic


@pytest.fixture(scope="module")
def built_in(tmp_path_factory) -> str:
  """A small preprocessed directory, generated once for this module."""
  return prepare_synthetic(str(tmp_path_factory.mktemp("built_in")), 3000, seed=0, progress=False)


@pytest.fixture
def processed(built_in, tmp_path) -> str:
  """A copy of `built_in` that a test may damage."""
  return shutil.copytree(built_in, tmp_path / "processed")


def indexed_arrays(n: int) -> SplitArrays:
  """Rows whose label and dense[:, 0] are the row index, so batches reveal which rows they hold."""
  idx = np.arange(n, dtype=np.float32)
  dense = np.repeat(idx[:, None], 13, axis=1)
  sparse = (np.arange(n)[:, None] * 7 + np.arange(26)[None, :]).astype(np.int32)
  return SplitArrays(dense=dense, sparse=sparse, label=idx.copy())


def rows_of(batch) -> np.ndarray:
  return batch["label"].astype(np.int64)


def blocks_loader(arrays, batch=64, seed=0, index=0, count=1, block_rows=50, buffer_blocks=3):
  return BatchLoader(
    arrays,
    batch,
    shuffle=True,
    seed=seed,
    process_index=index,
    process_count=count,
    order="blocks",
    block_rows=block_rows,
    buffer_blocks=buffer_blocks,
  )


def epoch_rows(loader, epoch: int) -> np.ndarray:
  steps = range(epoch * loader.batches_per_epoch, (epoch + 1) * loader.batches_per_epoch)
  return np.concatenate([rows_of(loader.get_batch(s)) for s in steps])


def test_every_row_once_per_epoch_and_columns_stay_aligned():
  n = 1000  # 20 blocks of 50 rows; batch 40 divides it: no tail is dropped
  loader = blocks_loader(indexed_arrays(n), batch=40)
  assert loader.batches_per_epoch == 25
  for epoch in range(3):
    rows = epoch_rows(loader, epoch)
    np.testing.assert_array_equal(np.sort(rows), np.arange(n))
  batch = loader.get_batch(7)
  np.testing.assert_array_equal(batch["dense"][:, 5], batch["label"])
  expected_sparse = (rows_of(batch)[:, None] * 7 + np.arange(26)[None, :]).astype(np.int32)
  np.testing.assert_array_equal(batch["sparse"], expected_sparse)
  assert (batch["mask"] == 1).all() and batch["sparse"].dtype == np.int32


def test_partial_last_block_and_dropped_tail():
  n = 1037  # the last block has 37 rows; 1037 // 64 = 16 batches, 13 rows unused per epoch
  loader = blocks_loader(indexed_arrays(n))
  assert loader.batches_per_epoch == n // 64
  rows = epoch_rows(loader, 0)
  assert np.unique(rows).size == rows.size == 16 * 64
  assert rows.min() >= 0 and rows.max() < n


def test_rows_come_from_a_window_of_blocks_and_are_mixed():
  loader = blocks_loader(indexed_arrays(3000), batch=60, block_rows=100, buffer_blocks=3)
  for step in range(5):  # batches 0..4 lie in the first window (300 rows)
    blocks = np.unique(rows_of(loader.get_batch(step)) // 100)
    assert 2 <= blocks.size <= 3  # drawn across the window's blocks, not one block in order
  first_window = np.concatenate([rows_of(loader.get_batch(s)) for s in range(5)])
  assert np.unique(first_window // 100).size == 3
  assert not np.array_equal(np.sort(first_window), first_window)


def test_resume_from_any_step_equals_uninterrupted():
  arrays = indexed_arrays(1037)
  whole = [rows_of(b) for b in blocks_loader(arrays).iterate(0, 40)]  # crosses 2 epoch ends
  for start in (1, 5, 16, 23):
    resumed = [rows_of(b) for b in blocks_loader(arrays).iterate(start, 40 - start)]
    for x, y in zip(whole[start:], resumed, strict=True):
      np.testing.assert_array_equal(x, y)
  backwards = blocks_loader(arrays)
  for step in (30, 2, 17, 0):
    np.testing.assert_array_equal(rows_of(backwards.get_batch(step)), whole[step])


def test_order_depends_on_seed_and_epoch_only():
  arrays = indexed_arrays(1000)
  a, b = blocks_loader(arrays, seed=3), blocks_loader(arrays, seed=3)
  b.get_batch(11)  # a different history of reads changes nothing
  np.testing.assert_array_equal(rows_of(a.get_batch(0)), rows_of(b.get_batch(0)))
  other_seed = blocks_loader(arrays, seed=4)
  assert not np.array_equal(rows_of(a.get_batch(0)), rows_of(other_seed.get_batch(0)))
  per_epoch = a.batches_per_epoch
  assert not np.array_equal(epoch_rows(a, 0), epoch_rows(a, 1))
  np.testing.assert_array_equal(rows_of(a.get_batch(per_epoch + 2)), epoch_rows(a, 1)[128:192])


@pytest.mark.parametrize("count", [2, 4])
def test_each_process_reads_only_its_own_blocks_and_the_union_is_every_row(count):
  n, block = 4096, 64  # 64 blocks: 64 / count per process, 64 / count rows per local batch
  arrays = indexed_arrays(n)
  loaders = [
    blocks_loader(arrays, batch=64, index=i, count=count, block_rows=block) for i in range(count)
  ]
  assert len({ld.batches_per_epoch for ld in loaders}) == 1
  for epoch in range(2):
    per_process = [epoch_rows(ld, epoch) for ld in loaders]
    owned = [set((rows // block).tolist()) for rows in per_process]
    for i in range(count):
      for j in range(i + 1, count):
        assert not owned[i] & owned[j]  # no block is read by two processes
      assert per_process[i].size == len(owned[i]) * block  # whole blocks, each once
    np.testing.assert_array_equal(np.sort(np.concatenate(per_process)), np.arange(n))
  assert all(ld.get_batch(0)["label"].shape == (64 // count,) for ld in loaders)


@pytest.mark.parametrize(
  ("block_rows", "buffer_blocks", "flag"),
  [
    (0, 4, "--shuffle_block_rows=0"),
    (50, 0, "--shuffle_buffer_blocks=0"),
    (1000, 1, "--shuffle_block_rows=1000"),  # one block for two processes
    (10, 2, "--shuffle_buffer_blocks=2"),  # 20-row buffer < 32-row local batch
    (500, 10**9, "--shuffle_buffer_blocks=1000000000"),  # does not fit in memory
  ],
)
def test_bad_block_flags_are_refused_by_name(block_rows, buffer_blocks, flag):
  with pytest.raises(ValueError, match=flag.replace("-", r"\-")):
    blocks_loader(
      indexed_arrays(1000), index=0, count=2, block_rows=block_rows, buffer_blocks=buffer_blocks
    )


def test_auto_reads_blocks_from_a_memory_mapped_split(processed):
  assert resolve_shuffle("auto", open_split(processed, "train", in_memory=True))[0] == "rows"
  mapped = open_split(processed, "train", in_memory=False)
  assert resolve_shuffle("auto", mapped)[0] == "blocks"
  assert resolve_shuffle("rows", mapped)[0] == "rows"
  # pread of the files gives the same rows as the arrays in RAM
  in_ram = open_split(processed, "train", in_memory=True)
  a = blocks_loader(mapped, block_rows=100).get_batch(3)
  b = blocks_loader(in_ram, block_rows=100).get_batch(3)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_file_truncated_after_opening_is_reported_with_rows(processed):
  arrays = open_split(processed, "train", in_memory=False)
  path = split_file(processed, "train", "sparse")
  os.truncate(path, os.path.getsize(path) - 26 * 4 * 10)  # the last 10 rows' ids
  n = arrays.num_rows
  with pytest.raises(ValueError, match=rf"train_sparse.npy: rows {n - 100}\.\.{n - 1} unreadable"):
    block_shuffle.read_rows(arrays.sparse, n - 100, n)


@pytest.mark.parametrize("field", ["dense", "sparse", "label"])
def test_short_column_file_is_reported_before_training(processed, field):
  path = split_file(processed, "train", field)
  n = open_split(processed, "train").num_rows
  per_row = {"dense": 13 * 4, "sparse": 26 * 4, "label": 4}[field]
  os.truncate(path, os.path.getsize(path) - 5 * per_row - 1)  # 5 rows and a byte of a 6th
  for in_memory in (True, False):
    with pytest.raises(ValueError, match=rf"train_{field}.npy: truncated.*rows {n - 6}\.\.{n - 1}"):
      open_split(processed, "train", in_memory=in_memory)


def test_damaged_header_is_reported_by_file(processed):
  path = split_file(processed, "train", "label")
  with open(path, "r+b") as f:
    f.write(b"garbage!")
  with pytest.raises(ValueError, match="train_label.npy: not a readable .npy column file"):
    open_split(processed, "train")


@pytest.mark.parametrize(
  ("changes", "flag"),
  [
    ({"shuffle": "random"}, "--shuffle='random'"),
    ({"shuffle_block_rows": 0}, "--shuffle_block_rows=0"),
    ({"shuffle_buffer_blocks": -1}, "--shuffle_buffer_blocks=-1"),
  ],
)
def test_config_refuses_bad_shuffle_flags(changes, flag):
  with pytest.raises(ConfigError, match=re.escape(flag)):
    Config(**changes).validate(1)


def test_training_run_names_its_order_and_refuses_damaged_data(processed, capsys):
  from dlrm_jax.run.train import _train_loader

  config = Config(batch_size=64, shuffle="auto")
  loader = _train_loader(config, processed)
  assert loader.order == "rows"  # 3000 rows: in RAM
  assert "training order: rows shuffle (--shuffle=auto and the split is in RAM)" in (
    capsys.readouterr().out
  )
  blocks = _train_loader(Config(batch_size=64, shuffle="blocks", shuffle_block_rows=100), processed)
  assert blocks.order == "blocks" and "training order: blocks shuffle of 100 rows" in (
    capsys.readouterr().out
  )
  small = Config(batch_size=64, shuffle="blocks", shuffle_block_rows=10, shuffle_buffer_blocks=2)
  with pytest.raises(ConfigError, match="--shuffle_buffer_blocks=2"):
    _train_loader(small, processed)
  path = split_file(processed, "train", "dense")
  os.truncate(path, os.path.getsize(path) - 52)
  with pytest.raises(ConfigError, match="train_dense.npy: truncated"):
    _train_loader(config, processed)
