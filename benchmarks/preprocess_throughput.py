"""Prints end-to-end rows/s of Criteo preprocessing on a generated Kaggle-format file.

--id_mapping=vocabulary,hash times the vocabulary path and the one-pass raw path interleaved
(each repeat runs every combination once), with the load average beside each run.
--spark=local[2] also times dlrm_jax.data.spark_preprocess (the cluster path, here on Spark's
local runner; pip install -e .[spark]) in every repeat, after the single-machine runs; its
SparkContext starts once, before the first repeat, and is not timed.
"""

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
  parser.add_argument(
    "--id_mapping",
    default="vocabulary",
    help="comma-separated id mappings, timed interleaved (vocabulary, hash; default vocabulary)",
  )
  parser.add_argument(
    "--spark",
    default="",
    help="also time the Spark path with this master, e.g. local[2] (vocabulary mapping, "
    "64 MiB ranges; default: off)",
  )
  args = parser.parse_args()
  sc = None
  if args.spark:
    from dlrm_jax.data.spark_preprocess import preprocess_criteo_spark, spark_context

    sc = spark_context(args.spark)
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
    mappings = args.id_mapping.split(",")
    combos = [(m, w) for m in mappings for w in counts]
    if sc is not None:
      combos.append(("spark", 0))
    secs: dict[tuple[str, int], list[float]] = {c: [] for c in combos}
    cpus: dict[tuple[str, int], list[float]] = {c: [] for c in combos}
    print(f"available cores: {available_cores()}")
    for r in range(args.repeats):
      for m, w in combos:
        start, cpu0 = time.perf_counter(), time.process_time()
        out = os.path.join(tmp, f"out_{m}")
        if m == "spark":
          preprocess_criteo_spark([raw], out, sc=sc, progress=False, overwrite=True)
        else:
          meta = preprocess_criteo(
            [raw], out, progress=False, overwrite=True, workers=w, id_mapping=m
          )
        sec = time.perf_counter() - start
        cpu = time.process_time() - cpu0  # this process's threads; worker processes not counted
        secs[(m, w)].append(sec)
        cpus[(m, w)].append(cpu)
        if m == "vocabulary":
          vocab_meta = meta
        label = f"{m} {args.spark}" if m == "spark" else f"{m} workers {w}"
        print(
          f"run {r} {label}: {sec:.2f}s  {args.rows / sec:,.0f} rows/s  "
          f"({size_mb / sec:.0f} MiB/s)  cpu {cpu:.2f}s  load {os.getloadavg()[0]:.2f}"
        )
    if "vocabulary" in mappings:
      print(f"table sizes: {vocab_meta['table_sizes']}")
    for m, w in combos:
      med = statistics.median(secs[(m, w)])
      what = "parse, write" if m == "hash" else "count, parse, vocab, ids, write"
      label = f"spark, {args.spark}" if m == "spark" else f"{m}, workers {w}"
      print(
        f"preprocess median, {label}: {med:.2f}s, {args.rows / med:,.0f} rows/s end "
        f"to end ({what}); cpu {statistics.median(cpus[(m, w)]):.2f}s"
      )
    for w in counts:
      if len(mappings) > 1 and "vocabulary" in mappings:
        base = statistics.median(secs[("vocabulary", w)])
        for m in mappings:
          if m == "vocabulary":
            continue
          ratios = [b / s for b, s in zip(secs[("vocabulary", w)], secs[(m, w)], strict=True)]
          print(
            f"workers {w}: vocabulary time / {m} time, median of per-repeat ratios "
            f"{statistics.median(ratios):.2f} (medians {base:.2f}s / "
            f"{statistics.median(secs[(m, w)]):.2f}s)"
          )
    if sc is not None and "vocabulary" in mappings:
      for w in counts:
        ratios = [b / s for b, s in zip(secs[("vocabulary", w)], secs[("spark", 0)], strict=True)]
        print(
          f"spark {args.spark} rows/s / vocabulary workers {w} rows/s, median of per-repeat "
          f"ratios {statistics.median(ratios):.2f}"
        )
      sc.stop()


if __name__ == "__main__":
  main()
