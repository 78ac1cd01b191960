"""Synthetic generator: Kaggle layout, determinism, teacher calibration, exact best-possible AUC."""

from __future__ import annotations

import itertools
import json
import os
import re

import numpy as np
import pytest

from dlrm_jax.data import splits, synthetic
from dlrm_jax.data.store import read_metadata

HEX8 = re.compile(r"^[0-9a-f]{8}$")
INT = re.compile(r"^-?[0-9]+$")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("syn") / "train.txt")
  meta = synthetic.generate_criteo_tsv(path, 20_000, seed=0)
  return path, meta


def test_kaggle_layout(generated):
  path, _ = generated
  lines = open(path).read().split("\n")
  assert lines[-1] == "" and len(lines) == 20_001
  rows = [line.split("\t") for line in lines[:-1]]
  assert all(len(r) == 40 for r in rows)
  cols = list(zip(*rows, strict=True))
  assert set(cols[0]) == {"0", "1"}
  for j in range(1, 14):
    present = [v for v in cols[j] if v]
    assert all(INT.match(v) for v in present)
    negative = any(v.startswith("-") for v in present)
    assert negative == (j == 2), f"I{j}: only I2 may be negative"
  assert any(v == "" for v in cols[12])  # some ints missing
  for t in range(26):
    present = [v for v in cols[14 + t] if v]
    assert all(HEX8.match(v) for v in present)
  assert sum(v == "" for v in cols[14 + 21]) > 0.5 * len(
    rows
  )  # C22 is mostly empty, like the real data


def test_vocab_sizes_and_skew(generated):
  path, _ = generated
  rows = [line.split("\t") for line in open(path).read().splitlines()]
  for t, v in enumerate(synthetic.VOCAB_SIZES):
    values = [r[14 + t] for r in rows if r[14 + t]]
    distinct, counts = np.unique(values, return_counts=True)
    assert distinct.size <= v
    if v >= 10_000:
      # Zipf-like: the top 1% of seen values carries a large share of the rows
      top = np.sort(counts)[::-1][: max(1, distinct.size // 100)]
      assert top.sum() > 0.2 * counts.sum(), f"C{t + 1} not skewed"
  assert len({r[14 + 8] for r in rows}) <= 3 and len({r[14 + 2] for r in rows}) > 1000


def test_deterministic_and_seeded(tmp_path, generated):
  path, meta = generated
  again = str(tmp_path / "again.txt")
  meta2 = synthetic.generate_criteo_tsv(again, 20_000, seed=0)
  assert open(path, "rb").read() == open(again, "rb").read()
  assert meta2 == meta
  other = str(tmp_path / "other.txt")
  synthetic.generate_criteo_tsv(other, 2000, seed=1)
  assert open(other, "rb").read()[:5000] != open(path, "rb").read()[:5000]
  assert json.load(open(path + ".teacher.json")) == json.loads(json.dumps(meta))


def test_teacher_calibration(generated):
  _, meta = generated
  for split in splits.SPLITS:
    assert 0.21 < meta["positive_rate"][split] < 0.29
    assert 0.76 < meta["best_possible_auc"][split] < 0.84
  assert meta["positive_rate"]["train"] == pytest.approx(0.25, abs=0.015)


def test_best_possible_auc_is_exact(generated):
  path, meta = generated
  teacher = synthetic.make_teacher(0)
  # Recompute the teacher's probabilities from the first chunk's rng stream, independently of the
  # file.
  rows = synthetic._draw_rows(teacher, np.random.default_rng([0, 2, 0]), 20_000)
  labels = np.array([int(line.split("\t", 1)[0]) for line in open(path)])
  np.testing.assert_array_equal(rows.label, labels)
  lo, hi = splits.split_ranges(20_000)["test"]
  p, y = rows.prob[lo:hi], labels[lo:hi]
  pos, neg = p[y == 1], p[y == 0]
  brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
    pos.size * neg.size
  )
  assert meta["best_possible_auc"]["test"] == pytest.approx(brute, abs=1e-12)


def test_exact_auc_with_ties_against_brute_force():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 5, 300).astype(np.float64)
  labels = rng.random(300) < 0.3
  pairs = [(s, t) for s, t in itertools.product(scores[labels], scores[~labels])]
  brute = np.mean([1.0 if s > t else 0.5 if s == t else 0.0 for s, t in pairs])
  assert synthetic.exact_auc(scores, labels) == pytest.approx(brute, abs=1e-12)
  assert synthetic.exact_auc(scores, np.zeros(300, bool)) is None


def test_prepare_synthetic_reuses_work(tmp_path):
  out = synthetic.prepare_synthetic(str(tmp_path), 3000, seed=4, progress=False)
  assert out == os.path.join(str(tmp_path), "synthetic_3000_4", "processed_m0_f1")
  meta = read_metadata(out)
  assert set(meta["best_possible_auc"]) == set(splits.SPLITS)
  assert sum(meta["num_rows"].values()) == 3000
  raw = os.path.join(str(tmp_path), "synthetic_3000_4", "train.txt")
  stamps = (os.stat(raw).st_mtime_ns, os.stat(os.path.join(out, "metadata.json")).st_mtime_ns)
  assert synthetic.prepare_synthetic(str(tmp_path), 3000, seed=4, progress=False) == out
  assert stamps == (
    os.stat(raw).st_mtime_ns,
    os.stat(os.path.join(out, "metadata.json")).st_mtime_ns,
  )


