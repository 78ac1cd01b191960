"""The Spark path (local runner) writes the same bytes as the single-machine preprocess_criteo."""

import gzip
import os
import shutil

import numpy as np
import pytest

from dlrm_jax.data import spark_preprocess, spark_tasks, store
from dlrm_jax.data.preprocess import preprocess_criteo
from dlrm_jax.data.synthetic import generate_criteo_tsv

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def sc():
  pytest.importorskip("pyspark", reason="pyspark is not installed (pip install -e .[spark])")
  if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
    pytest.skip("no Java on this machine: pyspark needs Java 17 or later")
  context = spark_preprocess.spark_context("local[2]")
  yield context
  context.stop()


def _raw(path: str, rows: int, seed: int, unterminated: bool = False) -> str:
  """Generated rows with a few bad lines spread over the file."""
  generate_criteo_tsv(path, rows, seed=seed)
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")[:-1]
  lines[7] = b"1\t2"  # wrong column count
  lines[rows // 2] = lines[rows // 2].replace(b"\t", b"\t \t", 1)  # a space: off the fast path
  lines[rows - 3] = b"1\t2\r\t3"  # a stray carriage return inside the line
  text = b"\n".join(lines) + (b"\n0\t1\t2" if unterminated else b"\n")
  with open(path, "wb") as f:
    f.write(text)
  return path


def _gzip(path: str) -> str:
  with open(path, "rb") as src, gzip.open(path + ".gz", "wb") as dst:
    dst.write(src.read())
  return path + ".gz"


def _files(out: str) -> dict[str, bytes]:
  """Every file of a preprocessed directory but the Terabyte day caches (days/)."""
  result = {}
  for root, dirs, names in os.walk(out):
    dirs[:] = [d for d in dirs if d != "days"]
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        result[os.path.relpath(os.path.join(root, name), out)] = f.read()
  return result


def _compare(sc, tmp_path, raw_files, range_bytes, **options):
  one = preprocess_criteo(raw_files, str(tmp_path / "one"), progress=False, **options)
  spark = spark_preprocess.preprocess_criteo_spark(
    raw_files, str(tmp_path / "spark"), sc=sc, range_bytes=range_bytes, progress=False, **options
  )
  assert spark == one
  got, want = _files(str(tmp_path / "spark")), _files(str(tmp_path / "one"))
  assert sorted(got) == sorted(want)  # and no parts left behind
  for name in want:
    assert got[name] == want[name], name
  return one


def test_kaggle_with_every_option_is_byte_identical(sc, tmp_path):
  raw = [_raw(str(tmp_path / "a.txt"), 3000, seed=1), _raw(str(tmp_path / "b.txt"), 2500, 2, True)]
  # Ranges of ~100 KB: days (~785 lines, ~190 KB) start and end inside ranges, so the
  # sub-sampling generator must be advanced to each range's first line.
  assert len(spark_tasks.plan_ranges(raw, 100_000)) >= 8
  meta = _compare(
    sc,
    tmp_path,
    raw,
    100_000,
    max_ind_range=700,
    min_frequency=2,
    sub_sample_rate=0.6,
    sub_sample_seed=3,
  )
  assert meta["bad_rows"]["total"] == 7  # three per file and the unterminated last line
  assert meta["dropped_negatives"] > 1000
  assert max(meta["table_sizes"]) <= 701
  with np.load(os.path.join(tmp_path / "spark", store.VOCAB_FILE)) as z:
    assert min(z[name].size for name in z.files) >= 1


def test_kaggle_reference_vocabulary_is_byte_identical(sc, tmp_path):
  raw = [_raw(str(tmp_path / "train.txt"), 4000, seed=4)]
  meta = _compare(sc, tmp_path, raw, 60_000, max_ind_range=1000, vocabulary="reference")
  # A single-machine run with the same options finds the Spark directory finished and keeps it.
  out = str(tmp_path / "spark")
  before = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)}
  options = dict(max_ind_range=1000, vocabulary="reference", progress=False)
  assert preprocess_criteo(raw, out, **options) == meta
  assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)} == before


def test_terabyte_days_gzip_and_plain_are_byte_identical(sc, tmp_path):
  # A gzip day is one task; the plain last day is cut into ranges, so test and validation are
  # cut across parts by kept rows.
  days = [
    _raw(str(tmp_path / "day_0"), 2000, seed=10),
    _gzip(_raw(str(tmp_path / "day_1"), 1500, seed=11)),
    _raw(str(tmp_path / "day_2"), 1800, seed=12, unterminated=True),
  ]
  meta = _compare(
    sc,
    tmp_path,
    days,
    120_000,
    dataset="terabyte",
    min_frequency=2,
    sub_sample_rate=0.5,
    sub_sample_seed=9,
  )
  assert meta["dropped_negatives"] > 500
  assert meta["num_rows"]["test"] - meta["num_rows"]["validation"] in (0, 1)


def test_cli_refuses_a_missing_file_before_starting_spark(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    spark_preprocess.main([str(tmp_path / "nope.txt"), "--out_dir", str(tmp_path / "out")])
  assert e.value.code == 2
  assert "nope.txt: no such file" in capsys.readouterr().err


def test_cli_refuses_bad_options(tmp_path, capsys):
  raw = _raw(str(tmp_path / "train.txt"), 200, seed=1)
  for flag in (["--range_mb", "0"], ["--data_sub_sample_rate", "1.5"], ["--min_frequency", "0"]):
    with pytest.raises(SystemExit) as e:
      spark_preprocess.main([raw, "--out_dir", str(tmp_path / "out"), *flag])
    assert e.value.code == 2
  err = capsys.readouterr().err
  assert "--range_mb=0" in err and "sub_sample_rate < 1" in err and "min_frequency >= 1" in err


def test_cli_without_java_says_so(tmp_path, capsys, monkeypatch):
  pytest.importorskip("pyspark", reason="pyspark is not installed (pip install -e .[spark])")
  raw = _raw(str(tmp_path / "train.txt"), 200, seed=1)
  monkeypatch.setattr(shutil, "which", lambda name: None)
  monkeypatch.delenv("JAVA_HOME", raising=False)
  monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
  with pytest.raises(SystemExit) as e:
    spark_preprocess.main([raw, "--out_dir", str(tmp_path / "out")])
  assert e.value.code == 2
  assert "Spark needs Java 17 or later" in capsys.readouterr().err
