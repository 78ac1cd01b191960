"""Fused embedding buffers <-> per-table arrays, and the layout a checkpoint records.

Checkpoints hold the fused buffers exactly as training shards them (each device
writes its own shard, no copy, no collective) plus the layout as JSON
(``layout_to_json``). Restoring onto another mesh or plan reads the saved
buffers back through the saved layout: every table ``t`` is cut out as its own
``f32[rows_t, dim]`` array (and its optimizer slots likewise), one table at a
time, and written where the new layout places it. Both directions run as jitted
programs on sharded arrays: no table ever passes through one host as a whole.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlrm_jax.sharding.mesh import MODEL_AXIS
from dlrm_jax.sharding.planner import EmbeddingLayout, TablePlacement
from dlrm_jax.sharding.specs import TableSpec
from dlrm_jax.train.state import TrainState, state_shardings

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


def logical_abstract(layout: EmbeddingLayout, abstract_state: TrainState, mesh: Mesh) -> Logical:
  """ShapeDtypeStructs of per-table arrays (checkpoint format 1), spread over ``mesh``."""
  m = layout.model_size

  def sds(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, logical_spec(shape, m)))

  tables, slots = {}, {}
  for p in layout.placements:
    tables[p.spec.name] = sds((p.spec.rows, layout.dim), abstract_state.tables[p.buffer].dtype)
    buffer_slots = abstract_state.slots[p.buffer]
    if buffer_slots:
      slots[p.spec.name] = {k: sds(_slot_shape(p, v), v.dtype) for k, v in buffer_slots.items()}
  return {"tables": tables, "slots": slots}


def _slot_shape(p: TablePlacement, buffer_slot: jax.ShapeDtypeStruct) -> tuple[int, ...]:
  return (p.spec.rows,) + tuple(buffer_slot.shape[1:])


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


def logical_tables(
  layout: EmbeddingLayout, buffers: dict[str, jax.Array], mesh: Mesh
) -> list[jax.Array]:
  """Every table as its own f32[rows, dim] array (feature order), each spread over ``mesh``."""
  m = layout.model_size
  out = []
  for p in layout.placements:
    shape = (p.spec.rows, layout.dim)
    out.append(
      _extract_fn(layout, p, NamedSharding(mesh, logical_spec(shape, m)))(buffers[p.buffer])
    )
  return out


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


def fill_buffers(
  layout: EmbeddingLayout,
  piece: Callable[[str, str | None], jax.Array],
  abstract_state: TrainState,
  mesh: Mesh,
) -> tuple[dict[str, jax.Array], dict[str, dict[str, jax.Array]]]:
  """Fused buffers of ``layout``, filled one table at a time from ``piece(name, slot)``.

  Each piece is deleted once written (its buffer is donated and updated in
  place), so device memory holds the buffers plus one table.
  """
  shardings = state_shardings(mesh, abstract_state)

  def fill(abstract_buf, sharding, placements, slot):
    buf = _zeros_fn(tuple(abstract_buf.shape), abstract_buf.dtype, sharding)()
    for p in placements:
      table = piece(p.spec.name, slot)
      buf = _insert_fn(layout, p, sharding)(buf, table)
      table.delete()
    return buf

  tables, slots = {}, {}
  for name, abstract_buf in abstract_state.tables.items():
    mine = [p for p in layout.placements if p.buffer == name]
    tables[name] = fill(abstract_buf, shardings.tables[name], mine, None)
    slots[name] = {
      k: fill(v, shardings.slots[name][k], mine, k) for k, v in abstract_state.slots[name].items()
    }
  return tables, slots


def layout_to_json(layout: EmbeddingLayout) -> dict[str, Any]:
  """Every field of ``layout`` (placements and their TableSpecs included) as JSON values."""
  return json.loads(json.dumps(dataclasses.asdict(layout)))


def layout_from_json(d: dict[str, Any]) -> EmbeddingLayout:
  """The inverse of ``layout_to_json`` (JSON lists back to the tuples of frozen dataclasses)."""

  def fields(x: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in x.items()}

  placements = tuple(
    TablePlacement(**{**fields(p), "spec": TableSpec(**fields(p["spec"]))}) for p in d["placements"]
  )
  return EmbeddingLayout(**{**fields(d), "placements": placements})


def buffers_abstract(
  layout: EmbeddingLayout, slot_tails: dict[str, tuple[tuple[int, ...], Any]], dtype, mesh: Mesh
) -> dict[str, Any]:
  """The fused buffers (and slots) of a saved ``layout``, sharded to be readable on ``mesh``.

  ``slot_tails``: slot name -> (shape after the row axis, dtype). Each buffer is
  spread over ``mesh``'s model axis where it divides (``logical_spec``), so no
  device of ``mesh`` holds a whole buffer unless nothing divides.
  """
  m = dict(mesh.shape).get(MODEL_AXIS, 1)

  def sds(shape, dt):
    return jax.ShapeDtypeStruct(shape, dt, sharding=NamedSharding(mesh, logical_spec(shape, m)))

  buffers, slots = {}, {}
  for name, (rows, dim) in layout.buffer_shapes().items():
    buffers[name] = sds((rows, dim), dtype)
    slots[name] = {k: sds((rows,) + tuple(tail), dt) for k, (tail, dt) in slot_tails.items()}
  return {"buffers": buffers, "slots": slots}


def _extract_fn(layout: EmbeddingLayout, p: TablePlacement, sharding: NamedSharding):
  return jax.jit(functools.partial(_extract, layout, p), out_shardings=sharding)


def rebuild(
  saved: EmbeddingLayout,
  saved_buffers: dict[str, Any],
  layout: EmbeddingLayout,
  abstract_state: TrainState,
  mesh: Mesh,
) -> tuple[dict[str, jax.Array], dict[str, dict[str, jax.Array]]]:
  """``layout``'s fused buffers from ``saved_buffers`` (laid out by ``saved``), on ``mesh``.

  One table at a time is cut out of the saved buffers (a jitted slice whose
  result is spread over ``mesh``'s model axis) and written into the new
  buffers, so device memory holds both sets of buffers plus one table.
  """
  m = dict(mesh.shape).get(MODEL_AXIS, 1)
  by_name = {p.spec.name: p for p in saved.placements}

  def piece(name: str, slot: str | None) -> jax.Array:
    p = by_name[name]
    bufs = saved_buffers["buffers"] if slot is None else saved_buffers["slots"][p.buffer]
    buf = bufs[p.buffer] if slot is None else bufs[slot]
    shape = (p.spec.rows,) + tuple(buf.shape[1:])
    return _extract_fn(saved, p, NamedSharding(mesh, logical_spec(shape, m)))(buf)

  out = fill_buffers(layout, piece, abstract_state, mesh)
  for x in jax.tree.leaves(saved_buffers):
    x.delete()
  return out