def test_stale_generator_output_is_rebuilt(tmp_path):
  out = synthetic.prepare_synthetic(str(tmp_path), 1500, seed=2, progress=False)
  teacher_json = os.path.join(str(tmp_path), "synthetic_1500_2", "train.txt.teacher.json")
  meta = json.load(open(teacher_json))
  meta["generator_version"] = synthetic.GENERATOR_VERSION - 1
  json.dump(meta, open(teacher_json, "w"))
  raw = os.path.join(str(tmp_path), "synthetic_1500_2", "train.txt")
  with open(raw, "a") as f:  # an old generator's extra row: must disappear on rebuild
    f.write(open(raw).readline())
  synthetic.prepare_synthetic(str(tmp_path), 1500, seed=2, progress=False)
  assert json.load(open(teacher_json))["generator_version"] == synthetic.GENERATOR_VERSION
  assert sum(read_metadata(out)["num_rows"].values()) == 1500


TAIL = 0.5
TAIL_ROWS = 4000


@pytest.fixture(scope="module")
def tail_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("tail")
  head, tail = str(root / "head.txt"), str(root / "tail.txt")
  synthetic.generate_criteo_tsv(head, TAIL_ROWS, seed=5)
  meta = synthetic.generate_criteo_tsv(tail, TAIL_ROWS, seed=5, tail=TAIL)
  read = lambda p: [line.split("\t") for line in open(p).read().splitlines()]  # noqa: E731
  return read(head), read(tail), meta


def test_tail_replaces_values_and_nothing_else(tail_files):
  head_rows, tail_rows, meta = tail_files
  teacher = synthetic.make_teacher(5)
  assert meta["tail"] == TAIL and meta["tail_pool_size"] == int(TAIL * TAIL_ROWS)
  replaced = present = 0
  for t in range(26):
    vocab = {f"{v:08x}" for v in teacher.hex_values[t]}
    pool = set()
    for h, r in zip(head_rows, tail_rows, strict=True):
      if t == 0:
        assert h[1:14] == r[1:14]  # dense values: the same draws as without the tail
      a, b = h[14 + t], r[14 + t]
      assert (a == "") == (b == "")  # missing values stay missing, present ones present
      if a and a != b:
        assert b not in vocab and HEX8.match(b)
        pool.add(b)
        replaced += 1
      present += bool(a)
    assert len(pool) <= meta["tail_pool_size"]
  # Binomial(present, 0.5): 5 standard deviations. (A tail value equal to the head value it
  # replaced is impossible: pools exclude the vocabulary.)
  assert abs(replaced - TAIL * present) < 5 * np.sqrt(present * TAIL * (1 - TAIL))


def test_tail_ids_are_mostly_rare(tail_files):
  _, rows, _ = tail_files
  for t in (2, 8, 13):  # a large, the smallest (3 values) and a small vocabulary
    _, counts = np.unique([r[14 + t] for r in rows if r[14 + t]], return_counts=True)
    assert np.mean(counts <= 3) > 0.9, f"C{t + 1}: distinct values are mostly seen <= 3 times"
    assert np.mean(counts == 1) > 0.5


def test_tail_best_possible_auc_from_the_file(tail_files):
  """The teacher's probabilities recomputed from the file's text (tail values add nothing) give
  the metadata's best possible AUC, and calibration still hits its targets."""
  _, rows, meta = tail_files
  teacher = synthetic.make_teacher(5, tail=TAIL)
  n = len(rows)
  dense = np.array([[int(v) if v else 0 for v in r[1:14]] for r in rows], dtype=np.float64)
  logit = np.log1p(np.maximum(dense, 0)) @ teacher.dense_w
  vecs = {}
  for t in range(26):
    index = {f"{v:08x}": i for i, v in enumerate(teacher.hex_values[t])}
    v = synthetic.VOCAB_SIZES[t]
    unary, pair = np.zeros(n), np.zeros((n, 4))
    for i, r in enumerate(rows):
      j = v if not r[14 + t] else index.get(r[14 + t])
      if j is not None:  # None: a tail value
        unary[i], pair[i] = teacher.unary[t][j], teacher.pair_vecs[t][j]
    logit += unary
    vecs[t] = pair
  for a, b in synthetic.PAIRS:
    logit += (vecs[a] * vecs[b]).sum(axis=1)
  prob = 1.0 / (1.0 + np.exp(-(teacher.scale * logit + teacher.bias)))
  labels = np.array([int(r[0]) for r in rows])
  lo, hi = splits.split_ranges(n)["test"]
  p, y = prob[lo:hi], labels[lo:hi]
  pos, neg = p[y == 1], p[y == 0]
  brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
    pos.size * neg.size
  )
  assert meta["best_possible_auc"]["test"] == pytest.approx(brute, abs=1e-9)
  assert 0.76 < meta["best_possible_auc"]["train"] < 0.84
  assert 0.21 < meta["positive_rate"]["train"] < 0.29
