"""Synthetic Criteo-format data from a known logistic teacher, so the best possible AUC is known."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from dlrm_jax.data import criteo_format as cf
from dlrm_jax.data import splits as splits_lib
from dlrm_jax.data import store
from dlrm_jax.data import synthetic_tail as tails
from dlrm_jax.data.preprocess import preprocess_criteo

# Shaped like Kaggle's (a few ids up to ~100k), scaled down so 1-3M rows can learn them.
VOCAB_SIZES: tuple[int, ...] = (
  1000,
  500,
  100_000,
  50_000,
  300,
  24,
  10_000,
  600,
  3,
  30_000,
  5000,
  80_000,
  3000,
  27,
  15_000,
  60_000,
  10,
  5000,
  2000,
  4,
  70_000,
  18,
  15,
  40_000,
  100,
  20_000,
)
# Missing rates like the real rows: mostly low, C19/C20/C22/C25/C26 often empty.
SPARSE_MISSING: tuple[float, ...] = (
  0,
  0,
  0.03,
  0.03,
  0,
  0.1,
  0,
  0,
  0,
  0,
  0,
  0.03,
  0,
  0,
  0,
  0.03,
  0,
  0,
  0.42,
  0.42,
  0,
  0.8,
  0,
  0.03,
  0.42,
  0.42,
)
DENSE_MISSING: tuple[float, ...] = (
  0.45,
  0,
  0.2,
  0.2,
  0.03,
  0.22,
  0.04,
  0,
  0.04,
  0.45,
  0.04,
  0.76,
  0.2,
)
# Pairs of sparse features whose teacher vectors interact (dot products), as DLRM's interaction
# layer can model.
# All between features of at most ~10k ids, whose vectors 1-3M rows can pin down.
PAIRS: tuple[tuple[int, int], ...] = (
  (0, 1),
  (4, 13),
  (6, 10),
  (7, 16),
  (12, 24),
  (17, 18),
  (5, 22),
  (8, 19),
)
TARGET_POSITIVE_RATE = 0.25
TARGET_AUC = 0.80
# Ids expected fewer than this many times per million rows carry proportionally less signal
# (linearly in the count), so rare ids add little variance a model could not learn.
_FULL_SIGNAL_PER_MILLION = 10000.0
# Bump when the generated rows change for a given (num_rows, seed); cached files are then rebuilt.
GENERATOR_VERSION = 3
_PAIR_DIM = 4
_CHUNK_ROWS = 1 << 18
_CALIBRATION_ROWS = 1 << 17


@dataclasses.dataclass(frozen=True)
class Teacher:
  """All parameters of the generator; a pure function of the seed."""

  cdfs: list[np.ndarray]  # per feature f64[V] cumulative Zipf probabilities
  hex_values: list[np.ndarray]  # per feature distinct uint32[V] raw values
  unary: list[np.ndarray]  # per feature f64[V + 1]; index V is "missing"
  pair_vecs: list[np.ndarray]  # per feature f64[V + 1, 4]
  dense_w: np.ndarray  # f64[13]
  dense_mu: np.ndarray  # f64[13] log-normal location of the raw counts
  dense_sigma: np.ndarray  # f64[13]
  zipf: np.ndarray  # f64[26]
  scale: float = 1.0
  bias: float = 0.0
  tail: float = 0.0  # --synthetic_tail: share of present values replaced by signal-free ones


def _distinct_uint32(rng: np.random.Generator, n: int) -> np.ndarray:
  out = np.zeros(0, dtype=np.uint32)
  while out.size < n:
    draw = rng.integers(0, 2**32, size=2 * n, dtype=np.uint64).astype(np.uint32)
    merged = np.concatenate([out, draw])
    _, first = np.unique(merged, return_index=True)
    out = merged[np.sort(first)]
  return out[:n]


def make_teacher(seed: int, bag_sizes: Sequence[int] | None = None, tail: float = 0.0) -> Teacher:
  """Random teacher for `seed`, calibrated to ~25% positives and teacher AUC ~0.80.

  ``bag_sizes`` (multi-hot): calibrated on the pooled signal of bags of that many ids.
  ``tail`` (synthetic_tail.py): calibrated with that share of values signal-free; the
  vocabularies and teacher vectors are those of ``tail=0``, only scale and bias differ.
  """
  rng = np.random.default_rng([seed, 0])
  zipf = rng.uniform(1.05, 1.35, size=cf.NUM_SPARSE)
  cdfs, hexes, unary, pair_vecs = [], [], [], []
  for t, v in enumerate(VOCAB_SIZES):
    p = 1.0 / np.arange(1, v + 1) ** zipf[t]
    p /= p.sum()
    cdfs.append(np.cumsum(p))
    hexes.append(_distinct_uint32(rng, v))
    # Signal lives on ids a model can actually see often enough to learn.
    shrink = np.minimum(1.0, p * 1e6 / _FULL_SIGNAL_PER_MILLION)
    shrink = np.append(shrink, 1.0)  # the "missing" category is frequent
    unary.append(rng.normal(0.0, 1.0, v + 1) * shrink * rng.uniform(0.2, 0.6))
    pair_vecs.append(rng.normal(0.0, 1.0, (v + 1, _PAIR_DIM)) * shrink[:, None] * 0.5)
  teacher = Teacher(
    cdfs=cdfs,
    hex_values=hexes,
    unary=unary,
    pair_vecs=pair_vecs,
    dense_w=rng.normal(0.0, 0.5, cf.NUM_DENSE),
    dense_mu=rng.uniform(0.0, 4.0, cf.NUM_DENSE),
    dense_sigma=rng.uniform(0.5, 1.5, cf.NUM_DENSE),
    zipf=zipf,
    tail=tail,
  )
  tail_rng = np.random.default_rng([seed, tails.CALIBRATION_STREAM]) if tail else None
  return _calibrate(teacher, np.random.default_rng([seed, 1]), bag_sizes, tail_rng)


@dataclasses.dataclass(frozen=True)
class _Rows:
  label: np.ndarray  # int8[n]
  dense: np.ndarray  # int64[n, 13]
  dense_missing: np.ndarray  # bool[n, 13]
  ids: np.ndarray  # int64[n, 26] teacher ids
  sparse_missing: np.ndarray  # bool[n, 26]
  prob: np.ndarray  # f64[n] teacher click probability
  tail: np.ndarray | None = None  # int64[n, 26] pool index of a tail value, -1 a head value


def _draw_features(teacher: Teacher, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
  raw = np.floor(
    np.exp(teacher.dense_mu + teacher.dense_sigma * rng.standard_normal((n, cf.NUM_DENSE)))
  )
  dense = np.maximum(raw - 1, 0).astype(np.int64)
  # I2 is the one real feature with small negatives (-1..-3).
  neg = rng.random(n) < 0.05
  dense[neg, 1] = -rng.integers(1, 4, size=int(neg.sum()))
  dense_missing = rng.random((n, cf.NUM_DENSE)) < np.asarray(DENSE_MISSING)
  dense[dense_missing] = 0
  ids = np.empty((n, cf.NUM_SPARSE), dtype=np.int64)
  for t, cdf in enumerate(teacher.cdfs):
    ids[:, t] = np.minimum(np.searchsorted(cdf, rng.random(n)), cdf.size - 1)
  sparse_missing = rng.random((n, cf.NUM_SPARSE)) < np.asarray(SPARSE_MISSING)
  return dense, dense_missing, ids, sparse_missing


def _draw_extra_ids(
  teacher: Teacher, rng: np.random.Generator, n: int, bag_sizes: Sequence[int]
) -> list[np.ndarray]:
  """Multi-hot: per feature the bag's other L - 1 teacher ids int64[n, L - 1], same distribution.

  Drawn after (and from another stream than) the first ids, so one-hot rows are unchanged.
  """
  return [
    np.minimum(np.searchsorted(cdf, rng.random((n, size - 1))), cdf.size - 1)
    for cdf, size in zip(teacher.cdfs, bag_sizes, strict=True)
  ]


def _pooled(table: np.ndarray, first: np.ndarray, extra: np.ndarray) -> np.ndarray:
  """Mean of table rows over a bag (first id and the extra ones): the teacher's pooled signal."""
  total = table[first].copy()
  for j in range(extra.shape[1]):
    total += table[extra[:, j]]
  return total / (1 + extra.shape[1])


