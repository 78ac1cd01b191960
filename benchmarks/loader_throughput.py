"""Prints shuffled-batch rows/s of BatchLoader at batch 128 and 2048 (in RAM and memory-mapped), and
how many times faster that is than the reference Kaggle model's train step consumes rows (same
process, same data); then the loader's peak RSS over a simulated 1-billion-row index space
(zero-stride columns: no row exists in memory, so what grows is the loader's own state).

--disk: the cold-cache disk benchmark of loader_disk.py instead."""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time

import numpy as np
from loader_disk import disk_benchmark

from dlrm_jax.data import block_shuffle
from dlrm_jax.data.loader import BatchLoader
from dlrm_jax.data.store import SplitArrays, open_split
from dlrm_jax.data.synthetic import prepare_synthetic


def rows_per_second(loader: BatchLoader, rows: int) -> float:
  steps = max(1, rows // loader.local_batch_size)
  start = time.perf_counter()
  for _ in loader.iterate(
    start_step=1, num_steps=steps
  ):  # step 0 would include building the permutation
    pass
  return steps * loader.local_batch_size / (time.perf_counter() - start)


def train_rows_per_second(processed: str, batch: int, steps: int = 30, windows: int = 3) -> float:
  """Samples/s of the reference Kaggle architecture's jitted train step (dim 16, SGD) on this data's
  tables."""
  import jax
  from train_throughput import reference_step, timed_window

  from dlrm_jax.data.store import read_metadata
  from dlrm_jax.sharding.mesh import make_mesh
  from dlrm_jax.sharding.specs import table_specs
  from dlrm_jax.train.step import batch_shardings

  meta = read_metadata(processed)
  mesh = make_mesh()
  step, state = reference_step(table_specs(meta["sparse_names"], meta["table_sizes"], 16), mesh)
  loader = BatchLoader(open_split(processed, "train"), batch, shuffle=True, seed=0)
  batches = [jax.device_put(loader.get_batch(i), batch_shardings(mesh)) for i in range(8)]
  _, state = timed_window(step, state, batches, 1)  # compile
  rates = []
  for _ in range(windows):
    seconds, state = timed_window(step, state, batches, steps)
    rates.append(steps * batch / seconds)
  return statistics.median(rates)


class FullPermutationLoader(BatchLoader):
  """The previous order, for comparison: an int64 permutation of every row, per epoch."""

  _full: tuple[int, np.ndarray] | None = None

  def _epoch_rows(self, epoch: int, lo: int, hi: int) -> np.ndarray:
    if self._full is None or self._full[0] != epoch:
      rng = np.random.default_rng([self.seed, epoch])
      self._full = (epoch, rng.permutation(self.arrays.num_rows))
    return self._full[1][lo:hi]


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def simulated_split(rows: int) -> SplitArrays:
  """`rows` rows of zero-stride columns: every row is the same few bytes, so nothing is
  materialised, yet the loader indexes a space of `rows` rows."""
  strided = np.lib.stride_tricks.as_strided
  return SplitArrays(
    dense=strided(np.zeros(13, np.float32), (rows, 13), (0, 4)),
    sparse=strided(np.zeros(26, np.int32), (rows, 26), (0, 4)),
    label=strided(np.zeros(1, np.float32), (rows,), (0,)),
  )


def simulated_peak(rows: int, batch: int, steps: int) -> None:
  """Peak RSS before and after shuffled batches spread over an epoch of `rows` rows."""
  loader = BatchLoader(simulated_split(rows), batch, shuffle=True, seed=0)
  loader.get_batch(0)  # the allocations every batch makes (and the code paths), once
  before = peak_rss_mib()
  first = loader.batches_per_epoch - steps // 2  # consecutive steps across an epoch's end
  start = time.perf_counter()
  for step in range(first, first + steps):
    loader.get_batch(step)
  sec = time.perf_counter() - start
  after = peak_rss_mib()
  print(
    f"simulated {rows:,} rows, batch {batch}: peak RSS {before:,.0f} MiB before, {after:,.0f} MiB "
    f"after {steps} consecutive shuffled batches across an epoch's end "
    f"(+{after - before:,.1f} MiB; "
    f"{steps * batch / sec:,.0f} rows/s); an int64 permutation of the rows alone would be "
    f"{rows * 8 / 2**30:,.1f} GiB"
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument(
    "--rows", type=int, default=1_000_000, help="rows of synthetic data (default 1M)"
  )
  parser.add_argument(
    "--data_dir", default=None, help="where to cache the synthetic data (default: a temp dir)"
  )
  parser.add_argument(
    "--repeats", type=int, default=5, help="timed passes per setting; the median is printed"
  )
  parser.add_argument(
    "--no_train", action="store_true", help="skip measuring the train step's consumption"
  )
  parser.add_argument(
    "--simulated_rows",
    type=int,
    default=1_000_000_000,
    help="index space of the peak-RSS measurement (default 1e9 rows)",
  )
  parser.add_argument(
    "--only_simulated", action="store_true", help="only the simulated-rows peak RSS measurement"
  )
  parser.add_argument("--disk", action="store_true", help="only the cold-cache disk benchmark")
  parser.add_argument(
    "--disk_rows", type=int, default=20_000_000, help="one-hot rows written (default 20M, 3.4 GB)"
  )
  parser.add_argument(
    "--disk_rows_multi_hot",
    type=int,
    default=4_000_000,
    help="multi-hot rows written (default 4M, 3.6 GB)",
  )
  parser.add_argument(
    "--disk_random_rows",
    type=int,
    default=400_000,
    help="rows the random-row shuffle reads per pass (default 400k: it is slow)",
  )
  parser.add_argument("--disk_dir", default="/tmp", help="where the files go (default /tmp)")
  parser.add_argument(
    "--block_rows", type=int, default=block_shuffle.DEFAULT_BLOCK_ROWS, help="rows per block"
  )
  parser.add_argument(
    "--buffer_blocks", type=int, default=block_shuffle.DEFAULT_BUFFER_BLOCKS, help="per buffer"
  )
  args = parser.parse_args()
  if args.disk:
    disk_benchmark(args)
    return
  if args.only_simulated:
    for batch in (128, 2048):
      simulated_peak(args.simulated_rows, batch, steps=500)
    return
  medians: dict[int, float] = {}
  with tempfile.TemporaryDirectory() as tmp:
    processed = prepare_synthetic(args.data_dir or tmp, args.rows, seed=0, progress=False)
    for in_memory in (True, False):
      arrays = open_split(processed, "train", in_memory=in_memory)
      for batch in (128, 2048):
        loader = BatchLoader(arrays, batch, shuffle=True, seed=0)
        full = FullPermutationLoader(arrays, batch, shuffle=True, seed=0)
        loader.get_batch(0)
        full.get_batch(0)
        budget = min(arrays.num_rows, 500_000)
        rates, full_rates = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
          rates.append(rows_per_second(loader, budget))
          full_rates.append(rows_per_second(full, budget))
        where = "in RAM" if in_memory else "memmap"
        if in_memory:
          medians[batch] = statistics.median(rates)
        print(
          f"batch {batch:5d} {where}: median {statistics.median(rates):12,.0f} rows/s "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f}, {args.repeats} passes); "
          f"{statistics.median(rates) / statistics.median(full_rates):.2f}x a loader holding a "
          f"full permutation ({statistics.median(full_rates):,.0f} rows/s)"
        )
    if not args.no_train:
      for batch, loader_rate in medians.items():
        train_rate = train_rows_per_second(processed, batch)
        print(
          f"batch {batch:5d}: train step consumes {train_rate:,.0f} rows/s "
          f"(reference Kaggle model); loader in RAM is {loader_rate / train_rate:.1f}x faster"
        )
  for batch in (128, 2048):
    simulated_peak(args.simulated_rows, batch, steps=500)


if __name__ == "__main__":
  main()
