"""Sharded embedding lookup and its reverse exchange, as per-device code.

Every function here runs inside ``jax.shard_map`` over the (data, model) mesh:
``ids`` are this device's slice of the batch and ``buffers`` are this device's
shards of the fused tables (see ``planner``). Collectives per plan:

* table-wise: ids are all-gathered over ``model`` (cheap: int32), each owner
  gathers rows of its own tables, one ``all_to_all`` returns them to the
  devices that hold the examples. Backward: the reverse ``all_to_all``.
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
from dlrm_jax.sharding.planner import PLANS as PLAN_NAMES
from dlrm_jax.sharding.planner import EmbeddingLayout


class RoutedGradients(NamedTuple):
  """Row gradients that arrived at the shard owning the rows.

  rows: i32[n] local row in this device's buffer shard; ``valid`` False marks
    entries that belong to another shard or to padding and must be ignored.
  grads: f32[n, local_dim].
  """

  rows: jax.Array
  grads: jax.Array
  valid: jax.Array


def _owned_table_wise(layout: EmbeddingLayout, ids_m: jax.Array):
  """For this shard's table-wise id slots: local rows i32[n, P] and validity bool[n, P]."""
  tw = bags.table_wise_positions(layout)
  k = lax.axis_index(MODEL_AXIS)
  ids = jnp.take(ids_m, jnp.asarray(tw.cols)[k], axis=1)
  rows = jnp.asarray(tw.offset)[k][None, :] + ids
  valid = jnp.broadcast_to(jnp.asarray(tw.used)[k][None, :], rows.shape)
  if bags.is_multi_hot(layout):
    valid = valid & (ids >= 0)
  return jnp.where(valid, rows, 0), valid


def _table_wise_columns(layout: EmbeddingLayout, features: tuple[int, ...]) -> np.ndarray:
  """Position of each table-wise feature in the [b, model*slots] all_to_all result."""
  tw = bags.table_wise_positions(layout)
  return np.array([tw.position(f, layout.placements[f].owner) for f in features], np.int32)


def _owned_row_wise(layout: EmbeddingLayout, features: tuple[int, ...], ids_m: jax.Array):
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


def _masked_take(table: jax.Array, rows: jax.Array, valid: jax.Array | None) -> jax.Array:
  # Rows are in range by construction (ids are validated on the host and
  # invalid entries point at row 0), so the gather promises that to XLA.
  out = table.at[rows].get(mode="promise_in_bounds")
  return out if valid is None else jnp.where(valid[..., None], out, 0.0)


def lookup(layout: EmbeddingLayout, buffers: dict[str, jax.Array], ids: jax.Array) -> jax.Array:
  """Per-device embedding lookup; bags are pooled where their rows live.

  Args:
    layout: static table placement.
    buffers: this device's shards of the fused buffers.
    ids: i32[b, S] this device's examples (S = sum of bag sizes; see bags.py).
  Returns:
    f32[b, T, dim] pooled embeddings, in feature order.
  """
  b = ids.shape[0]
  pieces, order = [], []
  needs_model_group = any(p.plan != "replicated" for p in layout.placements)
  ids_m = collectives.all_gather(ids, MODEL_AXIS) if needs_model_group else None

  table_wise = layout.features("table")
  if table_wise:
    with jax.named_scope("table_wise_lookup"):
      rows, valid = _owned_table_wise(layout, ids_m)
      local = _masked_take(buffers["sharded"], rows, valid)  # [b*M, P, D]
      local = bags.pool(local, bags.table_wise_positions(layout).widths)  # [b*M, S, D]
      received = collectives.all_to_all(local, MODEL_AXIS, 0, 1)  # [b, M*S, D]
      pieces.append(received[:, _table_wise_columns(layout, table_wise)])
      order += table_wise

  row_wise = layout.features("row")
  if row_wise:
    with jax.named_scope("row_wise_lookup"):
      rows, owned = _owned_row_wise(layout, row_wise, ids_m)
      partial = _masked_take(buffers["sharded"], rows, owned)  # [b*M, P, D]
      partial = bags.pool(partial, bags.columns(layout, row_wise)[1])  # [b*M, Tr, D]
      pieces.append(collectives.psum_scatter(partial, MODEL_AXIS))
      order += row_wise

  column_wise = layout.features("column")
  if column_wise:
    with jax.named_scope("column_wise_lookup"):
      rows, valid = _flat_rows(layout, column_wise, ids_m)
      local = _masked_take(buffers["column"], rows, valid)  # [b*M, P, D/M]
      local = bags.pool(local, bags.columns(layout, column_wise)[1])  # [b*M, Tc, D/M]
      pieces.append(collectives.all_to_all(local, MODEL_AXIS, 0, 2))
      order += column_wise

  replicated = layout.features("replicated")
  if replicated:
    with jax.named_scope("replicated_lookup"):
      rows, valid = _flat_rows(layout, replicated, ids)
      local = _masked_take(buffers["replicated"], rows, valid)
      pieces.append(bags.pool(local, bags.columns(layout, replicated)[1]))
      order += replicated

  emb = jnp.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]
  inverse = np.argsort(np.asarray(order))
  if not np.array_equal(inverse, np.arange(len(order))):
    emb = emb[:, inverse]
  assert emb.shape[:2] == (b, len(layout.placements))
  scale = bags.mean_scale(layout, ids)
  return emb if scale is None else emb * scale[..., None]


