"""From --dataset to a preprocessed directory: generate, preprocess or explain what is missing."""

from __future__ import annotations

import os
import sys
from typing import Any

from absl import logging

from dlrm_jax.config import DATASETS, HASH_ROWS_CAP, Config, ConfigError
from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data import raw_ids, store
from dlrm_jax.data.bad_rows import BadRowError
from dlrm_jax.data.criteo_format import TERABYTE_NUM_DAYS
from dlrm_jax.data.multi_hot import mlperf_multi_hot, prepare_synthetic_multi_hot
from dlrm_jax.data.preprocess import preprocess_criteo
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
  """The preprocessed directory of a Criteo dataset for this run's preprocessing flags."""
  name = store.processed_name(
    config.max_ind_range,
    config.min_frequency,
    config.data_sub_sample_rate,
    config.vocabulary,
    config.data_id_mapping,
  )
  return os.path.join(
    config.data_dir, KAGGLE_DIR if config.dataset == "kaggle" else TERABYTE_DIR, name
  )


def will_preprocess(config: Config) -> bool:
  """Whether resolve_dataset will parse raw Criteo text: the raw files are there and this
  run's processed directory is not finished. A run then has seconds for work that needs no data."""
  if config.dataset not in ("kaggle", "terabyte"):
    return False
  try:
    raw_files(config)
  except ConfigError:
    return False
  return not os.path.exists(os.path.join(processed_dir(config), store.METADATA_FILE))


def resolve_dataset(config: Config, *, progress: bool = True) -> tuple[str, dict[str, Any]]:
  """Returns (preprocessed directory, its metadata), preparing it if needed.

  Every preprocessing flag (--max_ind_range, --min_frequency, --data_sub_sample_rate, --strict,
  --vocabulary) acts on every dataset, built-in data included: it goes through the same pipeline.
  """
  if config.dataset not in DATASETS:
    raise ConfigError(f"--dataset={config.dataset}: not supported")
  options = dict(
    max_ind_range=config.max_ind_range,
    min_frequency=config.min_frequency,
    sub_sample_rate=config.data_sub_sample_rate,
    strict=config.strict,
    vocabulary=config.vocabulary,
    id_mapping=config.data_id_mapping,
    progress=progress,
  )
  bag_sizes = config.bag_sizes(cf.NUM_SPARSE)
  try:
    if config.dataset == "synthetic" and bag_sizes:
      # Bags drawn by the generator itself; made with the default preprocessing options
      # (check_data_matches_model refuses others, naming the flag).
      processed = prepare_synthetic_multi_hot(
        config.data_dir, config.synthetic_rows, config.synthetic_seed, bag_sizes, progress=progress
      )
      metadata = store.read_metadata(processed)
    elif config.dataset == "synthetic":
      processed = prepare_synthetic(
        config.data_dir,
        config.synthetic_rows,
        config.synthetic_seed,
        tail=config.synthetic_tail,
        **options,
      )
      metadata = store.read_metadata(processed)
    else:
      processed = processed_dir(config)
      metadata = preprocess_criteo(
        raw_files(config),
        processed,
        dataset=config.dataset,
        workers=config.preprocess_workers,
        **options,
      )
      if bag_sizes:
        # MLPerf DLRM-DCNv2's bags, made from the one-hot ids (multi_hot.py).
        processed = mlperf_multi_hot(processed, bag_sizes, progress=progress)
        metadata = store.read_metadata(processed)
  except BadRowError as e:
    raise ConfigError(str(e)) from None
  summary = metadata.get("bad_rows_summary")
  if summary and metadata.get("bad_rows", {}).get("total"):
    logging.warning("%s: %s", processed, summary)
    if progress:
      print(f"{processed}: {summary} (--strict stops at the first instead)", file=sys.stderr)
  return processed, metadata


# (flag, metadata key, value of metadata written before the key existed)
_OPTION_KEYS = (
  ("max_ind_range", "max_ind_range", None),
  ("min_frequency", "min_frequency", None),
  ("data_sub_sample_rate", "sub_sample_rate", None),
  ("vocabulary", "vocabulary", "train"),
)


