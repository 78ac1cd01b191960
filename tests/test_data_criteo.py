"""Criteo preprocessing against a slow row-by-row reference.

Bad rows, CRLF, gzip, sub-sampling, Terabyte days.
"""

from __future__ import annotations

import gzip
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from dlrm_jax.data import preprocess, splits, terabyte
from dlrm_jax.data.bad_rows import BadRowError
from dlrm_jax.data.store import open_split, read_metadata
from dlrm_jax.data.synthetic import generate_criteo_tsv

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "criteo_samples"


def reference_kind(line: str, labeled: bool = True) -> str | None:
  """Why a physical line (without '\\n') is bad, by plain string rules; None if good."""
  if line.endswith("\r"):
    line = line[:-1]
  fields = line.split("\t")
  if len(fields) != (40 if labeled else 39):
    return "columns"
  if "\r" in line:
    return "stray_carriage_return"
  first = 1 if labeled else 0
  if labeled and fields[0] not in ("0", "1"):
    return "bad_label"
  if any(f and not re.fullmatch(r"-?[0-9]{1,18}", f) for f in fields[first : first + 13]):
    return "bad_integer"
  if any(f and not re.fullmatch(r"[0-9a-fA-F]{1,8}", f) for f in fields[first + 13 :]):
    return "bad_hex"
  return None


def reference(
  days: list[list[str]], *, rate=0.0, seed=0, max_ind_range=0, min_frequency=1, halve_lines=True
):
  """days: physical lines per day. Days but the last train (negatives dropped when u_k < rate, u_k
  the k-th draw of default_rng([seed, day])); the last is halved (by lines or by good rows)."""
  out = {"train": [], "test": [], "validation": []}
  for d, lines in enumerate(days):
    train = d < len(days) - 1
    u = np.random.default_rng([seed, d]).random(len(lines)) if train and rate else None
    good = []
    for k, line in enumerate(lines):
      if reference_kind(line):
        continue
      fields = line.rstrip("\r").split("\t")
      if u is not None and fields[0] == "0" and u[k] < rate:
        continue
      good.append((k, fields))
    if train:
      out["train"] += [f for _, f in good]
    else:
      cut = math.ceil(len(lines) / 2) if halve_lines else math.ceil(len(good) / 2)
      pos = [k for k, _ in good] if halve_lines else list(range(len(good)))
      out["test"] += [f for p, (_, f) in zip(pos, good, strict=True) if p < cut]
      out["validation"] += [f for p, (_, f) in zip(pos, good, strict=True) if p >= cut]

  def raw(field):
    return (
      None if field == "" else (int(field, 16) % max_ind_range if max_ind_range else int(field, 16))
    )

  counts = [dict() for _ in range(26)]
  for fields in out["train"]:
    for t in range(26):
      v = raw(fields[14 + t])
      if v is not None:
        counts[t][v] = counts[t].get(v, 0) + 1
  vocab = [
    {v: i + 1 for i, v in enumerate(sorted(v for v, c in cnt.items() if c >= min_frequency))}
    for cnt in counts
  ]
  arrays = {}
  for split, rows in out.items():
    dense = [[math.log(max(int(f) if f else 0, 0) + 1) for f in r[1:14]] for r in rows]
    sparse = [
      [0 if raw(r[14 + t]) is None else vocab[t].get(raw(r[14 + t]), 0) for t in range(26)]
      for r in rows
    ]
    arrays[split] = (
      np.array(dense, np.float32).reshape(-1, 13),
      np.array(sparse, np.int32).reshape(-1, 26),
      np.array([float(r[0]) for r in rows], np.float32),
    )
  return arrays, [len(v) + 1 for v in vocab]


def kaggle_days(lines: list[str], num_days: int = 7) -> list[list[str]]:
  counts = splits.day_row_counts(len(lines), num_days)
  starts = np.concatenate([[0], np.cumsum(counts)])
  return [lines[starts[d] : starts[d + 1]] for d in range(num_days)]


