"""--id_mapping=managed: raw ids become rows inside the step, with no collision within a capacity.

Every managed table is row-wise. Raw id x of table t belongs to one model shard,
its owner: ``owners_t[fmix(x) % len(owners_t)]``, over the shards that hold rows
of t. Beside its chunk of t's rows the owner keeps, for those rows only:

* a map raw id -> row, open addressing with double hashing over H_t slots (the
  smallest power of two >= 2x the chunk) and at most ``PROBES`` probes, so a
  lookup is PROBES gathers and never a host round trip;
* per row: the id it holds, its map slot (-1: free), the step it was last used
  and its use count, which the eviction policy reads.

One step, on every device for the ids of the whole global batch (so that data
replicas of a shard make the same decisions):

1. each owner takes the distinct (table, id) pairs it owns, in ascending id
   order, and looks them up;
2. rows of ids found are touched (last use = this step; count decays, then grows
   by the id's occurrences in the batch);
3. new ids, in ascending id order, take the shard's free rows in row order; when
   none is left each takes the row that the policy ranks lowest among rows not
   used in this step (``lru``: least recently used; ``lfu``: least decayed count
   ``count * decay ** (step - last use)``; ties: the lowest row);
4. an evicted row's id leaves the map, and a new id's row and its optimizer
   slots are reset to a fresh initialisation, a function of (seed, table, raw
   id) only, so an id starts from the same vector on any mesh;
5. every id becomes its table row (an id left without a row: row 0).

Row 0 of every managed table (the first row of model shard 0) is the unknown
row: it is never given to an id. Evaluation, prediction and export map ids that
are not in the map to it, and so does training for the rare id that finds no row
(more new ids in one step than rows to evict, or all its probes taken: about
2^-32 per insertion at the map's load of at most one half); ``unplaced`` counts
those. Row 0 is initialised and trained like any row.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dlrm_jax.sharding import collectives
from dlrm_jax.sharding.mesh import BATCH_AXES, MODEL_AXIS
from dlrm_jax.sharding.planner import EmbeddingLayout
from dlrm_jax.sharding.table_init import _fmix32, row_values

POLICIES = ("lru", "lfu")
PROBES = 32
# Salts keep the owner, the first probe and the probe stride independent hashes of an id.
_OWNER_SALT, _PROBE_SALT, _STRIDE_SALT = 0x3C6EF372, 0xA54FF53A, 0x510E527F
_I32_MAX = np.iinfo(np.int32).max
_I32_MIN = np.iinfo(np.int32).min
COUNTERS = ("inserted", "evicted", "unplaced")
# What the planner charges each row for the map: 4 floats of row state, and 2 slots of
# 8 bytes for each of the at most 2-4 map slots per row (H is the power of two >= 2 x chunk).
MANAGED_FLOATS_PER_ROW = 4 + 2 * 4


def _hash(x: jax.Array, salt: int) -> jax.Array:
  return _fmix32(x ^ jnp.uint32(salt))


@dataclasses.dataclass(frozen=True)
class ManagedLayout:
  """Static facts of the managed tables on a mesh of ``model_size`` shards.

  Per table t (feature order): ``offset[t]`` the sharded buffer's local row of
  t's first local row, ``chunk[t]`` rows per shard, ``slot_offset[t]`` and
  ``slots[t]`` (H_t) its region of each shard's map; per shard k: ``rows[k, t]``
  rows of t it holds and ``first[k, t]`` its first row an id may take (1 for the
  unknown row on shard 0); ``owners[t]`` the shards that own ids of t.
  """

  model_size: int
  rows_per_shard: int
  offset: np.ndarray  # i32[T]
  chunk: np.ndarray  # i32[T]
  slot_offset: np.ndarray  # i32[T]
  slots: np.ndarray  # i32[T], powers of two
  rows: np.ndarray  # i32[M, T]
  first: np.ndarray  # i32[M, T]
  owners: tuple[tuple[int, ...], ...]
  init_bound: np.ndarray  # f32[T]
  policy: str = "lru"
  decay: float = 1.0  # lfu: a count's factor per step it is not used

  @property
  def num_tables(self) -> int:
    return len(self.offset)

  @property
  def slots_per_shard(self) -> int:
    return int(self.slot_offset[-1] + self.slots[-1])

  def capacity(self) -> list[int]:
    """Ids each table holds at most: its rows on every shard but the unknown row."""
    return [int(c) for c in (self.rows - self.first).clip(min=0).sum(axis=0)]

  def state_bytes_per_shard(self) -> int:
    """Bytes of map and row state on each model shard (the planner adds it to the tables)."""
    return self.rows_per_shard * 16 + self.slots_per_shard * 8


def managed_layout(layout: EmbeddingLayout, policy: str = "lru", decay: float = 1.0):
  """The ManagedLayout of ``layout``, whose tables must all be row-wise and one-hot."""
  if policy not in POLICIES:
    raise ValueError(f"--eviction={policy!r}: must be one of {', '.join(POLICIES)}")
  m = layout.model_size
  offset, chunk, slots, rows, first, owners, bound = [], [], [], [], [], [], []
  for p in layout.placements:
    if p.plan != "row":
      raise ValueError(
        f"--id_mapping=managed: table {p.spec.name} is {p.plan}-wise; managed tables are "
        f"row-wise (--sharding=row, and no other plan in --table_sharding)"
      )
    if p.spec.bag_size != 1:
      raise ValueError(f"--id_mapping=managed: table {p.spec.name} is multi-hot; not supported")
    per_shard = [max(0, min(p.chunk, p.spec.rows - k * p.chunk)) for k in range(m)]
    firsts = [1 if k == 0 else 0 for k in range(m)]
    own = tuple(k for k in range(m) if per_shard[k] > firsts[k])
    if not own:
      raise ValueError(
        f"--managed_capacity: table {p.spec.name} has no row for ids (its one row is the "
        f"unknown row); give it a capacity of at least 1"
      )
    offset.append(p.offset)
    chunk.append(p.chunk)
    slots.append(1 << max(1, int(2 * p.chunk - 1).bit_length()))
    rows.append(per_shard)
    first.append(firsts)
    owners.append(own)
    bound.append(p.spec.init_bound)
  slot_offset = np.concatenate([[0], np.cumsum(slots)[:-1]]).astype(np.int32)
  return ManagedLayout(
    model_size=m,
    rows_per_shard=layout.rows_per_shard,
    offset=np.asarray(offset, np.int32),
    chunk=np.asarray(chunk, np.int32),
    slot_offset=slot_offset,
    slots=np.asarray(slots, np.int32),
    rows=np.asarray(rows, np.int32).T.copy(),
    first=np.asarray(first, np.int32).T.copy(),
    owners=tuple(owners),
    init_bound=np.asarray(bound, np.float32),
    policy=policy,
    decay=float(decay),
  )


def init_state(ml: ManagedLayout, seed: jax.Array) -> dict[str, jax.Array]:
  """The empty maps (global shapes; rows and slots split over ``model`` by ``state_specs``).

  seed: u32[2], the tables' initialisation seed, from which fresh rows are drawn.
  """
  m, t = ml.model_size, ml.num_tables
  rows, slots = m * ml.rows_per_shard, m * ml.slots_per_shard
  return {
    "row_id": jnp.zeros((rows,), jnp.uint32),
    "row_slot": jnp.full((rows,), -1, jnp.int32),
    "row_step": jnp.full((rows,), -1, jnp.int32),
    "row_count": jnp.zeros((rows,), jnp.float32),
    "map": jnp.full((slots, 2), -1, jnp.int32),  # (raw id bits, buffer row); row -1: free
    "next_free": jnp.asarray(ml.first),
    **{name: jnp.zeros((m, t), jnp.int32) for name in COUNTERS},
    "seed": seed.astype(jnp.uint32),
  }


def state_specs(state: dict[str, jax.Array]) -> dict[str, jax.sharding.PartitionSpec]:
  P = jax.sharding.PartitionSpec
  return {k: P() if k == "seed" else P(MODEL_AXIS) for k in state}


def owner_of(ml: ManagedLayout, x: jax.Array, table: jax.Array) -> jax.Array:
  """The model shard i32[n] that owns raw ids ``x`` u32[n] of tables ``table`` i32[n].

  The one owner rule: the step and a checkpoint's re-layout onto another mesh both call it.
  """
  width = max(len(o) for o in ml.owners)
  owner_table = np.array([list(o) + [-1] * (width - len(o)) for o in ml.owners], np.int32)
  num_owners = np.array([len(o) for o in ml.owners], np.uint32)
  pick = (_hash(x, _OWNER_SALT) % jnp.asarray(num_owners)[table]).astype(jnp.int32)
  return jnp.asarray(owner_table)[table, pick]


class _Owned:
  """The distinct (table, id) pairs of the global batch that this shard owns."""

  def __init__(self, ml: ManagedLayout, ids: jax.Array, keep: jax.Array | None = None):
    """ids: u32[N, T] raw ids of the whole global batch; keep: bool[N], False for padding."""
    n, t = ids.shape
    k = lax.axis_index(MODEL_AXIS)
    x = ids.reshape(-1)
    table = jnp.tile(jnp.arange(t, dtype=jnp.int32), n)
    owned = owner_of(ml, x, table) == k
    if keep is not None:
      owned = owned & jnp.repeat(keep, t)
    size = x.shape[0]
    # Sorted by (not owned, table, id): owned pairs first, each table's in ascending id order.
    _, sorted_table, sorted_x, order = lax.sort(
      ((~owned).astype(jnp.int32), table, x, jnp.arange(size, dtype=jnp.int32)), num_keys=3
    )
    sorted_owned = jnp.arange(size) < jnp.sum(owned)
    same = (sorted_table[1:] == sorted_table[:-1]) & (sorted_x[1:] == sorted_x[:-1])
    first = sorted_owned & jnp.concatenate([jnp.ones((1,), bool), ~same])
    group = jnp.cumsum(first) - 1
    self.count = jnp.sum(first)
    slot = jnp.where(first, group, size)
    self.x = jnp.zeros((size,), jnp.uint32).at[slot].set(sorted_x, mode="drop")
    self.table = jnp.zeros((size,), jnp.int32).at[slot].set(sorted_table, mode="drop")
    self.valid = jnp.arange(size) < self.count
    self.uses = jax.ops.segment_sum(sorted_owned.astype(jnp.int32), group, num_segments=size)
    # inverse[e]: the pair of entry e (meaningful where owned[e]).
    self.inverse = jnp.zeros((size,), jnp.int32).at[order].set(group)
    self.owned = owned
    self.shape = (n, t)


def _probe(ml: ManagedLayout, x: jax.Array, table: jax.Array, j) -> jax.Array:
  """Map slot (this shard's local index) of the j-th probe of raw ids ``x`` of ``table``."""
  h = _hash(x, _PROBE_SALT)
  stride = _hash(x, _STRIDE_SALT) | jnp.uint32(1)  # odd: visits every slot of a power of two
  mask = jnp.asarray(ml.slots - 1, jnp.uint32)[table]
  pos = (h + jnp.asarray(j, jnp.uint32) * stride) & mask
  return jnp.asarray(ml.slot_offset)[table] + pos.astype(jnp.int32)


def probe_slots(ml: ManagedLayout, x: jax.Array, table: jax.Array) -> jax.Array:
  """Map slots i32[n, PROBES] (a shard's local indices) that raw ids ``x`` of ``table`` may take,
  in probe order; a checkpoint's re-layout builds maps with it."""
  return _probe(ml, x[:, None], table[:, None], jnp.arange(PROBES, dtype=jnp.uint32)[None, :])


def _find(ml: ManagedLayout, table_map: jax.Array, x: jax.Array, table: jax.Array) -> jax.Array:
  """Buffer rows i32[n] of raw ids ``x`` of ``table`` in this shard's map, -1 where absent."""
  pos = probe_slots(ml, x, table)
  entries = table_map[pos]  # [n, PROBES, 2]
  hit = (entries[..., 1] >= 0) & (
    entries[..., 0] == lax.bitcast_convert_type(x, jnp.int32)[:, None]
  )
  return jnp.max(jnp.where(hit, entries[..., 1], -1), axis=1)


def _table_rows(ml: ManagedLayout, buffer_row: jax.Array, table: jax.Array) -> jax.Array:
  """Table row of this shard's buffer rows (-1 -> 0, the unknown row)."""
  k = lax.axis_index(MODEL_AXIS)
  local = buffer_row - jnp.asarray(ml.offset)[table]
  return jnp.where(buffer_row >= 0, k * jnp.asarray(ml.chunk)[table] + local, 0)


def _to_batch(ml: ManagedLayout, owned: _Owned, pair_rows: jax.Array, local_batch: int):
  """Every device's table rows i32[local_batch, T] for its examples, from the owners' answers."""
  rows = jnp.where(owned.owned, pair_rows[owned.inverse], 0)
  rows = collectives.psum(rows, MODEL_AXIS).reshape(owned.shape)
  start = lax.axis_index(BATCH_AXES) * local_batch
  return lax.dynamic_slice_in_dim(rows, start, local_batch, 0)


def _global(x: jax.Array) -> jax.Array:
  """This device's examples -> the whole global batch's, in batch order."""
  for axis in (MODEL_AXIS, BATCH_AXES[0]):
    x = collectives.all_gather(x, axis)
  return x


def _global_ids(ids: jax.Array) -> jax.Array:
  """This device's raw ids (i32 bits) -> u32[N, T] of the whole global batch."""
  return lax.bitcast_convert_type(_global(ids), jnp.uint32)


def lookup_rows(ml: ManagedLayout, state: dict[str, jax.Array], ids: jax.Array) -> jax.Array:
  """Per device, no change to the maps: raw ids i32[b, T] -> table rows (unknown: row 0)."""
  owned = _Owned(ml, _global_ids(ids))
  found = _find(ml, state["map"], owned.x, owned.table)
  found = jnp.where(owned.valid, found, -1)
  return _to_batch(ml, owned, _table_rows(ml, found, owned.table), ids.shape[0])


def _victims(ml: ManagedLayout, state, step: jax.Array, need: jax.Array, k: jax.Array, most: int):
  """Per table the rows to evict, lowest ranked first: (rows i32[T, K], usable bool[T, K]).

  ``most``: the most new ids a table can have in one step. Only tables that need
  rows this step pay for the ranking (a top_k over their rows on this shard).
  """
  width = min(int(ml.chunk.max()), most)
  out_rows, out_ok = [], []
  for t in range(ml.num_tables):
    lo, n = int(ml.offset[t]), int(ml.chunk[t])
    kt = min(n, width)

    def rank(t=t, lo=lo, n=n, kt=kt):
      r = jnp.arange(n, dtype=jnp.int32)
      used = state["row_slot"][lo : lo + n] >= 0
      last = state["row_step"][lo : lo + n]
      held = (r >= jnp.asarray(ml.first)[k, t]) & (r < state["next_free"][0, t])
      blocked = ~held | (last == step)
      if ml.policy == "lru":
        key = jnp.where(used, last, _I32_MIN)
        score = jnp.where(blocked, _I32_MIN, ~key)  # top_k takes the largest: ~ reverses order
        best, idx = lax.top_k(score, kt)
        ok = best != _I32_MIN
      else:
        decayed = state["row_count"][lo : lo + n] * jnp.float32(ml.decay) ** (step - last)
        key = jnp.where(used, decayed, -jnp.inf)
        score = jnp.where(blocked, -jnp.inf, -key)
        best, idx = lax.top_k(score, kt)
        ok = best != -jnp.inf
      return lo + idx.astype(jnp.int32), ok

    def none(kt=kt):
      return jnp.zeros((kt,), jnp.int32), jnp.zeros((kt,), bool)

    rows, ok = lax.cond(need[t], rank, none)
    pad = width - kt
    out_rows.append(jnp.pad(rows, (0, pad)))
    out_ok.append(jnp.pad(ok, (0, pad)))
  return jnp.stack(out_rows), jnp.stack(out_ok)


def update_rows(
  ml: ManagedLayout,
  state: dict[str, jax.Array],
  tables: dict[str, jax.Array],
  slots: dict[str, dict[str, jax.Array]],
  ids: jax.Array,
  keep: jax.Array,
  step: jax.Array,
  initial_accumulator: float,
):
  """Per device: inserts, touches and evicts for the global batch, then returns the table rows.

  Args:
    state: this shard's managed state (``init_state``'s arrays, split over model).
    tables, slots: this device's buffers and optimizer slots (the sharded one is reset where
      new ids take rows).
    ids: i32[b, T] raw ids (uint32 bits) of this device's examples.
    keep: bool[b] False for padding examples, whose ids are not inserted (they take row 0).
    step: i32[] the train step (the time the policies read).
  Returns:
    (state, tables, slots, rows i32[b, T]).
  """
  k = lax.axis_index(MODEL_AXIS)
  owned = _Owned(ml, _global_ids(ids), _global(keep))
  x, table, valid = owned.x, owned.table, owned.valid
  size = x.shape[0]
  t_count = ml.num_tables
  found = jnp.where(valid, _find(ml, state["map"], x, table), -1)
  hit = found >= 0
  new = valid & ~hit
  uses = owned.uses.astype(jnp.float32)

  # Touch the rows of ids found.
  touched = jnp.where(hit, found, ml.rows_per_shard)
  decay = jnp.float32(ml.decay) ** (
    step - state["row_step"].at[touched].get(mode="fill", fill_value=0)
  )
  count = state["row_count"].at[touched].get(mode="fill", fill_value=0.0) * decay + uses
  row_count = state["row_count"].at[touched].set(count, mode="drop")
  row_step = state["row_step"].at[touched].set(step, mode="drop")
  state = {**state, "row_count": row_count, "row_step": row_step}

  # Rank of each new id within its table (pairs are sorted by table, then id).
  new_per_table = jax.ops.segment_sum(new.astype(jnp.int32), table, num_segments=t_count)
  before = jnp.cumsum(new_per_table) - new_per_table
  rank = jnp.cumsum(new) - 1 - before[table]
  next_free = state["next_free"][0]
  free = jnp.asarray(ml.rows)[k] - next_free
  victims, usable = _victims(ml, state, step, new_per_table > free, k, owned.shape[0])
  from_free = new & (rank < free[table])
  v = jnp.clip(rank - free[table], 0, victims.shape[1] - 1)
  from_victim = new & ~from_free & (rank - free[table] < victims.shape[1]) & usable[table, v]
  local_free = jnp.asarray(ml.offset)[table] + next_free[table] + rank
  row = jnp.where(from_free, local_free, jnp.where(from_victim, victims[table, v], -1))
  taken = row >= 0

  # Evict: the victims' ids leave the map.
  victim_row = jnp.where(from_victim, row, ml.rows_per_shard)
  old_slot = state["row_slot"].at[victim_row].get(mode="fill", fill_value=-1)
  evicted = from_victim & (old_slot >= 0)
  table_map = (
    state["map"].at[jnp.where(evicted, old_slot, state["map"].shape[0]), 1].set(-1, mode="drop")
  )

  # Insert: each pending id takes the first free slot of its probes; clashes go to the lowest pair.
  bits = lax.bitcast_convert_type(x, jnp.int32)
  index = jnp.arange(size, dtype=jnp.int32)

  def insert_round(carry):
    j, pending, table_map, slot_of = carry
    pos = _probe(ml, x, table, j)
    open_ = pending & (table_map[pos, 1] < 0)
    claim = jnp.full((table_map.shape[0],), size, jnp.int32)
    claim = claim.at[jnp.where(open_, pos, table_map.shape[0])].min(index, mode="drop")
    won = open_ & (claim[pos] == index)
    at = jnp.where(won, pos, table_map.shape[0])
    table_map = table_map.at[at].set(jnp.stack([bits, row], axis=1), mode="drop")
    return j + 1, pending & ~won, table_map, jnp.where(won, pos, slot_of)

  _, pending, table_map, slot_of = lax.while_loop(
    lambda c: (c[0] < PROBES) & jnp.any(c[1]),
    insert_round,
    (jnp.uint32(0), taken, table_map, jnp.full((size,), -1, jnp.int32)),
  )
  placed = taken & ~pending
  at = jnp.where(taken, row, ml.rows_per_shard)
  state = {
    **state,
    "map": table_map,
    "row_slot": state["row_slot"].at[at].set(jnp.where(placed, slot_of, -1), mode="drop"),
    "row_id": state["row_id"].at[at].set(x, mode="drop"),
    "row_step": state["row_step"].at[at].set(step, mode="drop"),
    "row_count": state["row_count"].at[at].set(uses, mode="drop"),
    "next_free": (next_free + jnp.minimum(new_per_table, free))[None],
  }
  per_table = lambda m: jax.ops.segment_sum(m.astype(jnp.int32), table, num_segments=t_count)  # noqa: E731
  for name, mask in (("inserted", placed), ("evicted", evicted), ("unplaced", new & ~placed)):
    state[name] = state[name] + per_table(mask)[None]

  # Fresh rows for the new ids (the same values wherever the id lands).
  fresh = jnp.where(placed, row, ml.rows_per_shard)
  buffer = tables["sharded"]
  columns = jnp.arange(buffer.shape[1], dtype=jnp.int32)
  values = row_values(state["seed"], table, x, columns) * jnp.asarray(ml.init_bound)[table][:, None]
  tables = {**tables, "sharded": buffer.at[fresh].set(values, mode="drop")}
  slots = dict(slots)
  if "sharded" in slots:
    slots["sharded"] = {
      name: s.at[fresh].set(initial_accumulator, mode="drop")
      for name, s in slots["sharded"].items()
    }

  pair_rows = _table_rows(ml, jnp.where(hit, found, jnp.where(placed, row, -1)), table)
  return state, tables, slots, _to_batch(ml, owned, pair_rows, ids.shape[0])