def check_data_matches_model(config: Config, processed: str, metadata: dict[str, Any]) -> None:
  """ConfigError before training unless the preprocessed data is what this run's flags ask for.

  The model's tables are sized from metadata["table_sizes"], so those are checked against what
  can differ: the options the data was made with (against the flags), the vocabularies saved
  beside it (a table needs one row per value, plus row 0 under --vocabulary=train), and the
  bound --max_ind_range sets. The reference fails mid-run with "index out of range" instead.
  """
  made_with = metadata.get("id_mapping", "vocabulary")
  if made_with != config.data_id_mapping:
    raise ConfigError(
      f"--id_mapping={config.id_mapping} but {processed} was made with id_mapping={made_with}"
    )
  if config.raw_ids:
    _check_raw_data_matches(config, processed, metadata)
    return
  want = config.bag_sizes(len(metadata["table_sizes"]))
  have = metadata.get("multi_hot_sizes")
  if (list(want) if want else None) != have:
    raise ConfigError(
      f"--multi_hot_sizes={','.join(map(str, config.multi_hot_sizes))} but {processed} has "
      f"{'bags of ' + ','.join(map(str, have)) if have else 'one id per feature'}"
    )
  for flag, key, old in _OPTION_KEYS:
    made_with = metadata.get(key, old)
    if made_with != getattr(config, flag):
      raise ConfigError(
        f"--{flag}={getattr(config, flag)} but {processed} was made with {flag}={made_with}"
      )
  synthetic = metadata.get("synthetic")
  if (config.dataset == "synthetic") != (synthetic is not None):
    raise ConfigError(f"--dataset={config.dataset} but {processed} holds other data")
  _check_synthetic_options(config, processed, synthetic)
  sizes = [int(s) for s in metadata["table_sizes"]]
  names = list(metadata["sparse_names"])
  if len(sizes) != len(names):
    raise ConfigError(f"{processed}: {len(sizes)} table sizes for {len(names)} sparse features")
  values = store.vocab_sizes(processed, names)
  reserved = 1 if config.vocabulary == "train" else 0
  bound = config.max_ind_range + reserved if config.max_ind_range else None
  for name, size, count in zip(names, sizes, values, strict=True):
    if size != count + reserved:
      raise ConfigError(
        f"{processed}: table {name} has {size} rows in metadata.json but its vocabulary has "
        f"{count} values (+{reserved}): the directory is damaged; delete it to rebuild"
      )
    if bound is not None and size > bound:
      raise ConfigError(
        f"{processed}: table {name} has {size} rows, more than --max_ind_range="
        f"{config.max_ind_range} allows ({bound}): the data was not preprocessed with it"
      )


def _check_raw_data_matches(config: Config, processed: str, metadata: dict[str, Any]) -> None:
  """check_data_matches_model for raw values: only sub-sampling and the generator's options."""
  if metadata.get("sub_sample_rate") != config.data_sub_sample_rate:
    raise ConfigError(
      f"--data_sub_sample_rate={config.data_sub_sample_rate} but {processed} was made with "
      f"{metadata.get('sub_sample_rate')}"
    )
  synthetic = metadata.get("synthetic")
  if (config.dataset == "synthetic") != (synthetic is not None):
    raise ConfigError(f"--dataset={config.dataset} but {processed} holds other data")
  _check_synthetic_options(config, processed, synthetic)


def _check_synthetic_options(config: Config, processed: str, synthetic: dict | None) -> None:
  """The generator's options recorded beside built-in data against the flags."""
  if synthetic is None:
    return
  # Data generated before --synthetic_tail existed has no "tail": it had none.
  made = {**synthetic, "tail": synthetic.get("tail", 0.0)}
  for flag, key in (
    ("synthetic_rows", "num_rows"),
    ("synthetic_seed", "seed"),
    ("synthetic_tail", "tail"),
  ):
    if made.get(key) != getattr(config, flag):
      raise ConfigError(
        f"--{flag}={getattr(config, flag)} but {processed} was generated with {made.get(key)}"
      )


def model_table_sizes(config: Config, metadata: dict[str, Any]) -> list[int]:
  """Rows of each table: the vocabulary's (metadata); under --id_mapping=hash --hash_rows';
  under --id_mapping=managed --managed_capacity's plus the unknown row. The default rows (or
  capacity) are --max_ind_range if set, else min(training rows, HASH_ROWS_CAP): no table can
  meet more distinct training ids than the training split has rows."""
  if not config.raw_ids:
    return [int(s) for s in metadata["table_sizes"]]
  default = config.max_ind_range or min(int(metadata["num_rows"]["train"]), HASH_ROWS_CAP)
  names = metadata["sparse_names"]
  try:
    if config.id_mapping == "hash":
      return raw_ids.table_rows(config.hash_rows, default, names)
    capacity = raw_ids.table_rows(config.managed_capacity, default, names, "--managed_capacity")
    return [ids + 1 for ids in capacity]
  except ValueError as e:
    raise ConfigError(str(e)) from None
