"""Criteo preprocessing on Apache Spark: the same output, byte for byte, as preprocess_criteo.

python -m dlrm_jax.data.spark_preprocess --help. Optional: pip install -e .[spark] (needs Java).
Five steps, each a Spark job of one task per byte range of the raw files, or work on the driver:
(1) count each range's lines; (2) parse each range into a part (raw values, missing bits, value
counts), sub-sampling with the per-day generator advanced to the range's first line; (3, driver)
the vocabularies from the summed counts; (4) each part's values -> ids; (5, driver) the parts
concatenated in file order into the splits, vocab.npz and metadata.json. Raw files and out_dir
must be on a filesystem every machine of the cluster shares.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dlrm_jax.data import bad_rows, preprocess, spark_parts, spark_tasks, store, streaming
from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data import splits as splits_lib
from dlrm_jax.data import vocab as vocab_lib

PARTS_DIR = "spark_parts"
DEFAULT_MASTER = "local[2]"
_LOG4J = """rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
logger.repl.name = org.apache.spark.repl.Main
logger.repl.level = error
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = error
"""


def spark_context(master: str | None = None, app_name: str = "dlrm-jax preprocess"):
  """A quiet SparkContext: master as given, else spark-submit's --master, else local[2]."""
  try:
    from pyspark import SparkConf, SparkContext
  except ImportError:
    raise ImportError(
      "pyspark is not installed: pip install -e .[spark] (it needs Java 17 or later)"
    ) from None
  launched = "PYSPARK_GATEWAY_PORT" in os.environ  # under spark-submit: its JVM is running
  if not (launched or shutil.which("java") or os.environ.get("JAVA_HOME")):
    raise RuntimeError("Spark needs Java 17 or later: no java on PATH and no JAVA_HOME")
  os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # local workers: this interpreter
  conf = SparkConf().setAppName(app_name)
  if master or not conf.contains("spark.master"):
    conf.setMaster(master or DEFAULT_MASTER)
  conf.set("spark.ui.showConsoleProgress", "false")  # tqdm bars show progress instead
  # Only errors from the JVM: Spark's INFO/WARN startup lines say nothing a user needs here.
  log4j = os.path.join(tempfile.gettempdir(), "dlrm_jax_spark_log4j2.properties")
  with open(log4j, "w") as f:
    f.write(_LOG4J)
  # The driver JVM that pyspark launches reads its options from here (not from conf).
  os.environ.setdefault(
    "PYSPARK_SUBMIT_ARGS", f"--driver-java-options -Dlog4j2.configurationFile={log4j} pyspark-shell"
  )
  sc = SparkContext.getOrCreate(conf)
  sc.setLogLevel("ERROR")
  return sc


def _run(sc, fn, items: list, desc: str, progress: bool) -> list:
  """fn over items, one Spark task each; a bar counts finished tasks. Results in items' order."""
  from pyspark import InheritableThread

  rdd = sc.parallelize(items, max(len(items), 1)).map(fn)
  box: dict[str, Any] = {}

  def collect() -> None:
    try:
      box["out"] = rdd.collect()
    except BaseException as e:  # re-raised on the caller's thread
      box["error"] = e

  thread = InheritableThread(target=collect, daemon=True)
  thread.start()
  tracker = sc.statusTracker()
  with tqdm(total=len(items), desc=desc, unit="tasks", disable=not progress) as bar:
    while thread.is_alive():
      thread.join(0.5)
      done = sum(
        info.numCompletedTasks
        for info in map(tracker.getStageInfo, tracker.getActiveStageIds())
        if info is not None
      )
      bar.update(max(done - bar.n, 0))
    bar.update(len(items) - bar.n)
  if "error" in box:
    raise box["error"]
  return box["out"]


