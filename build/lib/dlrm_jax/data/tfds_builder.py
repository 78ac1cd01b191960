"""TensorFlow Datasets builder `criteo` (configs kaggle, terabyte) over dlrm_jax's own
preprocessing.

    import dlrm_jax.data.tfds_builder  # registers "criteo"
    builder = tfds.builder("criteo/kaggle", data_dir=...)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=RAW_DIR),
                                 file_format="array_record")  # array_record: no TensorFlow needed
    source = builder.as_data_source()["train"]  # or builder.as_dataset(...) with TensorFlow

Nothing downloads: the raw files are read from TFDS's manual directory
(Kaggle: train.txt; Terabyte: day_0 ... day_23, each optionally .gz). Splits,
ids and dense values are exactly those of dlrm_jax.data.preprocess with the
config's options (the preprocessed columns are kept beside the TFDS files and
reused). Examples: dense f32[13], sparse i32[26], label f32, keyed by row.
Only this module imports tensorflow_datasets.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data import preprocess
from dlrm_jax.data.store import open_split


@dataclasses.dataclass
class CriteoConfig(tfds.core.BuilderConfig):
  """Preprocessing options of one config (the reference's for each dataset)."""

  max_ind_range: int = 0
  min_frequency: int = 1
  sub_sample_rate: float = 0.0


def _raw_file(manual_dir: str, name: str) -> str:
  for candidate in (name, name + ".gz"):
    path = os.path.join(manual_dir, candidate)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(
    f"{os.path.join(manual_dir, name)} (or .gz) not found in TFDS's manual directory. "
    f"{Criteo.MANUAL_DOWNLOAD_INSTRUCTIONS}"
  )


class Criteo(tfds.core.GeneratorBasedBuilder):
  """Criteo Display Advertising (Kaggle) and 1TB Click Logs (Terabyte), preprocessed like the DLRM
  reference."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Reference DLRM preprocessing (dlrm_jax format 2)."}
  BUILDER_CONFIGS = [
    CriteoConfig(
      name="kaggle",
      description="train.txt: 7 days, days 0-5 train, day 6 halved into test, validation.",
    ),
    CriteoConfig(
      name="terabyte",
      description="day_0..day_23: days 0-22 train (negatives sub-sampled 0.875), "
      "day 23 halved; ids % 10M.",
      max_ind_range=10_000_000,
      sub_sample_rate=0.875,
    ),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Download the data yourself (see dlrm-jax's data/README.md: Criteo AI Lab's dataset pages; "
    "licence CC BY-NC-SA) and place Kaggle's train.txt, or Terabyte's day_0 ... day_23 "
    "(.gz allowed), in the manual directory (default ~/tensorflow_datasets/downloads/manual/)."
  )

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "dense": tfds.features.Tensor(shape=(cf.NUM_DENSE,), dtype=np.float32),
          "sparse": tfds.features.Tensor(shape=(cf.NUM_SPARSE,), dtype=np.int32),
          "label": tfds.features.Scalar(dtype=np.float32),
        }
      ),
      supervised_keys=None,
      homepage="https://ailab.criteo.com/ressources/",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = os.fspath(dl_manager.manual_dir)
    if self.builder_config.name == "kaggle":
      raw, dataset = [_raw_file(manual, "train.txt")], "kaggle"
    else:
      days = range(cf.TERABYTE_NUM_DAYS)
      raw, dataset = [_raw_file(manual, f"day_{d}") for d in days], "terabyte"
    processed = os.path.join(os.path.dirname(os.fspath(self.data_path)), "_dlrm_jax_processed")
    cfg = self.builder_config
    preprocess.preprocess_criteo(
      raw,
      processed,
      dataset=dataset,
      max_ind_range=cfg.max_ind_range,
      min_frequency=cfg.min_frequency,
      sub_sample_rate=cfg.sub_sample_rate,
      progress=False,
    )
    return {
      split: self._generate_examples(processed, split) for split in ("train", "test", "validation")
    }

  def _generate_examples(self, processed: str, split: str):
    arrays = open_split(processed, split, in_memory=False)
    block = 1 << 16
    for a in range(0, arrays.num_rows, block):
      dense = np.asarray(arrays.dense[a : a + block])
      sparse = np.asarray(arrays.sparse[a : a + block])
      label = np.asarray(arrays.label[a : a + block])
      for i in range(label.shape[0]):
        yield a + i, {"dense": dense[i], "sparse": sparse[i], "label": label[i]}
