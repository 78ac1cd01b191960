"""--id_mapping=managed's maps (sharding/managed.py) against a plain Python reference per table.

The reference (managed_testlib.RefTable) is written from the module's
definition, and fresh rows are checked against a NumPy copy of table_init's hash.
Every step compares the rows handed out, the whole id -> row map and the counters.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from managed_testlib import M32, RefTable, fresh_row, owner_hash

from dlrm_jax.sharding import managed
from dlrm_jax.sharding import mesh as mesh_lib
from dlrm_jax.sharding.planner import BUFFER_SPECS, plan_layout
from dlrm_jax.sharding.specs import table_specs

DIM = 4
SEED = (0xDEADBEEF, 12345)
INIT_ACC = 0.25  # the optimizer slots' initial accumulator a fresh row gets back
STALE_ACC = 9.0  # what the slots hold before (never INIT_ACC)


# ---- update_rows / lookup_rows in a jitted shard_map. ----


@functools.cache
def compiled(capacities, mesh_shape, policy, decay):
  """(layout, ManagedLayout, update, lookup) jitted once per configuration (compiles dominate)."""
  n = int(np.prod(mesh_shape))
  mesh = mesh_lib.make_mesh(mesh_shape, jax.devices()[:n])
  names = [f"C{t + 1}" for t in range(len(capacities))]
  specs = table_specs(names, [c + 1 for c in capacities], DIM)
  layout = plan_layout(specs, mesh_lib.model_size(mesh), default="row")
  ml = managed.managed_layout(layout, policy, decay)
  state_specs = managed.state_specs(managed.init_state(ml, jnp.zeros(2, jnp.uint32)))
  tables = {"sharded": BUFFER_SPECS["sharded"]}
  # Both kinds of optimizer slot at once: adagrad's f32[rows, DIM] and rowwise's f32[rows].
  slots = {"sharded": {"adagrad": BUFFER_SPECS["sharded"], "rowwise": P(mesh_lib.MODEL_AXIS)}}
  batch = mesh_lib.batch_spec()
  update = jax.jit(
    jax.shard_map(
      lambda s, t, o, ids, keep, step: managed.update_rows(ml, s, t, o, ids, keep, step, INIT_ACC),
      mesh=mesh,
      in_specs=(state_specs, tables, slots, batch, batch, P()),
      out_specs=(state_specs, tables, slots, batch),
      check_vma=False,
    )
  )
  lookup = jax.jit(
    jax.shard_map(
      lambda s, ids: managed.lookup_rows(ml, s, ids),
      mesh=mesh,
      in_specs=(state_specs, batch),
      out_specs=batch,
      check_vma=False,
    )
  )
  return layout, ml, update, lookup


class Maps:
  """Managed tables of ``capacities`` on a (data, model) mesh, driven step by step."""

  def __init__(self, capacities, mesh_shape=(1, 1), policy="lru", decay=0.5):
    self.layout, self.ml, self._update, self._lookup = compiled(
      tuple(capacities), tuple(mesh_shape), policy, decay
    )
    self.rows = [c + 1 for c in capacities]
    self.state = jax.device_get(managed.init_state(self.ml, jnp.asarray(SEED, jnp.uint32)))
    buffer_rows = self.layout.buffer_shapes()["sharded"][0]
    rng = np.random.default_rng(7)
    self.tables = {"sharded": rng.normal(size=(buffer_rows, DIM)).astype(np.float32)}
    self.slots = {
      "sharded": {
        "adagrad": np.full((buffer_rows, DIM), STALE_ACC, np.float32),
        "rowwise": np.full((buffer_rows,), STALE_ACC, np.float32),
      }
    }

  def update(self, ids: np.ndarray, step: int, keep: np.ndarray | None = None) -> np.ndarray:
    """ids: u32[B, T] raw ids; returns the table rows i32[B, T] the step gave them."""
    keep = np.ones(ids.shape[0], bool) if keep is None else keep
    out = self._update(
      self.state, self.tables, self.slots, ids.view(np.int32), keep, jnp.int32(step)
    )
    self.state, self.tables, self.slots, rows = jax.device_get(out)
    return np.asarray(rows)

  def lookup(self, ids: np.ndarray) -> np.ndarray:
    return np.asarray(self._lookup(self.state, ids.view(np.int32)))

  def resident(self, t: int) -> dict[int, int]:
    """Table t's map as the row state tells it: raw id -> table row. Checks that each shard's
    open-addressing map holds exactly those ids, each in its row's slot."""
    ml, state = self.ml, self.state
    out = {}
    for k in range(ml.model_size):
      lo = k * ml.rows_per_shard + int(ml.offset[t])
      slots = state["map"][k * ml.slots_per_shard :][: ml.slots_per_shard]
      # A table's region: its H_t home slots and the PROBES - 1 slots a window runs past them.
      region = slots[int(ml.slot_offset[t]) :][: int(ml.slots[t]) + managed.PROBES - 1]
      live = 0
      for r in range(int(ml.rows[k, t])):
        slot = int(state["row_slot"][lo + r])
        if slot >= 0:
          x = int(state["row_id"][lo + r])
          assert x not in out, f"table {t}: id {x} holds two rows"
          # A map entry: (the id's bits as int32, the row in this shard's buffer).
          entry = [int(np.uint32(x).view(np.int32)), int(ml.offset[t]) + r]
          assert slots[slot].tolist() == entry, f"table {t} shard {k}: id {x}'s map entry"
          out[x] = k * int(ml.chunk[t]) + r
          live += 1
      assert (region[:, 1] >= 0).sum() == live, f"table {t} shard {k}: stale map entries"
    return out

  def buffer_row(self, t: int, table_row: int) -> int:
    chunk = int(self.ml.chunk[t])
    k, r = divmod(table_row, chunk)
    return k * self.ml.rows_per_shard + int(self.ml.offset[t]) + r

  def counter(self, name: str, t: int) -> int:
    return int(np.asarray(self.state[name])[:, t].sum())