def preprocess_criteo_spark(
  raw_files: list[str],
  out_dir: str,
  *,
  sc=None,
  dataset: str = "kaggle",
  max_ind_range: int = 0,
  min_frequency: int = 1,
  sub_sample_rate: float = 0.0,
  sub_sample_seed: int = 0,
  vocabulary: str = "train",
  num_days: int = cf.KAGGLE_NUM_DAYS,
  range_bytes: int = 64 << 20,
  chunk_rows: int = 1 << 19,
  progress: bool = True,
  overwrite: bool = False,
) -> dict[str, Any]:
  """preprocess_criteo's output (same files, same bytes; see its docstring) made by Spark jobs.

  sc: a SparkContext (default: spark_context()). range_bytes: bytes of raw text per task (a
  gzip file is one task). Bad rows are skipped and counted, never raised (no --strict).
  """
  if range_bytes < 1:
    raise ValueError(f"range_bytes={range_bytes}: must be >= 1")
  raw_files = [os.path.abspath(p) for p in raw_files]
  out_dir = os.path.abspath(out_dir)
  options = preprocess.preprocess_options(
    raw_files,
    dataset=dataset,
    max_ind_range=max_ind_range,
    min_frequency=min_frequency,
    sub_sample_rate=sub_sample_rate,
    sub_sample_seed=sub_sample_seed,
    vocabulary=vocabulary,
    num_days=num_days,
  )
  if not overwrite and (meta := store.cached_metadata(out_dir, options)) is not None:
    return meta
  meta_path = preprocess.prepare_out_dir(out_dir)
  sc = sc or spark_context()
  parts_dir = os.path.join(out_dir, PARTS_DIR)
  shutil.rmtree(parts_dir, ignore_errors=True)
  os.makedirs(parts_dir)

  ranges = spark_tasks.plan_ranges(raw_files, range_bytes)
  lines = _run(sc, spark_tasks.count_lines, ranges, "1/5 count lines", progress)
  file_lines = np.zeros(len(raw_files), np.int64)
  np.add.at(file_lines, [r.file for r in ranges], lines)
  num_lines = int(file_lines.sum())
  file_offsets = np.concatenate([[0], np.cumsum(file_lines)[:-1]])
  items, seen = [], np.zeros(len(raw_files), np.int64)
  for r, n in zip(ranges, lines, strict=True):
    offset = int(file_offsets[r.file]) if dataset == "kaggle" else 0
    items.append((r, int(seen[r.file]), offset))
    seen[r.file] += n

  job = _job(options, parts_dir, len(raw_files), num_lines, chunk_rows, raw_files)
  parts = _run(sc, functools.partial(spark_tasks.parse_range, job), items, "2/5 parse", progress)
  report = bad_rows.BadRowReport(strict=False)
  for part in parts:
    report.merge(part["bad_rows"])
  if sum(p["lines"] for p in parts) != num_lines:
    raise RuntimeError(f"parsed {sum(p['lines'] for p in parts)} lines but counted {num_lines}")

  counted = spark_parts.count_values(parts_dir, parts, progress)
  vocabs = [vocab_lib.build_vocab(v, c, min_frequency, vocabulary) for v, c in counted]
  tables = sc.broadcast(vocab_lib.build_tables(vocabs))
  remap = functools.partial(spark_tasks.remap_part, parts_dir, tables, vocabulary)
  todo = [(p["index"], sorted(p["split_rows"])) for p in parts]
  _run(sc, remap, todo, "4/5 ids", progress)
  tables.unpersist()

  writers, extra = spark_parts.assemble(
    out_dir, parts_dir, parts, options, file_lines, num_lines, report, progress
  )
  meta = store.finish_outputs(out_dir, options, vocabs, counted, writers, report, extra)
  store.write_json_atomic(meta_path, meta)
  shutil.rmtree(parts_dir, ignore_errors=True)
  return meta


