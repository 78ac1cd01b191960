"""--id_mapping=managed on meshes (1, 8) and (2, 4) equals one device: losses, logits, rows by id.

Rows differ by mesh (each id's owner hands out its own rows), so tables are
compared id by id, read from each shard's row state. The capacity is above the
distinct ids, so nothing is evicted and every mesh trains the same model. One
device in turn equals plain whole-table training on the ids the reference map
(managed_testlib.RefTable) gives rows, each starting from its NumPy fresh value.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from managed_testlib import RefTable, fresh_row
from sharding_testlib import batch_around, model, reference_logits, reference_train

from dlrm_jax.optim.sparse import SparseOptimizer
from dlrm_jax.sharding import managed
from dlrm_jax.sharding import mesh as mesh_lib
from dlrm_jax.sharding.planner import plan_layout
from dlrm_jax.sharding.specs import table_specs
from dlrm_jax.train.state import create_train_state, dense_optimizer
from dlrm_jax.train.step import batch_shardings, make_eval_step, make_train_step

DIM = 8
# Rows (capacity + 1) divisible by 8: every shard of every mesh has rows for the ids it owns.
CAPACITIES = (255, 127, 63)
DISTINCT = (48, 24, 12)  # ids per table over all steps, well within any one owner's rows
BATCH = 64
STEPS = 4
LR = 0.1
TOL = 1e-5


def _pools() -> list[np.ndarray]:
  rng = np.random.default_rng(11)
  edges = np.array([0, 0xFFFFFFFF, 1 << 16, 2 << 16], np.uint32)
  return [
    np.unique(np.concatenate([edges, rng.integers(0, 1 << 32, n - 4, dtype=np.uint64)])).astype(
      np.uint32
    )
    for n in DISTINCT
  ]


@functools.cache
def batches() -> tuple[dict[str, np.ndarray], ...]:
  """STEPS train batches of the pools' ids (duplicates across devices), then an eval batch
  whose first half are ids never trained (the unknown row)."""
  rng = np.random.default_rng(12)
  pools = _pools()
  out = []
  for _ in range(STEPS + 1):
    raw = np.stack([rng.choice(pool, BATCH) for pool in pools], axis=1)
    out.append(batch_around(raw.view(np.int32), rng))
  unseen = rng.integers(1 << 20, 1 << 30, (BATCH // 2, len(pools)), dtype=np.uint32)
  out[-1]["sparse"][: BATCH // 2] = unseen.view(np.int32)
  return tuple(out)


@functools.cache
def run(mesh_shape, optimizer: str) -> dict:
  """Trains STEPS steps; keeps the losses, the eval logits and each id's row and slot."""
  n = int(np.prod(mesh_shape))
  mesh = mesh_lib.make_mesh(mesh_shape, jax.devices()[:n])
  opt = SparseOptimizer(optimizer, LR)
  specs = table_specs(
    [f"C{t + 1}" for t in range(len(CAPACITIES))], [c + 1 for c in CAPACITIES], DIM
  )
  layout = plan_layout(
    specs,
    mesh_lib.model_size(mesh),
    default="row",
    slot_floats_per_row=opt.slot_floats_per_row(DIM),
  )
  ml = managed.managed_layout(layout)
  tx = dense_optimizer(optimizer, LR)
  dense = model()
  state = create_train_state(dense, layout, opt, tx, mesh, jax.random.key(3), managed=ml)
  abstract = jax.eval_shape(lambda s: s, state)
  train = make_train_step(dense, layout, opt, tx, mesh, abstract, managed=ml)
  evaluate = make_eval_step(dense, layout, mesh, abstract, managed=ml)
  put = functools.partial(jax.device_put, device=batch_shardings(mesh))
  start = {"params": jax.device_get(state.params), "seed": np.asarray(state.managed["seed"])}
  losses = []
  for batch in batches()[:STEPS]:
    state, metrics = train(state, put(batch))
    losses.append(float(metrics["loss"]))
  logits = np.asarray(evaluate(state, put(batches()[-1])))
  final = jax.device_get(state)
  out = {"losses": np.asarray(losses), "logits": logits, "params": final.params}
  return {**out, **start, **by_id(ml, final)}


