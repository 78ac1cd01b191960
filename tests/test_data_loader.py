"""BatchLoader.

Determinism, resume, per-process slices, eval coverage with padding, id validation.
"""

from __future__ import annotations

import numpy as np
import pytest

from dlrm_jax.data import preprocess
from dlrm_jax.data.loader import BatchLoader, check_batch_ids, validate_table_sizes
from dlrm_jax.data.store import SplitArrays, open_split
from dlrm_jax.data.synthetic import generate_criteo_tsv


def indexed_arrays(n: int) -> SplitArrays:
  """Rows whose label and dense[:, 0] are the row index, so batches reveal which rows they hold."""
  idx = np.arange(n, dtype=np.float32)
  dense = np.repeat(idx[:, None], 13, axis=1)
  sparse = (np.arange(n)[:, None] * 7 + np.arange(26)[None, :]).astype(np.int32) % 1000
  return SplitArrays(dense=dense, sparse=sparse, label=idx.copy())


def rows_of(batch) -> np.ndarray:
  return batch["label"].astype(np.int64)


def test_batches_deterministic_and_seed_dependent():
  arrays = indexed_arrays(1000)
  a = BatchLoader(arrays, 64, shuffle=True, seed=1)
  b = BatchLoader(arrays, 64, shuffle=True, seed=1)
  c = BatchLoader(arrays, 64, shuffle=True, seed=2)
  for step in (0, 3, 15, 16, 40):
    for key in ("dense", "sparse", "label", "mask"):
      np.testing.assert_array_equal(a.get_batch(step)[key], b.get_batch(step)[key])
  assert not np.array_equal(rows_of(a.get_batch(0)), rows_of(c.get_batch(0)))
  batch = a.get_batch(5)
  assert batch["dense"].dtype == np.float32 and batch["dense"].shape == (64, 13)
  assert batch["sparse"].dtype == np.int32 and batch["sparse"].shape == (64, 26)
  assert batch["label"].shape == (64,) and (batch["mask"] == 1).all()
  np.testing.assert_array_equal(batch["dense"][:, 0], batch["label"])  # fields stay row-aligned


def test_resume_at_step_k_equals_uninterrupted():
  loader = BatchLoader(indexed_arrays(1000), 64, shuffle=True, seed=0)
  full = [rows_of(b) for b in loader.iterate(0, 40)]
  resumed = [
    rows_of(b) for b in BatchLoader(indexed_arrays(1000), 64, shuffle=True, seed=0).iterate(23, 17)
  ]
  assert len(full) == 40 and len(resumed) == 17
  for x, y in zip(full[23:], resumed, strict=True):
    np.testing.assert_array_equal(x, y)


def test_epochs_are_permutations_without_repeats():
  n, bs = 1000, 64
  loader = BatchLoader(indexed_arrays(n), bs, shuffle=True, seed=0)
  assert loader.batches_per_epoch == n // bs
  for epoch in range(2):
    steps = range(epoch * loader.batches_per_epoch, (epoch + 1) * loader.batches_per_epoch)
    rows = np.concatenate([rows_of(loader.get_batch(s)) for s in steps])
    assert np.unique(rows).size == rows.size == loader.batches_per_epoch * bs
  assert not np.array_equal(
    rows_of(loader.get_batch(0)), rows_of(loader.get_batch(loader.batches_per_epoch))
  )


