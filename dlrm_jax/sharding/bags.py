"""Multi-hot bags: where each feature's ids sit in the batch, pooling and its transpose.

Layout. A batch's ids are one flat ``sparse i32[B, S]``, ``S = sum(L_t)``: feature
t's bag occupies the ``L_t`` consecutive columns starting at ``id_offsets[t]``
(``L_t`` from ``--multi_hot_sizes``, static). A bag with fewer ids than ``L_t``
pads its tail with -1, which marks an empty slot: it is looked up nowhere,
counts for nothing in a mean, and its (pooled) gradient updates no row. With
every ``L_t = 1`` this is exactly the one-hot ``sparse i32[B, T]`` and every
function below is the identity, so one-hot runs compile the same program as
before multi-hot existed. The MLPerf DLRM-DCNv2 sizes carry 214 columns per
example; padding every feature to the longest bag (100) would carry 2,600.

Exchange. Devices that own a table's rows gather every id of its bags and pool
them (``pool``) before anything is sent, so a bag crosses the network as one
vector, as a one-hot feature does; only the int32 ids travel per id. Backward,
the pooled gradient travels the same way and is copied to each id of the bag
only where it is applied (``spread``); ``sparse_optim`` then sums duplicate
ids, within a bag and across the batch. Mean pooling is a per-(example,
feature) scale (``mean_scale``) applied after the exchange, and again to the
gradient before it.

Table-wise tables: owner k's tables are ordered by bag size (largest first) and
every owner runs one static program of P id slots. Where owners' bags differ,
each owner packs its own bags back to back (P = the most ids an owner uses) and
pools them with a per-owner one-hot matrix; the alternative, position j of every
owner gathering ``W_j = max_k L_{k,j}`` ids, padded MLPerf's bags on 8 owners to
118 slots where the owners use 3..100 ids (benchmarks/sharding_plan.py
--multi_hot). Where the two agree (one-hot, equal bags) the static per-position
pooling is kept. The planner balances ids per shard, which keeps P small.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dlrm_jax.sharding.planner import EmbeddingLayout
from dlrm_jax.sharding.specs import id_offsets


def is_multi_hot(layout: EmbeddingLayout) -> bool:
  """True when some feature may carry more than one id (and -1 marks an empty slot)."""
  return any(p.spec.bag_size > 1 for p in layout.placements)


def bag_sizes(layout: EmbeddingLayout) -> tuple[int, ...]:
  return tuple(p.spec.bag_size for p in layout.placements)


@functools.cache
def columns(layout: EmbeddingLayout, features: tuple[int, ...]) -> tuple[np.ndarray, tuple]:
  """Sparse columns i32[P] of every id of ``features``' bags, and each bag's width (P = sum)."""
  sizes = bag_sizes(layout)
  offsets = id_offsets(sizes)
  cols = np.concatenate([np.arange(offsets[f], offsets[f] + sizes[f]) for f in features])
  return cols.astype(np.int32), tuple(sizes[f] for f in features)


def per_id(values, widths: tuple[int, ...]) -> np.ndarray:
  """A per-bag static value repeated for each id of the bag."""
  return np.repeat(np.asarray(values), widths)


class TableWisePositions(NamedTuple):
  """Static plan of the table-wise gather: owner k, position j, id slot p.

  feature: i32[M, S] feature at position j of owner k (-1: none).
  cols: i32[M, P] sparse column of id slot p (0 where unused).
  offset: i32[M, P] buffer offset of the table of id slot p.
  used: bool[M, P] whether owner k uses id slot p.
  segment: i32[M, P] position j of the bag id slot p belongs to (-1: unused).
  widths: the most ids of position j over the owners, ``W_j``.
  packed: each owner's bags back to back (P = most ids of an owner), pooled per
    owner; else position j spans ``W_j`` slots on every owner (P = sum W_j).
  """

  feature: np.ndarray
  cols: np.ndarray
  offset: np.ndarray
  used: np.ndarray
  segment: np.ndarray
  widths: tuple[int, ...]
  packed: bool

  def position(self, f: int, owner: int) -> int:
    """Index of feature ``f`` in the all_to_all result ``[b, M * S]``."""
    s = self.feature.shape[1]
    return owner * s + int(np.flatnonzero(self.feature[owner] == f)[0])


@functools.cache
def table_wise_positions(layout: EmbeddingLayout) -> TableWisePositions:
  m, s = layout.model_size, max(layout.table_slots, 1)
  sizes = bag_sizes(layout)
  offsets = id_offsets(sizes)
  owned: list[list[tuple[int, int]]] = [[] for _ in range(m)]
  for f, p in enumerate(layout.placements):
    if p.plan == "table":
      owned[p.owner].append((p.slot, f))
  order = [[f for _, f in sorted(o, key=lambda sf: (-sizes[sf[1]], sf[0]))] for o in owned]
  widths = tuple(max((sizes[o[j]] for o in order if j < len(o)), default=1) for j in range(s))
  by_owner = max(sum(sizes[f] for f in o) for o in order)
  packed = 0 < by_owner < sum(widths)
  p_total = by_owner if packed else sum(widths)
  feature = np.full((m, s), -1, np.int32)
  cols = np.zeros((m, p_total), np.int32)
  offset = np.zeros((m, p_total), np.int32)
  used = np.zeros((m, p_total), bool)
  segment = np.full((m, p_total), -1, np.int32)
  for k, feats in enumerate(order):
    starts = id_offsets([sizes[f] for f in feats] if packed else widths)
    for j, f in enumerate(feats):
      a, n = starts[j], sizes[f]
      feature[k, j] = f
      cols[k, a : a + n] = offsets[f] + np.arange(n)
      offset[k, a : a + n] = layout.placements[f].offset
      used[k, a : a + n] = True
      segment[k, a : a + n] = j
  return TableWisePositions(feature, cols, offset, used, segment, widths, packed)


def pool_table_wise(x: jax.Array, tw: TableWisePositions, owner: jax.Array) -> jax.Array:
  """``pool`` for table-wise slots of model shard ``owner``: f32[n, P, d] -> f32[n, S, d]."""
  if not tw.packed:
    return pool(x, tw.widths)
  s = tw.feature.shape[1]
  # Unused slots belong to no position; their values are zeros anyway.
  onehot = (tw.segment[:, :, None] == np.arange(s)[None, None, :]).astype(np.float32)
  return jnp.einsum("npd,ps->nsd", x, jnp.asarray(onehot)[owner], precision=lax.Precision.HIGHEST)


def spread_table_wise(g: jax.Array, tw: TableWisePositions, owner: jax.Array) -> jax.Array:
  """The transpose of ``pool_table_wise``: f32[n, S, d] -> f32[n, P, d] (unused slots: any bag)."""
  if not tw.packed:
    return spread(g, tw.widths)
  return jnp.take(g, jnp.asarray(np.maximum(tw.segment, 0))[owner], axis=1)


def pool(x: jax.Array, widths: tuple[int, ...]) -> jax.Array:
  """Sums consecutive bags: x f32[n, sum(widths), d] -> f32[n, len(widths), d]."""
  if all(w == 1 for w in widths):
    return x
  starts = id_offsets(widths)
  return jnp.stack(
    [jnp.sum(x[:, a : a + w], axis=1) for a, w in zip(starts, widths, strict=True)], axis=1
  )


def spread(g: jax.Array, widths: tuple[int, ...]) -> jax.Array:
  """The transpose of ``pool``: g f32[n, K, d] -> f32[n, sum(widths), d], copied per id."""
  if all(w == 1 for w in widths):
    return g
  return g[:, per_id(np.arange(len(widths)), widths)]


def mean_scale(layout: EmbeddingLayout, ids: jax.Array) -> jax.Array | None:
  """f32[b, T]: 1 / (valid ids in the bag) for mean-pooled features, 1 for sum; None if all 1."""
  mean = np.array([p.spec.pooling == "mean" for p in layout.placements])
  if not mean.any() or not is_multi_hot(layout):
    return None
  valid = (ids >= 0).astype(jnp.float32)[..., None]
  counts = pool(valid, bag_sizes(layout))[..., 0]
  return jnp.where(mean[None, :], 1.0 / jnp.maximum(counts, 1.0), 1.0)
