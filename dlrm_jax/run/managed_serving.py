"""--id_mapping=managed for serving: every shard's map as one sorted (id, row) list per table."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dlrm_jax.checkpoint.managed_io import host_array
from dlrm_jax.sharding.managed import ManagedLayout


def resident_ids(
  ml: ManagedLayout, managed: dict[str, jax.Array]
) -> list[tuple[np.ndarray, np.ndarray]]:
  """Per table (feature order): (raw ids u32[n] ascending, their table rows i32[n]).

  The ids the maps hold (a row whose map slot is set); a table row is the row of
  the logical table (``table_io.logical_tables``): shard k's local row r of table
  t is row ``k * chunk[t] + r - offset[t]``, as the step computes it. A table that
  holds no id gets the one entry (0, 0): id 0 -> row 0, which is the unknown rule
  anyway, and keeps every array non-empty for the exported function.
  """
  m, per_shard = ml.model_size, ml.rows_per_shard
  row_id = host_array(managed["row_id"]).reshape(m, per_shard)
  held = host_array(managed["row_slot"]).reshape(m, per_shard) >= 0
  out = []
  for t in range(ml.num_tables):
    ids, rows = [], []
    for k in range(m):
      lo, n = int(ml.offset[t]), int(ml.rows[k, t])
      local = np.flatnonzero(held[k, lo : lo + n])
      ids.append(row_id[k, lo + local])
      rows.append(k * int(ml.chunk[t]) + local)
    ids, rows = np.concatenate(ids).astype(np.uint32), np.concatenate(rows).astype(np.int32)
    if not len(ids):
      ids, rows = np.zeros(1, np.uint32), np.zeros(1, np.int32)
    order = np.argsort(ids, kind="stable")
    if len(ids) > 1 and np.any(ids[order][1:] == ids[order][:-1]):
      raise ValueError(f"table {t}: an id is held twice in the managed maps")
    out.append((ids[order], rows[order]))
  return out


def find_rows(ids: jax.Array, rows: jax.Array, x: jax.Array) -> jax.Array:
  """Table rows i32[b] of raw ids ``x`` u32[b] in one table's sorted (ids, rows); absent: 0."""
  pos = jnp.minimum(jnp.searchsorted(ids, x), ids.shape[0] - 1)
  return jnp.where(ids[pos] == x, rows[pos], 0)
