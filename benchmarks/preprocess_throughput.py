"""Prints end-to-end rows/s of Criteo preprocessing on a generated Kaggle-format file."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from dlrm_jax.data.parallel_parse import available_cores
from dlrm_jax.data.preprocess import preprocess_criteo
from dlrm_jax.data.synthetic import generate_criteo_tsv


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument(
    "--rows", type=int, default=2_000_000, help="rows in the generated file (default 2M)"
  )
  parser.add_argument(
    "--repeats", type=int, default=3, help="timed preprocessing runs; the median is printed"
  )
  parser.add_argument("--tmp", default=None, help="scratch directory (default: system temp)")
  parser.add_argument(
    "--workers",
    default="0",
    help="comma-separated parsing process counts, timed interleaved in each repeat "
    "(0 = one per available core, 1 = in this process only; default 0)",
  )
  args = parser.parse_args()
  with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
    raw = os.path.join(tmp, "train.txt")
    start = time.perf_counter()
    generate_criteo_tsv(raw, args.rows, seed=0)
    gen_s = time.perf_counter() - start
    size_mb = os.path.getsize(raw) / 2**20
    print(
      f"generated {args.rows:,} rows ({size_mb:.0f} MiB) in {gen_s:.1f}s: "
      f"{args.rows / gen_s:,.0f} rows/s"
    )
    counts = [int(w) for w in args.workers.split(",")]
    rates: dict[int, list[float]] = {w: [] for w in counts}
    print(f"available cores: {available_cores()}")
    for r in range(args.repeats):
      for w in counts:
        start = time.perf_counter()
        meta = preprocess_criteo(
          [raw], os.path.join(tmp, "out"), progress=False, overwrite=True, workers=w
        )
        sec = time.perf_counter() - start
        rates[w].append(args.rows / sec)
        print(
          f"run {r} workers {w}: {sec:.2f}s  {rates[w][-1]:,.0f} rows/s  "
          f"({size_mb / sec:.0f} MiB/s)"
        )
    print(f"table sizes: {meta['table_sizes']}")
    for w in counts:
      print(
        f"preprocess median, workers {w}: {statistics.median(rates[w]):,.0f} rows/s end to end "
        "(count, parse, vocab, ids, write)"
      )


if __name__ == "__main__":
  main()
