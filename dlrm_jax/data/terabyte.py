"""Criteo Terabyte: one raw file per day, each parsed once into a resumable cache, then assembled
into splits.

out_dir/days/day_DD/ holds the day's dense, raw (hashed, % max_ind_range) values,
missing bits, labels, its training-value counts (counts.npz) and day.json,
written last: a day with day.json is finished and is reused by any later run
with the same file and options (min_frequency may differ: it only acts on the
counts). An interrupted run resumes at the first unfinished day. The day
caches roughly double the disk use; delete out_dir/days once metadata.json
exists if the space matters (a rerun with new options then parses again).
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dlrm_jax.data import bad_rows, columns, store, streaming
from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data import vocab as vocab_lib

DAYS_DIR = "days"
DAY_FILE = "day.json"
COUNTS_FILE = "counts.npz"


def day_dir(out_dir: str, day: int) -> str:
  return os.path.join(out_dir, DAYS_DIR, f"day_{day:02d}")


def _process_day(
  raw: str,
  path: str,
  key: dict[str, Any],
  strict: bool,
  chunk_rows: int,
  progress: bool,
  workers: int = 1,
) -> dict[str, Any]:
  shutil.rmtree(path, ignore_errors=True)
  os.makedirs(path)
  report = bad_rows.BadRowReport(strict=strict)
  writer = columns.ColumnsWriter(path, "day", with_missing=True)
  reference = key["vocabulary"] == "reference"
  counting = key["train"] or reference
  counters = [vocab_lib.ValueCounter() for _ in range(cf.NUM_SPARSE)] if counting else []
  segment = streaming.Segment(0, 1 << 62, writer, key["day"], key["train"])
  stats = streaming.stream(
    [raw],
    [segment],
    report,
    max_ind_range=key["max_ind_range"],
    sub_sample_rate=key["sub_sample_rate"],
    sub_sample_seed=key["sub_sample_seed"],
    chunk_bytes=streaming.chunk_bytes_for([raw], chunk_rows),
    counters=counters,
    count_all=reference,
    progress=progress,
    desc=f"day {key['day']}",
    workers=workers,
  )
  if stats["rows"] == 0:
    raise bad_rows.BadRowError(f"{raw}: no usable rows: {report.summary()}")
  writer.commit(keep_missing=True)
  if counters:
    arrays = {}
    for name, counter in zip(cf.SPARSE_NAMES, counters, strict=True):
      arrays[f"{name}_values"], arrays[f"{name}_counts"] = counter.result()
    tmp = os.path.join(path, COUNTS_FILE + store.PARTIAL + ".npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, os.path.join(path, COUNTS_FILE))
  info = dict(key)
  info.update(
    {
      "rows": writer.rows,
      "positives": writer.positives,
      "lines": stats["lines"],
      "dropped_negatives": stats["dropped_negatives"],
      "bad_rows": report.to_json(),
    }
  )
  store.write_json_atomic(os.path.join(path, DAY_FILE), info)
  return info


def _open_day(path: str) -> dict[str, np.ndarray]:
  return {
    f: np.load(os.path.join(path, f"day_{f}.npy"), mmap_mode="r")
    for f in store.FIELDS + ("missing",)
  }


def preprocess_days(
  raw_files: list[str],
  out_dir: str,
  options: dict[str, Any],
  report: bad_rows.BadRowReport,
  *,
  chunk_rows: int,
  progress: bool,
  overwrite: bool,
  workers: int = 1,
) -> dict[str, Any]:
  """Days 0..n-2 train, day n-1 halved (first half, with the odd row, test; second validation)."""
  n_days = len(raw_files)
  if n_days < 2:
    raise ValueError("terabyte needs at least 2 day files (training days + the held-out day)")
  infos = []
  for d, raw in enumerate(raw_files):
    train = d < n_days - 1
    key = {
      "format_version": store.FORMAT_VERSION,
      "day": d,
      "train": train,
      "max_ind_range": options["max_ind_range"],
      "sub_sample_rate": options["sub_sample_rate"] if train else 0.0,
      "sub_sample_seed": options["sub_sample_seed"],
      "vocabulary": options["vocabulary"],
      "source": store.source_fingerprint([raw]),
    }
    path = day_dir(out_dir, d)
    info = None if overwrite else store.read_json_matching(os.path.join(path, DAY_FILE), key)
    if info is None:
      info = _process_day(raw, path, key, report.strict, chunk_rows, progress, workers)
    report.merge(info["bad_rows"])
    infos.append(info)

  vocabulary = options["vocabulary"]
  counters = [vocab_lib.ValueCounter() for _ in range(cf.NUM_SPARSE)]
  for d in range(n_days if vocabulary == "reference" else n_days - 1):
    with np.load(os.path.join(day_dir(out_dir, d), COUNTS_FILE)) as z:
      for name, counter in zip(cf.SPARSE_NAMES, counters, strict=True):
        counter.add_counted(z[f"{name}_values"], z[f"{name}_counts"])
  counted = [c.result() for c in counters]
  vocabs = [vocab_lib.build_vocab(v, c, options["min_frequency"], vocabulary) for v, c in counted]
  tables = vocab_lib.build_tables(vocabs)

  last_rows = infos[-1]["rows"]
  test_rows = (last_rows + 1) // 2
  pieces = [("train", d, 0, infos[d]["rows"]) for d in range(n_days - 1)]
  pieces += [("test", n_days - 1, 0, test_rows), ("validation", n_days - 1, test_rows, last_rows)]
  writers = {
    s: columns.ColumnsWriter(out_dir, s, with_missing=False)
    for s in ("train", "test", "validation")
  }
  total = sum(hi - lo for _, _, lo, hi in pieces)
  with (
    tqdm(total=total, unit="rows", unit_scale=True, desc="ids", disable=not progress) as bar,
    ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
  ):
    for split, d, lo, hi in pieces:
      day = _open_day(day_dir(out_dir, d))
      for a in range(lo, hi, columns.REMAP_BLOCK_ROWS):
        b = min(a + columns.REMAP_BLOCK_ROWS, hi)
        ids = columns.remap_block(day["sparse"][a:b], day["missing"][a:b], tables, pool, vocabulary)
        writers[split].append(
          np.asarray(day["dense"][a:b]), np.asarray(day["label"][a:b]), ids, None
        )
        bar.update(b - a)
      del day
  for w in writers.values():
    w.commit()
  return store.finish_outputs(
    out_dir,
    options,
    vocabs,
    counted,
    writers,
    report,
    {
      "sub_sample_rule": streaming.SUB_SAMPLE_RULE,
      "num_lines": sum(i["lines"] for i in infos),
      "day_line_counts": [i["lines"] for i in infos],
      "day_row_counts": [i["rows"] for i in infos],
      "dropped_negatives": sum(i["dropped_negatives"] for i in infos),
    },
  )
