"""Initial embedding tables, generated in place on each device from a counter-based hash."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlrm_jax.sharding.mesh import MODEL_AXIS
from dlrm_jax.sharding.planner import BUFFER_SPECS, EmbeddingLayout
from dlrm_jax.sharding.plans import PLANS


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a cheap, well-mixed bijection on uint32."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def row_values(seed: jax.Array, table: jax.Array, row: jax.Array, columns: jax.Array) -> jax.Array:
  """U(-1, 1) values f32[n, len(columns)] of rows; a function of (seed, table, row, column) only.

  A counter-based hash rather than jax.random: initialising Kaggle's 34M rows
  with per-row threefry keys took tens of seconds and several table-sized
  temporaries; this is a few integer ops per value and never depends on layout,
  so a device that holds some columns generates only those.
  """
  h = _fmix32(table.astype(jnp.uint32) * jnp.uint32(0x9E3779B1) ^ seed[0])
  h = _fmix32(h ^ (row.astype(jnp.uint32) * jnp.uint32(0x85EBCA6B) + seed[1]))
  col = columns.astype(jnp.uint32) * jnp.uint32(0xC2B2AE35) + jnp.uint32(0x27D4EB2F)
  bits = _fmix32(h[:, None] ^ col[None, :])
  return (bits >> 8).astype(jnp.float32) * (2.0 / (1 << 24)) - 1.0


# Rows initialised per loop iteration: bounds the temporaries to a few MiB.
_INIT_CHUNK_ROWS = 1 << 16


def _init_rows(
  layout: EmbeddingLayout, name: str, seed: jax.Array, r: jax.Array, columns: jax.Array
) -> jax.Array:
  """Initial values f32[n, len(columns)] of local rows ``r`` of this shard's buffer ``name``."""
  k = lax.axis_index(MODEL_AXIS)
  table = jnp.zeros(r.shape, jnp.int32)
  row = jnp.zeros(r.shape, jnp.int32)
  bound = jnp.zeros(r.shape, jnp.float32)
  for t, p in enumerate(layout.placements):
    if p.buffer != name:
      continue
    inside, i = PLANS[p.plan].locate(p, k, r)
    table = jnp.where(inside, t, table)
    row = jnp.where(inside, i, row)
    bound = jnp.where(inside, p.spec.init_bound, bound)
  return row_values(seed, table, row, columns) * bound[:, None]


def table_seed(key: jax.Array) -> jax.Array:
  """u32[2]: the seed ``row_values`` takes, from the tables' PRNG key."""
  return jax.random.key_data(key).reshape(-1)[-2:].astype(jnp.uint32)


def init_buffers(layout: EmbeddingLayout, key: jax.Array) -> dict[str, jax.Array]:
  """Per-device initial shards: row i of table t is U(-sqrt(1/rows_t), sqrt(1/rows_t)).

  Values are a function of (key, table, row, column) only, so every mesh and
  plan starts from the same tables as a single device. Each device generates
  only the rows and columns it holds, in chunks of rows, so that its peak
  memory is its shard plus a few chunks.
  """
  k = lax.axis_index(MODEL_AXIS)
  seed = table_seed(key)
  out = {}
  for name in layout.buffer_shapes():
    plan = next(p for p in PLANS.values() if p.buffer == name)
    local_rows, width = plan.local_rows(layout), plan.local_columns(layout)
    columns = plan.first_column(layout, k) + jnp.arange(width, dtype=jnp.int32)
    chunk = min(_INIT_CHUNK_ROWS, local_rows)
    num_chunks = -(-local_rows // chunk)

    def fill(c, values, name=name, chunk=chunk, local_rows=local_rows, columns=columns):
      # The last chunk is shifted back to end at the last row; rows it covers
      # twice get the same values, since values depend on the row alone.
      start = jnp.minimum(c * chunk, local_rows - chunk)
      r = start + jnp.arange(chunk, dtype=jnp.int32)
      rows = _init_rows(layout, name, seed, r, columns)
      return lax.dynamic_update_slice_in_dim(values, rows, start, 0)

    out[name] = lax.fori_loop(0, num_chunks, fill, jnp.zeros((local_rows, width), jnp.float32))
  return out


def init_tables(layout: EmbeddingLayout, mesh: Mesh):
  """``key -> {buffer: f32 array}``: the tables, each device filling its own shard (not jitted)."""
  return jax.shard_map(
    lambda key: init_buffers(layout, key),
    mesh=mesh,
    in_specs=P(),
    out_specs={name: BUFFER_SPECS[name] for name in layout.buffer_shapes()},
    check_vma=False,
  )


def init_program(layout: EmbeddingLayout, mesh: Mesh):
  """The jitted table-initialisation program, ``key -> {buffer: array}`` sharded as trained.

  Lower it with an abstract key to see its memory without allocating a table:
  ``init_program(layout, mesh).lower(jax.eval_shape(jax.random.key, 0)).compile()``.
  """
  shardings = {name: NamedSharding(mesh, BUFFER_SPECS[name]) for name in layout.buffer_shapes()}
  return jax.jit(init_tables(layout, mesh), out_shardings=shardings)
