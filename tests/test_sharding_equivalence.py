"""Every plan on meshes (8,) and (2,4) equals one plain device: forward, 5 SGD and 5 Adagrad steps.

Also: where each table's rows live (specs, shard shapes, values per device) and
that the step compiles once.
"""

import functools

import jax
import numpy as np
import pytest
from sharding_testlib import (
  BATCH,
  DIM,
  ROWS,
  Sharded,
  make_batch,
  reference_logits,
  reference_train,
)

from dlrm_jax.sharding.planner import BUFFER_SPECS

MESHES = [(8,), (2, 4)]
PLANS = ["table", "row", "column", "replicated", "mixed"]
OPTIMIZERS = ["sgd", "adagrad"]
STEPS = 5
TOL = 1e-5


@functools.cache
def batches():
  return tuple(make_batch(i) for i in range(STEPS))


@functools.cache
def run(mesh_shape, plan, optimizer):
  """Trains one combination; keeps what the tests compare (the state is donated)."""
  s = Sharded(mesh_shape, plan, optimizer)
  init = {
    "params": jax.device_get(s.state.params),
    "tables": s.tables(),
    "shards": {
      name: [(sh.device, sh.index, np.asarray(sh.data)) for sh in buf.addressable_shards]
      for name, buf in s.state.tables.items()
    },
    "specs": {name: buf.sharding.spec for name, buf in s.state.tables.items()},
  }
  forward, losses = s.forward_then_train(batches())
  return {
    "sharded": s,
    "init": init,
    "forward": forward,
    "losses": losses,
    "params": jax.device_get(s.state.params),
    "tables": s.tables(),
    "compiles": s.train_step._cache_size(),
  }


@functools.cache
def reference(optimizer):
  """One device, whole-table gradients, from the same initial values (layout-independent)."""
  r = run((8,), "table", optimizer)
  model = r["sharded"].model
  params, tables, losses = reference_train(
    model, r["init"]["params"], r["init"]["tables"], batches(), optimizer
  )
  forward = np.asarray(
    reference_logits(model, r["init"]["params"], r["init"]["tables"], batches()[0])
  )
  return {
    "init": r["init"],
    "forward": forward,
    "params": params,
    "tables": tables,
    "losses": np.asarray(losses),
  }


def test_sharding_test_ids_hit_every_shard_and_repeat():
  for batch in batches():
    for t, rows in enumerate(ROWS):
      ids = batch["sparse"][:, t]
      chunk = -(-rows // 8)
      assert set(np.unique(ids // chunk)) == set(range(-(-rows // chunk)))
      assert np.bincount(ids).max() >= 13
    assert batch["sparse"].shape == (BATCH, len(ROWS))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("mesh_shape", MESHES, ids=["8", "2x4"])
def test_sharding_matches_single_device(mesh_shape, plan, optimizer):
  r, ref = run(mesh_shape, plan, optimizer), reference(optimizer)
  if plan == "mixed":
    assert {p.plan for p in r["sharded"].layout.placements} == {
      "table",
      "row",
      "column",
      "replicated",
    }
  # Same start on every mesh and plan, so the comparison below is meaningful.
  for a, b in zip(r["init"]["tables"], ref["init"]["tables"], strict=True):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(r["forward"], ref["forward"], atol=TOL, rtol=0)
  np.testing.assert_allclose(r["losses"], ref["losses"], atol=TOL, rtol=0)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=TOL, rtol=0), r["params"], ref["params"]
  )
  finals = zip(r["tables"], ref["tables"], r["init"]["tables"], strict=True)
  for t, (a, b, a0) in enumerate(finals):
    assert a.shape == (ROWS[t], DIM)
    np.testing.assert_allclose(a, b, atol=TOL, rtol=0, err_msg=f"table {t}")
    # Updates are well above the tolerance: a wrong gradient scale would show.
    assert np.abs(a - a0).max() > 20 * TOL


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("mesh_shape", MESHES, ids=["8", "2x4"])
def test_sharding_tables_live_where_the_plan_says(mesh_shape, plan):
  r = run(mesh_shape, plan, "sgd")
  s, init = r["sharded"], r["init"]
  layout, mesh = s.layout, s.mesh
  m = layout.model_size
  model_index = {d: int(np.argwhere(mesh.devices == d)[0][1]) for d in mesh.devices.flat}
  shapes = layout.buffer_shapes()
  assert set(init["specs"]) == set(shapes)
  for name, shards in init["shards"].items():
    assert init["specs"][name] == BUFFER_SPECS[name]
    rows, dim = shapes[name]
    want = {"sharded": (rows // m, dim), "column": (rows, dim // m), "replicated": (rows, dim)}[
      name
    ]
    assert len(shards) == mesh.devices.size
    assert all(data.shape == want for _, _, data in shards), name
  for t, p in enumerate(layout.placements):
    table = init["tables"][t]
    for device, _, data in init["shards"][p.buffer]:
      k = model_index[device]
      if p.plan == "column":
        cols = slice(k * DIM // m, (k + 1) * DIM // m)
        np.testing.assert_array_equal(data[p.offset : p.offset + p.spec.rows], table[:, cols])
        continue
      # Rows are distinct random vectors, so a row's presence is checked by value.
      held = {row.tobytes() for row in data}
      has = [table[i].tobytes() in held for i in range(p.spec.rows)]
      if p.plan == "table":
        owns = [k == p.owner] * p.spec.rows
      elif p.plan == "row":
        owns = [i // p.chunk == k for i in range(p.spec.rows)]
      else:
        owns = [True] * p.spec.rows
      assert has == owns, (p.spec.name, p.plan, device)
  if plan == "table":
    assert len({p.owner for p in layout.placements}) == min(m, len(ROWS))


@pytest.mark.parametrize("mesh_shape", MESHES, ids=["8", "2x4"])
def test_sharding_train_step_compiles_once(mesh_shape):
  r = run(mesh_shape, "mixed", "sgd")
  assert r["compiles"] == 1
  s = r["sharded"]
  for batch in batches()[:2]:
    s.state, _ = s.train_step(s.state, s.put(batch))
  assert s.train_step._cache_size() == 1
