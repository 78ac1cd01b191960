"""Multi-hot data: MLPerf's uniform rule, written independently; built-in bags and their teacher."""

import json
import os

import numpy as np
import pytest

from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data import multi_hot, store
from dlrm_jax.data import synthetic as syn
from dlrm_jax.data.loader import check_batch_ids

SIZES = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]


def _one_hot_dir(path, table_sizes, rows):
  rng = np.random.default_rng(0)
  os.makedirs(path)
  for split, n in rows.items():
    ids = np.stack([rng.integers(0, s, n) for s in table_sizes], axis=1).astype(np.int32)
    np.save(store.split_file(path, split, "sparse"), ids)
    np.save(store.split_file(path, split, "dense"), rng.random((n, 13), dtype=np.float32))
    np.save(store.split_file(path, split, "label"), (rng.random(n) < 0.3).astype(np.float32))
  meta = {"table_sizes": list(table_sizes), "sparse_names": list(cf.SPARSE_NAMES)}
  with open(os.path.join(path, store.METADATA_FILE), "w") as f:
    json.dump(meta, f)


def mlperf_reference(one_hot, table_sizes, bag_sizes):
  """MLPerf's rule as its script states it: global seed 0, one whole table per feature."""
  np.random.seed(0)
  tables = []
  for rows, size in zip(table_sizes, bag_sizes, strict=True):
    extra = np.random.randint(0, rows, size=(rows, size - 1))
    tables.append(np.concatenate([np.arange(rows)[:, None], extra], axis=-1))
  return np.concatenate(
    [tables[t][one_hot[:, t] % table_sizes[t]] for t in range(len(tables))], axis=1
  )


def test_mlperf_transform_follows_the_uniform_rule_in_chunks(tmp_path, monkeypatch):
  monkeypatch.setattr(multi_hot, "CHUNK_ROWS", 7)  # many blocks, tables and data alike
  table_sizes = [50, 3, 20, 9, 17] + [5] * 21
  src = str(tmp_path / "processed")
  rows = {"train": 40, "test": 9, "validation": 8}
  _one_hot_dir(src, table_sizes, rows)
  out = multi_hot.mlperf_multi_hot(src, SIZES, progress=False)
  meta = store.read_metadata(out)
  assert meta["multi_hot_sizes"] == SIZES and meta["table_sizes"] == table_sizes
  for split in rows:
    one_hot = np.load(store.split_file(src, split, "sparse"))
    got = np.load(store.split_file(out, split, "sparse"))
    np.testing.assert_array_equal(got, mlperf_reference(one_hot, table_sizes, SIZES))
    for field in ("dense", "label"):
      np.testing.assert_array_equal(
        np.load(store.split_file(out, split, field)), np.load(store.split_file(src, split, field))
      )
  assert not any(name.endswith(store.PARTIAL) for name in os.listdir(out))


def _teacher_probs(teacher, dense, sparse):
  """The teacher's click probability recomputed from written arrays, one bag at a time."""
  offsets = np.concatenate([[0], np.cumsum(SIZES)[:-1]])
  v = np.asarray(syn.VOCAB_SIZES)
  pooled_unary = np.zeros((len(dense), cf.NUM_SPARSE))
  pooled_pair = np.zeros((len(dense), cf.NUM_SPARSE, 4))
  for t in range(cf.NUM_SPARSE):
    bag = sparse[:, offsets[t] : offsets[t] + SIZES[t]]
    for i in range(len(dense)):
      ids = bag[i][bag[i] >= 0]
      teacher_ids = [v[t] if x == 0 else x - 1 for x in ids]  # 0: missing category
      pooled_unary[i, t] = np.mean(teacher.unary[t][teacher_ids])
      pooled_pair[i, t] = np.mean(teacher.pair_vecs[t][teacher_ids], axis=0)
  logit = dense.astype(np.float64) @ teacher.dense_w + pooled_unary.sum(axis=1)
  for a, b in syn.PAIRS:
    logit += np.sum(pooled_pair[:, a] * pooled_pair[:, b], axis=1)
  return 1.0 / (1.0 + np.exp(-(teacher.scale * logit + teacher.bias)))


def test_synthetic_multi_hot_bags_and_exact_best_auc(tmp_path):
  out = multi_hot.prepare_synthetic_multi_hot(str(tmp_path), 7000, 3, SIZES, progress=False)
  meta = store.read_metadata(out)
  teacher = syn.make_teacher(3, SIZES)
  for split in ("test", "validation"):
    arrays = store.open_split(out, split)
    sparse = np.asarray(arrays.sparse)
    assert sparse.shape[1] == sum(SIZES)
    check_batch_ids(sparse, meta["table_sizes"], SIZES)
    probs = _teacher_probs(teacher, np.asarray(arrays.dense), sparse)
    want = syn.exact_auc(probs, np.asarray(arrays.label))
    assert meta["best_possible_auc"][split] == pytest.approx(want, abs=1e-6)
  assert 0.7 < meta["best_possible_auc"]["validation"] < 0.9


def test_batch_id_check_knows_bags():
  sparse = np.zeros((2, sum(SIZES)), np.int32)
  sparse[0, 1] = -1
  check_batch_ids(sparse, [10] * 26, SIZES)
  with pytest.raises(ValueError, match="214 id columns"):
    check_batch_ids(sparse, [10] * 26)
  one_hot = np.zeros((2, 26), np.int32)
  one_hot[0, 1] = -1
  with pytest.raises(ValueError, match=r"C2: id out of range \[0, 10\)"):
    check_batch_ids(one_hot, [10] * 26)  # one-hot: no empty slots
  sparse[1, 3] = 2  # C2's first slot
  with pytest.raises(ValueError, match="C2: id out of range"):
    check_batch_ids(sparse, [10, 2] + [10] * 24, SIZES)
