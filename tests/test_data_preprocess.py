"""Preprocessing vs a slow row-by-row Python reference, on real Criteo rows and synthetic files."""

from __future__ import annotations

import collections
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from dlrm_jax.data import preprocess, splits, tsv_parser
from dlrm_jax.data.store import open_split, read_metadata
from dlrm_jax.data.synthetic import generate_criteo_tsv

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "criteo_samples"


def reference_day_of_rows(n: int, days: int = 7) -> list[int]:
  """The reference's line loop: divmod counts, extras to the first days, boundary walk."""
  per, extras = divmod(n, days)
  total_per_file = [per] * days
  for j in range(extras):
    total_per_file[j] += 1
  out, file_id, boundary = [], 0, total_per_file[0]
  for j in range(n):
    while j == boundary:
      file_id += 1
      boundary += total_per_file[file_id]
    out.append(file_id)
  return out


def slow_reference(lines: list[str], max_ind_range: int = 0, min_frequency: int = 1) -> dict:
  """Obviously-correct per-row preprocessing; returns {split: (dense, sparse, label)}, table
  sizes."""
  rows = [line.rstrip("\n").split("\t") for line in lines]
  assert all(len(r) == 40 for r in rows)
  day = reference_day_of_rows(len(rows))
  last = [i for i, d in enumerate(day) if d == 6]
  half = math.ceil(len(last) / 2)
  split_of = {i: "test" for i in last[:half]} | {i: "validation" for i in last[half:]}

  def raw_cat(field: str) -> int | None:
    if field == "":
      return None
    v = int(field, 16)
    return v % max_ind_range if max_ind_range else v

  counts = [collections.Counter() for _ in range(26)]
  for i, r in enumerate(rows):
    if day[i] < 6:
      for t in range(26):
        v = raw_cat(r[14 + t])
        if v is not None:
          counts[t][v] += 1
  kept = [sorted(v for v, c in cnt.items() if c >= min_frequency) for cnt in counts]
  vocab = [{v: k + 1 for k, v in enumerate(values)} for values in kept]
  out = {s: ([], [], []) for s in ("train", "test", "validation")}
  for i, r in enumerate(rows):
    s = split_of.get(i, "train")
    dense = [np.float32(math.log(max(int(f) if f else 0, 0) + 1)) for f in r[1:14]]
    ids = []
    for t in range(26):
      v = raw_cat(r[14 + t])
      ids.append(0 if v is None else vocab[t].get(v, 0))
    out[s][0].append(dense)
    out[s][1].append(ids)
    out[s][2].append(float(r[0]))
  arrays = {
    s: (
      np.array(d, np.float32).reshape(-1, 13),
      np.array(x, np.int32).reshape(-1, 26),
      np.array(y, np.float32),
    )
    for s, (d, x, y) in out.items()
  }
  return {"splits": arrays, "table_sizes": [len(v) + 1 for v in vocab]}


def assert_matches_reference(out_dir: str, lines: list[str], **options) -> None:
  ref = slow_reference(lines, **options)
  meta = read_metadata(out_dir)
  assert meta["table_sizes"] == ref["table_sizes"]
  for split, (dense, sparse, label) in ref["splits"].items():
    arrays = open_split(out_dir, split, in_memory=False)
    assert meta["num_rows"][split] == label.shape[0]
    np.testing.assert_array_equal(arrays.sparse, sparse)
    np.testing.assert_array_equal(arrays.label, label)
    np.testing.assert_allclose(arrays.dense, dense, rtol=2e-7, atol=0)
    if label.size:
      assert meta["positive_rate"][split] == pytest.approx(label.mean())


def _real_rows(name: str) -> Path:
  path = SAMPLES / name
  if not path.exists():
    pytest.skip(f"real Criteo samples not found at {path}")
  return path


@pytest.mark.parametrize("name", ["kaggle_train_rows.tsv", "terabyte_day0_rows.tsv"])
def test_real_rows_match_slow_reference(tmp_path, name):
  path = _real_rows(name)
  lines = path.read_text().splitlines(keepends=True)
  # Small chunks so chunk edges fall inside splits and across split boundaries.
  preprocess.preprocess_criteo([str(path)], str(tmp_path / "out"), chunk_rows=3001, progress=False)
  assert_matches_reference(str(tmp_path / "out"), lines)


def test_real_rows_with_max_ind_range_and_min_frequency(tmp_path):
  path = _real_rows("kaggle_train_rows.tsv")
  lines = path.read_text().splitlines(keepends=True)
  preprocess.preprocess_criteo(
    [str(path)],
    str(tmp_path / "out"),
    max_ind_range=997,
    min_frequency=3,
    chunk_rows=5000,
    progress=False,
  )
  assert_matches_reference(str(tmp_path / "out"), lines, max_ind_range=997, min_frequency=3)
  assert max(read_metadata(str(tmp_path / "out"))["table_sizes"]) <= 998


@pytest.fixture(scope="module")
def synthetic_file(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("raw") / "train.txt")
  generate_criteo_tsv(path, 4003, seed=3)
  return path


@pytest.mark.parametrize("max_ind_range,min_frequency", [(0, 1), (50, 1), (0, 2)])
def test_synthetic_matches_slow_reference(tmp_path, synthetic_file, max_ind_range, min_frequency):
  out = str(tmp_path / "out")
  preprocess.preprocess_criteo(
    [synthetic_file],
    out,
    max_ind_range=max_ind_range,
    min_frequency=min_frequency,
    chunk_rows=700,
    progress=False,
  )
  lines = Path(synthetic_file).read_text().splitlines(keepends=True)
  assert_matches_reference(out, lines, max_ind_range=max_ind_range, min_frequency=min_frequency)