@pytest.mark.parametrize("shuffle", [True, False])
def test_process_slices_partition_the_global_batch(shuffle):
  arrays, bs, count = indexed_arrays(1000), 64, 4
  whole = BatchLoader(arrays, bs, shuffle=shuffle, seed=5)
  parts = [
    BatchLoader(arrays, bs, shuffle=shuffle, seed=5, process_index=i, process_count=count)
    for i in range(count)
  ]
  for step in (0, 7, whole.batches_per_epoch - 1):
    local = [p.get_batch(step) for p in parts]
    assert all(b["label"].shape == (bs // count,) for b in local)
    got = np.concatenate([rows_of(b)[b["mask"] > 0] for b in local])
    want = rows_of(whole.get_batch(step))[whole.get_batch(step)["mask"] > 0]
    np.testing.assert_array_equal(np.sort(got), np.sort(want))
    if (
      shuffle
    ):  # contiguous slices: process i holds the i-th quarter of the global permutation slice
      perm = whole.permutation(0)(np.arange(1000))
      lo = step * bs
      for i, b in enumerate(local):
        chunk = perm[lo + i * bs // count : lo + (i + 1) * bs // count]
        np.testing.assert_array_equal(rows_of(b), np.sort(chunk))


@pytest.mark.parametrize("n,bs,count", [(1000, 64, 1), (1000, 64, 2), (128, 64, 2), (5, 8, 4)])
def test_eval_covers_every_row_once_with_mask(n, bs, count):
  arrays = indexed_arrays(n)
  seen = []
  for i in range(count):
    loader = BatchLoader(arrays, bs, shuffle=False, process_index=i, process_count=count)
    assert loader.batches_per_epoch == -(-n // bs)
    batches = list(loader.iterate())
    assert len(batches) == loader.batches_per_epoch
    for b in batches:
      real = b["mask"] > 0
      assert set(np.unique(b["mask"])) <= {0.0, 1.0}
      assert (
        (b["dense"][~real] == 0).all()
        and (b["sparse"][~real] == 0).all()
        and (b["label"][~real] == 0).all()
      )
      seen.append(rows_of(b)[real])
  seen = np.concatenate(seen)
  np.testing.assert_array_equal(np.sort(seen), np.arange(n))


def test_eval_order_is_file_order():
  loader = BatchLoader(indexed_arrays(100), 32, shuffle=False)
  rows = np.concatenate([rows_of(b)[b["mask"] > 0] for b in loader.iterate()])
  np.testing.assert_array_equal(rows, np.arange(100))


def test_iterator_propagates_errors_and_stops_early():
  loader = BatchLoader(indexed_arrays(100), 10, shuffle=True)
  it = loader.iterate(0, None)
  for _ in range(3):
    next(it)
  it.close()  # consumer leaves early: the producer thread must not hang

  class Broken(BatchLoader):
    def get_batch(self, step):
      if step == 2:
        raise RuntimeError("disk gone")
      return super().get_batch(step)

  with pytest.raises(RuntimeError, match="disk gone"):
    list(Broken(indexed_arrays(100), 10, shuffle=True).iterate(0, 5))


def test_bad_arguments():
  with pytest.raises(ValueError):
    BatchLoader(indexed_arrays(100), 10, shuffle=True, process_count=3)
  with pytest.raises(ValueError):
    BatchLoader(indexed_arrays(5), 10, shuffle=True)


def test_validate_table_sizes_names_the_feature():
  meta = {"table_sizes": [10] * 26}
  validate_table_sizes(meta, [10] * 26)
  validate_table_sizes(meta, [11] * 26)
  small = [10] * 26
  small[2] = 9
  with pytest.raises(ValueError, match=r"C3: data ids need 10 rows, model table has 9"):
    validate_table_sizes(meta, small)
  with pytest.raises(ValueError, match="26 sparse features"):
    validate_table_sizes(meta, [10] * 25)
  sparse = np.zeros((4, 26), np.int32)
  check_batch_ids(sparse, [1] * 26)
  sparse[1, 25] = 1
  with pytest.raises(ValueError, match="C26"):
    check_batch_ids(sparse, [1] * 26)


def test_on_preprocessed_directory(tmp_path):
  raw = str(tmp_path / "train.txt")
  generate_criteo_tsv(raw, 3000, seed=1)
  out = str(tmp_path / "out")
  meta = preprocess.preprocess_criteo([raw], out, progress=False)
  for in_memory in (True, False):
    arrays = open_split(out, "train", in_memory=in_memory)
    assert arrays.num_rows == meta["num_rows"]["train"]
    assert isinstance(arrays.sparse, np.memmap) != in_memory
    loader = BatchLoader(arrays, 128, shuffle=True, seed=0)
    batch = loader.get_batch(3)
    check_batch_ids(batch["sparse"], meta["table_sizes"])
  # The tables the metadata asks for, against what is on disk: every id of every split fits,
  # and each table has one row per vocabulary value plus the reserved row 0.
  with np.load(f"{out}/vocab.npz") as z:
    vocab_rows = [z[name].size + 1 for name in meta["sparse_names"]]
  assert meta["table_sizes"] == vocab_rows
  for split in ("train", "test", "validation"):
    ids = open_split(out, split).sparse
    assert ids.min() >= 0
    assert (ids.max(axis=0) < np.asarray(vocab_rows)).all()
  # Every training value has its row (min_frequency 1), so the training ids reach the last row.
  np.testing.assert_array_equal(open_split(out, "train").sparse.max(axis=0) + 1, vocab_rows)
  test = open_split(out, "test")
  total = sum(int(b["mask"].sum()) for b in BatchLoader(test, 256, shuffle=False).iterate())
  assert total == meta["num_rows"]["test"]