# Ids on the edges of uint32, then ids equal modulo small powers of two: every pool starts
# with them, and every batch draws one of each.
SPECIAL = [0, M32, 1, M32 - 1, 1 << 31, (1 << 31) - 1] + [k << 16 for k in range(1, 5)]


def id_pool(rng: np.random.Generator, size: int) -> np.ndarray:
  """u32[size] distinct ids: SPECIAL first, then random ones."""
  ids = dict.fromkeys(SPECIAL[:size])
  while len(ids) < size:
    ids[int(rng.integers(0, 1 << 32, dtype=np.uint64))] = None
  return np.asarray(list(ids), np.uint32)


def draw(rng, pools, batch: int) -> np.ndarray:
  """u32[batch, T]: ids of each table's pool, skewed so some repeat within a batch."""
  cols = []
  for pool in pools:
    weights = 1.0 / (1.0 + np.arange(len(pool)))
    col = rng.permutation(pool)[rng.choice(len(pool), batch, p=weights / weights.sum())]
    col[rng.integers(batch)] = pool[rng.integers(6)]  # an edge
    col[rng.integers(batch)] = pool[rng.integers(6, min(len(pool), len(SPECIAL)))]  # a clash
    cols.append(col)
  return np.stack(cols, axis=1)


def check_step(maps: Maps, refs, ids, keep, rows, step):
  """The rows this step returned, the maps and the counters equal the reference's."""
  for t, ref in enumerate(refs):
    want = [ref.row_of.get(int(x), 0) if k else 0 for x, k in zip(ids[:, t], keep, strict=True)]
    np.testing.assert_array_equal(rows[:, t], want, err_msg=f"step {step} table {t}: rows")
    assert maps.resident(t) == ref.row_of, f"step {step} table {t}: map"
    for name in ("inserted", "evicted", "unplaced"):
      assert maps.counter(name, t) == getattr(ref, name), f"step {step} table {t}: {name}"


# ---- No collisions while the distinct ids fit. ----

# One configuration per mesh and policy, so the tests share compiled steps.
CAPACITIES = (12, 30)
BATCH = 16


def test_distinct_ids_within_capacity_keep_their_first_rows():
  rng = np.random.default_rng(0)
  pools = [id_pool(rng, c) for c in CAPACITIES]  # exactly fills every table
  maps, refs = Maps(CAPACITIES), [RefTable(c) for c in CAPACITIES]
  first_row: dict[tuple[int, int], int] = {}
  keep = np.ones(BATCH, bool)
  for step in range(8):
    ids = draw(rng, pools, BATCH)
    for t, ref in enumerate(refs):
      ref.step(ids[:, t], step)
    rows = maps.update(ids, step, keep)
    check_step(maps, refs, ids, keep, rows, step)
    for t in range(len(refs)):
      for x, r in zip(ids[:, t], rows[:, t], strict=True):
        assert first_row.setdefault((t, int(x)), int(r)) == r
        assert r != 0
  assert len(refs[0].row_of) == CAPACITIES[0]  # table 0 is full, and nothing was evicted
  for t in range(len(refs)):
    assert maps.counter("evicted", t) == maps.counter("unplaced", t) == 0
    # Every id seen is found by the read-only lookup, at the same row.
    seen = np.asarray(sorted(refs[t].row_of), np.uint32)[:BATCH]
    col = np.zeros((BATCH, len(refs)), np.uint32)
    col[: len(seen), t] = seen
    got = maps.lookup(col)[: len(seen), t]
    np.testing.assert_array_equal(got, [refs[t].row_of[int(x)] for x in seen])


