"""The `criteo` TFDS builder on a small generated file.

Same splits and ids as dlrm_jax's preprocessing.
"""

import numpy as np
import pytest

from dlrm_jax.data import preprocess
from dlrm_jax.data.store import open_split
from dlrm_jax.data.synthetic import generate_criteo_tsv

tfds = pytest.importorskip(
  "tensorflow_datasets",
  reason="tensorflow-datasets is not installed (pip install tensorflow-datasets==4.9.10 "
  "importlib_resources==7.1.0; no TensorFlow needed)",
)


def test_kaggle_builder_matches_preprocessing(tmp_path):
  import dlrm_jax.data.tfds_builder  # noqa: F401  registers "criteo"

  manual = tmp_path / "manual"
  manual.mkdir()
  generate_criteo_tsv(str(manual / "train.txt"), 1403, seed=2)
  builder = tfds.builder("criteo/kaggle", data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(manual)), file_format="array_record"
  )
  sources = builder.as_data_source()
  ours = str(tmp_path / "ours")
  preprocess.preprocess_criteo([str(manual / "train.txt")], ours, progress=False)
  for split in ("train", "test", "validation"):
    expected = open_split(ours, split)
    source = sources[split]
    assert len(source) == expected.num_rows
    # TFDS shuffles examples by key; the key is the row number, so sort back by content.
    got = {
      f: np.stack([source[i][f] for i in range(len(source))]) for f in ("dense", "sparse", "label")
    }
    order_got = np.lexsort(np.concatenate([got["sparse"], got["dense"]], axis=1).T)
    order_exp = np.lexsort(np.concatenate([expected.sparse, expected.dense], axis=1).T)
    for f in ("dense", "sparse", "label"):
      np.testing.assert_array_equal(got[f][order_got], getattr(expected, f)[order_exp])
  # Missing raw data: a message that names the manual directory, no download attempted.
  empty = tmp_path / "empty_manual"
  empty.mkdir()
  with pytest.raises(Exception, match="manual"):
    tfds.builder("criteo/kaggle", data_dir=str(tmp_path / "tfds2")).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(empty)),
      file_format="array_record",
    )
