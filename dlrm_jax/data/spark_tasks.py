"""The Spark path's task bodies: plain functions of picklable arguments (no pyspark import).

Each task reads its own byte range of a raw file from a filesystem every machine shares and writes
its part under parts_dir; only small statistics travel back to the driver. Parsing, routing,
sub-sampling, counting and id remapping are the single-machine path's own functions.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from dlrm_jax.data import bad_rows, columns, parallel_parse, store, streaming, tsv_parser
from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data import splits as splits_lib
from dlrm_jax.data import vocab as vocab_lib

COUNTS_FILE = "counts.npz"
IDS = "ids"  # a part's sparse ids, beside its raw values ({prefix}_sparse.npy)
# Terabyte's last day, before it is cut into test and validation (by kept rows, on the driver).
LAST_DAY = "last"


@dataclasses.dataclass(frozen=True)
class Range:
  """Bytes [start, end) of raw file number `file` (a gzip file is one range: end = -1)."""

  index: int
  file: int
  path: str
  start: int
  end: int


@dataclasses.dataclass(frozen=True)
class Job:
  """What every parse task needs; day_starts: Kaggle's first line of each day in the
  concatenated files (and the end), test_range its test lines; Terabyte: a day per file."""

  parts_dir: str
  dataset: str
  num_files: int
  max_ind_range: int
  sub_sample_rate: float
  sub_sample_seed: int
  count_all: bool
  chunk_bytes: int
  day_starts: tuple[int, ...] = ()
  test_range: tuple[int, int] = (0, 0)


def plan_ranges(raw_files: list[str], range_bytes: int) -> list[Range]:
  """Byte ranges of about range_bytes cut at line breaks; a gzip file cannot be cut."""
  ranges: list[Range] = []
  for f, path in enumerate(raw_files):
    if parallel_parse._is_gzip(path):
      cuts = [(0, -1)]
    else:
      cuts = parallel_parse.line_ranges(path, range_bytes) or [(0, 0)]
    ranges += [Range(len(ranges) + k, f, path, s, e) for k, (s, e) in enumerate(cuts)]
  return ranges


def count_lines(r: Range) -> int:
  """Lines of a range, as tsv_parser.count_lines counts them (an unterminated last one too)."""
  if r.end < 0:
    return tsv_parser.count_lines(r.path)
  count, last, pos = 0, b"\n", r.start
  with open(r.path, "rb") as f:
    f.seek(r.start)
    while pos < r.end:
      block = f.read(min(1 << 24, r.end - pos))
      if not block:
        raise RuntimeError(f"{r.path}: shorter than when it was split (did it change?)")
      count += block.count(b"\n")
      last, pos = block[-1:], pos + len(block)
  return count + (last != b"\n")


def part_dir(parts_dir: str, index: int) -> str:
  return os.path.join(parts_dir, f"part_{index:05d}")


def _buffers(r: Range, chunk_bytes: int) -> Iterator[tsv_parser.ParsedBuffer]:
  if r.end < 0:
    for buf, unterminated in tsv_parser.iter_byte_chunks(r.path, chunk_bytes):
      yield tsv_parser.parse_buffer(buf, True, unterminated)
  elif r.end > r.start:
    yield parallel_parse._parse_range(r.path, r.start, r.end, True)


def _segments(job: Job, r: Range, out: str) -> tuple[dict[str, columns.ColumnsWriter], list]:
  """The part's writers and the segments (in the task's line coordinates) that feed them."""
  if job.dataset == "terabyte":
    train = r.file < job.num_files - 1
    writer = columns.ColumnsWriter(out, "train" if train else LAST_DAY, with_missing=True)
    return {"train" if train else LAST_DAY: writer}, [
      streaming.Segment(0, 1 << 62, writer, r.file, train)
    ]
  writers = {s: columns.ColumnsWriter(out, s, with_missing=True) for s in splits_lib.SPLITS}
  starts = job.day_starts
  segments = [
    streaming.Segment(starts[d], starts[d + 1], writers["train"], d, True)
    for d in range(len(starts) - 2)
  ]
  (t0, t1), last = job.test_range, len(starts) - 2
  segments += [
    streaming.Segment(t0, t1, writers["test"], last, False),
    streaming.Segment(t1, starts[-1], writers["validation"], last, False),
  ]
  return writers, segments


def parse_range(job: Job, item: tuple[Range, int, int]) -> dict[str, Any]:
  """Task: parse range r (its first line `first` in its file, `offset` the file's first line in
  the concatenated input), sub-sample, write raw values and missing bits to the range's part and
  its value counts to counts.npz. Returns the part's statistics and bad-row report."""
  r, first, offset = item
  out = part_dir(job.parts_dir, r.index)
  shutil.rmtree(out, ignore_errors=True)  # a retried task starts over
  os.makedirs(out)
  writers, segments = _segments(job, r, out)
  report = bad_rows.BadRowReport(strict=False)
  counters = [vocab_lib.ValueCounter() for _ in range(cf.NUM_SPARSE)]
  sub = streaming.Subsampler(job.sub_sample_rate, job.sub_sample_seed)
  stats = {"lines": 0, "rows": 0, "dropped_negatives": 0}
  line = first
  for buffer in _buffers(r, job.chunk_bytes):
    parsed = tsv_parser.to_parsed_chunk(buffer, r.path, line, report)
    line = parsed.line_range[1]
    streaming.route_chunk(
      parsed,
      offset,
      segments,
      sub,
      stats,
      counters,
      max_ind_range=job.max_ind_range,
      count_all=job.count_all,
    )
  arrays = {}
  for name, counter in zip(cf.SPARSE_NAMES, counters, strict=True):
    arrays[f"{name}_values"], arrays[f"{name}_counts"] = counter.result()
  np.savez(os.path.join(out, COUNTS_FILE), **arrays)
  for w in writers.values():
    w.commit(keep_missing=True)
  return {
    "index": r.index,
    "file": r.file,
    **stats,
    "split_rows": {s: w.rows for s, w in writers.items()},
    "bad_rows": report.to_json(),
  }


def remap_part(parts_dir: str, tables: Any, vocabulary: str, item: tuple[int, list[str]]) -> int:
  """Task: one part's raw values -> ids, written beside them as {prefix}_ids.npy (a new file, so
  a retried or speculative copy of the task writes the same bytes). tables: a broadcast of
  vocab.IdTable per feature, or the list itself. Returns the rows remapped."""
  index, prefixes = item
  tables = getattr(tables, "value", tables)
  out, done = part_dir(parts_dir, index), 0
  with ThreadPoolExecutor(max_workers=2) as pool:
    for prefix in prefixes:
      sparse = np.load(os.path.join(out, f"{prefix}_sparse.npy"), mmap_mode="r")
      missing = np.load(os.path.join(out, f"{prefix}_missing.npy"), mmap_mode="r")
      path = os.path.join(out, f"{prefix}_{IDS}.npy")
      ids = columns.NpyAppender(path + store.PARTIAL, np.int32, (cf.NUM_SPARSE,))
      for a in range(0, sparse.shape[0], columns.REMAP_BLOCK_ROWS):
        b = min(a + columns.REMAP_BLOCK_ROWS, sparse.shape[0])
        ids.append(columns.remap_block(sparse[a:b], missing[a:b], tables, pool, vocabulary))
      ids.close()
      os.replace(path + store.PARTIAL, path)
      done += sparse.shape[0]
      del sparse, missing
  return done