@pytest.mark.parametrize("n", [7, 13, 14, 100, 701, 45_840_617])
def test_split_ranges_follow_reference_days(n):
  ranges = splits.split_ranges(n)
  counts = splits.day_row_counts(n)
  assert sum(counts) == n and max(counts) - min(counts) <= 1
  assert counts == sorted(counts, reverse=True)  # extras go to the first days
  if n < 10_000:
    day = reference_day_of_rows(n)
    assert ranges["train"] == (0, sum(d < 6 for d in day))
  last = counts[-1]
  assert ranges["test"][1] - ranges["test"][0] == math.ceil(last / 2)
  assert ranges["validation"] == (ranges["test"][1], n)


def test_vocab_from_training_days_only(tmp_path):
  # 14 rows: days of 2; rows 12 (test) and 13 (validation) carry values never seen in training.
  base = ["0"] + ["1"] * 13 + ["0000000a"] * 26
  lines = ["\t".join(base) + "\n" for _ in range(12)]
  for label, value in (("1", "000000bb"), ("0", "000000cc")):
    lines.append("\t".join([label] + ["2"] * 13 + [value] * 25 + [""]) + "\n")
  raw = tmp_path / "train.txt"
  raw.write_text("".join(lines))
  meta = preprocess.preprocess_criteo([str(raw)], str(tmp_path / "out"), progress=False)
  assert meta["table_sizes"] == [2] * 26
  assert meta["num_rows"] == {"train": 12, "test": 1, "validation": 1}
  assert (open_split(str(tmp_path / "out"), "train").sparse == 1).all()
  for split in ("test", "validation"):
    assert (open_split(str(tmp_path / "out"), split).sparse == 0).all()


def test_cache_reuse_and_no_partial_files(tmp_path, synthetic_file):
  out = str(tmp_path / "out")
  first = preprocess.preprocess_criteo([synthetic_file], out, progress=False)
  mtime = os.stat(os.path.join(out, "train_sparse.npy")).st_mtime_ns
  again = preprocess.preprocess_criteo([synthetic_file], out, progress=False)
  assert again == first
  assert os.stat(os.path.join(out, "train_sparse.npy")).st_mtime_ns == mtime
  other = preprocess.preprocess_criteo([synthetic_file], out, max_ind_range=10, progress=False)
  assert other["max_ind_range"] == 10 and max(other["table_sizes"]) <= 11
  assert not [f for f in os.listdir(out) if "partial" in f]
  arr = np.load(os.path.join(out, "test_dense.npy"), mmap_mode="r")
  assert arr.dtype == np.float32 and arr.shape == (first["num_rows"]["test"], 13)


def test_interrupted_run_leaves_no_finished_marker(tmp_path, synthetic_file, monkeypatch):
  out = str(tmp_path / "out")
  preprocess.preprocess_criteo([synthetic_file], out, progress=False)

  def boom(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(preprocess.columns, "remap_in_place", boom)
  with pytest.raises(KeyboardInterrupt):
    preprocess.preprocess_criteo([synthetic_file], out, max_ind_range=5, progress=False)
  assert not os.path.exists(os.path.join(out, "metadata.json"))
  with pytest.raises(FileNotFoundError):
    open_split(out, "train")


def test_hex_decoding_paths():
  import pyarrow as pa

  values = ["", "0", "ff", "ABCDEF12", "0000000a", "", "ffffffff", "7"]
  col = pa.array([v.encode() for v in values], type=pa.binary())
  got, missing = tsv_parser.decode_hex_column(col, "C1")
  assert missing.tolist() == [v == "" for v in values]
  assert got.tolist() == [int(v, 16) if v else 0 for v in values]
  fast = pa.array([b"deadbeef", b"", b"01234567", b"89abcdef"], type=pa.binary())
  got, missing = tsv_parser.decode_hex_column(fast, "C1")
  assert got.tolist() == [0xDEADBEEF, 0, 0x01234567, 0x89ABCDEF]
  for bad in (b"0000000g", b"123456789"):
    with pytest.raises(ValueError, match="C1"):
      tsv_parser.decode_hex_column(pa.array([bad], type=pa.binary()), "C1")


def test_last_line_without_newline(tmp_path):
  row = "\t".join(["1"] + ["3"] * 13 + ["0000abcd"] * 26)
  raw = tmp_path / "train.txt"
  raw.write_text("\n".join([row] * 20))  # no trailing newline
  assert tsv_parser.count_lines(str(raw)) == 20
  meta = preprocess.preprocess_criteo(
    [str(raw)], str(tmp_path / "out"), chunk_rows=3, progress=False
  )
  assert sum(meta["num_rows"].values()) == 20
  assert json.load(open(tmp_path / "out" / "metadata.json"))["table_sizes"] == [2] * 26


@pytest.mark.parametrize(
  "size,spread", [(1, 2**32), (3, 2**32), (1000, 2**32), (50_000, 2**32), (5000, 5000)]
)
def test_hash_id_table_equals_sorted_lookup(size, spread):
  from dlrm_jax.data import vocab

  rng = np.random.default_rng(size)
  values = np.unique(rng.integers(0, spread, size * 2).astype(np.uint32))[:size]
  queries = np.concatenate([values, rng.integers(0, spread, 3 * size).astype(np.uint32)])
  rng.shuffle(queries)
  missing = rng.random(queries.size) < 0.2
  got = vocab.IdTable(values).lookup(queries, missing)
  expected = {int(v): k + 1 for k, v in enumerate(values)}
  want = np.array(
    [0 if m else expected.get(int(q), 0) for q, m in zip(queries, missing, strict=True)], np.int32
  )
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(vocab.lookup_ids(values, queries, missing), want)