def by_id(ml: managed.ManagedLayout, state) -> dict:
  """Each resident (table, raw id)'s embedding row and optimizer slots; each table's row 0."""
  rows, slots, unknown = {}, {}, []
  per_shard = ml.rows_per_shard
  table = state.tables["sharded"]
  for t in range(ml.num_tables):
    unknown.append(table[int(ml.offset[t])])
    for k in range(ml.model_size):
      lo = k * per_shard + int(ml.offset[t])
      for r in range(lo, lo + int(ml.rows[k, t])):
        if state.managed["row_slot"][r] >= 0:
          key = (t, int(state.managed["row_id"][r]))
          rows[key] = table[r]
          slots[key] = {n: s[r] for n, s in state.slots.get("sharded", {}).items()}
  counters = {n: np.asarray(state.managed[n]).sum(axis=0) for n in managed.COUNTERS}
  return {"rows": rows, "slots": slots, "unknown": np.stack(unknown), "counters": counters}


# Each mesh with one optimizer, each optimizer on one mesh: the four pairs would double the
# compiles (about 5 s each on a quiet 2-core machine) for paths the pairs already cover.
@pytest.mark.parametrize("mesh_shape, optimizer", [((1, 8), "sgd"), ((2, 4), "rowwise_adagrad")])
def test_managed_mesh_equals_one_device(mesh_shape, optimizer):
  one, many = run((1, 1), optimizer), run(mesh_shape, optimizer)
  pools = _pools()
  for r in (one, many):
    # Every id trained holds a row and nothing was evicted: the premise of the comparison.
    np.testing.assert_array_equal(r["counters"]["inserted"], [len(p) for p in pools])
    np.testing.assert_array_equal(r["counters"]["evicted"], 0)
    np.testing.assert_array_equal(r["counters"]["unplaced"], 0)
  np.testing.assert_allclose(many["losses"], one["losses"], rtol=TOL, atol=TOL)
  np.testing.assert_allclose(many["logits"], one["logits"], rtol=TOL, atol=TOL)
  assert many["rows"].keys() == one["rows"].keys()
  for key, row in one["rows"].items():
    np.testing.assert_allclose(many["rows"][key], row, rtol=TOL, atol=TOL, err_msg=str(key))
    for name, slot in one["slots"][key].items():
      np.testing.assert_allclose(many["slots"][key][name], slot, rtol=TOL, atol=TOL)
  np.testing.assert_allclose(many["unknown"], one["unknown"], rtol=TOL, atol=TOL)
  # Training moved the rows away from their fresh values, and the meshes followed.
  assert len(one["losses"]) == STEPS and np.all(np.isfinite(one["losses"]))


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
def test_managed_one_device_equals_plain_tables_on_mapped_ids(optimizer):
  """Plain whole-table training (sharding_testlib.reference_train) on the ids mapped by
  RefTable, each row starting from its id's fresh value written in NumPy."""
  one = run((1, 1), optimizer)
  refs = [RefTable(c) for c in CAPACITIES]
  mapped = []
  for step, batch in enumerate(batches()):
    raw = batch["sparse"].view(np.uint32)
    if step < STEPS:
      for t, ref in enumerate(refs):
        ref.step(raw[:, t], step)
    rows = [[ref.row_of.get(int(x), 0) for x in raw[:, t]] for t, ref in enumerate(refs)]
    mapped.append({**batch, "sparse": np.asarray(rows, np.int32).T})
  tables = []
  for t, ref in enumerate(refs):
    rows = CAPACITIES[t] + 1
    table = np.zeros((rows, DIM), np.float32)
    # The unknown row starts as row 0 of a plain table; that hash of row 0 is id 0's too.
    table[0] = fresh_row(one["seed"], t, 0, rows, DIM)
    for x, r in ref.row_of.items():
      table[r] = fresh_row(one["seed"], t, x, rows, DIM)
    tables.append(table)
  params, tables, losses = reference_train(
    model(), one["params"], tables, mapped[:STEPS], optimizer
  )
  np.testing.assert_allclose(one["losses"], losses, rtol=TOL, atol=TOL)
  for t, ref in enumerate(refs):
    for x, r in ref.row_of.items():
      np.testing.assert_allclose(one["rows"][(t, x)], tables[t][r], rtol=TOL, atol=TOL)
    np.testing.assert_allclose(one["unknown"][t], tables[t][0], rtol=TOL, atol=TOL)
  logits = reference_logits(model(), params, tables, mapped[-1])
  np.testing.assert_allclose(one["logits"], logits, rtol=TOL, atol=TOL)
