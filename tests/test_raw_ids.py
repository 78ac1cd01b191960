"""--id_mapping=hash: raw values on disk vs a row-by-row reference, rows, flags, a tiny run."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import criteo_reference as ref
import dlrm_reference
import numpy as np
import pytest
from main_runner import run_main

from dlrm_jax.checkpoint import manager as checkpointing
from dlrm_jax.config import Config, ConfigError
from dlrm_jax.data import preprocess, raw_ids
from dlrm_jax.data.datasets import check_data_matches_model, model_table_sizes, resolve_dataset
from dlrm_jax.data.store import open_split, processed_name, read_metadata
from dlrm_jax.data.synthetic import generate_criteo_tsv
from dlrm_jax.faults import CheckpointMismatch

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "criteo_samples"
NAMES = [f"C{i}" for i in range(1, 27)]


def reference_raw(fields: list[bytes]) -> list[int]:
  """The 26 categoricals of one good labelled row, by definition: int(hex, 16), missing = 0."""
  return [int(f, 16) if f else 0 for f in fields[14:40]]


def raw_file(tmp_path) -> Path:
  """Synthetic rows with bad lines mixed in, and real rows when the samples are there."""
  path = tmp_path / "train.txt"
  generate_criteo_tsv(str(path), 3001, seed=5)
  lines = path.read_bytes().split(b"\n")[:-1]
  lines[17] = lines[17].replace(b"\t", b"\tzz", 1)  # a bad integer
  lines[900] = b"\t".join(lines[900].split(b"\t")[:-1] + [b"123456789"])  # 9 hex digits
  lines[1500] = b"\t".join(lines[1500].split(b"\t")[:-1] + [b"0FfFfFfF"])  # upper case, good
  real = SAMPLES / "kaggle_train_rows.tsv"
  if real.exists():
    lines += real.read_bytes().split(b"\n")[:-1][:2000]
  path.write_bytes(b"\n".join(lines) + b"\n")
  return path


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_hash_preprocessing_matches_row_by_row_reference(tmp_path, rate):
  path = raw_file(tmp_path)
  out = str(tmp_path / "out")
  meta = preprocess.preprocess_criteo(
    [str(path)], out, id_mapping="hash", sub_sample_rate=rate, chunk_rows=500, progress=False
  )
  assert meta["id_mapping"] == "hash" and "table_sizes" not in meta
  assert meta["bad_rows"]["total"] == 2
  days = ref.kaggle_days(ref.physical_lines(path.read_bytes()))
  expected = ref.split_days(days, rate=rate, seed=0)
  rows = [3, 1000, 1 << 20]
  for split, fields in expected.items():
    arrays = open_split(out, split, in_memory=False)
    assert arrays.sparse.dtype == np.uint32
    want = np.array([reference_raw(f) for f in fields], np.uint64).reshape(-1, 26)
    np.testing.assert_array_equal(arrays.sparse, want)
    np.testing.assert_array_equal(arrays.label, [float(f[0]) for f in fields])
    np.testing.assert_allclose(arrays.dense, [ref.dense_of(f[1:14]) for f in fields], rtol=2e-7)
    # The rows fed to the tables: raw % rows, written from the definition per value.
    per_table = [rows[t % 3] for t in range(26)]
    hashed = raw_ids.hash_ids(np.asarray(arrays.sparse[:300]), per_table)
    by_hand = [[v % per_table[t] for t, v in enumerate(reference_raw(f))] for f in fields[:300]]
    np.testing.assert_array_equal(hashed, np.array(by_hand, np.int64).reshape(-1, 26))


def test_hash_directory_name_and_refused_options(tmp_path):
  assert processed_name(0, 1, 0.0, "train", "hash") == "processed_raw"
  assert processed_name(7, 1, 0.25, "train", "hash") == "processed_raw_s0.25"
  assert processed_name(0, 1, 0.0, "train") == "processed_m0_f1"
  path = tmp_path / "train.txt"
  generate_criteo_tsv(str(path), 1000, seed=1)
  for bad in (dict(vocabulary="reference"), dict(min_frequency=2), dict(dataset="terabyte")):
    with pytest.raises(ValueError, match="id_mapping=hash"):
      preprocess.preprocess_criteo([str(path)], str(tmp_path / "o"), id_mapping="hash", **bad)


def test_table_rows_defaults_and_overrides():
  assert raw_ids.table_rows((), 50, NAMES) == [50] * 26
  rows = raw_ids.table_rows((("", 9), ("C3", 4), ("C26", 1)), 50, NAMES)
  assert rows == [9, 9, 4] + [9] * 22 + [1]
  with pytest.raises(ValueError, match="--hash_rows=C99:4"):
    raw_ids.table_rows((("C99", 4),), 50, NAMES)


def test_hash_ids_takes_the_int32_view_of_raw_values():
  raw = np.array([[0, 1, 2**31, 2**32 - 1]], np.uint32)
  want = [[0, 1, 2**31 % 7, (2**32 - 1) % 7]]
  np.testing.assert_array_equal(raw_ids.hash_ids(raw, [7] * 4), want)
  np.testing.assert_array_equal(raw_ids.hash_ids(raw.view(np.int32), [7] * 4), want)


@pytest.mark.parametrize(
  "fields,flag",
  [
    (dict(vocabulary="reference"), "--vocabulary=reference"),
    (dict(min_frequency=2), "--min_frequency=2"),
    (dict(multi_hot_sizes=(2,) * 26), "--multi_hot_sizes"),
    (dict(dataset="terabyte"), "--dataset=terabyte"),
    (dict(hash_rows=(("", 0),)), "--hash_rows=0"),
    (dict(hash_rows=(("C3", 2**31),)), "--hash_rows=C3:2147483648"),
  ],
)
def test_config_refuses_what_hash_cannot_honour(fields, flag):
  with pytest.raises(ConfigError, match=flag):
    Config(id_mapping="hash", **fields).validate()


def test_config_refuses_hash_rows_without_hash_and_unknown_mapping():
  with pytest.raises(ConfigError, match="--hash_rows"):
    Config(hash_rows=(("", 5),)).validate()
  with pytest.raises(ConfigError, match="--hash_rows"):
    Config(id_mapping="managed", hash_rows=(("", 5),)).validate()
  with pytest.raises(ConfigError, match="--id_mapping='modulo'"):
    Config(id_mapping="modulo").validate()


def test_bad_hash_rows_flag_is_refused_naming_it(tmp_path):
  proc = run_main(tmp_path / "w", tmp_path / "d", "--id_mapping=hash", "--hash_rows=C3:x")
  assert proc.returncode == 2 and "--hash_rows='C3:x'" in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def test_tiny_hash_run_learns_predicts_and_refuses_another_mapping(tmp_path):
  work, data = tmp_path / "work", tmp_path / "data"
  args = ("--id_mapping=hash", "--hash_rows=5000,C1:300", "--max_steps=40")
  proc = run_main(work, data, *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  processed = next(data.glob("synthetic_*/processed_raw"))
  final = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
  auc = [r["auc"] for r in final if r.get("split") == "test"]
  assert auc and auc[-1] > 0.6, auc
  # --mode=predict on raw unlabeled lines: scored as training feeds ids (raw % rows).
  train = next(data.glob("synthetic_*/train.txt")).read_bytes().split(b"\n")[:400]
  test_file = tmp_path / "test.txt"
  test_file.write_bytes(b"\n".join(line.split(b"\t", 1)[1] for line in train) + b"\n")
  out = tmp_path / "sub.csv"
  proc = run_main(
    work, data, *args, "--mode=predict", f"--predict_file={test_file}", f"--predictions_file={out}"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = np.loadtxt(out.read_text().splitlines()[1:], delimiter=",")[:, 1]
  rows = [300] + [5000] * 25
  fields = [line.split(b"\t") for line in train]
  sparse = np.array([[v % rows[t] for t, v in enumerate(reference_raw(f))] for f in fields])
  dense = np.array([ref.dense_of(f[1:14]) for f in fields], np.float32)
  names = read_metadata(str(processed))["sparse_names"]
  params, tables = dlrm_reference.read_checkpoint(work / "checkpoints" / "40")
  assert [tables[n].shape[0] for n in names] == rows
  logits = dlrm_reference.forward(params, [tables[n] for n in names], dense, sparse)
  np.testing.assert_allclose(got, 1 / (1 + np.exp(-logits)), atol=2e-6)
  # The exported model takes the raw values and hashes them itself, the same way.
  proc = run_main(work, data, *args, "--mode=export", f"--export_dir={tmp_path / 'export'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  spec = importlib.util.spec_from_file_location("exported", tmp_path / "export" / "dlrm_loader.py")
  loader = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(loader)
  raw = np.array([reference_raw(f) for f in fields], np.uint32)
  exported = loader.load(str(tmp_path / "export"))(dense, raw)
  np.testing.assert_allclose(exported, 1 / (1 + np.exp(-logits)), atol=2e-6)
  # A value that does not parse: refused naming the file and line.
  lines = test_file.read_bytes().split(b"\n")
  lines[6] = lines[6][:-3] + b"xyz"
  test_file.write_bytes(b"\n".join(lines))
  proc = run_main(work, data, *args, "--mode=predict", f"--predict_file={test_file}")
  assert proc.returncode == 2 and f"{test_file}:7" in proc.stderr, proc.stderr[-2000:]
  # Resuming the hash run under the vocabulary: refused, naming id_mapping.
  proc = run_main(work, data, "--max_steps=50")
  assert proc.returncode != 0 and "id_mapping: checkpoint 'hash'" in proc.stderr


def test_data_check_and_rows_follow_id_mapping(tmp_path):
  hashed = Config(dataset="synthetic", data_dir=str(tmp_path), synthetic_rows=1000)
  hashed = dataclasses.replace(hashed, id_mapping="hash")
  processed, meta = resolve_dataset(hashed, progress=False)
  assert processed.endswith("processed_raw")
  check_data_matches_model(hashed, processed, meta)
  train = meta["num_rows"]["train"]
  assert model_table_sizes(hashed, meta) == [train] * 26  # min(training rows, 10M)
  capped = dataclasses.replace(hashed, max_ind_range=77, hash_rows=(("C2", 5),))
  assert model_table_sizes(capped, meta) == [77, 5] + [77] * 24
  with pytest.raises(ConfigError, match="--hash_rows=C0:5"):
    model_table_sizes(dataclasses.replace(hashed, hash_rows=(("C0", 5),)), meta)
  vocab = dataclasses.replace(hashed, id_mapping="vocabulary")
  with pytest.raises(ConfigError, match="--id_mapping=vocabulary but .* id_mapping=hash"):
    check_data_matches_model(vocab, processed, meta)
  vocab_dir, vocab_meta = resolve_dataset(vocab, progress=False)
  with pytest.raises(ConfigError, match="--id_mapping=hash but .* id_mapping=vocabulary"):
    check_data_matches_model(hashed, vocab_dir, vocab_meta)
  with pytest.raises(ConfigError, match="--data_sub_sample_rate=0.5"):
    check_data_matches_model(dataclasses.replace(hashed, data_sub_sample_rate=0.5), processed, meta)


def test_checkpoint_identity_holds_id_mapping():
  saved = checkpointing.identity(Config(id_mapping="hash"), ["C1"], [10])
  now = checkpointing.identity(Config(), ["C1"], [10])
  for resume in (True, False):  # loading for eval, predict or export is refused too
    with pytest.raises(CheckpointMismatch, match="id_mapping: checkpoint 'hash'"):
      checkpointing.check_compatible({"identity": saved}, now, "ckpt", resume=resume)
  # A checkpoint from before the flag existed used the vocabulary.
  old = {k: v for k, v in now.items() if k != "id_mapping"}
  checkpointing.check_compatible({"identity": old}, now, "ckpt", resume=True)
