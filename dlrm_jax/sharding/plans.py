"""The four sharding plans, one object each: lookup, gradient routing, initialisation, traffic.

Every method that takes ``ids`` runs inside ``jax.shard_map`` over the (data,
model) mesh: ``ids`` are this device's slice of the batch, ``ids_m`` the same
ids all-gathered over ``model`` (None when only replicated tables exist), and
``buffer`` this device's shard of the plan's fused buffer (see ``planner``).

* table-wise: each owner gathers rows of its own tables for the whole model
  group and one ``all_to_all`` returns them to the devices that hold the
  examples. Backward: the reverse ``all_to_all``.
* row-wise: each shard gathers the rows it owns (zeros elsewhere) and a
  ``psum_scatter`` sums the partial results into the batch shards. Backward:
  row gradients are all-gathered over ``model`` and each shard keeps its rows.
* column-wise: each shard gathers its columns for all ids of the model group;
  ``all_to_all`` swaps (all examples, some columns) for (some examples, all
  columns). Backward: the reverse ``all_to_all``.
* replicated: a local gather. Backward: row gradients are all-gathered.

All plans then all-gather the routed gradients over ``data``, because every
data replica holds a copy of the model shard and must apply the global update.
No table-sized array is ever communicated or materialised as a gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dlrm_jax.sharding import bags, collectives
from dlrm_jax.sharding.mesh import DATA_AXIS, MODEL_AXIS
from dlrm_jax.sharding.planner import EmbeddingLayout, TablePlacement


class RoutedGradients(NamedTuple):
  """Row gradients that arrived at the shard owning the rows.

  rows: i32[n] local row in this device's buffer shard; ``valid`` False marks
    entries that belong to another shard or to padding and must be ignored.
  grads: f32[n, local_dim].
  """

  rows: jax.Array
  grads: jax.Array
  valid: jax.Array


class Traffic(NamedTuple):
  """A plan's share of the bytes per step, in units ``exchange.exchange_bytes`` scales.

  forward_rows / backward_rows: embedding rows per example each device sends
    over ``model`` (times (m-1) / m of the ring); backward_ids: ids per example
    likewise. data_bytes: bytes per example of the model group that the routed
    gradients carry over ``data``.
  """

  forward_rows: float
  backward_rows: float
  backward_ids: int
  data_bytes: int


def _flatten(rows: jax.Array, grads: jax.Array, valid: jax.Array) -> RoutedGradients:
  return RoutedGradients(rows.reshape(-1), grads.reshape(-1, grads.shape[-1]), valid.reshape(-1))


def _gather_over_data(*xs: jax.Array) -> list[jax.Array]:
  return [collectives.all_gather(x, DATA_AXIS) for x in xs]


def _gather_marked(rows: jax.Array, g: jax.Array, valid: jax.Array | None, axes) -> list:
  """All-gathers (rows, pooled grads) over ``axes``; validity travels as row -1 (multi-hot)."""
  if valid is not None:
    rows = jnp.where(valid, rows, -1)
  for axis in axes:
    rows, g = (collectives.all_gather(x, axis) for x in (rows, g))
  return [rows, g, jnp.ones(rows.shape, bool) if valid is None else rows >= 0]


def _masked_take(table: jax.Array, rows: jax.Array, valid: jax.Array | None) -> jax.Array:
  # Rows are in range by construction (ids are validated on the host and
  # invalid entries point at row 0), so the gather promises that to XLA.
  out = table.at[rows].get(mode="promise_in_bounds")
  return out if valid is None else jnp.where(valid[..., None], out, 0.0)


def _flat_rows(layout: EmbeddingLayout, features: tuple[int, ...], ids: jax.Array):
  """Rows i32[n, P] of every id of ``features``' bags, and validity (None: all valid, one-hot).

  Invalid (empty) slots point at row 0 and are masked by ``valid``.
  """
  cols, widths = bags.columns(layout, features)
  offset = bags.per_id([layout.placements[f].offset for f in features], widths).astype(np.int32)
  ids = ids[:, cols]
  rows = jnp.asarray(offset) + ids
  if not bags.is_multi_hot(layout):
    return rows, None
  valid = ids >= 0
  return jnp.where(valid, rows, 0), valid


def _slots(layout: EmbeddingLayout, features: tuple[int, ...]) -> int:
  """Id slots per example of ``features``' bags (= len(features) when one-hot)."""
  return len(bags.columns(layout, features)[0]) if features else 0


