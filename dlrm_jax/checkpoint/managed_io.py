"""Managed tables onto another mesh: every resident id re-inserted at its new owner, on the host.

A managed table's rows are where its ids' owners put them, and the owner of an id
depends on the number of model shards (``managed.owner_of``), so a checkpoint saved
on one mesh cannot be re-cut table by table like the other plans' (``table_io``).
Instead every resident id (its raw id, embedding row, optimizer slot rows, last use
and count) is routed to its owner on the new mesh and inserted there into free rows
in ascending order of its old table row, the map built with the step's own probe
sequence (``managed.probe_slots``; clashes go to the lower old row, as in the step).
The unknown row 0 and the seed are carried as they are, the counters summed per
table onto shard 0. A new shard with fewer rows than ids routed to it keeps the
ones its eviction policy ranks highest and counts the rest as evicted, with a
warning. Rows no id holds are zeros: a row is reset when an id takes it.

This passes every managed table through the host (each process builds the whole
new state and places its own shards), unlike ``table_io``; the same mesh needs
none of it (the saved arrays load as they are).
"""

from __future__ import annotations

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from dlrm_jax.sharding import managed as managed_lib
from dlrm_jax.sharding.managed import ManagedLayout
from dlrm_jax.sharding.planner import EmbeddingLayout
from dlrm_jax.train.state import TrainState, state_shardings

_CHUNK = 1 << 16  # ids hashed per device call: a fixed shape compiles once


def host_array(x: jax.Array) -> np.ndarray:
  """The whole global array on this host (gathered across processes where needed)."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _chunked(fn, x: np.ndarray, table: int, *args) -> np.ndarray:
  """``fn(ids, tables, *args)`` i32[n] over ``x`` u32[n] in fixed-size chunks (padded)."""
  out = [np.zeros((0,), np.int32)]
  for start in range(0, len(x), _CHUNK):
    part = x[start : start + _CHUNK]
    padded = np.zeros(_CHUNK, np.uint32)
    padded[: len(part)] = part
    out.append(np.asarray(fn(padded, np.full(_CHUNK, table, np.int32), *args))[: len(part)])
  return np.concatenate(out)


class _Hashes:
  """The new layout's owner rule and j-th probe, each jitted once for any table."""

  def __init__(self, ml: ManagedLayout):
    self.owner = jax.jit(lambda x, t: managed_lib.owner_of(ml, x, t))
    self.probe = jax.jit(lambda x, t, j: managed_lib.probe_slots(ml, x, t)[:, j])


def _ranked_keep(ml: ManagedLayout, rows: np.ndarray, st: dict, step: int, room: int):
  """The ``room`` rows (old buffer rows, ascending) the policy ranks highest; ties: higher row."""
  last = st["row_step"][rows]
  if ml.policy == "lru":
    key = last.astype(np.float64)
  else:
    age = (step - last).astype(np.float32)
    key = st["row_count"][rows] * np.power(np.float32(ml.decay), age, dtype=np.float32)
  order = np.lexsort((rows, key))  # lowest ranked first, the lower row first among ties
  return np.sort(rows[order[len(rows) - room :]])


def _insert(hashes: _Hashes, x: np.ndarray, table: int, num_slots: int) -> np.ndarray:
  """Local map slot i32[n] of raw ids ``x`` (-1: all probes taken) in an empty map of one shard.

  As the step inserts: round j offers every pending id its j-th probe, and of the ids
  that find the same free slot the first (in ``x``'s order) takes it.
  """
  slot = np.full(len(x), -1, np.int32)
  occupied = np.zeros(num_slots, bool)
  pending = np.arange(len(x))
  for j in range(managed_lib.PROBES):
    if not len(pending):
      break
    pos = _chunked(hashes.probe, x[pending], table, np.uint32(j))
    free = ~occupied[pos]
    candidates, at = pending[free], pos[free]
    _, first = np.unique(at, return_index=True)  # candidates ascend: the first id wins
    won, won_at = candidates[first], at[first]
    slot[won] = won_at
    occupied[won_at] = True
    pending = pending[slot[pending] < 0]
  return slot


