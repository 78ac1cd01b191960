"""Every preprocessing flag acts on every dataset (built-in data too), the data-model check can
fail, an empty split is refused, and the checkpoint identity only holds flags that had an effect."""

from __future__ import annotations

import dataclasses
import json
import os

import criteo_reference as ref
import numpy as np
import pytest

from dlrm_jax.checkpoint import manager as checkpointing
from dlrm_jax.config import Config, ConfigError
from dlrm_jax.data import bad_rows, preprocess
from dlrm_jax.data.datasets import check_data_matches_model, resolve_dataset
from dlrm_jax.data.store import open_split
from dlrm_jax.faults import CheckpointMismatch


def synthetic_config(tmp_path, **kw) -> Config:
  return Config(dataset="synthetic", data_dir=str(tmp_path), synthetic_rows=1000, **kw)


def test_synthetic_honours_every_preprocessing_flag(tmp_path):
  config = synthetic_config(
    tmp_path, max_ind_range=7, min_frequency=2, data_sub_sample_rate=0.5, progress=False
  )
  processed, meta = resolve_dataset(config, progress=False)
  check_data_matches_model(config, processed, meta)
  raw = tmp_path / "synthetic_1000_0" / "train.txt"
  rows = ref.split_days(ref.kaggle_days(ref.physical_lines(raw.read_bytes())), rate=0.5)
  arrays, sizes = ref.encode(rows, max_ind_range=7, min_frequency=2)
  assert meta["table_sizes"] == sizes and max(sizes) <= 8
  for split, (dense, sparse, label) in arrays.items():
    got = open_split(processed, split)
    np.testing.assert_array_equal(got.label, label)
    np.testing.assert_array_equal(got.sparse, sparse)
    np.testing.assert_allclose(got.dense, dense, rtol=2e-7, atol=0)
  # Each set of options has its own directory; the defaults' is untouched by these.
  default, _ = resolve_dataset(synthetic_config(tmp_path), progress=False)
  assert default != processed

  # --strict: a bad line in the generated file stops the run, naming file:line; without it the
  # line is skipped and counted.
  with open(raw, "ab") as f:
    f.write(b"1\tnot a row\n")
  lines = len(ref.physical_lines(raw.read_bytes()))
  with pytest.raises(ConfigError, match=f"{raw}:{lines}: wrong column count"):
    resolve_dataset(dataclasses.replace(config, strict=True), progress=False)
  _, meta = resolve_dataset(config, progress=False)
  assert meta["bad_rows"]["total"] == 1


def test_data_check_compares_what_can_differ(tmp_path):
  config = synthetic_config(tmp_path)
  processed, meta = resolve_dataset(config, progress=False)
  check_data_matches_model(config, processed, meta)
  for flag, value in (
    ("max_ind_range", 10),
    ("min_frequency", 2),
    ("data_sub_sample_rate", 0.5),
    ("vocabulary", "reference"),
    ("synthetic_rows", 2000),
    ("synthetic_seed", 1),
    ("synthetic_tail", 0.5),
  ):
    with pytest.raises(ConfigError, match=f"--{flag}="):
      check_data_matches_model(dataclasses.replace(config, **{flag: value}), processed, meta)
  with pytest.raises(ConfigError, match="--dataset=kaggle"):
    check_data_matches_model(dataclasses.replace(config, dataset="kaggle"), processed, meta)
  # Table sizes against the vocabularies on disk, not against themselves.
  bad = json.loads(json.dumps(meta))
  bad["table_sizes"][4] += 1
  with pytest.raises(ConfigError, match="table C5 has"):
    check_data_matches_model(config, processed, bad)
  # A directory whose tables exceed --max_ind_range (metadata claiming the option).
  bad = dict(meta, max_ind_range=10)
  with pytest.raises(ConfigError, match="more than --max_ind_range=10"):
    check_data_matches_model(dataclasses.replace(config, max_ind_range=10), processed, bad)


@pytest.mark.parametrize("lines", [0, 1, 6, 13])
def test_empty_split_is_refused_naming_the_file(tmp_path, lines):
  raw = tmp_path / "train.txt"
  row = "\t".join(["1"] + ["2"] * 13 + ["00ab"] * 26)
  raw.write_text("".join(row + "\n" for _ in range(lines)))
  with pytest.raises(bad_rows.BadRowError, match=str(raw)) as e:
    preprocess.preprocess_criteo([str(raw)], str(tmp_path / "out"), progress=False)
  if lines:
    assert "split is empty" in str(e.value)
  assert not os.path.exists(tmp_path / "out" / "metadata.json")
  # 14 lines: every split has a row.
  raw.write_text("".join(row + "\n" for _ in range(14)))
  meta = preprocess.preprocess_criteo([str(raw)], str(tmp_path / "out"), progress=False)
  assert meta["num_rows"] == {"train": 12, "test": 1, "validation": 1}


def test_checkpoint_identity_ignores_flags_without_effect():
  def check(saved: Config, now: Config) -> None:
    ident = checkpointing.identity(now, ["C1"], [10])
    meta = {"identity": checkpointing.identity(saved, ["C1"], [10])}
    checkpointing.check_compatible(meta, ident, "ckpt", resume=True)

  kaggle = Config(dataset="kaggle")
  check(kaggle, dataclasses.replace(kaggle, synthetic_rows=5000, synthetic_seed=3))
  synth = Config(dataset="synthetic")
  for flag, value in (
    ("synthetic_rows", 5000),
    ("synthetic_tail", 0.5),
    ("max_ind_range", 10),
    ("data_sub_sample_rate", 0.5),
    ("vocabulary", "reference"),
  ):
    with pytest.raises(CheckpointMismatch, match=flag):
      check(synth, dataclasses.replace(synth, **{flag: value}))
    if not flag.startswith("synthetic_"):
      with pytest.raises(CheckpointMismatch, match=flag):
        check(kaggle, dataclasses.replace(kaggle, **{flag: value}))
  # A checkpoint from before a field existed had that field's default.
  ident = checkpointing.identity(synth, ["C1"], [10])
  old = {k: v for k, v in ident.items() if k not in ("vocabulary", "data_sub_sample_rate")}
  checkpointing.check_compatible({"identity": old}, ident, "ckpt", resume=True)
