"""The Spark driver's work on the parts the tasks wrote: summed value counts, the final splits."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dlrm_jax.data import bad_rows, columns, spark_tasks, streaming
from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data import splits as splits_lib
from dlrm_jax.data import vocab as vocab_lib


def count_values(parts_dir: str, parts: list[dict], progress: bool) -> list:
  """Step 3: per feature (sorted distinct values, counts) summed over every part."""
  counters = [vocab_lib.ValueCounter() for _ in range(cf.NUM_SPARSE)]
  for part in tqdm(parts, desc="3/5 vocabulary", unit="parts", disable=not progress):
    path = os.path.join(spark_tasks.part_dir(parts_dir, part["index"]), spark_tasks.COUNTS_FILE)
    with np.load(path) as z:
      for name, counter in zip(cf.SPARSE_NAMES, counters, strict=True):
        counter.add_counted(z[f"{name}_values"], z[f"{name}_counts"])
  return [c.result() for c in counters]


def assemble(out_dir, parts_dir, parts, options, file_lines, num_lines, report, progress):
  """Step 5: the parts' rows, in file order, appended to the final split files."""
  terabyte = options["dataset"] == "terabyte"
  day_rows = np.zeros(len(file_lines), np.int64)
  for p in parts:
    day_rows[p["file"]] += p["rows"]
  if terabyte:
    for f, n in enumerate(day_rows):
      if n == 0:
        path = options["source"][f]["path"]
        raise bad_rows.BadRowError(f"{path}: no usable rows: {report.summary()}")
  elif day_rows.sum() == 0:
    files = ", ".join(s["path"] for s in options["source"])
    raise bad_rows.BadRowError(f"no usable rows in {files}: {report.summary()}")
  test_rows = (int(day_rows[-1]) + 1) // 2  # Terabyte: the last day's first half is test
  writers = {s: columns.ColumnsWriter(out_dir, s, with_missing=False) for s in splits_lib.SPLITS}
  seen_last = 0
  total = sum(p["rows"] for p in parts)
  with tqdm(
    total=total, desc="5/5 write", unit="rows", unit_scale=True, disable=not progress
  ) as bar:
    for p in parts:
      src = spark_tasks.part_dir(parts_dir, p["index"])
      for prefix in [s for s in (*splits_lib.SPLITS, spark_tasks.LAST_DAY) if s in p["split_rows"]]:
        names = {"dense": "dense", "label": "label", "sparse": spark_tasks.IDS}
        arrays = {f: np.load(os.path.join(src, f"{prefix}_{n}.npy")) for f, n in names.items()}
        n = arrays["label"].shape[0]
        cuts = [(prefix, 0, n)]
        if prefix == spark_tasks.LAST_DAY:
          cut = min(max(test_rows - seen_last, 0), n)
          cuts = [("test", 0, cut), ("validation", cut, n)]
          seen_last += n
        for split, a, b in cuts:
          if b > a:
            d, lab, ids = (arrays[f][a:b] for f in ("dense", "label", "sparse"))
            writers[split].append(d, lab, ids, None)
        bar.update(n)
  for w in writers.values():
    w.commit()
  extra: dict[str, Any] = {"sub_sample_rule": streaming.SUB_SAMPLE_RULE, "num_lines": num_lines}
  if terabyte:
    extra["day_line_counts"] = [int(n) for n in file_lines]
    extra["day_row_counts"] = [int(n) for n in day_rows]
  else:
    ranges = splits_lib.split_ranges(num_lines, options["num_days"])
    extra["line_ranges"] = {s: list(r) for s, r in ranges.items()}
    extra["day_line_counts"] = splits_lib.day_row_counts(num_lines, options["num_days"])
  extra["dropped_negatives"] = sum(p["dropped_negatives"] for p in parts)
  return writers, extra