def _raw_logit(
  teacher: Teacher,
  dense: np.ndarray,
  ids: np.ndarray,
  sparse_missing: np.ndarray,
  extra: list[np.ndarray] | None = None,
  tail: np.ndarray | None = None,
) -> np.ndarray:
  """Teacher logit before scale and bias: f64[n]. Uses exactly what preprocessing keeps.

  ``extra`` (multi-hot): each feature's signal is the mean over its bag; a
  missing feature's bag is the missing category alone. ``tail`` (bool[n, 26]):
  values replaced by tail values, which add nothing.
  """
  if extra is not None:
    return _raw_logit_bags(teacher, dense, ids, sparse_missing, extra)
  z = np.log1p(np.maximum(dense, 0).astype(np.float64))
  logit = z @ teacher.dense_w
  eff = np.where(sparse_missing, np.asarray(VOCAB_SIZES)[None, :], ids)
  for t in range(cf.NUM_SPARSE):
    unary = teacher.unary[t][eff[:, t]]
    logit += unary if tail is None else np.where(tail[:, t], 0.0, unary)
  for a, b in PAIRS:
    va, vb = teacher.pair_vecs[a][eff[:, a]], teacher.pair_vecs[b][eff[:, b]]
    if tail is not None:
      va, vb = np.where(tail[:, a, None], 0.0, va), np.where(tail[:, b, None], 0.0, vb)
    logit += np.einsum("nd,nd->n", va, vb)
  return logit