def _gather_over_data(*xs: jax.Array) -> list[jax.Array]:
  return [collectives.all_gather(x, DATA_AXIS) for x in xs]


def _flatten(rows: jax.Array, grads: jax.Array, valid: jax.Array) -> RoutedGradients:
  return RoutedGradients(rows.reshape(-1), grads.reshape(-1, grads.shape[-1]), valid.reshape(-1))


def _concat(parts: list[RoutedGradients]) -> RoutedGradients:
  if len(parts) == 1:
    return parts[0]
  return RoutedGradients(*(jnp.concatenate(xs, axis=0) for xs in zip(*parts, strict=True)))


def _gather_marked(rows: jax.Array, g: jax.Array, valid: jax.Array | None, axes) -> list:
  """All-gathers (rows, pooled grads) over ``axes``; validity travels as row -1 (multi-hot)."""
  if valid is not None:
    rows = jnp.where(valid, rows, -1)
  for axis in axes:
    rows, g = (collectives.all_gather(x, axis) for x in (rows, g))
  return [rows, g, jnp.ones(rows.shape, bool) if valid is None else rows >= 0]


def route_gradients(
  layout: EmbeddingLayout, ids: jax.Array, grads: jax.Array
) -> dict[str, RoutedGradients]:
  """Per-device reverse exchange: pooled gradients travel to the rows' owners.

  Each bag's gradient travels once; owners copy it to every id of the bag.

  Args:
    ids: i32[b, S] this device's examples (as given to ``lookup``).
    grads: f32[b, T, dim] d(global loss)/d(pooled embeddings) for those examples.
  Returns:
    buffer name -> gradients for rows of this device's shard of that buffer,
    one per id of the whole global batch (empty slots marked invalid).
  """
  routed: dict[str, list[RoutedGradients]] = {}
  needs_model_group = any(p.plan != "replicated" for p in layout.placements)
  ids_m = collectives.all_gather(ids, MODEL_AXIS) if needs_model_group else None
  scale = bags.mean_scale(layout, ids)
  if scale is not None:
    grads = grads * scale[..., None]
  m = layout.model_size

  table_wise = layout.features("table")
  if table_wise:
    with jax.named_scope("table_wise_backward"):
      s = max(layout.table_slots, 1)
      # Slot j*S+s holds the gradient of owner j's s-th table, or zeros for an
      # empty slot: a gather from [grads, 0] (a scatter into zeros is a serial
      # loop plus a broadcast on XLA:CPU).
      source = np.full(m * s, grads.shape[1], np.int32)
      source[_table_wise_columns(layout, table_wise)] = table_wise
      padded = jnp.concatenate([grads, jnp.zeros_like(grads[:, :1])], axis=1)
      send = padded[:, source]
      mine = collectives.all_to_all(send, MODEL_AXIS, 1, 0)  # [b*M, S, D]
      rows, valid = _owned_table_wise(layout, ids_m)  # [b*M, P]
      rows, mine, valid = _gather_over_data(rows, mine, valid)
      mine = bags.spread(mine, bags.table_wise_positions(layout).widths)
      routed.setdefault("sharded", []).append(_flatten(rows, mine, valid))

  row_wise = layout.features("row")
  if row_wise:
    with jax.named_scope("row_wise_backward"):
      g = collectives.all_gather(grads[:, list(row_wise)], MODEL_AXIS)
      rows, owned = _owned_row_wise(layout, row_wise, ids_m)
      rows, g, owned = _gather_over_data(rows, g, owned)
      g = bags.spread(g, bags.columns(layout, row_wise)[1])
      routed.setdefault("sharded", []).append(_flatten(rows, g, owned))

  column_wise = layout.features("column")
  if column_wise:
    with jax.named_scope("column_wise_backward"):
      g = collectives.all_to_all(grads[:, list(column_wise)], MODEL_AXIS, 2, 0)
      rows, valid = _flat_rows(layout, column_wise, ids_m)
      rows, g, valid = _gather_marked(rows, g, valid, (DATA_AXIS,))
      g = bags.spread(g, bags.columns(layout, column_wise)[1])
      routed.setdefault("column", []).append(_flatten(rows, g, valid))

  replicated = layout.features("replicated")
  if replicated:
    with jax.named_scope("replicated_backward"):
      rows, valid = _flat_rows(layout, replicated, ids)
      g = grads[:, list(replicated)]
      rows, g, valid = _gather_marked(rows, g, valid, (MODEL_AXIS, DATA_AXIS))
      g = bags.spread(g, bags.columns(layout, replicated)[1])
      routed.setdefault("replicated", []).append(_flatten(rows, g, valid))

  return {name: _concat(parts) for name, parts in routed.items()}


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a cheap, well-mixed bijection on uint32."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _row_values(seed: jax.Array, table: jax.Array, row: jax.Array, dim: int) -> jax.Array:
  """U(-1, 1) values f32[n, dim] of rows; a function of (seed, table, row, column) only.

  A counter-based hash rather than jax.random: initialising Kaggle's 34M rows
  with per-row threefry keys took tens of seconds and several table-sized
  temporaries; this is a few integer ops per value and never depends on layout.
  """
  h = _fmix32(table.astype(jnp.uint32) * jnp.uint32(0x9E3779B1) ^ seed[0])
  h = _fmix32(h ^ (row.astype(jnp.uint32) * jnp.uint32(0x85EBCA6B) + seed[1]))
  col = jnp.arange(dim, dtype=jnp.uint32) * jnp.uint32(0xC2B2AE35) + jnp.uint32(0x27D4EB2F)
  bits = _fmix32(h[:, None] ^ col[None, :])
  return (bits >> 8).astype(jnp.float32) * (2.0 / (1 << 24)) - 1.0