class Plan:
  """How one plan stores, serves, updates and initialises its tables; subclasses fill it in."""

  name: str
  buffer: str
  scope: str  # the named scope of its lookup (``_lookup``) and backward (``_backward``)

  def lookup(self, layout, features, buffer, ids, ids_m) -> jax.Array:
    """f32[b, len(features), local dim or dim] pooled embeddings of ``features``."""
    raise NotImplementedError

  def route(self, layout, features, ids, ids_m, grads) -> RoutedGradients:
    """Gradients for rows of this device's buffer shard; ``grads`` f32[b, T, dim] (all features)."""
    raise NotImplementedError

  def locate(self, p: TablePlacement, k: jax.Array, r: jax.Array):
    """For local buffer rows ``r`` of model shard ``k``: (holds a row of ``p``, its table row)."""
    inside = (r >= p.offset) & (r < p.offset + p.spec.rows)
    return inside, r - p.offset

  def local_columns(self, layout: EmbeddingLayout) -> int:
    """Width of this plan's buffer on each device."""
    return layout.dim

  def first_column(self, layout: EmbeddingLayout, k: jax.Array) -> jax.Array | int:
    """The table column that model shard ``k``'s buffer column 0 holds."""
    return 0

  def local_rows(self, layout: EmbeddingLayout) -> int:
    """Rows of this plan's buffer on each device."""
    return layout.buffer_shapes()[self.buffer][0]

  def traffic(self, layout, features, id_bytes: int, value_bytes: int) -> Traffic:
    """This plan's bytes per step (see ``Traffic``) for ``features``, all of this plan."""
    raise NotImplementedError


class TableWise(Plan):
  """Whole tables on one model shard each; slots of owners padded to one static program."""

  name, buffer, scope = "table", "sharded", "table_wise"

  def owned(self, layout: EmbeddingLayout, ids_m: jax.Array):
    """For this shard's id slots: local rows i32[n, P] and validity bool[n, P]."""
    tw = bags.table_wise_positions(layout)
    k = lax.axis_index(MODEL_AXIS)
    ids = jnp.take(ids_m, jnp.asarray(tw.cols)[k], axis=1)
    rows = jnp.asarray(tw.offset)[k][None, :] + ids
    valid = jnp.broadcast_to(jnp.asarray(tw.used)[k][None, :], rows.shape)
    if bags.is_multi_hot(layout):
      valid = valid & (ids >= 0)
    return jnp.where(valid, rows, 0), valid

  @staticmethod
  def result_columns(layout: EmbeddingLayout, features: tuple[int, ...]) -> np.ndarray:
    """Position of each table-wise feature in the [b, model*slots] all_to_all result."""
    tw = bags.table_wise_positions(layout)
    return np.array([tw.position(f, layout.placements[f].owner) for f in features], np.int32)

  def lookup(self, layout, features, buffer, ids, ids_m):
    rows, valid = self.owned(layout, ids_m)
    local = _masked_take(buffer, rows, valid)  # [b*M, P, D]
    k = lax.axis_index(MODEL_AXIS)
    local = bags.pool_table_wise(local, bags.table_wise_positions(layout), k)  # [b*M, S, D]
    received = collectives.all_to_all(local, MODEL_AXIS, 0, 1)  # [b, M*S, D]
    return received[:, self.result_columns(layout, features)]

  def route(self, layout, features, ids, ids_m, grads):
    s = max(layout.table_slots, 1)
    # Slot j*S+s holds the gradient of owner j's s-th table, or zeros for an
    # empty slot: a gather from [grads, 0] (a scatter into zeros is a serial
    # loop plus a broadcast on XLA:CPU).
    source = np.full(layout.model_size * s, grads.shape[1], np.int32)
    source[self.result_columns(layout, features)] = features
    padded = jnp.concatenate([grads, jnp.zeros_like(grads[:, :1])], axis=1)
    send = padded[:, source]
    mine = collectives.all_to_all(send, MODEL_AXIS, 1, 0)  # [b*M, S, D]
    rows, valid = self.owned(layout, ids_m)  # [b*M, P]
    rows, mine, valid = _gather_over_data(rows, mine, valid)
    k = lax.axis_index(MODEL_AXIS)
    mine = bags.spread_table_wise(mine, bags.table_wise_positions(layout), k)
    return _flatten(rows, mine, valid)

  def locate(self, p, k, r):
    inside = (k == p.owner) & (r >= p.offset) & (r < p.offset + p.spec.rows)
    return inside, r - p.offset

  def local_rows(self, layout):
    return layout.rows_per_shard

  def traffic(self, layout, features, id_bytes, value_bytes):
    s, per_row = max(layout.table_slots, 1), layout.dim * value_bytes
    slots = bags.table_wise_positions(layout).cols.shape[1]
    # Routed rows carry a validity byte: some slots belong to no table.
    return Traffic(s, s, 0, s * per_row + slots * (id_bytes + 1))