def _raw_logit_bags(teacher, dense, ids, sparse_missing, extra) -> np.ndarray:
  z = np.log1p(np.maximum(dense, 0).astype(np.float64))
  logit = z @ teacher.dense_w
  v = np.asarray(VOCAB_SIZES)
  eff = np.where(sparse_missing, v[None, :], ids)
  bags = [np.where(sparse_missing[:, t : t + 1], v[t], e) for t, e in enumerate(extra)]
  for t in range(cf.NUM_SPARSE):
    logit += _pooled(teacher.unary[t], eff[:, t], bags[t])
  for a, b in PAIRS:
    pa_ = _pooled(teacher.pair_vecs[a], eff[:, a], bags[a])
    pb_ = _pooled(teacher.pair_vecs[b], eff[:, b], bags[b])
    logit += np.einsum("nd,nd->n", pa_, pb_)
  return logit


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * x))


def expected_auc(prob: np.ndarray) -> float:
  """AUC of scores `prob` against labels ~ Bernoulli(prob), in expectation (ties count half)."""
  order = np.argsort(prob, kind="stable")
  p = prob[order]
  uniq, inverse = np.unique(p, return_inverse=True)
  pos_w = np.bincount(inverse, weights=p)
  neg_w = np.bincount(inverse, weights=1.0 - p)
  neg_below = np.cumsum(neg_w) - neg_w
  num = np.sum(pos_w * (neg_below + 0.5 * neg_w))
  return float(num / (pos_w.sum() * neg_w.sum()))


def exact_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
  """Mann-Whitney AUC with average ranks for ties; None when one class is absent."""
  labels = labels.astype(bool)
  n_pos = int(labels.sum())
  n_neg = labels.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return None
  uniq, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
  rank_sum = avg_rank[inverse][labels].sum()
  return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _calibrate(
  teacher: Teacher,
  rng: np.random.Generator,
  bag_sizes: Sequence[int] | None = None,
  tail_rng: np.random.Generator | None = None,
) -> Teacher:
  """Pick scale (AUC) and bias (positive rate) by nested bisection on a calibration sample."""
  dense, _, ids, miss = _draw_features(teacher, rng, _CALIBRATION_ROWS)
  extra = _draw_extra_ids(teacher, rng, _CALIBRATION_ROWS, bag_sizes) if bag_sizes else None
  # Drawn from its own stream, so that the rows above are those of tail=0.
  tail = tails.tail_mask(tail_rng, teacher.tail, miss) if tail_rng is not None else None
  base = _raw_logit(teacher, dense, ids, miss, extra, tail)
  base = base - base.mean()

  def bias_for(scale: float) -> float:
    lo, hi = -20.0, 20.0
    for _ in range(40):
      mid = 0.5 * (lo + hi)
      lo, hi = (
        (lo, mid) if _sigmoid(scale * base + mid).mean() > TARGET_POSITIVE_RATE else (mid, hi)
      )
    return 0.5 * (lo + hi)

  lo, hi = 0.01, 10.0
  for _ in range(25):
    mid = np.sqrt(lo * hi)
    auc = expected_auc(_sigmoid(mid * base + bias_for(mid)))
    lo, hi = (lo, mid) if auc > TARGET_AUC else (mid, hi)
  scale = float(np.sqrt(lo * hi))
  # The centring shift is folded into the bias so generation needs no extra state.
  shift = float(_raw_logit(teacher, dense, ids, miss, extra, tail).mean())
  return dataclasses.replace(teacher, scale=scale, bias=bias_for(scale) - scale * shift)


