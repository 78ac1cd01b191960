"""The training order: a bounded-memory permutation, a pure function of (seed, step)."""

from __future__ import annotations

import numpy as np
import pytest

from dlrm_jax.data.loader import BatchLoader
from dlrm_jax.data.shuffle import Permutation
from dlrm_jax.data.store import SplitArrays


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4097, 65_537])
def test_permutation_is_a_bijection(n):
  rows = Permutation(n, [3, 1])(np.arange(n))
  assert rows.dtype == np.int64
  np.testing.assert_array_equal(np.sort(rows), np.arange(n))


def test_permutation_looks_uniform():
  """Over 3000 seeds, where position 0 and position 1 land is spread evenly over ten buckets."""
  n, seeds = 1000, 3000
  first = np.array([Permutation(n, [s, 0])(np.arange(2)) for s in range(seeds)])
  for col in range(2):
    counts = np.bincount(first[:, col] * 10 // n, minlength=10)
    # Binomial(3000, 0.1): mean 300, sd 16.4; 5 sd either way.
    assert counts.min() > 218 and counts.max() < 382, counts
  assert (first[:, 0] != first[:, 1]).all()
  # Different epochs (seeds) give different orders; no order is the identity.
  a, b = Permutation(n, [0, 0])(np.arange(n)), Permutation(n, [0, 1])(np.arange(n))
  assert not np.array_equal(a, b) and not np.array_equal(a, np.arange(n))
  assert abs(np.corrcoef(a, np.arange(n))[0, 1]) < 0.15


def indexed(n: int) -> SplitArrays:
  idx = np.arange(n, dtype=np.float32)
  return SplitArrays(
    dense=np.repeat(idx[:, None], 13, axis=1), sparse=np.zeros((n, 26), np.int32), label=idx
  )


@pytest.mark.parametrize("n,batch", [(1024, 64), (1000, 64), (777, 7)])
def test_each_epoch_is_a_permutation_of_the_rows(n, batch):
  loader = BatchLoader(indexed(n), batch, shuffle=True, seed=9)
  per = loader.batches_per_epoch
  epochs = []
  for epoch in range(3):
    rows = np.concatenate(
      [loader.get_batch(s)["label"] for s in range(epoch * per, (epoch + 1) * per)]
    )
    assert np.unique(rows).size == rows.size == per * batch  # no row twice
    if n % batch == 0:
      np.testing.assert_array_equal(np.sort(rows), np.arange(n))  # every row exactly once
    epochs.append(rows)
  assert not np.array_equal(epochs[0], epochs[1])


def test_batches_do_not_depend_on_how_the_run_was_split():
  arrays = indexed(500)
  whole = [b["label"] for b in BatchLoader(arrays, 32, shuffle=True, seed=4).iterate(0, 40)]
  pieces = []
  for start, count in ((0, 7), (7, 1), (8, 20), (28, 12)):  # a run stopped and resumed 3 times
    pieces += [
      b["label"] for b in BatchLoader(arrays, 32, shuffle=True, seed=4).iterate(start, count)
    ]
  backwards = BatchLoader(arrays, 32, shuffle=True, seed=4)
  reverse = [backwards.get_batch(s)["label"] for s in reversed(range(40))][::-1]
  for a, b, c in zip(whole, pieces, reverse, strict=True):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_a_trillion_row_index_space_needs_no_row_table():
  """Zero-stride columns stand for 10^12 rows: an int64 permutation of them would be 8 TB."""
  n = 10**12
  arrays = SplitArrays(
    dense=np.lib.stride_tricks.as_strided(np.zeros(13, np.float32), (n, 13), (0, 4)),
    sparse=np.lib.stride_tricks.as_strided(np.zeros(26, np.int32), (n, 26), (0, 4)),
    label=np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (n,), (0,)),
  )
  loader = BatchLoader(arrays, 4096, shuffle=True, seed=0)
  for step in (0, 1, loader.batches_per_epoch - 1, loader.batches_per_epoch + 5):
    batch = loader.get_batch(step)
    assert batch["dense"].shape == (4096, 13)
  rows = loader.permutation(0)(np.arange(10_000))
  assert np.unique(rows).size == 10_000 and rows.min() >= 0 and rows.max() < n
