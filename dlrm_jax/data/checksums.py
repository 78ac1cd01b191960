"""Optional per-chunk CRC32 checksums of a processed directory's column files, checked as read.

  python -m dlrm_jax.data.checksums PROCESSED_DIR [--chunk_rows=65536]

writes ``{split}_checksums.json`` beside the arrays: per column file, the CRC32 of the raw bytes
of every chunk of ``chunk_rows`` rows (the last chunk may be shorter). A directory without it
reads as before. The block shuffle verifies every whole chunk inside each block it reads, so a
flipped bit is reported by file and row range instead of being trained on; random-row reads
(--shuffle=rows) cannot, and the command itself re-verifies a directory that has them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import zlib

import numpy as np

from dlrm_jax.data import splits as splits_lib
from dlrm_jax.data import store

DEFAULT_CHUNK_ROWS = 1 << 16  # divides the block shuffle's default block of 2^18 rows


def checksums_file(processed_dir: str, split: str) -> str:
  return os.path.join(processed_dir, f"{split}_checksums.json")


def _crc(rows: np.ndarray) -> int:
  return zlib.crc32(memoryview(np.ascontiguousarray(rows)).cast("B"))


@dataclasses.dataclass(frozen=True)
class Checksums:
  """CRC32 per chunk of ``chunk_rows`` rows, per field, of one split."""

  chunk_rows: int
  num_rows: int
  crc32: dict[str, list[int]]
  paths: dict[str, str]

  def verify(self, field: str, lo: int, data: np.ndarray) -> None:
    """Raise ValueError naming the file and rows if a whole chunk inside rows
    [lo, lo + len(data)) differs from its recorded checksum."""
    hi = lo + data.shape[0]
    for k in range(-(-lo // self.chunk_rows), len(self.crc32[field])):
      a, b = k * self.chunk_rows, min((k + 1) * self.chunk_rows, self.num_rows)
      if b > hi:
        break
      got, want = _crc(data[a - lo : b - lo]), self.crc32[field][k]
      if got != want:
        raise ValueError(
          f"{self.paths[field]}: rows {a}..{b - 1} fail their checksum (crc32 {got:08x}, "
          f"recorded {want:08x}): the file is damaged on disk; preprocess again"
        )


def load(processed_dir: str, split: str, num_rows: int) -> Checksums | None:
  """The split's checksums, None where the directory has none."""
  path = checksums_file(processed_dir, split)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  chunk = int(record["chunk_rows"])
  if record.get("num_rows") != num_rows or chunk < 1:
    raise ValueError(f"{path}: written for {record.get('num_rows')} rows, the split has {num_rows}")
  paths = {f: store.split_file(processed_dir, split, f) for f in store.FIELDS}
  return Checksums(chunk, num_rows, {f: list(record["crc32"][f]) for f in store.FIELDS}, paths)


def compute(arrays: store.SplitArrays, chunk_rows: int) -> dict[str, list[int]]:
  """CRC32 of every chunk of every column."""
  n = arrays.num_rows
  return {
    f: [_crc(getattr(arrays, f)[lo : lo + chunk_rows]) for lo in range(0, n, chunk_rows)]
    for f in store.FIELDS
  }


def add_checksums(processed_dir: str, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> list[str]:
  """Writes (or, where present, verifies) every split's checksums; returns the files written."""
  written = []
  for split in splits_lib.SPLITS:
    arrays = store.open_split(processed_dir, split, in_memory=False)
    existing = load(processed_dir, split, arrays.num_rows)
    if existing is not None:
      for f in store.FIELDS:
        existing.verify(f, 0, getattr(arrays, f))
      continue
    path = checksums_file(processed_dir, split)
    record = {"chunk_rows": chunk_rows, "num_rows": arrays.num_rows}
    store.write_json_atomic(path, {**record, "crc32": compute(arrays, chunk_rows)})
    written.append(path)
  return written


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("processed_dir", help="a finished preprocessed directory")
  parser.add_argument(
    "--chunk_rows", type=int, default=DEFAULT_CHUNK_ROWS, help="rows per checksum (default 65536)"
  )
  args = parser.parse_args(argv)
  if args.chunk_rows < 1:
    print(f"error: --chunk_rows={args.chunk_rows}: must be >= 1", file=sys.stderr)
    return 2
  try:
    written = add_checksums(args.processed_dir, args.chunk_rows)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print("\n".join(f"wrote {p}" for p in written) or "checksums present and verified")
  return 0


if __name__ == "__main__":
  sys.exit(main())