def test_no_two_ids_share_a_row_on_eight_devices():
  """On 1x8 (2x4: test_eviction_per_owner_on_eight_devices, whose reference map is exact)."""
  rng = np.random.default_rng(1)
  capacities = (120, 60)  # well above the 40 and 20 distinct ids on any one owner
  pools = [id_pool(rng, 40), id_pool(rng, 20)]
  maps = Maps(capacities, (1, 8))
  seen: dict[tuple[int, int], int] = {}
  for step in range(4):
    ids = draw(rng, pools, 32)
    rows = maps.update(ids, step)
    for t in range(len(pools)):
      for x, r in zip(ids[:, t], rows[:, t], strict=True):
        assert r != 0 and seen.setdefault((t, int(x)), int(r)) == r, (step, t, x)
      resident = maps.resident(t)
      assert {x: r for (u, x), r in seen.items() if u == t} == resident
      assert len(set(resident.values())) == len(resident)  # one id per row
      assert maps.counter("inserted", t) == len(resident)
      assert maps.counter("evicted", t) == maps.counter("unplaced", t) == 0
  np.testing.assert_array_equal(maps.lookup(ids), rows)


# ---- Eviction order, LRU and LFU. ----


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_eviction_follows_the_policy(policy):
  rng = np.random.default_rng({"lru": 2, "lfu": 3}[policy])
  pools = [id_pool(rng, 2 * c) for c in CAPACITIES]
  maps = Maps(CAPACITIES, policy=policy, decay=0.5)
  refs = [RefTable(c, policy, 0.5) for c in CAPACITIES]
  for step in range(24):
    # Small batches leave rows unused for a while, full ones evict many at once.
    keep = np.arange(BATCH) < rng.choice([3, 8, BATCH])
    ids = draw(rng, pools, BATCH)
    for t, ref in enumerate(refs):
      ref.step(ids[keep, t], step)
    rows = maps.update(ids, step, keep)
    check_step(maps, refs, ids, keep, rows, step)
  for ref in refs:
    assert ref.evicted > 10  # the test exercised the policy


def test_eviction_per_owner_on_eight_devices():
  """On 2x4 each shard is a small managed table of the ids it owns (owner: the docstring's
  owners_t[fmix(id ^ salt) % len(owners_t)]), evicting in its own local rows."""
  rng = np.random.default_rng(5)
  capacities = (23, 31)  # 24 and 32 rows: 6 and 8 per shard, less the unknown row on shard 0
  pools = [id_pool(rng, 3 * c) for c in capacities]
  maps = Maps(capacities, (2, 4), policy="lfu", decay=0.5)
  ml = maps.ml
  refs = [
    [
      RefTable(int(ml.rows[k, t] - ml.first[k, t]), "lfu", 0.5, first=int(ml.first[k, t]))
      for k in range(ml.model_size)
    ]
    for t in range(len(capacities))
  ]

  def owner(t: int, x: int) -> int:
    return ml.owners[t][owner_hash(x, managed._OWNER_SALT) % len(ml.owners[t])]

  for step in range(12):
    keep = np.arange(2 * BATCH) < rng.choice([8, 2 * BATCH])
    ids = draw(rng, pools, 2 * BATCH)
    for t, shards in enumerate(refs):
      for k, ref in enumerate(shards):
        ref.step([x for x in ids[keep, t] if owner(t, int(x)) == k], step)
    rows = maps.update(ids, step, keep)
    for t, shards in enumerate(refs):
      chunk = int(ml.chunk[t])
      want = {x: k * chunk + r for k, ref in enumerate(shards) for x, r in ref.row_of.items()}
      assert maps.resident(t) == want, f"step {step} table {t}"
      assert len(set(want.values())) == len(want)  # one id per row, across the shards
      got = [want.get(int(x), 0) if k else 0 for x, k in zip(ids[:, t], keep, strict=True)]
      np.testing.assert_array_equal(rows[:, t], got, err_msg=f"step {step} table {t}")
      for name in ("inserted", "evicted", "unplaced"):
        assert maps.counter(name, t) == sum(getattr(ref, name) for ref in shards), name
  assert all(sum(ref.evicted for ref in shards) > 10 for shards in refs)


