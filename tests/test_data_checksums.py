"""Per-chunk checksums: written beside a processed directory, verified by the block shuffle."""

from __future__ import annotations

import json
import shutil
import zlib

import numpy as np
import pytest

from dlrm_jax.data import checksums
from dlrm_jax.data.loader import BatchLoader
from dlrm_jax.data.store import open_split, split_file
from dlrm_jax.data.synthetic import prepare_synthetic


@pytest.fixture(scope="module")
def built_in(tmp_path_factory) -> str:
  return prepare_synthetic(str(tmp_path_factory.mktemp("built_in")), 3000, seed=0, progress=False)


@pytest.fixture
def processed(built_in, tmp_path) -> str:
  return str(shutil.copytree(built_in, tmp_path / "processed"))


def loader(processed: str, block_rows: int = 128) -> BatchLoader:
  arrays = open_split(processed, "train", in_memory=False)
  return BatchLoader(
    arrays,
    64,
    shuffle=True,
    order="blocks",
    block_rows=block_rows,
    buffer_blocks=2,
    checksums=checksums.load(processed, "train", arrays.num_rows),
  )


def test_recorded_checksums_are_the_crc32_of_each_chunk(processed):
  assert checksums.load(processed, "train", 10) is None  # none written yet
  written = checksums.add_checksums(processed, chunk_rows=64)
  assert len(written) == 3
  with open(checksums.checksums_file(processed, "train")) as f:
    record = json.load(f)
  sparse = np.load(split_file(processed, "train", "sparse"))
  expected = [zlib.crc32(sparse[lo : lo + 64].tobytes()) for lo in range(0, len(sparse), 64)]
  assert record["crc32"]["sparse"] == expected and record["num_rows"] == len(sparse)
  assert checksums.add_checksums(processed, chunk_rows=64) == []  # present: verified, kept
  ld = loader(processed)
  for step in range(ld.batches_per_epoch):  # an intact directory reads without complaint
    ld.get_batch(step)


def test_a_flipped_byte_is_reported_by_file_and_rows(processed, capsys):
  checksums.add_checksums(processed, chunk_rows=64)
  path = split_file(processed, "train", "sparse")
  data = np.load(path, mmap_mode="r")
  offset = data.offset + 100 * 26 * 4 + 7  # a byte of row 100: chunk 64..127
  del data
  with open(path, "r+b") as f:
    f.seek(offset)
    byte = f.read(1)
    f.seek(offset)
    f.write(bytes([byte[0] ^ 0x10]))
  ld = loader(processed)
  with pytest.raises(ValueError, match=r"train_sparse.npy: rows 64\.\.127 fail their checksum"):
    for step in range(ld.batches_per_epoch):
      ld.get_batch(step)
  assert checksums.main([processed]) == 2
  assert "rows 64..127 fail their checksum" in capsys.readouterr().err