def _job(options, parts_dir, num_files, num_lines, chunk_rows, raw_files) -> spark_tasks.Job:
  kw: dict[str, Any] = {}
  if options["dataset"] == "kaggle":
    days = splits_lib.day_row_counts(num_lines, options["num_days"])
    kw["day_starts"] = tuple(int(x) for x in np.concatenate([[0], np.cumsum(days)]))
    kw["test_range"] = splits_lib.split_ranges(num_lines, options["num_days"])["test"]
  return spark_tasks.Job(
    parts_dir=parts_dir,
    dataset=options["dataset"],
    num_files=num_files,
    max_ind_range=options["max_ind_range"],
    sub_sample_rate=options["sub_sample_rate"],
    sub_sample_seed=options["sub_sample_seed"],
    count_all=options["vocabulary"] == "reference",
    chunk_bytes=streaming.chunk_bytes_for(raw_files, chunk_rows),
    **kw,
  )


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m dlrm_jax.data.spark_preprocess",
    description=__doc__.split("\n", 1)[0]
    + " Raw files and --out_dir must be on a filesystem every machine shares.",
  )
  p.add_argument("raw_files", nargs="+", help="Kaggle: train.txt; Terabyte: day_0 ... day_23")
  p.add_argument("--out_dir", required=True, help="Where the preprocessed directory is written.")
  p.add_argument("--dataset", choices=("kaggle", "terabyte"), default="kaggle")
  p.add_argument("--max_ind_range", type=int, default=0, help="Hash values mod this (0: off).")
  p.add_argument(
    "--min_frequency", type=int, default=1, help="Values seen fewer times share id 0 (default 1)."
  )
  p.add_argument(
    "--data_sub_sample_rate",
    "--sub_sample_rate",
    type=float,
    default=0.0,
    help="Fraction of training negatives dropped, in [0, 1) (default 0).",
  )
  p.add_argument(
    "--sub_sample_seed", "--seed", type=int, default=0, help="Seed of the sub-sampling (default 0)."
  )
  p.add_argument("--vocabulary", choices=("train", "reference"), default="train")
  p.add_argument(
    "--num_days", type=int, default=cf.KAGGLE_NUM_DAYS, help="Kaggle: days the file is cut into."
  )
  p.add_argument(
    "--master",
    default=None,
    help=f"Spark master URL (default: spark-submit's --master, else {DEFAULT_MASTER}).",
  )
  p.add_argument(
    "--range_mb", type=int, default=64, help="MiB of raw text per Spark task (default 64)."
  )
  p.add_argument("--overwrite", action="store_true", help="Rebuild even if out_dir is finished.")
  return p


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.range_mb < 1:
    parser.error(f"--range_mb={args.range_mb}: must be >= 1")
  start = time.perf_counter()
  try:
    preprocess.preprocess_options(  # bad options and files are refused before Spark starts
      args.raw_files,
      dataset=args.dataset,
      max_ind_range=args.max_ind_range,
      min_frequency=args.min_frequency,
      sub_sample_rate=args.data_sub_sample_rate,
      sub_sample_seed=args.sub_sample_seed,
      vocabulary=args.vocabulary,
      num_days=args.num_days,
    )
    sc = spark_context(args.master)
  except (ValueError, OSError, ImportError, RuntimeError) as e:  # BadRowError is a ValueError
    parser.error(str(e))
  try:
    meta = preprocess_criteo_spark(
      args.raw_files,
      args.out_dir,
      sc=sc,
      dataset=args.dataset,
      max_ind_range=args.max_ind_range,
      min_frequency=args.min_frequency,
      sub_sample_rate=args.data_sub_sample_rate,
      sub_sample_seed=args.sub_sample_seed,
      vocabulary=args.vocabulary,
      num_days=args.num_days,
      range_bytes=args.range_mb << 20,
      overwrite=args.overwrite,
    )
  except (ValueError, OSError) as e:  # e.g. every line bad, an unwritable out_dir
    print(f"error: {e}", file=sys.stderr)
    return 2
  rows = meta["num_rows"]
  print(
    f"{args.out_dir}: train {rows['train']:,}, test {rows['test']:,}, validation "
    f"{rows['validation']:,} rows in {time.perf_counter() - start:.1f} s; "
    f"{meta['bad_rows_summary']}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