def assert_matches(out_dir: str, expected) -> None:
  arrays, sizes = expected
  meta = read_metadata(out_dir)
  assert meta["table_sizes"] == sizes
  for split, (dense, sparse, label) in arrays.items():
    got = open_split(out_dir, split, in_memory=False)
    assert meta["num_rows"][split] == label.shape[0], split
    np.testing.assert_array_equal(got.sparse, sparse)
    np.testing.assert_array_equal(got.label, label)
    np.testing.assert_allclose(got.dense, dense, rtol=2e-7, atol=0)


def lines_of(path) -> list[str]:
  return Path(path).read_bytes().decode().split("\n")[:-1]


@pytest.fixture(scope="module")
def clean_lines(tmp_path_factory) -> list[str]:
  path = tmp_path_factory.mktemp("gen") / "train.txt"
  generate_criteo_tsv(str(path), 2101, seed=5)
  return lines_of(path)


BAD_EDITS = {  # 0-based line -> (kind, edit)
  10: ("bad_integer", lambda f: f[:3] + ["12a"] + f[4:]),
  50: ("bad_hex", lambda f: f[:20] + ["zz12ab00"] + f[21:]),
  100: ("wrong_column_count", lambda f: f[:-1]),
  300: ("bad_label", lambda f: ["2"] + f[1:]),
  400: ("stray_carriage_return", lambda f: f[:5] + ["7\r"] + f[6:]),
  700: ("bad_hex", lambda f: f[:30] + ["123456789"] + f[31:]),
  800: ("wrong_column_count", lambda f: []),
  1500: ("bad_integer", lambda f: f[:2] + ["1.5"] + f[3:]),
}


