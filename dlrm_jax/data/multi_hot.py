"""Multi-hot datasets: built-in bags from the synthetic teacher, and MLPerf's one-hot -> multi-hot.

Both write an ordinary preprocessed directory (store.py) whose ``{split}_sparse.npy``
is ``i32[N, sum(L)]``: feature t's bag in the ``L_t`` consecutive columns from
``sum(L_0..L_{t-1})``, -1 marking an empty slot (the layout of dlrm_jax/sharding/bags.py),
and whose metadata.json carries ``multi_hot_sizes``. Dense and label arrays are
the one-hot directory's (hard-linked where possible).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data import splits as splits_lib
from dlrm_jax.data import store
from dlrm_jax.data import synthetic as syn
from dlrm_jax.data.columns import NpyAppender

# Rows per block of the streamed transform (bounded memory whatever the split's size).
CHUNK_ROWS = 1 << 18
SYNTHETIC_VERSION = 2


def sizes_tag(bag_sizes: Sequence[int]) -> str:
  """A short directory suffix naming the sizes."""
  text = ",".join(map(str, bag_sizes))
  return "mh" + hashlib.sha1(text.encode()).hexdigest()[:10]


def _link_or_copy(src: str, dst: str) -> None:
  if os.path.exists(dst):
    os.remove(dst)
  try:
    os.link(src, dst)
  except OSError:
    shutil.copyfile(src, dst)


# --- Built-in data -----------------------------------------------------------------------------


def _bag_rows(teacher: syn.Teacher, seed: int, chunk: int, n: int, bag_sizes: Sequence[int]):
  """One chunk: preprocessed dense f32[n, 13], sparse i32[n, S], label f32[n], teacher prob."""
  rng = np.random.default_rng([seed, 2, chunk])
  dense, _, ids, missing = syn._draw_features(teacher, rng, n)
  extra = syn._draw_extra_ids(teacher, np.random.default_rng([seed, 3, chunk]), n, bag_sizes)
  logit = syn._raw_logit(teacher, dense, ids, missing, extra)
  prob = syn._sigmoid(teacher.scale * logit + teacher.bias)
  label = (rng.random(n) < prob).astype(np.float32)
  cols = []
  for t in range(cf.NUM_SPARSE):
    # Id k + 1 is teacher id k; 0 is the missing category (alone in its bag).
    cols.append(np.where(missing[:, t], 0, ids[:, t] + 1)[:, None])
    cols.append(np.where(missing[:, t : t + 1], -1, extra[t] + 1))
  sparse = np.concatenate(cols, axis=1).astype(np.int32)
  dense_f = np.log1p(np.maximum(dense, 0)).astype(np.float32)
  return dense_f, sparse, label, prob


def prepare_synthetic_multi_hot(
  data_dir: str, num_rows: int, seed: int, bag_sizes: Sequence[int], *, progress: bool = True
) -> str:
  """Built-in multi-hot data (once): each feature's bag holds L ids drawn from the feature's id
  distribution, and the teacher's logit uses the bag's mean signal, so
  ``best_possible_auc`` (the teacher's own AUC on each split) stays exact.
  Returns the preprocessed directory.
  """
  bag_sizes = [int(s) for s in bag_sizes]
  out = os.path.join(data_dir, f"synthetic_{num_rows}_{seed}_{sizes_tag(bag_sizes)}", "processed")
  expected = {"multi_hot_sizes": bag_sizes, "multi_hot_generator_version": SYNTHETIC_VERSION}
  if store.cached_metadata(out, expected) is not None:
    return out
  os.makedirs(out, exist_ok=True)
  teacher = syn.make_teacher(seed, bag_sizes)
  ranges = splits_lib.split_ranges(num_rows)
  shapes = {"dense": (np.float32, (cf.NUM_DENSE,)), "sparse": (np.int32, (sum(bag_sizes),))}
  shapes["label"] = (np.float32, ())
  files = {
    (s, f): NpyAppender(store.split_file(out, s, f) + store.PARTIAL, *shapes[f])
    for s in splits_lib.SPLITS
    for f in store.FIELDS
  }
  probs = np.empty(num_rows)
  labels = np.empty(num_rows, np.float32)
  starts = range(0, num_rows, CHUNK_ROWS)
  for c, start in enumerate(starts):
    n = min(CHUNK_ROWS, num_rows - start)
    dense, sparse, label, prob = _bag_rows(teacher, seed, c, n, bag_sizes)
    probs[start : start + n], labels[start : start + n] = prob, label
    for split, (lo, hi) in ranges.items():
      a, b = max(lo, start) - start, min(hi, start + n) - start
      if a < b:
        for f, x in (("dense", dense), ("sparse", sparse), ("label", label)):
          files[(split, f)].append(x[a:b])
    if progress:
      print(f"\rbuilt-in multi-hot data: {start + n}/{num_rows} rows", end="", flush=True)
  if progress:
    print()
  for (split, field), f in files.items():
    f.close()
    os.replace(f.path, store.split_file(out, split, field))
  best = {s: syn.exact_auc(probs[lo:hi], labels[lo:hi]) for s, (lo, hi) in ranges.items()}
  # Raw values in id order (vocab[k] has id k + 1), so the directory reads like a preprocessed one.
  store.save_vocab(out, teacher.hex_values)
  meta = {
    **expected,
    # The default preprocessing options: the bags are drawn as ids, no raw pass applies them.
    "max_ind_range": 0,
    "min_frequency": 1,
    "sub_sample_rate": 0.0,
    "vocabulary": "train",
    "dataset": "synthetic",
    "table_sizes": [v + 1 for v in syn.VOCAB_SIZES],
    "num_rows": {s: hi - lo for s, (lo, hi) in ranges.items()},
    "positive_rate": {s: float(labels[lo:hi].mean()) for s, (lo, hi) in ranges.items()},
    "num_dense": cf.NUM_DENSE,
    "num_sparse": cf.NUM_SPARSE,
    "dense_names": list(cf.DENSE_NAMES),
    "sparse_names": list(cf.SPARSE_NAMES),
    "id_convention": "id k + 1 = the teacher's id k of the feature; 0 = missing; -1 = empty slot",
    "best_possible_auc": best,
    "synthetic": {"seed": seed, "num_rows": num_rows, "teacher_scale": teacher.scale},
  }
  store.write_json_atomic(os.path.join(out, store.METADATA_FILE), meta)
  return out


# --- MLPerf's transform --------------------------------------------------------------------------
#
# The rule of mlcommons/training recommendation_v2/torchrec_dlrm/multi_hot.py
# (Multihot.__make_multi_hot_indices_tables, used by
# scripts/materialize_synthetic_multihot_dataset.py with distribution "uniform"):
# NumPy's legacy global generator is seeded with 0 once; then, for every
# feature in order, a lookup table of ``rows_t`` rows and ``L_t`` columns is
# built whose column 0 is the row's own id and whose other ``L_t - 1`` columns
# are ``randint(0, rows_t, size=(rows_t, L_t - 1))`` (drawn even when L_t = 1,
# as an empty draw). A sample's bag for feature t is the row ``id % rows_t`` of
# that table. Below, the same draws come from ``RandomState(0)`` in row blocks
# (the legacy generator yields the same sequence however a draw is split) into
# a disk-backed table, and the splits are mapped block by block, so neither
# the tables (C21 alone: 40M x 99 ids) nor the data sit in RAM.


def _lookup_tables(work: str, table_sizes: Sequence[int], bag_sizes: Sequence[int]) -> list:
  """Per feature the extra ids int32[rows, L - 1] (a memmap under ``work``), or None if L = 1."""
  rs = np.random.RandomState(0)
  tables = []
  for t, (rows, size) in enumerate(zip(table_sizes, bag_sizes, strict=True)):
    if size == 1:
      rs.randint(0, rows, size=(rows, 0))
      tables.append(None)
      continue
    table = np.lib.format.open_memmap(
      os.path.join(work, f"extra_{t}.npy"), mode="w+", dtype=np.int32, shape=(rows, size - 1)
    )
    for lo in range(0, rows, CHUNK_ROWS):
      hi = min(rows, lo + CHUNK_ROWS)
      table[lo:hi] = rs.randint(0, rows, size=(hi - lo, size - 1))
    table.flush()
    tables.append(table)
  return tables


def mlperf_multi_hot(
  processed_dir: str,
  bag_sizes: Sequence[int],
  out_dir: str | None = None,
  *,
  progress: bool = True,
) -> str:
  """Turns a one-hot preprocessed directory into MLPerf's multi-hot one ("uniform"); returns it.

  Uses the directory's table sizes as MLPerf's ``num_embeddings_per_feature``
  (with ``--max_ind_range=40000000`` the large tables have MLPerf's 40M rows;
  our ids differ from MLPerf's preprocessing, so the bags follow the same rule
  but are not the same numbers). Cached: a finished output is reused.
  """
  bag_sizes = [int(s) for s in bag_sizes]
  meta = store.read_metadata(processed_dir)
  sizes = [int(s) for s in meta["table_sizes"]]
  if len(bag_sizes) != len(sizes):
    raise ValueError(
      f"--multi_hot_sizes has {len(bag_sizes)} sizes but {processed_dir} has {len(sizes)} features"
    )
  out = out_dir or f"{processed_dir.rstrip(os.sep)}_{sizes_tag(bag_sizes)}"
  expected = {"multi_hot_sizes": bag_sizes, "multi_hot_rule": "mlperf-uniform"}
  if store.cached_metadata(out, expected) is not None:
    return out
  work = os.path.join(out, "lookup_tables.partial")
  os.makedirs(work, exist_ok=True)
  tables = _lookup_tables(work, sizes, bag_sizes)
  for split in splits_lib.SPLITS:
    one_hot = np.load(store.split_file(processed_dir, split, "sparse"), mmap_mode="r")
    target = store.split_file(out, split, "sparse")
    writer = NpyAppender(target + store.PARTIAL, np.int32, (sum(bag_sizes),))
    for lo in range(0, one_hot.shape[0], CHUNK_ROWS):
      ids = np.asarray(one_hot[lo : lo + CHUNK_ROWS])
      cols = []
      for t, table in enumerate(tables):
        first = ids[:, t] % sizes[t]
        cols.append(first[:, None])
        if table is not None:
          cols.append(table[first])
      writer.append(np.concatenate(cols, axis=1))
      if progress:
        print(f"\r{split}: {lo + ids.shape[0]}/{one_hot.shape[0]} rows", end="", flush=True)
    writer.close()
    os.replace(writer.path, target)
    for field in ("dense", "label"):
      _link_or_copy(
        store.split_file(processed_dir, split, field), store.split_file(out, split, field)
      )
    if progress:
      print()
  vocab = os.path.join(processed_dir, store.VOCAB_FILE)
  if os.path.exists(vocab):
    _link_or_copy(vocab, os.path.join(out, store.VOCAB_FILE))
  del tables
  shutil.rmtree(work)
  out_meta: dict[str, Any] = {**meta, **expected, "one_hot_source": os.path.abspath(processed_dir)}
  store.write_json_atomic(os.path.join(out, store.METADATA_FILE), out_meta)
  return out
