"""--id_mapping=hash: raw categorical values kept as they are, one pass, and row = value % rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dlrm_jax.data import bad_rows, columns, tsv_parser
from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data import splits as splits_lib
from dlrm_jax.data.streaming import (
  SUB_SAMPLE_RULE,
  Segment,
  check_stream,
  chunk_bytes_for,
  stream,
)

ID_CONVENTION = (
  "raw: per feature the categorical value as written (8 hex digits -> uint32), no vocabulary; a "
  "missing value is the value 0 (the reference's rule). Training, evaluation and prediction feed "
  "table t the row value % rows_t, computed on the host"
)


def preprocess_kaggle_raw(
  raw_files: list[str],
  out_dir: str,
  options: dict[str, Any],
  report: bad_rows.BadRowReport,
  chunk_rows: int,
  progress: bool,
  workers: int = 1,
) -> dict[str, Any]:
  """The Kaggle layout of preprocess_criteo, with {split}_sparse.npy uint32[N, 26] raw values:
  one parsing pass, no counting and no remapping (the splits and sub-sampling are the same)."""
  num_days = options["num_days"]
  num_lines = sum(tsv_parser.count_lines(p) for p in raw_files)
  ranges = splits_lib.split_ranges(num_lines, num_days)
  days = splits_lib.day_row_counts(num_lines, num_days)
  writers = {
    s: columns.ColumnsWriter(out_dir, s, with_missing=False, sparse_dtype=np.uint32)
    for s in splits_lib.SPLITS
  }
  day_starts = np.concatenate([[0], np.cumsum(days)]).tolist()
  segments = [
    Segment(day_starts[d], day_starts[d + 1], writers["train"], d, True)
    for d in range(num_days - 1)
  ]
  segments += [Segment(*ranges[s], writers[s], num_days - 1, False) for s in ("test", "validation")]
  stats = stream(
    raw_files,
    segments,
    report,
    max_ind_range=0,  # raw values stay raw: rows are a training choice (--hash_rows)
    sub_sample_rate=options["sub_sample_rate"],
    sub_sample_seed=options["sub_sample_seed"],
    chunk_bytes=chunk_bytes_for(raw_files, chunk_rows),
    counters=[],
    progress=progress,
    progress_total=num_lines,
    workers=workers,
  )
  check_stream(stats, num_lines, raw_files, report)
  for w in writers.values():
    w.commit()
  rows = {s: w.rows for s, w in writers.items()}
  for split, n in rows.items():
    if n == 0:
      raise bad_rows.BadRowError(
        f"{', '.join(raw_files)}: the {split} split is empty (too few lines, or every line of "
        f"it was bad or sub-sampled away): {report.summary()}"
      )
  return {
    **options,
    "num_rows": rows,
    "positive_rate": {s: w.positives / w.rows for s, w in writers.items()},
    "num_dense": cf.NUM_DENSE,
    "num_sparse": cf.NUM_SPARSE,
    "dense_names": list(cf.DENSE_NAMES),
    "sparse_names": list(cf.SPARSE_NAMES),
    "dense_transform": "log(max(x, 0) + 1) in float32; missing -> 0",
    "id_convention": ID_CONVENTION,
    "bad_rows": report.to_json(),
    "bad_rows_summary": report.summary(),
    "sub_sample_rule": SUB_SAMPLE_RULE,
    "num_lines": num_lines,
    "line_ranges": {s: list(r) for s, r in ranges.items()},
    "day_line_counts": days,
    "dropped_negatives": stats["dropped_negatives"],
  }


def table_rows(
  overrides: Sequence[tuple[str, int]],
  default_rows: int,
  names: Sequence[str],
  flag: str = "--hash_rows",
) -> list[int]:
  """Rows of each table: the last ("", n) of `overrides` for every table (else default_rows),
  then each (name, n) for its table. ValueError naming ``flag`` for an unknown table."""
  every = [rows for name, rows in overrides if not name]
  rows = {name: every[-1] if every else default_rows for name in names}
  for name, n in overrides:
    if name and name not in rows:
      raise ValueError(f"{flag}={name}:{n}: no table {name} (tables: {', '.join(names)})")
    if name:
      rows[name] = n
  return [rows[name] for name in names]


def hash_ids(raw: np.ndarray, rows: Sequence[int]) -> np.ndarray:
  """raw u32[b, T] values (or their i32 view) -> int32[b, T] rows raw % rows[t]."""
  values = np.asarray(raw)
  if values.dtype not in (np.uint32, np.int32):
    raise ValueError(f"raw categorical values of dtype {values.dtype}: expected uint32")
  modulus = np.asarray(rows, dtype=np.uint32)
  return (values.view(np.uint32) % modulus[None, :]).astype(np.int32)
