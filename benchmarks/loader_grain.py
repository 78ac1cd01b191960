"""Prints rows/s of grain (a block of rows as its record) against BatchLoader's block shuffle on the
same memory-mapped split, interleaved; grain is not a dependency, run it where grain is installed:

  python benchmarks/loader_grain.py [--rows=3000000] [--repeats=3]

grain pipeline: MapDataset.range(blocks).shuffle(seed) -> map(read the block with pread) ->
to_iter_dataset(ReadOptions(threads)), then the same window shuffle and batching as ours (a gather
of each batch's sorted rows; grain has no row-level shuffle buffer over numpy blocks); a record
per row (grain's own shuffle and batch) is also timed, on fewer rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
from loader_disk import timed_rows, write_split

from dlrm_jax.data import block_shuffle
from dlrm_jax.data.loader import BatchLoader
from dlrm_jax.data.store import FIELDS


def grain_blocks(arrays, batch: int, block_rows: int, buffer_blocks: int, seed: int, threads: int):
  """Batches of one epoch: grain reads shuffled blocks; windows of blocks shuffled, then cut."""
  import grain

  n = arrays.num_rows
  num_blocks = -(-n // block_rows)

  def read_block(b: int) -> dict[str, np.ndarray]:
    lo, hi = b * block_rows, min(n, (b + 1) * block_rows)
    return {f: block_shuffle.read_rows(getattr(arrays, f), lo, hi) for f in FIELDS}

  ds = grain.MapDataset.range(num_blocks).shuffle(seed=seed).map(read_block)
  blocks = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=8)))
  rng = np.random.default_rng(seed)
  carry: dict[str, np.ndarray] | None = None
  while True:
    window = [b for _, b in zip(range(buffer_blocks), blocks, strict=False)]
    if not window:
      return
    data = {f: np.concatenate([b[f] for b in window]) for f in FIELDS}
    order = rng.permutation(data["label"].shape[0])
    lo = 0
    if carry is not None:  # a batch across two windows: the rest of the previous one first
      take = np.sort(order[: batch - carry["label"].shape[0]])
      yield {f: np.concatenate([carry[f], data[f][take]]) for f in FIELDS}
      lo = take.size
    # As BatchLoader does: one gather per row, each batch's indices sorted.
    while lo + batch <= order.size:
      take = np.sort(order[lo : lo + batch])
      yield {f: v[take] for f, v in data.items()}
      lo += batch
    carry = {f: v[np.sort(order[lo:])] for f, v in data.items()}


def grain_rows_per_second(arrays, batch: int, seed: int, threads: int) -> float:
  start, rows = time.perf_counter(), 0
  for b in grain_blocks(arrays, batch, block_shuffle.DEFAULT_BLOCK_ROWS, 4, seed, threads):
    rows += b["label"].shape[0]
  return rows / (time.perf_counter() - start)


def grain_per_row_records(arrays, rows: int, batch: int) -> float:
  """rows/s of grain with one record per row (its shuffle and batch), on the first `rows` rows."""
  import grain

  ds = (
    grain.MapDataset.range(rows)
    .shuffle(seed=0)
    .map(lambda i: {f: getattr(arrays, f)[i] for f in FIELDS})
    .batch(batch)
  )
  start = time.perf_counter()
  for _ in ds.to_iter_dataset(grain.ReadOptions(num_threads=4)):
    pass
  return rows // batch * batch / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--rows", type=int, default=3_000_000, help="one-hot rows (default 3M)")
  parser.add_argument("--repeats", type=int, default=3, help="interleaved passes; median printed")
  parser.add_argument("--threads", type=int, default=4, help="grain read threads (default 4)")
  args = parser.parse_args()
  try:
    import grain
  except ImportError:
    print("grain is not installed here: pip install grain==0.2.18 (in a scratch venv)")
    return
  print(
    f"grain {grain.__version__ if hasattr(grain, '__version__') else '?'}; load average "
    f"{os.getloadavg()[0]:.2f}; page cache warm (the same reads for both)"
  )
  with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
    arrays = write_split(tmp, args.rows, 26)
    ours, theirs = [], []
    for seed in range(args.repeats):
      loader = BatchLoader(arrays, 2048, shuffle=True, seed=seed, order="blocks")
      ours.append(timed_rows(loader, loader.batches_per_epoch * 2048)[0])
      theirs.append(grain_rows_per_second(arrays, 2048, seed, args.threads))
    print(
      f"one epoch of {args.rows:,} one-hot rows, batch 2048, blocks of "
      f"{block_shuffle.DEFAULT_BLOCK_ROWS:,} rows, 4 per buffer: BatchLoader block shuffle "
      f"median {statistics.median(ours):,.0f} rows/s ({', '.join(f'{r:,.0f}' for r in ours)}); "
      f"grain ({args.threads} read threads) median {statistics.median(theirs):,.0f} rows/s "
      f"({', '.join(f'{r:,.0f}' for r in theirs)})"
    )
    per_row = grain_per_row_records(arrays, 100_000, 2048)
    print(f"grain with one record per row (its shuffle and batch): {per_row:,.0f} rows/s")


if __name__ == "__main__":
  main()
