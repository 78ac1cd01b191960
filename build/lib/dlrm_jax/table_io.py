"""Device-side conversion between fused embedding buffers and logical per-table arrays.

Checkpoints hold every table ``t`` as its own ``f32[rows_t, dim]`` array (and its
optimizer slots likewise), independent of mesh and plan, so that any layout can
restore any checkpoint. Both directions run as jitted programs on sharded
arrays: no table ever passes through one host as a whole.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlrm_jax.mesh import MODEL_AXIS
from dlrm_jax.planner import EmbeddingLayout, TablePlacement
from dlrm_jax.train_state import TrainState, state_shardings

Logical = dict[str, Any]  # {"tables": {name: f32[rows, dim]}, "slots": {name: {slot: array}}}


def logical_spec(shape: tuple[int, ...], model_size: int) -> P:
  """Spreads a logical table over the model axis where a dimension divides evenly.

  Rows first (each shard then holds a contiguous block, as row-wise plans do),
  else columns, else replicated (only tiny tables fail both).
  """
  if shape[0] % model_size == 0:
    return P(MODEL_AXIS, *([None] * (len(shape) - 1)))
  if len(shape) == 2 and shape[1] % model_size == 0:
    return P(None, MODEL_AXIS)
  return P()


def _slot_shape(p: TablePlacement, buffer_slot: jax.ShapeDtypeStruct) -> tuple[int, ...]:
  return (p.spec.rows,) + tuple(buffer_slot.shape[1:])


def logical_abstract(layout: EmbeddingLayout, abstract_state: TrainState, mesh: Mesh) -> Logical:
  """ShapeDtypeStructs (with target shardings) of the logical tables and slots."""
  m = layout.model_size

  def sds(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, logical_spec(shape, m)))

  tables, slots = {}, {}
  for p in layout.placements:
    buf = abstract_state.tables[p.buffer]
    tables[p.spec.name] = sds((p.spec.rows, layout.dim), buf.dtype)
    buffer_slots = abstract_state.slots[p.buffer]
    if buffer_slots:
      slots[p.spec.name] = {k: sds(_slot_shape(p, v), v.dtype) for k, v in buffer_slots.items()}
  return {"tables": tables, "slots": slots}


def _extract(layout: EmbeddingLayout, p: TablePlacement, buf: jax.Array) -> jax.Array:
  """Table ``p``'s rows (in id order) out of a global fused buffer (or its slot)."""
  m, r, rows = layout.model_size, layout.rows_per_shard, p.spec.rows
  tail = buf.shape[1:]
  if p.plan == "table":
    return lax.slice_in_dim(buf, p.owner * r + p.offset, p.owner * r + p.offset + rows)
  if p.plan == "row":
    blocks = buf.reshape((m, r) + tail)[:, p.offset : p.offset + p.chunk]
    return blocks.reshape((m * p.chunk,) + tail)[:rows]
  return lax.slice_in_dim(buf, p.offset, p.offset + rows)


def logical_table(layout: EmbeddingLayout, buffers: dict[str, jax.Array], index: int) -> np.ndarray:
  """Host-side copy of table ``index`` as f32[rows, dim] (or its row-shaped slot).

  ``buffers`` are the global fused arrays (``state.tables``, or one slot of
  ``state.slots``, e.g. ``{n: s["accumulator"] for n, s in state.slots.items()}``);
  they must be fully addressable (one process). For tests and notebooks; the
  training path and checkpoints never copy a table to the host.
  """
  p = layout.placements[index]
  return np.asarray(jax.device_get(_extract(layout, p, buffers[p.buffer])))


def _insert(
  layout: EmbeddingLayout, p: TablePlacement, buf: jax.Array, table: jax.Array
) -> jax.Array:
  """``buf`` with table ``p``'s rows written where the layout places them."""
  m, r = layout.model_size, layout.rows_per_shard
  tail = buf.shape[1:]
  zeros = (0,) * len(tail)
  if p.plan == "table":
    return lax.dynamic_update_slice(buf, table.astype(buf.dtype), (p.owner * r + p.offset,) + zeros)
  if p.plan == "row":
    padded = jnp.pad(table, [(0, m * p.chunk - p.spec.rows)] + [(0, 0)] * len(tail))
    blocks = lax.dynamic_update_slice(
      buf.reshape((m, r) + tail),
      padded.reshape((m, p.chunk) + tail).astype(buf.dtype),
      (0, p.offset) + zeros,
    )
    return blocks.reshape(buf.shape)
  return lax.dynamic_update_slice(buf, table.astype(buf.dtype), (p.offset,) + zeros)


def extract_all(
  layout: EmbeddingLayout, tables: dict[str, jax.Array], slots: dict[str, dict[str, jax.Array]]
) -> Logical:
  """Logical tables and slots out of global fused buffers; call inside ``jax.jit``."""
  out_tables, out_slots = {}, {}
  for p in layout.placements:
    out_tables[p.spec.name] = _extract(layout, p, tables[p.buffer])
    if slots[p.buffer]:
      out_slots[p.spec.name] = {k: _extract(layout, p, v) for k, v in slots[p.buffer].items()}
  return {"tables": out_tables, "slots": out_slots}


@functools.cache
def _zeros_fn(shape: tuple[int, ...], dtype, sharding: NamedSharding):
  return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


@functools.cache
def _insert_fn(layout: EmbeddingLayout, p: TablePlacement, sharding: NamedSharding):
  # Donating the buffer updates it in place: one fused buffer plus one table
  # is the most that is alive at once, per buffer.
  return jax.jit(functools.partial(_insert, layout, p), out_shardings=sharding, donate_argnums=(0,))


def from_logical(
  layout: EmbeddingLayout, logical: Logical, abstract_state: TrainState, mesh: Mesh
) -> tuple[dict[str, jax.Array], dict[str, dict[str, jax.Array]]]:
  """Builds the fused buffers (and slots) of ``layout`` one table at a time.

  Each logical array is deleted once it is written into its buffer, so device
  memory holds the fused buffers plus the not-yet-inserted tables.
  """
  shardings = state_shardings(mesh, abstract_state)

  def fill(abstract_buf, sharding, pieces):
    buf = _zeros_fn(tuple(abstract_buf.shape), abstract_buf.dtype, sharding)()
    for p, piece in pieces:
      buf = _insert_fn(layout, p, sharding)(buf, piece)
      piece.delete()
    return buf

  tables, slots = {}, {}
  for name, abstract_buf in abstract_state.tables.items():
    mine = [p for p in layout.placements if p.buffer == name]
    tables[name] = fill(
      abstract_buf, shardings.tables[name], [(p, logical["tables"][p.spec.name]) for p in mine]
    )
    slots[name] = {
      k: fill(v, shardings.slots[name][k], [(p, logical["slots"][p.spec.name][k]) for p in mine])
      for k, v in abstract_state.slots[name].items()
    }
  return tables, slots