def relayout_host(
  saved: ManagedLayout,
  ml: ManagedLayout,
  step: int,
  state: dict[str, np.ndarray],
  buffer: np.ndarray,
  slots: dict[str, np.ndarray],
  names: list[str],
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray], list[int]]:
  """NumPy: the managed state, sharded buffer and its slots of ``saved`` re-laid out for ``ml``.

  state: ``managed.init_state``'s arrays of ``saved`` (global); buffer: f32[M0 * R0, dim];
  slots: name -> [M0 * R0, ...]; step: the next step (LFU's decay reads it).
  Returns (state, buffer f32[M1 * R1, dim], slots, ids dropped per table).
  """
  m0, r0 = saved.model_size, saved.rows_per_shard
  m1, r1, s1 = ml.model_size, ml.rows_per_shard, ml.slots_per_shard
  t_count = ml.num_tables
  rows1 = m1 * r1
  out = managed_lib.init_state(ml, state["seed"], xp=np)
  for name in managed_lib.COUNTERS:
    out[name][0] = state[name].sum(axis=0)
  new_buffer = np.zeros((rows1,) + buffer.shape[1:], buffer.dtype)
  new_slots = {k: np.zeros((rows1,) + v.shape[1:], v.dtype) for k, v in slots.items()}
  hashes = _Hashes(ml)
  dropped = []
  for t in range(t_count):
    # The unknown row: table row 0, the first row of shard 0 on both meshes.
    for src, dst in [(buffer, new_buffer)] + [(slots[k], new_slots[k]) for k in slots]:
      dst[ml.offset[t]] = src[saved.offset[t]]
    old = np.concatenate(
      [k * r0 + saved.offset[t] + np.arange(saved.rows[k, t]) for k in range(m0)]
    )  # ascending table rows
    old = old[state["row_slot"][old] >= 0]
    owner = _chunked(hashes.owner, state["row_id"][old], t)
    lost = 0
    for k in range(m1):
      mine = old[owner == k]
      room = max(0, int(ml.rows[k, t] - ml.first[k, t]))
      if len(mine) > room:
        lost += len(mine) - room
        mine = _ranked_keep(ml, mine, state, step, room)
      x = state["row_id"][mine]
      slot = _insert(hashes, x, t, s1)
      lost += int(np.sum(slot < 0))
      mine, x, slot = mine[slot >= 0], x[slot >= 0], slot[slot >= 0]
      local = ml.offset[t] + ml.first[k, t] + np.arange(len(mine))  # this shard's buffer rows
      new = k * r1 + local
      new_buffer[new] = buffer[mine]
      for name, v in slots.items():
        new_slots[name][new] = v[mine]
      out["row_id"][new] = x
      out["row_slot"][new] = slot
      out["row_step"][new] = state["row_step"][mine]
      out["row_count"][new] = state["row_count"][mine]
      out["map"][k * s1 + slot] = np.stack([x.view(np.int32), local], axis=1)
      out["next_free"][k, t] = ml.first[k, t] + len(mine)
    out["evicted"][0, t] += lost
    dropped.append(lost)
  if any(dropped):
    lost = ", ".join(f"{n}: {d}" for n, d in zip(names, dropped, strict=True) if d)
    logging.warning(
      "restoring managed tables onto %d model shards (saved on %d): some shards have fewer "
      "rows than the ids routed to them; kept the ids --eviction=%s ranks highest and dropped "
      "(counted as evicted) %s",
      m1,
      m0,
      ml.policy,
      lost,
    )
  return out, new_buffer, new_slots, dropped


def rebuild(
  saved: EmbeddingLayout,
  tree: dict,
  layout: EmbeddingLayout,
  ml: ManagedLayout,
  abstract_state: TrainState,
  mesh: Mesh,
) -> tuple[dict[str, jax.Array], dict[str, dict[str, jax.Array]], dict[str, jax.Array]]:
  """(tables, slots, managed) on ``mesh`` from a restored tree laid out by ``saved``.

  ``tree``: the restored checkpoint (``buffers``, ``slots``, ``managed``, ``step``), its
  arrays spread over ``mesh`` as ``tree.restore_target`` asked; they are deleted here.
  """
  if set(abstract_state.tables) != {"sharded"}:
    raise ValueError("managed tables are row-wise: the state holds only the sharded buffer")
  saved_ml = managed_lib.managed_layout(saved, ml.policy, ml.decay)
  state = {k: host_array(v) for k, v in tree["managed"].items()}
  buffer = host_array(tree["buffers"]["sharded"])
  slots = {k: host_array(v) for k, v in tree["slots"].get("sharded", {}).items()}
  for x in jax.tree.leaves((tree["managed"], tree["buffers"], tree["slots"])):
    x.delete()
  names = [p.spec.name for p in layout.placements]
  new_state, new_buffer, new_slots, _ = relayout_host(
    saved_ml, ml, int(tree["step"]), state, buffer, slots, names
  )
  shardings = state_shardings(mesh, abstract_state)

  def put(x: np.ndarray, abstract: jax.ShapeDtypeStruct, sharding) -> jax.Array:
    if x.shape != abstract.shape:
      raise ValueError(f"re-laid out managed state {x.shape}, expected {abstract.shape}")
    x = x.astype(abstract.dtype)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  tables = {
    "sharded": put(new_buffer, abstract_state.tables["sharded"], shardings.tables["sharded"])
  }
  slots_out = {
    "sharded": {
      k: put(new_slots[k], v, shardings.slots["sharded"][k])
      for k, v in abstract_state.slots["sharded"].items()
    }
  }
  managed = {
    k: put(new_state[k], v, shardings.managed[k]) for k, v in abstract_state.managed.items()
  }
  return tables, slots_out, managed