def write_bad_file(path: Path, lines: list[str], *, crlf=False, gz=False) -> list[str]:
  """The clean lines with BAD_EDITS applied and the last line cut short without a newline."""
  out = list(lines)
  for k, (_, edit) in BAD_EDITS.items():
    out[k] = "\t".join(edit(out[k].split("\t")))
  out[-1] = out[-1][: len(out[-1]) // 2]
  sep = "\r\n" if crlf else "\n"
  data = (sep.join(out)).encode()  # no line break after the truncated last line
  (gzip.open if gz else open)(path, "wb").write(data)
  return out


@pytest.mark.parametrize("variant", ["lf", "crlf", "gzip"])
def test_bad_rows_skipped_counted_and_rest_matches_reference(tmp_path, clean_lines, variant):
  raw = tmp_path / ("train.txt.gz" if variant == "gzip" else "train.txt")
  lines = write_bad_file(raw, clean_lines, crlf=variant == "crlf", gz=variant == "gzip")
  meta = preprocess.preprocess_criteo(
    [str(raw)], str(tmp_path / "out"), chunk_rows=400, progress=False
  )
  assert_matches(str(tmp_path / "out"), reference(kaggle_days(lines)))
  want = {}
  for k, (kind, _) in sorted(BAD_EDITS.items()):
    want.setdefault(kind, []).append(k)
  want["truncated_last_line"] = [len(lines) - 1]
  assert meta["bad_rows"]["counts"] == {kind: len(ks) for kind, ks in want.items()}
  assert meta["bad_rows"]["first"] == {kind: f"{raw}:{ks[0] + 1}" for kind, ks in want.items()}
  assert "bad_hex 2 (first at" in meta["bad_rows_summary"]
  assert meta["num_lines"] == len(lines) and sum(meta["num_rows"].values()) == len(lines) - 9


def test_strict_stops_at_first_bad_row_with_file_line(tmp_path, clean_lines):
  raw = tmp_path / "train.txt"
  write_bad_file(raw, clean_lines)
  with pytest.raises(BadRowError, match=rf"{re.escape(str(raw))}:11: bad integer: .*12a"):
    preprocess.preprocess_criteo([str(raw)], str(tmp_path / "out"), strict=True, progress=False)
  # A cache made without --strict still refuses under --strict.
  preprocess.preprocess_criteo([str(raw)], str(tmp_path / "out"), progress=False)
  with pytest.raises(BadRowError, match=r":11: bad integer"):
    preprocess.preprocess_criteo([str(raw)], str(tmp_path / "out"), strict=True, progress=False)


def test_crlf_and_gzip_equal_plain(tmp_path, clean_lines):
  outs = []
  for name, crlf, gz in (("a.txt", False, False), ("b.txt", True, False), ("c.txt.gz", True, True)):
    raw = tmp_path / name
    (gzip.open if gz else open)(raw, "wb").write(
      (("\r\n" if crlf else "\n").join(clean_lines) + "\n").encode()
    )
    meta = preprocess.preprocess_criteo(
      [str(raw)], str(tmp_path / name.split(".")[0]), progress=False
    )
    assert meta["bad_rows"]["total"] == 0
    outs.append(str(tmp_path / name.split(".")[0]))
  for out in outs[1:]:
    for split in splits.SPLITS:
      a, b = open_split(outs[0], split), open_split(out, split)
      for field in ("dense", "sparse", "label"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_empty_and_unlabeled_files_give_clear_errors(tmp_path, clean_lines):
  empty = tmp_path / "empty.txt"
  empty.write_bytes(b"")
  with pytest.raises(BadRowError, match="empty"):
    preprocess.preprocess_criteo([str(empty)], str(tmp_path / "o1"), progress=False)
  unlabeled = tmp_path / "test.txt"
  unlabeled.write_text("\n".join(line.split("\t", 1)[1] for line in clean_lines[:50]) + "\n")
  with pytest.raises(BadRowError, match="no label column"):
    preprocess.preprocess_criteo([str(unlabeled)], str(tmp_path / "o2"), progress=False)
  with pytest.raises(FileNotFoundError):
    preprocess.preprocess_criteo([str(tmp_path / "nope.txt")], str(tmp_path / "o3"), progress=False)


def test_kaggle_sub_sampling_matches_reference_and_is_chunk_invariant(tmp_path, clean_lines):
  raw = tmp_path / "train.txt"
  raw.write_text("\n".join(clean_lines) + "\n")
  metas = []
  for chunk_rows, out in ((97, "a"), (100_000, "b")):
    metas.append(
      preprocess.preprocess_criteo(
        [str(raw)],
        str(tmp_path / out),
        sub_sample_rate=0.6,
        sub_sample_seed=7,
        chunk_rows=chunk_rows,
        progress=False,
      )
    )
    assert_matches(str(tmp_path / out), reference(kaggle_days(clean_lines), rate=0.6, seed=7))
  negatives = sum(
    1 for line in clean_lines[: metas[0]["line_ranges"]["train"][1]] if line[0] == "0"
  )
  assert metas[0]["dropped_negatives"] == metas[1]["dropped_negatives"]
  assert 0.5 < metas[0]["dropped_negatives"] / negatives < 0.7
  untouched = reference(kaggle_days(clean_lines))[0]
  for split in ("test", "validation"):  # the held-out day is never sub-sampled
    assert metas[0]["num_rows"][split] == untouched[split][2].shape[0]


def write_days(tmp_path: Path, days: list[list[str]], gz_days=()) -> list[str]:
  paths = []
  for d, lines in enumerate(days):
    path = tmp_path / (f"day_{d}.gz" if d in gz_days else f"day_{d}")
    (gzip.open if d in gz_days else open)(path, "wb").write(("\n".join(lines) + "\n").encode())
    paths.append(str(path))
  return paths


def test_terabyte_days_sub_sampling_max_ind_range_and_resume(tmp_path, clean_lines, monkeypatch):
  days = [clean_lines[i * 500 : (i + 1) * 500] for i in range(4)] + [clean_lines[2000:2101]]
  paths = write_days(tmp_path, days, gz_days=(1,))
  out = str(tmp_path / "out")
  opts = dict(
    dataset="terabyte",
    max_ind_range=1000,
    sub_sample_rate=0.5,
    sub_sample_seed=3,
    chunk_rows=150,
    progress=False,
  )
  real_process = terabyte._process_day
  calls, interrupt = [], [True]

  def failing(raw, *args, **kwargs):
    calls.append(raw)
    if raw == paths[3] and interrupt.pop() if interrupt else False:
      raise KeyboardInterrupt  # interrupted while processing day 3, once
    return real_process(raw, *args, **kwargs)

  monkeypatch.setattr(terabyte, "_process_day", failing)
  with pytest.raises(KeyboardInterrupt):
    preprocess.preprocess_criteo(paths, out, **opts)
  finished = os.stat(os.path.join(terabyte.day_dir(out, 0), terabyte.DAY_FILE)).st_mtime_ns
  calls.clear()
  meta = preprocess.preprocess_criteo(paths, out, **opts)
  assert calls == paths[3:]  # days 0-2 were reused
  assert os.stat(os.path.join(terabyte.day_dir(out, 0), terabyte.DAY_FILE)).st_mtime_ns == finished
  expected = reference(days, rate=0.5, seed=3, max_ind_range=1000, halve_lines=False)
  assert_matches(out, expected)
  assert max(meta["table_sizes"]) <= 1001 and meta["num_days"] == 5
  assert meta["num_rows"]["test"] == 51 and meta["num_rows"]["validation"] == 50
  # min_frequency changes only the vocabulary: every day cache is reused.
  calls.clear()
  preprocess.preprocess_criteo(paths, str(tmp_path / "out"), **{**opts, "min_frequency": 2})
  assert calls == []
  assert_matches(
    out, reference(days, rate=0.5, seed=3, max_ind_range=1000, min_frequency=2, halve_lines=False)
  )


def _samples(name: str) -> Path:
  path = SAMPLES / name
  if not path.exists():
    pytest.skip(f"real Criteo samples not found at {path} (../shared is absent in a plain clone)")
  return path


def test_real_terabyte_rows_as_days(tmp_path):
  lines = lines_of(_samples("terabyte_day0_rows.tsv"))
  days = [lines[:4000], lines[4000:8000], lines[8000:]]
  meta = preprocess.preprocess_criteo(
    write_days(tmp_path, days),
    str(tmp_path / "out"),
    dataset="terabyte",
    max_ind_range=10_000_000,
    sub_sample_rate=0.875,
    progress=False,
  )
  assert meta["bad_rows"]["total"] == 0
  assert_matches(
    str(tmp_path / "out"), reference(days, rate=0.875, max_ind_range=10_000_000, halve_lines=False)
  )


def test_real_kaggle_test_rows_encode_like_training(tmp_path):
  train_lines = lines_of(_samples("kaggle_train_rows.tsv"))
  test_lines = lines_of(_samples("kaggle_test_rows.tsv"))
  raw = tmp_path / "train.txt"
  raw.write_text("\n".join(train_lines) + "\n")
  preprocess.preprocess_criteo(
    [str(raw)], str(tmp_path / "out"), max_ind_range=50_000, progress=False
  )
  arrays = preprocess.encode_unlabeled(str(_samples("kaggle_test_rows.tsv")), str(tmp_path / "out"))
  # The reference encoding of unlabeled rows: add a label column, encode as a held-out day.
  days = kaggle_days(train_lines)
  expected, _ = reference(days[:-1] + [["0\t" + line for line in test_lines]], max_ind_range=50_000)
  dense = np.concatenate([expected["test"][0], expected["validation"][0]])
  sparse = np.concatenate([expected["test"][1], expected["validation"][1]])
  assert arrays.num_rows == len(test_lines) == dense.shape[0]
  np.testing.assert_array_equal(arrays.sparse, sparse)
  np.testing.assert_allclose(arrays.dense, dense, rtol=2e-7, atol=0)
  assert (arrays.label == 0).all()


def test_encode_unlabeled_refuses_bad_and_labelled_files(tmp_path, clean_lines):
  raw = tmp_path / "train.txt"
  raw.write_text("\n".join(clean_lines) + "\n")
  preprocess.preprocess_criteo([str(raw)], str(tmp_path / "out"), progress=False)
  with pytest.raises(BadRowError, match="label column"):
    preprocess.encode_unlabeled(str(raw), str(tmp_path / "out"))
  bad = tmp_path / "test.txt"
  rows = [line.split("\t", 1)[1] for line in clean_lines[:20]]
  rows[4] = rows[4].replace("\t", "\tx", 1)
  bad.write_text("\n".join(rows) + "\n")
  with pytest.raises(BadRowError, match=rf"{re.escape(str(bad))}:5: bad integer"):
    preprocess.encode_unlabeled(str(bad), str(tmp_path / "out"))