# ---- Fresh rows and their optimizer slots. ----


def test_new_ids_get_fresh_rows_and_slots_also_after_eviction():
  rng = np.random.default_rng(4)
  pools = [id_pool(rng, 2 * c) for c in CAPACITIES]
  maps, refs = Maps(CAPACITIES), [RefTable(c) for c in CAPACITIES]
  for step in range(8):
    ids = draw(rng, pools, BATCH)
    fresh = [ref.step(ids[:, t], step) for t, ref in enumerate(refs)]
    want = np.array(maps.tables["sharded"])
    want_slots = {k: np.array(v) for k, v in maps.slots["sharded"].items()}
    maps.update(ids, step)
    for t, xs in enumerate(fresh):
      for x in xs:
        r = maps.buffer_row(t, refs[t].row_of[x])
        want[r] = fresh_row(SEED, t, x, maps.rows[t], DIM)
        for slot in want_slots.values():
          slot[r] = INIT_ACC
    np.testing.assert_allclose(maps.tables["sharded"], want, rtol=1e-6, atol=0)
    for name, slot in want_slots.items():
      np.testing.assert_array_equal(maps.slots["sharded"][name], slot, err_msg=name)
    # As training would: every row and slot moves, so a reused row's old values are gone.
    maps.tables["sharded"] = maps.tables["sharded"] + np.float32(1.0)
    maps.slots["sharded"] = {k: v + np.float32(1.0) for k, v in maps.slots["sharded"].items()}
  assert sum(ref.evicted for ref in refs) > 5


# ---- The unknown row, padding, and more new ids than rows. ----


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_unknown_ids_padding_and_overflow_take_row_zero(policy):
  maps = Maps(CAPACITIES, policy=policy, decay=0.5)
  refs = [RefTable(c, policy, 0.5) for c in CAPACITIES]

  def ids_from(start):
    return np.stack([np.arange(start, start + BATCH)] * 2, axis=1).astype(np.uint32)

  ids = ids_from(10)
  ids[1] = (M32, 0)
  # Before any step, every id is unknown: row 0.
  np.testing.assert_array_equal(maps.lookup(ids), 0)
  # Padding (keep False) inserts nothing and takes row 0.
  keep = np.arange(BATCH) % 2 == 1
  for t, ref in enumerate(refs):
    ref.step(ids[keep, t], 0)
  rows = maps.update(ids, 0, keep)
  check_step(maps, refs, ids, keep, rows, 0)
  assert [maps.counter("inserted", t) for t in (0, 1)] == [BATCH // 2] * 2
  np.testing.assert_array_equal(maps.lookup(ids[~keep][np.arange(BATCH) % (BATCH // 2)]), 0)
  # More new ids than rows: those left without one take row 0 and count as unplaced. Table 0
  # also sees 4 of its ids again, whose rows this step uses and so cannot be evicted.
  more = ids_from(1000)
  more[:4, 0] = ids[keep, 0][:4]
  for t, ref in enumerate(refs):
    ref.step(more[:, t], 1)
  rows = maps.update(more, 1)
  check_step(maps, refs, more, np.ones(BATCH, bool), rows, 1)
  # Table 0: 12 new ids for 4 free rows and 4 to evict (8 held, 4 in use); table 1 has 22 free
  # rows for its 16.
  assert [maps.counter("evicted", t) for t in (0, 1)] == [4, 0]
  assert [maps.counter("unplaced", t) for t in (0, 1)] == [4, 0]
  assert (rows == 0).sum(axis=0).tolist() == [4, 0]
  assert all(refs[0].row_of[int(x)] == r for x, r in zip(more[:4, 0], rows[:4, 0], strict=True))
  # Ids never inserted (or evicted) look up row 0, and lookups change nothing.
  state = jax.tree.map(np.copy, maps.state)
  np.testing.assert_array_equal(maps.lookup(ids_from(5000)), 0)
  np.testing.assert_array_equal(maps.lookup(more), rows)
  evicted = ids[keep, 0][4:]
  assert not any(int(x) in refs[0].row_of for x in evicted)
  np.testing.assert_array_equal(maps.lookup(np.resize(evicted, (BATCH, 2)))[:, 0], 0)
  jax.tree.map(np.testing.assert_array_equal, maps.state, state)
