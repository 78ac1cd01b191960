"""--vocabulary=train|reference on the real Criteo sample rows, against the slow row-by-row rules
(criteo_reference.py): train = training days only, id 0 shared; reference = facebookresearch/dlrm
(every kept row of every day, missing = the value 0, one row per distinct value)."""

from __future__ import annotations

from pathlib import Path

import criteo_reference as ref
import numpy as np
import pytest
from data_testlib import assert_matches

from dlrm_jax.data import bad_rows, preprocess

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "criteo_samples"


@pytest.fixture(scope="module")
def kaggle_lines() -> list[bytes]:
  path = SAMPLES / "kaggle_train_rows.tsv"
  if not path.exists():
    pytest.skip(f"{path} not found")
  return ref.physical_lines(path.read_bytes())


@pytest.mark.parametrize(
  "vocabulary,max_ind_range,rate",
  [("train", 0, 0.0), ("reference", 0, 0.0)],
)
def test_kaggle_sample_rows(tmp_path, kaggle_lines, vocabulary, max_ind_range, rate):
  raw = SAMPLES / "kaggle_train_rows.tsv"
  meta = preprocess.preprocess_criteo(
    [str(raw)],
    str(tmp_path / "out"),
    vocabulary=vocabulary,
    max_ind_range=max_ind_range,
    sub_sample_rate=rate,
    progress=False,
  )
  rows = ref.split_days(ref.kaggle_days(kaggle_lines), rate=rate)
  expected = ref.encode(rows, vocabulary=vocabulary, max_ind_range=max_ind_range)
  assert_matches(str(tmp_path / "out"), expected)
  if vocabulary == "reference":
    # Unlike train's, the reference's tables count the held-out day and the value 0 of missing
    # fields, and have no reserved row.
    train_only = ref.encode(rows, max_ind_range=max_ind_range)[1]
    assert meta["table_sizes"] != [s - 1 for s in train_only]


def test_terabyte_days_reference_vocabulary(tmp_path):
  path = SAMPLES / "terabyte_day0_rows.tsv"
  if not path.exists():
    pytest.skip(f"{path} not found")
  lines = ref.physical_lines(path.read_bytes())
  days = [lines[:4000], lines[4000:7000], lines[7000:]]
  raw = []
  for d, day in enumerate(days):
    raw.append(str(tmp_path / f"day_{d}"))
    Path(raw[-1]).write_bytes(b"\n".join(day) + b"\n")
  out = str(tmp_path / "out")
  preprocess.preprocess_criteo(
    raw,
    out,
    dataset="terabyte",
    vocabulary="reference",
    max_ind_range=10**5,
    sub_sample_rate=0.5,
    progress=False,
  )
  rows = ref.split_days(days, rate=0.5)
  expected = ref.encode(rows, vocabulary="reference", max_ind_range=10**5)
  assert_matches(out, expected)
  # A dropped negative's values do not count, a kept one's do.
  unsampled = ref.encode(ref.split_days(days), vocabulary="reference", max_ind_range=10**5)
  assert expected[1] != unsampled[1]


def test_predict_with_reference_vocabulary(tmp_path, kaggle_lines):
  raw = SAMPLES / "kaggle_train_rows.tsv"
  out = str(tmp_path / "out")
  preprocess.preprocess_criteo([str(raw)], out, vocabulary="reference", progress=False)
  rows = ref.split_days(ref.kaggle_days(kaggle_lines))
  vocab = ref.vocabularies([r for s in rows.values() for r in s], vocabulary="reference")
  # Rows the vocabulary has seen (the training file without its labels): the reference's ids.
  unlabeled = tmp_path / "seen.txt"
  unlabeled.write_bytes(b"".join(x.split(b"\t", 1)[1] + b"\n" for x in kaggle_lines[:3000]))
  seen = [ref.good_fields(x) for x in ref.physical_lines(unlabeled.read_bytes())]
  _, ids, _ = ref.encode_rows(seen, vocab, vocabulary="reference", first=0)
  assert ids.min() >= 0
  np.testing.assert_array_equal(preprocess.encode_unlabeled(str(unlabeled), out).sparse, ids)
  # Kaggle's test rows hold values no day had; C1 has no row for the value 0 to take them.
  test_file = SAMPLES / "kaggle_test_rows.tsv"
  test_rows = [ref.good_fields(x) for x in ref.physical_lines(test_file.read_bytes())]
  _, ids, _ = ref.encode_rows(test_rows, vocab, vocabulary="reference", first=0)
  assert (ids[:, 0] < 0).any() and 0 not in vocab[0]
  first_line = int(np.argmax(ids[:, 0] < 0)) + 1
  with pytest.raises(bad_rows.BadRowError, match=f"{test_file}:{first_line}: C1 has a value"):
    preprocess.encode_unlabeled(str(test_file), out)