# Rows initialised per loop iteration: bounds the temporaries to a few MiB.
_INIT_CHUNK_ROWS = 1 << 16


def _init_rows(layout: EmbeddingLayout, name: str, seed: jax.Array, r: jax.Array) -> jax.Array:
  """Initial values f32[n, dim] of local rows ``r`` of this shard's buffer ``name``."""
  k = lax.axis_index(MODEL_AXIS)
  table = jnp.zeros(r.shape, jnp.int32)
  row = jnp.zeros(r.shape, jnp.int32)
  bound = jnp.zeros(r.shape, jnp.float32)
  for t, p in enumerate(layout.placements):
    if p.buffer != name:
      continue
    if p.plan == "table":
      inside = (k == p.owner) & (r >= p.offset) & (r < p.offset + p.spec.rows)
      i = r - p.offset
    elif p.plan == "row":
      i = k * p.chunk + r - p.offset
      inside = (r >= p.offset) & (r < p.offset + p.chunk) & (i < p.spec.rows)
    else:
      inside = (r >= p.offset) & (r < p.offset + p.spec.rows)
      i = r - p.offset
    table = jnp.where(inside, t, table)
    row = jnp.where(inside, i, row)
    bound = jnp.where(inside, p.spec.init_bound, bound)
  return _row_values(seed, table, row, layout.dim) * bound[:, None]


