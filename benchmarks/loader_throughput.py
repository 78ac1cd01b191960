"""Prints shuffled-batch rows/s of BatchLoader at batch 128 and 2048 (in RAM and memory-mapped), and
how many times faster that is than the reference Kaggle model's train step consumes rows (same
process, same data)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from dlrm_jax.data.loader import BatchLoader
from dlrm_jax.data.store import open_split
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
  from dlrm_jax.mesh import make_mesh
  from dlrm_jax.specs import table_specs
  from dlrm_jax.train_step import batch_shardings

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
  args = parser.parse_args()
  medians: dict[int, float] = {}
  with tempfile.TemporaryDirectory() as tmp:
    processed = prepare_synthetic(args.data_dir or tmp, args.rows, seed=0, progress=False)
    for in_memory in (True, False):
      arrays = open_split(processed, "train", in_memory=in_memory)
      for batch in (128, 2048):
        loader = BatchLoader(arrays, batch, shuffle=True, seed=0)
        loader.get_batch(0)
        budget = min(arrays.num_rows, 500_000)
        rates = [rows_per_second(loader, budget) for _ in range(args.repeats)]
        where = "in RAM" if in_memory else "memmap"
        if in_memory:
          medians[batch] = statistics.median(rates)
        print(
          f"batch {batch:5d} {where}: median {statistics.median(rates):12,.0f} rows/s "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f}, {args.repeats} passes)"
        )
    if not args.no_train:
      for batch, loader_rate in medians.items():
        train_rate = train_rows_per_second(processed, batch)
        print(
          f"batch {batch:5d}: train step consumes {train_rate:,.0f} rows/s "
          f"(reference Kaggle model); loader in RAM is {loader_rate / train_rate:.1f}x faster"
        )


if __name__ == "__main__":
  main()