def _draw_rows(
  teacher: Teacher,
  rng: np.random.Generator,
  n: int,
  tail_rng: np.random.Generator | None = None,
  pool: int = 0,
) -> _Rows:
  """``tail_rng`` and ``pool`` (the tail's pool size) are used when ``teacher.tail`` > 0."""
  dense, dense_missing, ids, sparse_missing = _draw_features(teacher, rng, n)
  tail = tails.draw(tail_rng, teacher.tail, sparse_missing, pool) if teacher.tail else None
  logit = _raw_logit(teacher, dense, ids, sparse_missing, tail=None if tail is None else tail >= 0)
  prob = _sigmoid(teacher.scale * logit + teacher.bias)
  label = (rng.random(n) < prob).astype(np.int8)
  return _Rows(label, dense, dense_missing, ids, sparse_missing, prob, tail)


def _hex_dictionary(values: np.ndarray) -> pa.Array:
  """uint32[V] -> binary array of 8 lowercase hex digits each."""
  shifts = np.arange(28, -1, -4, dtype=np.uint32)
  digits = (values[:, None] >> shifts[None, :]) & np.uint32(0xF)
  chars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[digits]
  return pa.array(np.ascontiguousarray(chars).view("S8").ravel())


def _rows_table(rows: _Rows, dictionaries: list[pa.Array]) -> pa.Table:
  cols: dict[str, pa.Array] = {cf.LABEL_NAME: pa.array(rows.label)}
  for j, name in enumerate(cf.DENSE_NAMES):
    cols[name] = pa.array(rows.dense[:, j], mask=rows.dense_missing[:, j])
  for t, name in enumerate(cf.SPARSE_NAMES):
    ids = rows.ids[:, t]
    if rows.tail is not None:  # a feature's dictionary holds its pool after its vocabulary
      ids = np.where(rows.tail[:, t] >= 0, VOCAB_SIZES[t] + rows.tail[:, t], ids)
    cols[name] = pc.take(dictionaries[t], pa.array(ids, mask=rows.sparse_missing[:, t]))
  return pa.table(cols)


