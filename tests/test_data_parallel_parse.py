"""Preprocessing with parsing in worker processes writes the same bytes as in one process."""

import gzip
import os

import numpy as np
import pytest

from dlrm_jax.data import bad_rows, parallel_parse, tsv_parser
from dlrm_jax.data.preprocess import preprocess_criteo
from dlrm_jax.data.synthetic import generate_criteo_tsv


def _raw_with_bad_rows(path: str, rows: int, seed: int, unterminated: bool = False) -> None:
  """Generated rows with a few bad lines spread over the file (kinds the parser reports)."""
  generate_criteo_tsv(path, rows, seed=seed)
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")[:-1]
  lines[7] = b"1\t2"  # wrong column count
  lines[rows // 2] = lines[rows // 2].replace(b"\t", b"\t \t", 1)  # a space: off the fast path
  lines[rows - 5] = lines[rows - 5] + b"\r"  # a stray carriage return... with its LF: CRLF
  lines[rows - 3] = b"1\t2\r\t3"  # a stray carriage return inside the line
  text = b"\n".join(lines)
  if unterminated:
    text += b"\n0\t1\t2"  # a truncated last line without a line break
  else:
    text += b"\n"
  with open(path, "wb") as f:
    f.write(text)


def _files(out: str) -> dict[str, bytes]:
  result = {}
  for root, _, names in os.walk(out):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        result[os.path.relpath(path, out)] = f.read()
  return result


@pytest.mark.parametrize(
  "options",
  [
    dict(),
    dict(min_frequency=2, sub_sample_rate=0.5, sub_sample_seed=3),
    dict(max_ind_range=1000, vocabulary="reference"),
  ],
)
def test_processes_write_the_same_bytes_as_one_process(tmp_path, monkeypatch, options):
  raw = str(tmp_path / "train.txt")
  _raw_with_bad_rows(raw, 6000, seed=5, unterminated=True)
  # Small chunks, so that 3 workers get many and the rows of a day span several of them.
  monkeypatch.setattr(parallel_parse, "MIN_CHUNK_BYTES", 1 << 14)
  kw = dict(progress=False, chunk_rows=300, **options)
  one = preprocess_criteo([raw], str(tmp_path / "one"), workers=1, **kw)
  many = preprocess_criteo([raw], str(tmp_path / "many"), workers=3, **kw)
  assert one["bad_rows"]["total"] == 4  # every bad line was reported, once
  assert many["bad_rows"] == one["bad_rows"]
  assert _files(str(tmp_path / "many")) == _files(str(tmp_path / "one"))


def test_gzip_terabyte_days_in_processes_match_one_process(tmp_path, monkeypatch):
  days = []
  for d in range(3):
    plain = str(tmp_path / f"plain_{d}")
    _raw_with_bad_rows(plain, 3000, seed=10 + d)
    with open(plain, "rb") as src, gzip.open(str(tmp_path / f"day_{d}.gz"), "wb") as dst:
      dst.write(src.read())
    days.append(str(tmp_path / f"day_{d}.gz"))
  monkeypatch.setattr(parallel_parse, "MIN_CHUNK_BYTES", 1 << 14)
  kw = dict(dataset="terabyte", progress=False, chunk_rows=200)
  one = preprocess_criteo(days, str(tmp_path / "one"), workers=1, **kw)
  many = preprocess_criteo(days, str(tmp_path / "many"), workers=2, **kw)
  assert many["bad_rows"] == one["bad_rows"]
  assert _files(str(tmp_path / "many")) == _files(str(tmp_path / "one"))


def test_line_ranges_cover_the_file_at_line_breaks(tmp_path):
  path = tmp_path / "t.txt"
  rng = np.random.default_rng(0)
  text = b"".join(b"x" * int(n) + b"\n" for n in rng.integers(0, 50, 500)) + b"tail"
  path.write_bytes(text)
  ranges = parallel_parse.line_ranges(str(path), 97)
  assert ranges[0][0] == 0 and ranges[-1][1] == len(text)
  for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False):
    assert end == start and text[end - 1 : end] == b"\n"


def test_strict_names_the_first_bad_line_from_workers(tmp_path, monkeypatch):
  raw = str(tmp_path / "train.txt")
  _raw_with_bad_rows(raw, 6000, seed=5)
  monkeypatch.setattr(parallel_parse, "MIN_CHUNK_BYTES", 1 << 14)
  report = bad_rows.BadRowReport(strict=True)
  with pytest.raises(bad_rows.BadRowError, match=r"train.txt:8: wrong column count"):
    for _ in parallel_parse.iter_parsed(raw, report, chunk_bytes=1 << 14, workers=2):
      pass
  # The same rows, parsed in one process and in two, with the same line numbers.
  a = list(tsv_parser.iter_parsed(raw, bad_rows.BadRowReport(), chunk_bytes=1 << 16))
  b = list(parallel_parse.iter_parsed(raw, bad_rows.BadRowReport(), chunk_bytes=1 << 14, workers=2))
  assert np.array_equal(np.concatenate([c.lines for c in a]), np.concatenate([c.lines for c in b]))
  for field in ("label", "dense"):
    np.testing.assert_array_equal(
      np.concatenate([getattr(c.raw, field) for c in a]),
      np.concatenate([getattr(c.raw, field) for c in b]),
    )
  np.testing.assert_array_equal(
    np.concatenate([c.raw.cat_t for c in a], axis=1),
    np.concatenate([c.raw.cat_t for c in b], axis=1),
  )


def test_negative_workers_is_refused(tmp_path):
  raw = str(tmp_path / "train.txt")
  generate_criteo_tsv(raw, 100, seed=0)
  with pytest.raises(ValueError, match="workers=-1"):
    preprocess_criteo([raw], str(tmp_path / "out"), workers=-1, progress=False)


def test_preprocess_workers_flag_is_checked():
  from dlrm_jax.config import Config, ConfigError

  with pytest.raises(ConfigError, match="--preprocess_workers=-2"):
    Config(preprocess_workers=-2).validate()


def test_the_flag_reaches_kaggle_preprocessing(tmp_path, monkeypatch):
  from dlrm_jax.config import Config
  from dlrm_jax.data import datasets

  raw = tmp_path / "criteo_kaggle" / "train.txt"
  raw.parent.mkdir()
  _raw_with_bad_rows(str(raw), 6000, seed=5)
  monkeypatch.setattr(parallel_parse, "MIN_CHUNK_BYTES", 1 << 14)
  seen = []
  real = parallel_parse.resolve_workers
  monkeypatch.setattr(parallel_parse, "resolve_workers", lambda w: seen.append(w) or real(w))
  config = Config(dataset="kaggle", data_dir=str(tmp_path), preprocess_workers=2)
  datasets.resolve_dataset(config, progress=False)
  assert seen and set(seen) == {2}
