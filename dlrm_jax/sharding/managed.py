"""--id_mapping=managed: raw ids become rows inside the step, with no collision within a capacity.

Every managed table is row-wise. Raw id x of table t belongs to one model shard,
its owner: ``owners_t[fmix(x) % len(owners_t)]``, over the shards that hold rows
of t. Beside its chunk of t's rows the owner keeps, for those rows only:

* a map raw id -> row: open addressing with linear probing over H_t = 4 x chunk
  slots, an id within ``PROBES`` slots of its home, so a lookup is one gather of
  a window on the device and never a host round trip;
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
(more new ids in one step than rows to evict, or all its PROBES slots taken:
under 2e-9 per insertion at the map's load of at most 1/4); ``unplaced`` counts
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
# Map slots per row, and the window of slots an id may take (linear probing). At a load of at
# most 1/4, 32 slots in a row are all taken with probability about (e^0.75 / 4)^32 < 2e-9.
SLOTS_PER_ROW = 4
PROBES = 32
# Salts keep the owner and the home slot independent hashes of an id.
_OWNER_SALT, _PROBE_SALT = 0x3C6EF372, 0xA54FF53A
_I32_MAX = np.iinfo(np.int32).max
_I32_MIN = np.iinfo(np.int32).min
COUNTERS = ("inserted", "evicted", "unplaced")
# What the planner charges each row for the map: 4 floats of row state, and SLOTS_PER_ROW map
# slots of (id, row).
MANAGED_FLOATS_PER_ROW = 4 + 2 * SLOTS_PER_ROW


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
  slots: np.ndarray  # i32[T]: SLOTS_PER_ROW x chunk
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
    return int(self.slot_offset[-1] + self.slots[-1] + PROBES - 1)

  def capacity(self) -> list[int]:
    """Ids each table holds at most: its rows on every shard but the unknown row."""
    return [int(c) for c in (self.rows - self.first).clip(min=0).sum(axis=0)]


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
    slots.append(SLOTS_PER_ROW * p.chunk)
    rows.append(per_shard)
    first.append(firsts)
    owners.append(own)
    bound.append(p.spec.init_bound)
  regions = np.asarray(slots) + PROBES - 1
  slot_offset = np.concatenate([[0], np.cumsum(regions)[:-1]]).astype(np.int32)
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


def init_state(ml: ManagedLayout, seed, xp=jnp) -> dict:
  """The empty maps (global shapes; rows and slots split over ``model`` by ``state_specs``).

  seed: u32[2], the tables' initialisation seed, from which fresh rows are drawn.
  xp: jax.numpy, or numpy for a checkpoint's re-layout on the host (writable copies).
  """
  m, t = ml.model_size, ml.num_tables
  rows, slots = m * ml.rows_per_shard, m * ml.slots_per_shard
  return {
    "row_id": xp.zeros((rows,), np.uint32),
    "row_slot": xp.full((rows,), -1, np.int32),
    "row_step": xp.full((rows,), -1, np.int32),
    "row_count": xp.zeros((rows,), np.float32),
    "map": xp.full((slots, 2), -1, np.int32),  # (raw id bits, buffer row); row -1: free
    "next_free": xp.array(ml.first, np.int32),
    **{name: xp.zeros((m, t), np.int32) for name in COUNTERS},
    "seed": xp.array(seed, np.uint32),
  }


def state_specs(state: dict[str, jax.Array]) -> dict[str, jax.sharding.PartitionSpec]:
  P = jax.sharding.PartitionSpec
  return {k: P() if k == "seed" else P(MODEL_AXIS) for k in state}


def owner_of(ml: ManagedLayout, x: jax.Array, table: jax.Array) -> jax.Array:
  """The model shard i32 that owns raw ids ``x`` (u32) of tables ``table`` (matching shapes).

  The one owner rule: the step and a checkpoint's re-layout onto another mesh both call it.
  """
  width = max(len(o) for o in ml.owners)
  owner_table = np.array([list(o) + [-1] * (width - len(o)) for o in ml.owners], np.int32)
  num_owners = np.array([len(o) for o in ml.owners], np.uint32)
  pick = (_hash(x, _OWNER_SALT) % jnp.asarray(num_owners)[table]).astype(jnp.int32)
  return jnp.asarray(owner_table)[table, pick]


class _Owned:
  """The distinct (table, id) pairs of the global batch that this shard owns.

  Pairs are laid out [T, N], flattened: each table's N ids sorted ascending. The
  pair at the first position of a run of equal ids stands for that id; it is
  ``valid`` where this shard owns the id and a kept example uses it. Sorting keys
  alone (no payload) takes XLA:CPU's fast path, about 8x a sort that carries the
  entries' positions; ``searchsorted`` then finds each entry's run.
  """

  def __init__(self, ml: ManagedLayout, ids: jax.Array, keep: jax.Array | None = None):
    """ids: u32[N, T] raw ids of the whole global batch; keep: bool[N], False for padding."""
    n, t = ids.shape
    k = lax.axis_index(MODEL_AXIS)
    by_table = ids.T  # [T, N]
    sorted_x = jnp.sort(by_table, axis=1)
    run = jax.vmap(lambda s, v: jnp.searchsorted(s, v, side="left"))(sorted_x, by_table)
    run = run.astype(jnp.int32)
    tables = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[:, None], (t, n))
    # The entries this shard answers for: it owns the id, and the example is not padding
    # (padding takes row 0). The owner is a function of the id, so a run's uses count only
    # this shard's kept entries, and a run is valid where it has any.
    mine = owner_of(ml, by_table, tables) == k
    if keep is not None:
      mine = mine & keep[None, :]
    uses = jnp.zeros((t, n), jnp.int32).at[tables, run].add(mine.astype(jnp.int32))
    first = jnp.concatenate([jnp.ones((t, 1), bool), sorted_x[:, 1:] != sorted_x[:, :-1]], axis=1)
    self.x = sorted_x.reshape(-1)
    self.table = tables.reshape(-1)
    self.valid = (first & (uses > 0)).reshape(-1)
    self.uses = uses.reshape(-1)
    # Per entry of the batch [N, T]: its pair, and whether this shard answers for it.
    self.inverse = (tables * n + run).T.reshape(-1)
    self.owned = mine.T.reshape(-1)
    self.shape = (n, t)


def _probe(ml: ManagedLayout, x: jax.Array, table: jax.Array, j) -> jax.Array:
  """Map slot (this shard's local index) of the j-th probe of raw ids ``x`` of ``table``.

  Linear probing from a home slot in [0, H_t): the PROBES slots of an id are contiguous (a
  table's region has PROBES - 1 slots past H_t), so a lookup is one gather of a window.
  """
  home = _hash(x, _PROBE_SALT) % jnp.asarray(ml.slots, jnp.uint32)[table]
  return jnp.asarray(ml.slot_offset)[table] + home.astype(jnp.int32) + jnp.asarray(j, jnp.int32)


def probe_slots(ml: ManagedLayout, x: jax.Array, table: jax.Array) -> jax.Array:
  """Map slots i32[n, PROBES] (a shard's local indices) that raw ids ``x`` of ``table`` may take,
  in probe order; a checkpoint's re-layout builds maps with it."""
  return _probe(ml, x[:, None], table[:, None], jnp.arange(PROBES, dtype=jnp.int32)[None, :])


def _find(ml: ManagedLayout, table_map: jax.Array, x: jax.Array, table: jax.Array) -> jax.Array:
  """Buffer rows i32[n] of raw ids ``x`` of ``table`` in this shard's map, -1 where absent."""
  start = _probe(ml, x, table, 0)
  entries = jax.vmap(lambda s: lax.dynamic_slice(table_map, (s, 0), (PROBES, 2)))(start)
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


def _victims(ml: ManagedLayout, state, step, need, k, touched: jax.Array, most: int):
  """Per table the rows to evict, lowest ranked first: (rows i32[T, K], usable bool[T, K]).

  ``touched``: buffer rows used in this step (others: out of range), never evicted.
  ``most``: the most new ids a table can have in one step. Only tables that need
  rows this step pay for the ranking (a top_k over their rows on this shard). It
  reads the state from before this step's writes, so XLA updates it in place.
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
      # Other tables' rows fall outside [0, n) (negative indices would wrap: map them past n).
      mine = jnp.where((touched >= lo) & (touched < lo + n), touched - lo, n)
      blocked = ~held | jnp.zeros((n,), bool).at[mine].set(True, mode="drop")
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

  # Rank of each new id within its table (each table's pairs are in ascending id order).
  n = owned.shape[0]
  new_by_table = new.reshape(t_count, n).astype(jnp.int32)
  new_per_table = jnp.sum(new_by_table, axis=1)
  rank = (jnp.cumsum(new_by_table, axis=1) - 1).reshape(-1)
  next_free = state["next_free"][0]
  free = jnp.asarray(ml.rows)[k] - next_free
  touched = jnp.where(hit, found, ml.rows_per_shard)
  last = state["row_step"].at[touched].get(mode="fill", fill_value=0)
  decay = jnp.float32(ml.decay) ** (step - last)
  count = state["row_count"].at[touched].get(mode="fill", fill_value=0.0) * decay + uses
  victims, usable = _victims(ml, state, step, new_per_table > free, k, touched, n)
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

  # Insert: each pending id takes the first free slot of its probes. Ids claiming one slot (or
  # one bucket of the claim table, which is sized by the batch, not the map) go lowest pair first;
  # the others try the same probe again, or their next one once it is taken.
  bits = lax.bitcast_convert_type(x, jnp.int32)
  index = jnp.arange(size, dtype=jnp.int32)
  buckets = 1 << max(1, int(2 * size - 1).bit_length())
  nowhere = table_map.shape[0]

  def insert_round(carry):
    probe, pending, table_map, slot_of = carry
    pos = _probe(ml, x, table, probe)
    open_ = pending & (table_map.at[pos, 1].get(mode="fill", fill_value=0) < 0)
    bucket = pos & (buckets - 1)
    claim = jnp.full((buckets,), size, jnp.int32)
    claim = claim.at[jnp.where(open_, bucket, buckets)].min(index, mode="drop")
    won = open_ & (claim[bucket] == index)
    table_map = table_map.at[jnp.where(won, pos, nowhere)].set(
      jnp.stack([bits, row], axis=1), mode="drop"
    )
    taken_now = table_map.at[pos, 1].get(mode="fill", fill_value=0) >= 0
    probe = jnp.where(pending & ~won & taken_now, probe + 1, probe)
    pending = pending & ~won & (probe < PROBES)
    return probe, pending, table_map, jnp.where(won, pos, slot_of)

  _, _, table_map, slot_of = lax.while_loop(
    lambda c: jnp.any(c[1]),
    insert_round,
    (jnp.zeros((size,), jnp.int32), taken, table_map, jnp.full((size,), -1, jnp.int32)),
  )
  placed = taken & (slot_of >= 0)
  at = jnp.where(taken, row, ml.rows_per_shard)
  # Rows used this step: found ones are touched, new ones start. One write each, after every
  # read (the ranking reads the rows as they were; XLA then updates them in place).
  used_row = jnp.where(hit, found, at)
  state = {
    **state,
    "map": table_map,
    "row_slot": state["row_slot"].at[at].set(jnp.where(placed, slot_of, -1), mode="drop"),
    "row_id": state["row_id"].at[at].set(x, mode="drop"),
    # max(last, step) is step; writing a value read from row_step orders the read before the
    # write, so XLA updates row_step in place rather than copying it (135 MB at Kaggle size).
    "row_step": state["row_step"].at[used_row].set(jnp.maximum(last, step), mode="drop"),
    "row_count": state["row_count"].at[used_row].set(jnp.where(hit, count, uses), mode="drop"),
    "next_free": (next_free + jnp.minimum(new_per_table, free))[None],
  }
  for name, mask in (("inserted", placed), ("evicted", evicted), ("unplaced", new & ~placed)):
    state[name] = state[name] + jnp.sum(mask.reshape(t_count, n), axis=1)[None]

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
