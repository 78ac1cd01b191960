"""The cold-cache disk benchmark (python benchmarks/loader_throughput.py --disk).

Writes a split in the processed format under /tmp (one-hot, then multi-hot at MLPerf's bag sizes)
and reads it back with the page cache dropped (needs root; otherwise give --disk_rows larger than
RAM): rows/s of the block shuffle and the random-row shuffle beside the disk's sequential read
rate. Every reading gets newly written files, deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from concurrent import futures

import numpy as np

from dlrm_jax.data import block_shuffle
from dlrm_jax.data.loader import BatchLoader
from dlrm_jax.data.store import SplitArrays

MLPERF_BAG_SIZES = (
  3,
  2,
  1,
  2,
  6,
  1,
  1,
  1,
  1,
  7,
  3,
  8,
  1,
  6,
  9,
  5,
  1,
  1,
  1,
  12,
  100,
  27,
  10,
  3,
  1,
  1,
)


def write_split(
  directory: str, rows: int, id_columns: int, chunk: int = 1 << 20, seed: int = 0
) -> SplitArrays:
  """train_{dense,sparse,label}.npy of random values, written in chunks; opened memory-mapped."""
  rng = np.random.default_rng(seed)
  shapes = {"dense": (rows, 13), "sparse": (rows, id_columns), "label": (rows,)}
  dtypes = {"dense": np.float32, "sparse": np.int32, "label": np.float32}
  for field, shape in shapes.items():
    out = np.lib.format.open_memmap(
      os.path.join(directory, f"train_{field}.npy"), "w+", dtypes[field], shape
    )
    for lo in range(0, rows, chunk):
      hi = min(rows, lo + chunk)
      if field == "sparse":
        out[lo:hi] = rng.integers(0, 1 << 20, (hi - lo, id_columns), dtype=np.int32)
      else:
        out[lo:hi] = rng.random((hi - lo,) + shape[1:], dtype=np.float32)
    out.flush()
    del out
  return SplitArrays(
    **{f: np.load(os.path.join(directory, f"train_{f}.npy"), mmap_mode="r") for f in shapes}
  )


def drop_page_cache() -> bool:
  """Writes dirty pages and empties the page cache (root only); False where not allowed."""
  os.sync()
  try:
    with open("/proc/sys/vm/drop_caches", "w") as f:
      f.write("1\n")
    return True
  except OSError:
    return False


def sequential_bytes_per_second(directory: str, parallel: bool, chunk: int = 16 << 20) -> float:
  """Reads every file of `directory` front to back in 16 MiB reads: one after the other, or all
  at once, a thread per file (as the block shuffle reads its column files)."""

  def read(name: str) -> int:
    buf, total = bytearray(chunk), 0
    with open(os.path.join(directory, name), "rb", buffering=0) as f:
      while n := f.readinto(buf):
        total += n
    return total

  names = sorted(os.listdir(directory))
  start = time.perf_counter()
  if parallel:
    with futures.ThreadPoolExecutor(len(names)) as pool:
      total = sum(pool.map(read, names))
  else:
    total = sum(read(name) for name in names)
  return total / (time.perf_counter() - start)


def timed_rows(loader: BatchLoader, rows: int) -> tuple[float, float]:
  """rows/s of the first `rows // b` batches (step 0 on: reading starts cold), and rows per CPU
  second of this process (all threads): the loader's cost whatever else the machine runs."""
  steps = max(1, rows // loader.local_batch_size)
  start, cpu = time.perf_counter(), time.process_time()
  for _ in loader.iterate(start_step=0, num_steps=steps):
    pass
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu
  return steps * loader.local_batch_size / wall, steps * loader.local_batch_size / cpu


def fresh_split(directory: str, rows: int, id_columns: int, seed: int) -> SplitArrays:
  """A newly written split, never read since, with the page cache dropped: a virtual disk's host
  may cache what the guest has read, so every reading gets its own files."""
  shutil.rmtree(directory, ignore_errors=True)
  os.makedirs(directory)
  arrays = write_split(directory, rows, id_columns, seed=seed)
  drop_page_cache()
  return arrays


def disk_benchmark(args: argparse.Namespace) -> None:
  cold = drop_page_cache()
  print(
    f"load average {os.getloadavg()[0]:.2f}; files under {args.disk_dir}, written afresh for "
    "every reading; page cache "
    + ("dropped before each reading" if cold else "NOT dropped (not root): warm figures")
  )
  for name, id_columns, rows in (
    ("one-hot", 26, args.disk_rows),
    ("multi-hot (MLPerf bags)", sum(MLPERF_BAG_SIZES), args.disk_rows_multi_hot),
  ):
    directory = os.path.join(args.disk_dir, f"dlrm_loader_disk_{id_columns}")
    try:
      for repeat in range(args.repeats):
        arrays = fresh_split(directory, rows, id_columns, repeat)
        per_row = block_shuffle.row_bytes(arrays)
        if repeat == 0:
          print(f"{name}: {rows:,} rows, {rows * per_row / 2**30:.2f} GiB ({per_row} B/row)")
        one = sequential_bytes_per_second(directory, parallel=False)
        arrays = fresh_split(directory, rows, id_columns, repeat)
        seq = sequential_bytes_per_second(directory, parallel=True)
        arrays = fresh_split(directory, rows, id_columns, repeat)
        blocks = BatchLoader(
          arrays,
          2048,
          shuffle=True,
          seed=repeat,
          order="blocks",
          block_rows=args.block_rows,
          buffer_blocks=args.buffer_blocks,
        )
        block_rate, block_cpu = timed_rows(blocks, blocks.batches_per_epoch * 2048)
        arrays = fresh_split(directory, rows, id_columns, repeat)
        random_rate, random_cpu = timed_rows(
          BatchLoader(arrays, 2048, shuffle=True, seed=repeat), args.disk_random_rows
        )
        print(
          f"  pass {repeat}: sequential read, one file at a time {one / 1e6:,.0f} MB/s, all "
          f"files at once {seq / 1e6:,.0f} MB/s = {seq / per_row:,.0f} rows/s; "
          f"block shuffle {block_rate:,.0f} rows/s ({block_rate * per_row / 1e6:,.0f} MB/s, "
          f"{block_rate * per_row / max(one, seq):.0%} of the faster sequential read; "
          f"{block_cpu:,.0f} rows/CPU-s); "
          f"random-row shuffle {random_rate:,.0f} rows/s ({random_cpu:,.0f} rows/CPU-s); "
          f"batch 2048, blocks of {args.block_rows:,} rows, {args.buffer_blocks} per buffer",
          flush=True,
        )
    finally:
      shutil.rmtree(directory, ignore_errors=True)
