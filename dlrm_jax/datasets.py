"""From --dataset to a preprocessed directory: generate, preprocess or explain what is missing."""

from __future__ import annotations

import os
from typing import Any

from dlrm_jax.config import Config, ConfigError
from dlrm_jax.data.loader import read_metadata
from dlrm_jax.data.preprocess import preprocess_criteo
from dlrm_jax.data.synthetic import prepare_synthetic

KAGGLE_DIR = "criteo_kaggle"


def _missing_data_message(dataset: str, expected: str) -> str:
  return (f"--dataset={dataset}: no data at {expected}. Download Criteo's dataset yourself "
          f"(see data/README.md for where) and put it there, or pass --data_dir. To try "
          f"dlrm-jax without it, run on built-in data: python main.py "
          f"--flagfile=experiments/synthetic.flags")


def resolve_dataset(config: Config, *, progress: bool = True) -> tuple[str, dict[str, Any]]:
  """Returns (preprocessed directory, its metadata), preparing it if needed."""
  if config.dataset == "synthetic":
    processed = prepare_synthetic(config.data_dir, config.synthetic_rows, config.synthetic_seed,
                                  progress=progress)
    return processed, read_metadata(processed)
  if config.dataset == "kaggle":
    raw = os.path.join(config.data_dir, KAGGLE_DIR, "train.txt")
    if not os.path.exists(raw):
      raise ConfigError(_missing_data_message("kaggle", raw))
    processed = os.path.join(config.data_dir, KAGGLE_DIR,
                             f"processed_m{config.max_ind_range}_f{config.min_frequency}")
    metadata = preprocess_criteo([raw], processed, dataset="kaggle",
                                 max_ind_range=config.max_ind_range,
                                 min_frequency=config.min_frequency, progress=progress)
    return processed, metadata
  raise ConfigError(f"--dataset={config.dataset}: not supported yet")