def init_buffers(layout: EmbeddingLayout, key: jax.Array) -> dict[str, jax.Array]:
  """Per-device initial shards: row i of table t is U(-sqrt(1/rows_t), sqrt(1/rows_t)).

  Values are a function of (key, table, row) only, so every mesh and plan
  starts from the same tables as a single device. Filled in chunks so that
  peak memory stays near the size of the tables themselves.
  """
  k = lax.axis_index(MODEL_AXIS)
  m, dim = layout.model_size, layout.dim
  seed = jax.random.key_data(key).reshape(-1)[-2:].astype(jnp.uint32)
  out = {}
  for name, (total_rows, _) in layout.buffer_shapes().items():
    local_rows = total_rows // m if name == "sharded" else total_rows
    chunk = min(_INIT_CHUNK_ROWS, local_rows)
    num_chunks = -(-local_rows // chunk)

    def fill(c, values, name=name, chunk=chunk, local_rows=local_rows):
      # The last chunk is shifted back to end at the last row; rows it covers
      # twice get the same values, since values depend on the row alone.
      start = jnp.minimum(c * chunk, local_rows - chunk)
      r = start + jnp.arange(chunk, dtype=jnp.int32)
      return lax.dynamic_update_slice_in_dim(values, _init_rows(layout, name, seed, r), start, 0)

    values = lax.fori_loop(0, num_chunks, fill, jnp.zeros((local_rows, dim), jnp.float32))
    if name == "column":
      values = lax.dynamic_slice_in_dim(values, k * (dim // m), dim // m, axis=1)
    out[name] = values
  return out


def exchange_bytes(
  layout: EmbeddingLayout, data_size: int, batch_size: int, id_bytes: int = 4, value_bytes: int = 4
) -> dict[str, int]:
  """Bytes that all devices together send per training step, by phase.

  Mirrors the collectives of ``lookup`` and ``route_gradients`` on a
  (``data_size``, ``layout.model_size``) mesh with a global batch of
  ``batch_size`` examples: an all_gather / all_to_all / psum_scatter over an
  axis of size n sends (n - 1) / n of its per-device input from each device
  (ring algorithms). Ids travel one per bag slot; embeddings and their
  gradients one per bag (pooled). ``minimum`` is the bytes of the pooled
  embeddings the batch needs, B * T * dim, each sent once.
  """
  m, d, dim = layout.model_size, data_size, layout.dim
  devices = m * d
  b = batch_size // devices
  counts = {plan: len(layout.features(plan)) for plan in PLAN_NAMES}
  # Id slots per example of each plan's bags (= counts when one-hot).
  slots = {
    plan: len(bags.columns(layout, layout.features(plan))[0]) if counts[plan] else 0
    for plan in PLAN_NAMES
  }
  s = max(layout.table_slots, 1) if counts["table"] else 0
  table_ids = sum(bags.table_wise_positions(layout).widths) if counts["table"] else 0
  out = {"ids": 0, "forward": 0, "backward": 0, "backward_data": 0}
  if any(counts[p] for p in ("table", "row", "column")):
    # ids all_gather over model (XLA merges the forward and backward ones).
    out["ids"] = devices * (m - 1) * b * sum(bags.bag_sizes(layout)) * id_bytes
  per_row = dim * value_bytes
  # Forward: table-wise all_to_all of [b*m, S, D]; row-wise psum_scatter of
  # [b*m, Tr, D]; column-wise all_to_all of [b*m, Tc, D/m].
  out["forward"] = devices * (m - 1) * b * per_row * (s + counts["row"] + counts["column"] / m)
  # Backward over model: the reverse all_to_alls, the row-wise all_gather of
  # [b, Tr, D] and the replicated all_gather of rows and [b, Tp, D].
  out["backward"] = (
    devices
    * (m - 1)
    * b
    * (
      per_row * (s + counts["row"] + counts["column"] / m + counts["replicated"])
      + id_bytes * slots["replicated"]
    )
  )
  # Backward over data: every data replica applies the global update, so the
  # routed (rows, pooled grads) are all-gathered over data, with a validity
  # byte per id where some entries belong to other shards (table-wise slots,
  # row-wise); column-wise and replicated multi-hot mark empty slots as row -1.
  routed_rows = (
    b * m * ((s + counts["row"]) * per_row + (table_ids + slots["row"]) * (id_bytes + 1))
  )
  routed_rows += b * m * (counts["column"] * (per_row // m) + slots["column"] * id_bytes)
  routed_rows += b * m * (counts["replicated"] * per_row + slots["replicated"] * id_bytes)
  out["backward_data"] = devices * (d - 1) * routed_rows
  out["total"] = sum(out.values())
  out["minimum"] = batch_size * len(layout.placements) * per_row
  return out
