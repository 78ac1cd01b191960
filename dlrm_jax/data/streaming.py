"""One pass over raw Criteo files: parse, sub-sample, route rows to split writers.

Shared by the Kaggle path (preprocess.py) and the per-day Terabyte path
(terabyte.py); training rows' raw values are counted here for the vocabularies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dlrm_jax.data import bad_rows, columns, parallel_parse, prefetch, tsv_parser
from dlrm_jax.data import vocab as vocab_lib

SUB_SAMPLE_RULE = (
  "each physical line k (0-based, bad lines included) of training day d draws u_k, the k-th "
  "np.random.default_rng([sub_sample_seed, d]).random(); a negative row is dropped when u_k < "
  "sub_sample_rate (the reference's rule: 0.875 keeps 12.5% of negatives); positives, the test "
  "and the validation day are never dropped"
)


def dense_transform(raw: np.ndarray) -> np.ndarray:
  """int64[n, 13] raw counts (missing already 0) -> float32 log(max(x, 0) + 1), as the reference."""
  return np.log(np.maximum(raw, 0).astype(np.float32) + np.float32(1.0))


def chunk_bytes_for(raw_files: Sequence[str], chunk_rows: int) -> int:
  """Bytes per parsed chunk so that a chunk holds about chunk_rows rows."""
  with tsv_parser.open_raw(raw_files[0]) as f:
    head = f.read(1 << 20)
  lines = max(head.count(b"\n"), 1)
  return max(int(chunk_rows * len(head) / lines), 1 << 16)


class Subsampler:
  """Draws one uniform per physical line of each training day, in order (see SUB_SAMPLE_RULE)."""

  def __init__(self, rate: float, seed: int) -> None:
    self.rate, self.seed = rate, seed
    self._state: dict[int, tuple[np.random.Generator, int]] = {}

  def uniforms(self, day: int, day_first_line: int, lo: int, hi: int) -> np.ndarray:
    """u for lines [lo, hi) (global line numbers) of `day`, which starts at day_first_line."""
    state = self._state.get(day)
    if state is None:
      # A fresh day's generator jumps to line lo: PCG64 draws one 64-bit word per double, so
      # advance(k) gives the same u as k draws (a range that starts mid-day reproduces them).
      rng = np.random.default_rng([self.seed, day])
      rng.bit_generator.advance(lo - day_first_line)
      state = (rng, lo)
    rng, pos = state
    if lo < pos:
      raise RuntimeError("sub-sampling lines were requested out of order")
    u = rng.random(hi - pos)[lo - pos :]
    self._state[day] = (rng, hi)
    return u


@dataclasses.dataclass
class Segment:
  """Lines [lo, hi) of the (concatenated) raw input that go to `writer`; `day` numbers the day."""

  lo: int
  hi: int
  writer: columns.ColumnsWriter
  day: int
  train: bool


def _chunks(
  raw_files: Sequence[str], report: bad_rows.BadRowReport, chunk_bytes: int, workers: int
) -> Iterator[tuple[Any, int]]:
  offset = 0
  for path in raw_files:
    end = 0
    for parsed in parallel_parse.iter_parsed(
      path, report, chunk_bytes=chunk_bytes, workers=workers
    ):
      end = parsed.line_range[1]
      yield parsed, offset
    offset += end


def stream(
  raw_files: Sequence[str],
  segments: Sequence[Segment],
  report: bad_rows.BadRowReport,
  *,
  max_ind_range: int,
  sub_sample_rate: float,
  sub_sample_seed: int,
  chunk_bytes: int,
  counters: list[vocab_lib.ValueCounter],
  count_all: bool = False,
  progress: bool = False,
  progress_total: int | None = None,
  desc: str = "parse",
  workers: int = 1,
) -> dict[str, int]:
  """Parse every row once into its segment's writer: final dense/label, raw (hashed) values as
  sparse, missing bits; training rows are sub-sampled. `counters` count the present values of the
  kept training rows, or with count_all (--vocabulary=reference) every kept row's values of every
  segment, a missing value counted as the value 0. Chunks are parsed by `workers` processes
  (0 = one per core; 1, the default: in this process). Returns line/row counts."""
  sub = Subsampler(sub_sample_rate, sub_sample_seed)
  stats = {"lines": 0, "rows": 0, "dropped_negatives": 0}
  with tqdm(
    total=progress_total, unit="lines", unit_scale=True, desc=desc, disable=not progress
  ) as bar:
    # Parsing the next chunk (pyarrow, GIL released) overlaps this chunk's NumPy work.
    for parsed, offset in prefetch.background(_chunks(raw_files, report, chunk_bytes, workers)):
      lines = route_chunk(
        parsed,
        offset,
        segments,
        sub,
        stats,
        counters,
        max_ind_range=max_ind_range,
        count_all=count_all,
      )
      bar.update(lines)
  return stats


def check_stream(
  stats: dict[str, int], num_lines: int, raw_files: Sequence[str], report: bad_rows.BadRowReport
) -> None:
  """After ``stream``: every counted line was parsed, and some row was usable."""
  if stats["lines"] != num_lines:
    raise RuntimeError(
      f"parsed {stats['lines']} lines but counted {num_lines}: did the files change?"
    )
  if stats["rows"] == 0:
    raise bad_rows.BadRowError(f"no usable rows in {', '.join(raw_files)}: {report.summary()}")


def route_chunk(
  parsed: tsv_parser.ParsedChunk,
  offset: int,
  segments: Sequence[Segment],
  sub: Subsampler,
  stats: dict[str, int],
  counters: list[vocab_lib.ValueCounter],
  *,
  max_ind_range: int,
  count_all: bool = False,
) -> int:
  """One parsed chunk (its lines + offset in the concatenated input) into its segments' writers,
  as stream() describes; adds to `stats` and `counters`; returns the lines it covered. Shared
  with the Spark path (spark_tasks.py), which routes byte ranges of the input in any order."""
  chunk = parsed.raw
  lines = parsed.lines + offset
  c0, c1 = parsed.line_range[0] + offset, parsed.line_range[1] + offset
  cat_t, missing_t = chunk.cat_t, chunk.missing_t
  if 0 < max_ind_range < 2**32:  # larger ranges leave uint32 hashes unchanged
    cat_t %= np.uint32(max_ind_range)
  dense = dense_transform(chunk.dense)
  label = chunk.label.astype(np.float32)
  missing_bits = np.packbits(missing_t, axis=0).T
  for seg in segments:
    lo, hi = max(seg.lo, c0), min(seg.hi, c1)
    if lo >= hi:
      continue
    a, b = np.searchsorted(lines, [lo, hi])
    rows: slice | np.ndarray = slice(a, b)
    if seg.train and sub.rate > 0:
      u = sub.uniforms(seg.day, seg.lo, lo, hi)
      drop = (label[a:b] == 0) & (u[lines[a:b] - lo] < sub.rate)
      stats["dropped_negatives"] += int(drop.sum())
      rows = np.flatnonzero(~drop) + a
    seg.writer.append(dense[rows], label[rows], cat_t[:, rows].T, missing_bits[rows])
    stats["rows"] += int(label[rows].shape[0])
    if count_all:
      for j, counter in enumerate(counters):
        counter.add(cat_t[j, rows])  # the parser left 0 where missing: the reference's rule
    elif seg.train:
      for j, counter in enumerate(counters):
        counter.add(cat_t[j, rows][~missing_t[j, rows]])
  stats["lines"] += c1 - c0
  return c1 - c0