def generate_criteo_tsv(
  path: str,
  num_rows: int,
  seed: int = 0,
  num_days: int = cf.KAGGLE_NUM_DAYS,
  tail: float = 0.0,
) -> dict[str, Any]:
  """Write `num_rows` Kaggle-layout rows to `path`; return (and save as <path>.teacher.json) the
  metadata.

  metadata["best_possible_auc"][split] is the exact AUC of the teacher's
  probabilities against the sampled labels on the rows the Kaggle day split
  (with `num_days`) assigns to that split. ``tail``: synthetic_tail.py (0: none).
  """
  teacher = make_teacher(seed, tail=tail)
  values, pool = teacher.hex_values, tails.pool_size(num_rows, tail) if tail else 0
  if tail:
    pooled = tails.pools(seed, values, pool)
    values = [np.concatenate([h, p]) for h, p in zip(values, pooled, strict=True)]
  dictionaries = [_hex_dictionary(h) for h in values]
  probs = np.empty(num_rows, dtype=np.float64)
  labels = np.empty(num_rows, dtype=np.int8)
  options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
  tmp = path + ".partial"
  with pa.OSFile(tmp, "wb") as sink:
    writer = None
    for c, start in enumerate(range(0, num_rows, _CHUNK_ROWS)):
      n = min(_CHUNK_ROWS, num_rows - start)
      tail_rng = np.random.default_rng([seed, tails.ROWS_STREAM, c]) if tail else None
      rows = _draw_rows(teacher, np.random.default_rng([seed, 2, c]), n, tail_rng, pool)
      probs[start : start + n], labels[start : start + n] = rows.prob, rows.label
      table = _rows_table(rows, dictionaries)
      writer = writer or pacsv.CSVWriter(sink, table.schema, write_options=options)
      writer.write_table(table)
    if writer is not None:
      writer.close()
  os.replace(tmp, path)

  ranges = splits_lib.split_ranges(num_rows, num_days)
  best_auc, best_logloss, positive_rate = {}, {}, {}
  for split, (lo, hi) in ranges.items():
    p, y = probs[lo:hi], labels[lo:hi]
    best_auc[split] = exact_auc(p, y)
    eps = 1e-12
    best_logloss[split] = (
      float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))) if hi > lo else None
    )
    positive_rate[split] = float(y.mean()) if hi > lo else None
  meta = {
    "generator": "dlrm_jax.data.synthetic",
    "generator_version": GENERATOR_VERSION,
    "seed": seed,
    "num_rows": num_rows,
    "num_days": num_days,
    "vocab_sizes": list(VOCAB_SIZES),
    "zipf_exponents": teacher.zipf.round(4).tolist(),
    "pairs": [list(p) for p in PAIRS],
    "teacher_scale": teacher.scale,
    "teacher_bias": teacher.bias,
    "best_possible_auc": best_auc,
    "best_possible_logloss": best_logloss,
    "positive_rate": positive_rate,
    "tail": tail,
    "tail_pool_size": pool,
  }
  tmp_json = path + ".teacher.json.partial"
  with open(tmp_json, "w") as f:
    json.dump(meta, f, indent=1)
  os.replace(tmp_json, path + ".teacher.json")
  return meta


def prepare_synthetic(
  data_dir: str,
  num_rows: int,
  seed: int,
  *,
  progress: bool = True,
  max_ind_range: int = 0,
  min_frequency: int = 1,
  sub_sample_rate: float = 0.0,
  strict: bool = False,
  vocabulary: str = "train",
  id_mapping: str = "vocabulary",
  tail: float = 0.0,
) -> str:
  """Generate (once) data_dir/synthetic_<rows>_<seed>[_tail<tail>]/train.txt and preprocess it
  (once per set of options, into its own directory, exactly as Kaggle's train.txt); return the
  processed dir. ``tail``: --synthetic_tail (synthetic_tail.py)."""
  name = f"synthetic_{num_rows}_{seed}" + (f"_tail{tail:g}" if tail else "")
  root = os.path.join(data_dir, name)
  raw = os.path.join(root, "train.txt")
  os.makedirs(root, exist_ok=True)
  teacher_json = raw + ".teacher.json"
  teacher_meta = None
  if os.path.exists(raw) and os.path.exists(teacher_json):
    with open(teacher_json) as f:
      teacher_meta = json.load(f)
    if teacher_meta.get("generator_version") != GENERATOR_VERSION:
      teacher_meta = None  # made by an older generator: rebuild rather than serve stale rows
  if teacher_meta is None:
    teacher_meta = generate_criteo_tsv(raw, num_rows, seed, tail=tail)
  processed = os.path.join(
    root,
    store.processed_name(max_ind_range, min_frequency, sub_sample_rate, vocabulary, id_mapping),
  )
  extra = {"best_possible_auc": teacher_meta["best_possible_auc"], "synthetic": teacher_meta}
  preprocess_criteo(
    [raw],
    processed,
    num_days=teacher_meta["num_days"],
    max_ind_range=max_ind_range,
    min_frequency=min_frequency,
    sub_sample_rate=sub_sample_rate,
    strict=strict,
    vocabulary=vocabulary,
    id_mapping=id_mapping,
    extra_metadata=extra,
    progress=progress,
  )
  return processed
