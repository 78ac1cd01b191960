"""From --dataset to a preprocessed directory: generate, preprocess or explain what is missing."""

from __future__ import annotations

import os
import sys
from typing import Any

from absl import logging

from dlrm_jax.config import Config, ConfigError
from dlrm_jax.data.bad_rows import BadRowError
from dlrm_jax.data.criteo_format import TERABYTE_NUM_DAYS
from dlrm_jax.data.preprocess import preprocess_criteo
from dlrm_jax.data.store import read_metadata
from dlrm_jax.data.synthetic import prepare_synthetic

KAGGLE_DIR = "criteo_kaggle"
TERABYTE_DIR = "criteo_terabyte"
DOWNLOAD = {
  "kaggle": (
    "Criteo AI Lab's dataset page https://ailab.criteo.com/ressources/ (\"Kaggle Display "
    "Advertising dataset\", dac.tar.gz) or Kaggle's criteo-display-ad-challenge; unpack "
    "train.txt (and test.txt) into {dir}"
  ),
  "terabyte": (
    "Criteo AI Lab's dataset page https://ailab.criteo.com/ressources/ (\"Criteo 1TB Click "
    'Logs dataset"); put day_0 ... day_23 (decompressed, or as day_N.gz) into {dir}'
  ),
}
SYNTHETIC_COMMAND = (
  "python main.py --dataset=synthetic (or --flagfile=experiments/tiny.flags for seconds)"
)


def missing_data_message(dataset: str, expected: str) -> str:
  where = DOWNLOAD[dataset].format(dir=os.path.dirname(expected) or ".")
  return (
    f"--dataset={dataset}: no data at {expected}. Download it yourself from {where} (licence "
    f"CC BY-NC-SA; details in data/README.md), or point --data_dir at its parent. To run "
    f"without it on built-in data: {SYNTHETIC_COMMAND}"
  )


def _find(path: str) -> str | None:
  for candidate in (path, path + ".gz"):
    if os.path.exists(candidate):
      return candidate
  return None


def raw_files(config: Config) -> list[str]:
  """The raw files of --dataset under --data_dir (a .gz twin is accepted); ConfigError if absent."""
  if config.dataset == "kaggle":
    expected = os.path.join(config.data_dir, KAGGLE_DIR, "train.txt")
    found = _find(expected)
    if found is None:
      raise ConfigError(missing_data_message("kaggle", expected))
    return [found]
  root = os.path.join(config.data_dir, TERABYTE_DIR)
  days = [_find(os.path.join(root, f"day_{d}")) for d in range(TERABYTE_NUM_DAYS)]
  absent = [f"day_{d}" for d, path in enumerate(days) if path is None]
  if absent:
    what = "any day file" if len(absent) == TERABYTE_NUM_DAYS else ", ".join(absent)
    raise ConfigError(
      missing_data_message("terabyte", os.path.join(root, "day_0")) + f" (missing: {what})"
    )
  return days


def processed_dir(config: Config) -> str:
  sub = f"_s{config.data_sub_sample_rate:g}" if config.data_sub_sample_rate else ""
  name = f"processed_m{config.max_ind_range}_f{config.min_frequency}{sub}"
  return os.path.join(
    config.data_dir, KAGGLE_DIR if config.dataset == "kaggle" else TERABYTE_DIR, name
  )


def resolve_dataset(config: Config, *, progress: bool = True) -> tuple[str, dict[str, Any]]:
  """Returns (preprocessed directory, its metadata), preparing it if needed."""
  if config.dataset == "synthetic":
    processed = prepare_synthetic(
      config.data_dir, config.synthetic_rows, config.synthetic_seed, progress=progress
    )
    return processed, read_metadata(processed)
  if config.dataset not in ("kaggle", "terabyte"):
    raise ConfigError(f"--dataset={config.dataset}: not supported")
  files = raw_files(config)
  processed = processed_dir(config)
  try:
    metadata = preprocess_criteo(
      files,
      processed,
      dataset=config.dataset,
      max_ind_range=config.max_ind_range,
      min_frequency=config.min_frequency,
      sub_sample_rate=config.data_sub_sample_rate,
      strict=config.strict,
      progress=progress,
    )
  except BadRowError as e:
    raise ConfigError(str(e)) from None
  summary = metadata.get("bad_rows_summary")
  if summary and metadata.get("bad_rows", {}).get("total"):
    logging.warning("%s: %s", processed, summary)
    if progress:
      print(f"{processed}: {summary} (--strict stops at the first instead)", file=sys.stderr)
  return processed, metadata


def check_data_matches_model(config: Config, metadata: dict[str, Any], table_sizes) -> None:
  """ConfigError before training when the preprocessed data does not fit the model's tables.

  The reference fails mid-run with "index out of range" when a model built for one
  preprocessing meets ids of another; here ids are checked against table sizes first,
  and a Criteo directory must have been made with this run's preprocessing flags.
  """
  from dlrm_jax.data.loader import validate_table_sizes

  try:
    validate_table_sizes(metadata, table_sizes)
  except ValueError as e:
    raise ConfigError(
      f"{e}. The preprocessed data does not fit the model: re-run preprocessing "
      f"with this run's flags, or use the data the model was built for"
    ) from None
  if config.dataset in ("kaggle", "terabyte"):
    for flag, key in (
      ("max_ind_range", "max_ind_range"),
      ("min_frequency", "min_frequency"),
      ("data_sub_sample_rate", "sub_sample_rate"),
    ):
      if key in metadata and metadata[key] != getattr(config, flag):
        raise ConfigError(
          f"--{flag}={getattr(config, flag)} but the preprocessed data was made "
          f"with {metadata[key]}"
        )
    if config.max_ind_range and max(metadata["table_sizes"]) > config.max_ind_range + 1:
      raise ConfigError(
        f"table sizes {max(metadata['table_sizes'])} exceed --max_ind_range="
        f"{config.max_ind_range} + 1: the data was not preprocessed with it"
      )