class RowWise(Plan):
  """Every table's rows split in contiguous chunks over the model shards."""

  name, buffer, scope = "row", "sharded", "row_wise"

  def owned(self, layout, features, ids_m):
    """Local rows i32[n, P] and ownership bool[n, P] for every id of the row-wise bags.

    An empty slot (-1) is owned by no shard: -1 // chunk is -1.
    """
    cols, widths = bags.columns(layout, features)
    chunk = bags.per_id([layout.placements[f].chunk for f in features], widths).astype(np.int32)
    offset = bags.per_id([layout.placements[f].offset for f in features], widths).astype(np.int32)
    ids = ids_m[:, cols]
    owned = (ids // jnp.asarray(chunk)) == lax.axis_index(MODEL_AXIS)
    rows = jnp.asarray(offset) + ids % jnp.asarray(chunk)
    return jnp.where(owned, rows, 0), owned

  def lookup(self, layout, features, buffer, ids, ids_m):
    rows, owned = self.owned(layout, features, ids_m)
    partial = _masked_take(buffer, rows, owned)  # [b*M, P, D]
    partial = bags.pool(partial, bags.columns(layout, features)[1])  # [b*M, Tr, D]
    return collectives.psum_scatter(partial, MODEL_AXIS)

  def route(self, layout, features, ids, ids_m, grads):
    g = collectives.all_gather(grads[:, list(features)], MODEL_AXIS)
    rows, owned = self.owned(layout, features, ids_m)
    rows, g, owned = _gather_over_data(rows, g, owned)
    g = bags.spread(g, bags.columns(layout, features)[1])
    return _flatten(rows, g, owned)

  def locate(self, p, k, r):
    i = k * p.chunk + r - p.offset
    inside = (r >= p.offset) & (r < p.offset + p.chunk) & (i < p.spec.rows)
    return inside, i

  def local_rows(self, layout):
    return layout.rows_per_shard

  def traffic(self, layout, features, id_bytes, value_bytes):
    n, per_row = len(features), layout.dim * value_bytes
    # Routed rows carry a validity byte: other shards' ids are masked.
    return Traffic(n, n, 0, n * per_row + _slots(layout, features) * (id_bytes + 1))


class ColumnWise(Plan):
  """Every table's columns split evenly over the model shards."""

  name, buffer, scope = "column", "column", "column_wise"

  def lookup(self, layout, features, buffer, ids, ids_m):
    rows, valid = _flat_rows(layout, features, ids_m)
    local = _masked_take(buffer, rows, valid)  # [b*M, P, D/M]
    local = bags.pool(local, bags.columns(layout, features)[1])  # [b*M, Tc, D/M]
    return collectives.all_to_all(local, MODEL_AXIS, 0, 2)

  def route(self, layout, features, ids, ids_m, grads):
    g = collectives.all_to_all(grads[:, list(features)], MODEL_AXIS, 2, 0)
    rows, valid = _flat_rows(layout, features, ids_m)
    rows, g, valid = _gather_marked(rows, g, valid, (DATA_AXIS,))
    g = bags.spread(g, bags.columns(layout, features)[1])
    return _flatten(rows, g, valid)

  def local_columns(self, layout):
    return layout.dim // layout.model_size

  def first_column(self, layout, k):
    return k * (layout.dim // layout.model_size)

  def traffic(self, layout, features, id_bytes, value_bytes):
    n, m, per_row = len(features), layout.model_size, layout.dim * value_bytes
    # Empty multi-hot slots travel as row -1: no validity byte.
    return Traffic(n / m, n / m, 0, n * (per_row // m) + _slots(layout, features) * id_bytes)


class Replicated(Plan):
  """Whole tables on every device: a local lookup, gradients gathered from everywhere."""

  name, buffer, scope = "replicated", "replicated", "replicated"

  def lookup(self, layout, features, buffer, ids, ids_m):
    rows, valid = _flat_rows(layout, features, ids)
    local = _masked_take(buffer, rows, valid)
    return bags.pool(local, bags.columns(layout, features)[1])

  def route(self, layout, features, ids, ids_m, grads):
    rows, valid = _flat_rows(layout, features, ids)
    g = grads[:, list(features)]
    rows, g, valid = _gather_marked(rows, g, valid, (MODEL_AXIS, DATA_AXIS))
    g = bags.spread(g, bags.columns(layout, features)[1])
    return _flatten(rows, g, valid)

  def traffic(self, layout, features, id_bytes, value_bytes):
    n, per_row, slots = len(features), layout.dim * value_bytes, _slots(layout, features)
    return Traffic(0, n, slots, n * per_row + slots * id_bytes)


# In the order their pieces are concatenated (then put back in feature order).
PLANS: dict[str, Plan] = {p.name: p for p in (TableWise(), RowWise(), ColumnWise(), Replicated())}
