"""Managed tables in checkpoints: saved on 1x8 with evictions, restored on 1x8 bit for bit and
onto 1x1, 2x4 and 1x2, where every id kept looks up the embedding it had and training goes on."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from dlrm_jax import restore_checkpoint, save_checkpoint
from dlrm_jax.checkpoint import managed_io
from dlrm_jax.faults import CheckpointMismatch
from dlrm_jax.model.dlrm import DenseModel
from dlrm_jax.optim.sparse import SparseOptimizer
from dlrm_jax.sharding import managed as managed_lib
from dlrm_jax.sharding import mesh as mesh_lib
from dlrm_jax.sharding.planner import plan_layout
from dlrm_jax.sharding.specs import table_specs
from dlrm_jax.train.state import create_train_state, dense_optimizer
from dlrm_jax.train.step import batch_shardings, make_eval_step, make_train_step

NAMES = ("C1", "C2", "C3", "C4")
CAPACITY = (40, 23, 9, 64)  # ids per table; each table has one row more (the unknown row)
DIM = 8
BATCH = 64
STEPS = 4
ABSENT = 0xFFFFFFFF  # never drawn: an id no map holds


class Embeddings(nn.Module):
  """A "model" whose logits are the looked-up rows: the eval step then returns them."""

  @nn.compact
  def __call__(self, dense, emb):
    return emb.reshape(emb.shape[0], -1)


class Run:
  """A managed state (``initialise``, or a restore) and its compiled steps on one mesh."""

  def __init__(self, mesh_shape):
    devices = jax.devices()[: int(np.prod(mesh_shape))]
    self.mesh = mesh_lib.make_mesh(mesh_shape, devices)
    self.opt = SparseOptimizer("adagrad", 0.1)
    specs = table_specs(list(NAMES), [c + 1 for c in CAPACITY], DIM)
    self.layout = plan_layout(
      specs, mesh_lib.model_size(self.mesh), default="row", slot_floats_per_row=DIM
    )
    self.ml = managed_lib.managed_layout(self.layout, "lru")
    self.model = DenseModel(bottom_mlp=(16, DIM), top_mlp=(16, 1))
    self.tx = dense_optimizer("adagrad", 0.1)
    self.abstract = jax.eval_shape(self.create, jax.random.key(0))  # compiles nothing

  def create(self, key, managed: bool = True):
    return create_train_state(
      self.model,
      self.layout,
      self.opt,
      self.tx,
      self.mesh,
      key,
      managed=self.ml if managed else None,
    )

  def restore(self, path):
    self.state = restore_checkpoint(
      str(path), self.layout, self.abstract, self.mesh, managed=self.ml
    )

  def train(self, batch):
    if not hasattr(self, "_train"):
      self._train = make_train_step(
        self.model, self.layout, self.opt, self.tx, self.mesh, self.abstract, managed=self.ml
      )
    self.state, metrics = self._train(self.state, jax.device_put(batch, batch_shardings(self.mesh)))
    return float(metrics["loss"])

  def embeddings(self, ids: np.ndarray) -> np.ndarray:
    """f32[n, T, DIM]: the rows the eval step looks up for raw ids u32[n, T]."""
    step = make_eval_step(Embeddings(), self.layout, self.mesh, self.abstract, self.ml)
    batch = batch_of(ids, np.random.default_rng(0))
    out = step(self.state, jax.device_put(batch, batch_shardings(self.mesh)))
    return np.asarray(out).reshape(len(ids), len(NAMES), DIM)


def batch_of(ids: np.ndarray, rng) -> dict[str, np.ndarray]:
  n = ids.shape[0]
  return {
    "dense": rng.normal(size=(n, 13)).astype(np.float32),
    "sparse": ids.astype(np.uint32).view(np.int32),
    "label": (rng.random(n) < 0.4).astype(np.float32),
    "mask": np.ones(n, np.float32),
  }


def rng(step: int) -> np.random.Generator:
  return np.random.default_rng(step)


def train_batch(step: int) -> dict[str, np.ndarray]:
  """Raw ids from twice each capacity (so tables fill and evict), some above 2^31."""
  rng = np.random.default_rng(step)
  ids = np.stack([rng.integers(0, 2 * c, BATCH) for c in CAPACITY], axis=1).astype(np.uint32)
  ids[::5] += np.uint32(0x9E000000)
  return batch_of(ids, rng)


def residents(state, ml) -> list[dict[int, tuple]]:
  """Per table: raw id -> (row, accumulator row, last use, count, table row), from the arrays."""
  m = {k: np.asarray(v) for k, v in state.managed.items()}
  table = np.asarray(state.tables["sharded"])
  acc = np.asarray(state.slots["sharded"]["accumulator"])
  out = []
  for t in range(ml.num_tables):
    ids = {}
    for k in range(ml.model_size):
      for r in range(int(ml.rows[k, t])):
        b = k * ml.rows_per_shard + int(ml.offset[t]) + r
        if m["row_slot"][b] >= 0:
          row = k * int(ml.chunk[t]) + r
          ids[int(m["row_id"][b])] = (table[b], acc[b], m["row_step"][b], m["row_count"][b], row)
    out.append(ids)
  return out


def unknown_rows(state, ml) -> np.ndarray:
  """f32[T, DIM]: row 0 of every table (the first row of model shard 0)."""
  return np.asarray(state.tables["sharded"])[np.asarray(ml.offset)]


def fmix32(h: np.ndarray) -> np.ndarray:
  """MurmurHash3's finaliser in NumPy (the owner rule, written from the formula)."""
  h = np.array(h, np.uint32, ndmin=1)  # arrays wrap around silently, scalars warn
  h ^= h >> 16
  h *= np.uint32(0x85EBCA6B)
  h ^= h >> 13
  h *= np.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def expected_kept(saved: list[dict], ml) -> list[set[int]]:
  """Per table the ids a restore onto ``ml`` keeps: per owner the most recently used (ties: the
  higher old table row), brute force."""
  out = []
  for t, ids in enumerate(saved):
    owners = ml.owners[t]
    by_owner = {}
    for x, (*_, last, _count, row) in ids.items():
      k = owners[int(fmix32(np.uint32(x) ^ np.uint32(0x3C6EF372))[0]) % len(owners)]
      by_owner.setdefault(k, []).append((int(last), row, x))
    kept = set()
    for k, entries in by_owner.items():
      room = int(ml.rows[k, t] - ml.first[k, t])
      kept |= {x for *_, x in sorted(entries)[max(0, len(entries) - room) :]}
    out.append(kept)
  return out


