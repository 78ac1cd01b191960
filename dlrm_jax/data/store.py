"""The preprocessed directory's on-disk format: names, metadata.json, vocab.npz, split arrays.

Writers (preprocess.py, terabyte.py, columns.py) and the reader (loader.py) both
depend on this module and on nothing of each other. A directory holds, per split
in splits.SPLITS, {split}_dense.npy f32[N, 13], {split}_sparse.npy i32[N, 26] and
{split}_label.npy f32[N]; vocab.npz (per feature its sorted raw values); and
metadata.json, written last: its presence means the directory is finished.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from dlrm_jax.data import bad_rows
from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data import splits as splits_lib
from dlrm_jax.data import vocab as vocab_lib

FORMAT_VERSION = 2
METADATA_FILE = "metadata.json"
VOCAB_FILE = "vocab.npz"
# Suffix of a file still being written; it is renamed into place when complete.
PARTIAL = ".partial"
FIELDS: tuple[str, ...] = ("dense", "sparse", "label")
SPLIT_RULES = {
  "kaggle": "the file's lines are cut into {days} days, the last halved into test and validation",
  "terabyte": "the last of the {days} day files is halved into test and validation",
}
ID_CONVENTIONS = {
  "train": (
    "per feature, training-days values (after % max_ind_range) sorted ascending get ids 1..V; "
    "id 0 = missing, unseen in training, or rarer than min_frequency; table size V + 1"
  ),
  "reference": (
    "per feature, every distinct value of every kept row of all days (after % max_ind_range; "
    "a missing value is the value 0), sorted ascending, gets ids 0..V-1; table size V "
    "(facebookresearch/dlrm's sizes)"
  ),
}
# Splits smaller than this are copied into RAM: random row gathers from a
# memmap pay page-cache lookups that plain arrays do not.
_IN_MEMORY_BYTES = 4 << 30


def processed_name(
  max_ind_range: int,
  min_frequency: int,
  sub_sample_rate: float,
  vocabulary: str,
  id_mapping: str = "vocabulary",
) -> str:
  """Directory name of one set of preprocessing options, e.g. processed_m0_f1; raw values
  (--id_mapping=hash, made without the vocabulary options) go to processed_raw[_s...]."""
  sub = f"_s{sub_sample_rate:g}" if sub_sample_rate else ""
  if id_mapping == "hash":
    return f"processed_raw{sub}"
  ref = "_vreference" if vocabulary == "reference" else ""
  return f"processed_m{max_ind_range}_f{min_frequency}{sub}{ref}"


def split_file(out_dir: str, split: str, field: str) -> str:
  """Path of one output array, e.g. train_sparse.npy."""
  return os.path.join(out_dir, f"{split}_{field}.npy")


def source_fingerprint(raw_files: Sequence[str]) -> list[dict[str, Any]]:
  """(absolute path, size, mtime) of each raw file: part of a cached directory's identity."""
  out = []
  for path in raw_files:
    st = os.stat(path)
    out.append({"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
  return out


def write_json_atomic(path: str, obj: dict[str, Any]) -> None:
  """Write JSON to a temporary name, fsync, then rename: readers see all of it or nothing."""
  tmp = path + PARTIAL
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def remove_partial_files(out_dir: str) -> None:
  """Delete the half-written files (names with PARTIAL) a killed run left in out_dir."""
  for name in os.listdir(out_dir):
    path = os.path.join(out_dir, name)
    if PARTIAL in name and os.path.isfile(path):
      os.remove(path)


def read_metadata(processed_dir: str) -> dict[str, Any]:
  """metadata.json of a finished preprocessing run."""
  path = os.path.join(processed_dir, METADATA_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{path} missing: {processed_dir} is not a finished preprocessed directory"
    )
  with open(path) as f:
    return json.load(f)


def read_json_matching(path: str, expected: dict[str, Any]) -> dict[str, Any] | None:
  """The JSON object at `path` if it exists and its keys equal `expected`, else None."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  return record if all(record.get(k) == v for k, v in expected.items()) else None


def cached_metadata(out_dir: str, expected: dict[str, Any]) -> dict[str, Any] | None:
  """The metadata of a finished directory whose options equal `expected`, else None."""
  meta = read_json_matching(os.path.join(out_dir, METADATA_FILE), expected)
  if meta is None:
    return None
  for split in splits_lib.SPLITS:
    for field in FIELDS:
      if not os.path.exists(split_file(out_dir, split, field)):
        return None
  return meta


def save_vocab(out_dir: str, vocabs: Sequence[np.ndarray]) -> None:
  """vocab.npz: per sparse feature its vocabulary uint32[v] (value vocab[k] has id k + 1)."""
  tmp = os.path.join(out_dir, VOCAB_FILE + PARTIAL + ".npz")
  # np.savez's layout (stored .npy members, zip64) with a fixed member time instead of the
  # clock's: the same vocabularies give the same bytes on every run and on every engine.
  with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
    for name, v in zip(cf.SPARSE_NAMES, vocabs, strict=True):
      info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
      with z.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.asanyarray(v), allow_pickle=False)
  os.replace(tmp, os.path.join(out_dir, VOCAB_FILE))


def load_vocab(processed_dir: str, names: Sequence[str]) -> list[np.ndarray]:
  """The vocabularies saved by save_vocab, in the order of `names`."""
  with np.load(os.path.join(processed_dir, VOCAB_FILE)) as z:
    return [z[name] for name in names]


def finish_outputs(
  out_dir: str,
  options: dict[str, Any],
  vocabs: list[np.ndarray],
  counted: list[tuple[np.ndarray, np.ndarray]],
  writers: dict[str, Any],
  report: bad_rows.BadRowReport,
  extra: dict[str, Any],
) -> dict[str, Any]:
  """Saves the vocabularies; returns the metadata shared by Kaggle and Terabyte, plus ``extra``.

  ``counted``: per feature (distinct training values, counts); ``writers``: split -> its
  committed writer (``rows``, ``positives``).
  """
  rows = {s: w.rows for s, w in writers.items()}
  for split, n in rows.items():
    if n == 0:
      files = ", ".join(src["path"] for src in options["source"])
      raise bad_rows.BadRowError(
        f"{files}: the {split} split is empty (too few lines, or every line of it was bad or "
        f"sub-sampled away): {report.summary()}. Training, evaluation and validation each need "
        f"rows; {SPLIT_RULES[options['dataset']].format(days=options['num_days'])}"
      )
  save_vocab(out_dir, vocabs)
  positives = {s: w.positives for s, w in writers.items()}
  vocabulary = options.get("vocabulary", "train")
  counted_key = "distinct_train_values" if vocabulary == "train" else "distinct_values"
  return {
    **options,
    "table_sizes": [vocab_lib.table_size(v, vocabulary) for v in vocabs],
    "num_rows": rows,
    "positive_rate": {s: (positives[s] / rows[s] if rows[s] else 0.0) for s in rows},
    counted_key: [int(v.size) for v, _ in counted],
    "num_dense": cf.NUM_DENSE,
    "num_sparse": cf.NUM_SPARSE,
    "dense_names": list(cf.DENSE_NAMES),
    "sparse_names": list(cf.SPARSE_NAMES),
    "dense_transform": "log(max(x, 0) + 1) in float32; missing -> 0",
    "id_convention": ID_CONVENTIONS[vocabulary],
    "bad_rows": report.to_json(),
    "bad_rows_summary": report.summary(),
    **extra,
  }


def vocab_sizes(processed_dir: str, names: Sequence[str]) -> list[int]:
  """Number of values of each saved vocabulary, read from the .npy headers only."""
  sizes = []
  with zipfile.ZipFile(os.path.join(processed_dir, VOCAB_FILE)) as z:
    for name in names:
      with z.open(f"{name}.npy") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = (
          np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        )
        shape, _, _ = read_header(f)
      sizes.append(int(shape[0]))
  return sizes


def check_column_file(path: str) -> None:
  """Raise ValueError naming the file and the missing rows when it is shorter than its header says.

  A truncated file would otherwise fail deep inside NumPy (or, memory-mapped, crash the
  process with SIGBUS when the missing rows are first touched).
  """
  with open(path, "rb") as f:
    try:
      version = np.lib.format.read_magic(f)
      read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
      )
      shape, _, dtype = read_header(f)
    except ValueError as e:
      raise ValueError(f"{path}: not a readable .npy column file ({e}); damaged on disk") from e
    data_start = f.tell()
  size = os.path.getsize(path)
  rows = shape[0] if shape else 1
  per_row = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
  have = (size - data_start) // per_row if per_row else rows
  if have < rows:
    raise ValueError(
      f"{path}: truncated: its header says {rows:,} rows but the file holds only {have:,} "
      f"({size:,} of {data_start + rows * per_row:,} bytes): rows {have}..{rows - 1} are "
      "missing; preprocess again (or restore the file)"
    )


@dataclasses.dataclass(frozen=True)
class SplitArrays:
  """One split's columns: dense f32[N, 13], sparse i32[N, 26], label f32[N] (memmaps or arrays)."""

  dense: np.ndarray
  sparse: np.ndarray
  label: np.ndarray

  @property
  def num_rows(self) -> int:
    return int(self.label.shape[0])


def open_split(processed_dir: str, split: str, *, in_memory: bool | None = None) -> SplitArrays:
  """Open one split; in_memory=None loads it into RAM when it is under 4 GiB, else memory-maps."""
  read_metadata(processed_dir)  # refuse half-written directories
  for f in FIELDS:
    check_column_file(split_file(processed_dir, split, f))
  arrays = {f: np.load(split_file(processed_dir, split, f), mmap_mode="r") for f in FIELDS}
  n = arrays["label"].shape[0]
  if arrays["dense"].shape != (n, cf.NUM_DENSE) or arrays["sparse"].shape[0] != n:
    shapes = ", ".join(f"{split_file(processed_dir, split, f)} {arrays[f].shape}" for f in FIELDS)
    raise ValueError(f"{processed_dir}/{split}: the column files disagree on rows: {shapes}")
  if in_memory is None:
    in_memory = sum(a.nbytes for a in arrays.values()) < _IN_MEMORY_BYTES
  if in_memory:
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
  return SplitArrays(**arrays)