def counter_totals(state) -> dict[str, np.ndarray]:
  return {k: np.asarray(state.managed[k]).sum(axis=0) for k in managed_lib.COUNTERS}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A 1x8 run after STEPS steps (tables full, ids evicted), saved; and its next-step loss."""
  run = Run((1, 8))
  run.state = run.create(jax.random.key(0))
  for step in range(STEPS):
    run.train(train_batch(step))
  totals = counter_totals(run.state)
  assert np.all(totals["evicted"][[0, 2]] > 0), totals  # C1, C3 evicted during the run
  path = tmp_path_factory.mktemp("ckpt")
  save_checkpoint(str(path), run.state, run.layout, run.mesh)
  return path, run


def lookup_all(run: Run, tables: list[dict]) -> tuple[np.ndarray, np.ndarray]:
  """(raw ids u32[n, T] that cover every id of ``tables`` plus ABSENT, their rows)."""
  n = max(len(ids) for ids in tables) + 1
  n = -(-n // 8) * 8
  cols = []
  for ids in tables:
    col = np.array(sorted(ids) + [ABSENT], np.uint32)
    cols.append(np.resize(col, n))
  ids = np.stack(cols, axis=1)
  return ids, run.embeddings(ids)


def assert_lookups(run: Run, ids: np.ndarray, rows: np.ndarray, want: list[dict], unknown):
  for t in range(len(NAMES)):
    for i, x in enumerate(ids[:, t]):
      expect = unknown[t] if int(x) not in want[t] else want[t][int(x)][0]
      assert rows[i, t].tobytes() == expect.tobytes(), (NAMES[t], int(x))


def test_same_mesh_restores_bit_for_bit(saved):
  path, run = saved
  other = Run((1, 8))
  other.restore(path)
  state = other.state
  a, b = jax.tree.leaves(state), jax.tree.leaves(run.state)
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.dtype == y.dtype and np.asarray(x).tobytes() == np.asarray(y).tobytes()
  assert jax.tree.structure(state) == jax.tree.structure(run.state)


@pytest.mark.parametrize("shape", [(1, 1), (2, 4), (1, 2)])
def test_other_mesh_keeps_every_id_it_can_with_its_rows(saved, shape, caplog):
  path, run = saved
  before = residents(run.state, run.ml)
  other = Run(shape)
  other.restore(path)
  after = residents(other.state, other.ml)
  kept = expected_kept(before, other.ml)
  dropped = [len(b) - len(k) for b, k in zip(before, kept, strict=True)]
  assert [set(a) for a in after] == kept
  for t in range(len(NAMES)):
    for x, (row, acc, last, count, _) in after[t].items():
      b_row, b_acc, b_last, b_count, _ = before[t][x]
      assert row.tobytes() == b_row.tobytes() and acc.tobytes() == b_acc.tobytes()
      assert (last, count) == (b_last, b_count)
  np.testing.assert_array_equal(
    unknown_rows(other.state, other.ml), unknown_rows(run.state, run.ml)
  )
  ids, rows = lookup_all(other, before)
  assert_lookups(other, ids, rows, after, unknown_rows(run.state, run.ml))
  # Counters: totals carried on shard 0, dropped ids counted as evicted; residents = in - out.
  totals, saved_totals = counter_totals(other.state), counter_totals(run.state)
  np.testing.assert_array_equal(totals["inserted"], saved_totals["inserted"])
  np.testing.assert_array_equal(totals["evicted"], saved_totals["evicted"] + dropped)
  assert [len(a) for a in after] == list(totals["inserted"] - totals["evicted"])
  if shape == (1, 1):
    assert not any(dropped)
    # Training goes on as on the saved mesh: a step of resident ids (new ids would take rows
    # that each mesh ranks by its own shards) loses the same, and so does the next.
    batch = batch_of(np.stack([np.resize(sorted(b), BATCH) for b in before], axis=1), rng(STEPS))
    for _ in range(2):
      np.testing.assert_allclose(other.train(batch), run.train(batch), rtol=1e-6)
    run.restore(path)
  elif shape == (1, 2):
    assert any(dropped), dropped  # a shard of 1x2 holds fewer ids than hash to it
  if any(dropped):
    assert "dropped (counted as evicted)" in caplog.text


def test_managed_checkpoint_refuses_a_state_without_maps(saved):
  path, run = saved
  abstract = jax.eval_shape(lambda k: run.create(k, managed=False), jax.random.key(0))
  with pytest.raises(CheckpointMismatch, match="holds managed tables"):
    restore_checkpoint(str(path), run.layout, abstract, run.mesh)


def test_lfu_keeps_the_highest_decayed_counts_on_a_smaller_shard():
  """Host re-layout alone, on made-up full maps: 4 model shards -> 2 under --eviction=lfu."""
  specs = table_specs(list(NAMES), [c + 1 for c in CAPACITY], DIM)
  saved = managed_lib.managed_layout(plan_layout(specs, 4, default="row"), "lfu", 0.9)
  ml = managed_lib.managed_layout(plan_layout(specs, 2, default="row"), "lfu", 0.9)
  rng = np.random.default_rng(7)
  rows = 4 * saved.rows_per_shard
  state = {
    "row_id": np.zeros(rows, np.uint32),
    "row_slot": np.full(rows, -1, np.int32),
    "row_step": np.full(rows, -1, np.int32),
    "row_count": np.zeros(rows, np.float32),
    "seed": np.array([3, 4], np.uint32),
    **{k: rng.integers(0, 50, (4, len(NAMES))).astype(np.int32) for k in managed_lib.COUNTERS},
  }
  step, want = 10, []
  for t in range(len(NAMES)):
    ids = rng.choice(2**32, CAPACITY[t], replace=False).astype(np.uint32)
    held = np.concatenate(
      [
        k * saved.rows_per_shard + saved.offset[t] + np.arange(saved.first[k, t], saved.rows[k, t])
        for k in range(4)
      ]
    )
    state["row_id"][held] = ids
    state["row_slot"][held] = 0
    state["row_step"][held] = rng.integers(0, step, len(held))
    state["row_count"][held] = rng.uniform(0, 20, len(held))
    decayed = state["row_count"][held] * 0.9 ** (step - state["row_step"][held].astype(np.float64))
    owners = np.array(ml.owners[t])[fmix32(ids ^ np.uint32(0x3C6EF372)) % len(ml.owners[t])]
    kept = set()
    for k in range(2):
      mine = np.nonzero(owners == k)[0]
      room = int(ml.rows[k, t] - ml.first[k, t])
      kept |= set(ids[mine[np.argsort(decayed[mine])][max(0, len(mine) - room) :]].tolist())
    want.append(kept)
  buffer = rng.normal(size=(rows, DIM)).astype(np.float32)
  acc = rng.uniform(size=rows).astype(np.float32)
  out, new_buffer, new_slots, dropped = managed_io.relayout_host(
    saved, ml, step, state, buffer, {"accumulator": acc}, list(NAMES)
  )
  assert dropped == [CAPACITY[t] - len(want[t]) for t in range(len(NAMES))] and any(dropped)
  old_row = {int(x): b for b, x in enumerate(state["row_id"]) if state["row_slot"][b] >= 0}
  for t in range(len(NAMES)):
    got = {}
    for k in range(2):
      lo = k * ml.rows_per_shard + ml.offset[t]
      for b in range(lo + ml.first[k, t], lo + ml.rows[k, t]):
        if out["row_slot"][b] >= 0:
          got[int(out["row_id"][b])] = b
      assert out["next_free"][k, t] == ml.first[k, t] + sum(
        out["row_slot"][lo : lo + ml.rows[k, t]] >= 0
      )
    assert set(got) == want[t], NAMES[t]
    for x, b in got.items():
      a = old_row[x]
      assert new_buffer[b].tobytes() == buffer[a].tobytes()
      assert new_slots["accumulator"][b] == acc[a]
      assert (out["row_step"][b], out["row_count"][b]) == (
        state["row_step"][a],
        state["row_count"][a],
      )
  np.testing.assert_array_equal(out["inserted"][0], state["inserted"].sum(axis=0))
  np.testing.assert_array_equal(out["evicted"][0], state["evicted"].sum(axis=0) + dropped)
  assert not out["inserted"][1:].any() and out["seed"].tolist() == [3, 4]
