"""--id_mapping=managed served: evaluation's sharded map lookup, the exported function and a
NumPy reference agree on every id (unknown ids: row 0), on one device and on eight."""

from __future__ import annotations

import dataclasses

import dlrm_reference
import jax
import numpy as np
import pytest

from dlrm_jax.checkpoint import table_io
from dlrm_jax.config import Config
from dlrm_jax.run import managed_serving
from dlrm_jax.run.export import serving_function
from dlrm_jax.sharding import mesh as mesh_lib
from dlrm_jax.train.components import abstract_train_state, build_components, initial_state
from dlrm_jax.train.step import batch_shardings, make_eval_step, make_train_step

CONFIG = Config(
  embedding_dim=8,
  bottom_mlp=(16, 8),
  top_mlp=(16, 1),
  batch_size=32,
  eval_batch_size=32,
  learning_rate=0.5,
  id_mapping="managed",
  max_steps=6,
)
NAMES = ["C1", "C2", "C3"]
SIZES = [41, 9, 17]  # capacity + 1 (the unknown row): 40, 8 and 16 ids
# Raw ids: edge values of uint32 and values equal mod small numbers; more than capacity, so
# the small tables evict.
POOL = np.array(
  [0, 1, 7, 8, 9, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 41, 82, 123]
  + [int(x) for x in np.random.default_rng(0).integers(0, 2**32, 40, dtype=np.uint64)],
  np.uint32,
)
UNSEEN = np.array([2, 3, 0xFFFFFFFE, 12345678], np.uint32)  # never in a training batch


def raw_batch(seed: int, pool: np.ndarray) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {
    "dense": rng.random((32, 13), np.float32),
    "sparse": rng.choice(pool, size=(32, len(NAMES))),
    "label": rng.integers(0, 2, 32).astype(np.float32),
    "mask": np.ones(32, np.float32),
  }


def reference_rows(c, state) -> list[dict[int, int]]:
  """Per table, raw id -> logical row from the maps' row arrays, by the layout's definition:
  shard k holds rows [k * chunk, (k + 1) * chunk) of each row-wise table; a row holds an id
  when its map slot is set."""
  ml = c.managed
  m = ml.model_size
  row_id = np.asarray(jax.device_get(state.managed["row_id"])).reshape(m, -1)
  slot = np.asarray(jax.device_get(state.managed["row_slot"])).reshape(m, -1)
  out = []
  for p in c.layout.placements:
    held = {}
    for k in range(m):
      for r in range(p.chunk):
        row = k * p.chunk + r
        if row < p.spec.rows and slot[k, p.offset + r] >= 0:
          assert int(row_id[k, p.offset + r]) not in held
          held[int(row_id[k, p.offset + r])] = row
    assert 0 not in held.values()  # the unknown row is never an id's
    out.append(held)
  return out


@pytest.mark.parametrize("devices", [1, 8])
def test_eval_export_and_reference_agree_on_known_and_unknown_ids(devices):
  mesh = mesh_lib.make_mesh((devices,), jax.devices()[:devices])
  c = build_components(dataclasses.replace(CONFIG, sharding="row"), mesh, SIZES, NAMES)
  assert c.managed is not None
  state = initial_state(c)
  abstract = abstract_train_state(c)
  train = make_train_step(
    c.model, c.layout, c.sparse_opt, c.dense_tx, mesh, abstract, managed=c.managed
  )
  evaluate = make_eval_step(c.model, c.layout, mesh, abstract, c.managed)

  def put(batch):
    return jax.device_put({**batch, "sparse": c.check_ids(batch["sparse"])}, batch_shardings(mesh))

  for step in range(6):
    state, _ = train(state, put(raw_batch(step, POOL)))
  held = reference_rows(c, state)
  # The pool has more ids than capacity: one device fills every table; on eight, ids go to
  # their owner shard by hash, so a shard may meet fewer ids than it has rows.
  counts = [len(h) for h in held]
  if devices == 1:
    assert counts == [40, 8, 16]
  assert all(0 < n <= cap for n, cap in zip(counts, [40, 8, 16], strict=True)), counts
  batch = raw_batch(99, np.concatenate([POOL, UNSEEN]))
  batch["sparse"][:4] = UNSEEN[:, None]  # every table sees unknown ids
  raw = batch["sparse"]
  logits = np.asarray(evaluate(state, put(batch)))

  # NumPy reference: the id's row, or row 0 for an id the maps do not hold.
  rows = np.array([[held[t].get(int(x), 0) for t, x in enumerate(r)] for r in raw])
  assert (rows[:4] == 0).all() and (rows[4:] > 0).any()
  tables = [table_io.logical_table(c.layout, state.tables, t) for t in range(len(NAMES))]
  params = jax.tree.map(np.asarray, jax.device_get(state.params))
  expected = dlrm_reference.forward(params, tables, batch["dense"], rows)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)

  # The exported function's lookup: one device, no shard_map, the same rows.
  leaves, treedef = jax.tree.flatten(state.params)
  maps = managed_serving.resident_ids(c.managed, state.managed)
  for t, (ids, r) in enumerate(maps):
    assert dict(zip(ids.tolist(), r.tolist(), strict=True)) == held[t]
  weights = leaves + tables + [i for i, _ in maps] + [r for _, r in maps]
  f = jax.jit(serving_function(c.model, treedef, len(leaves), managed=True))
  served = np.asarray(f(weights, batch["dense"], raw))
  np.testing.assert_allclose(served, 1 / (1 + np.exp(-expected)), rtol=1e-5, atol=1e-6)


def test_find_rows_unknown_and_empty_map():
  ids = np.array([0, 5, 0xFFFFFFFF], np.uint32)
  rows = np.array([3, 1, 2], np.int32)
  x = np.array([5, 6, 0xFFFFFFFF, 0, 4, 0xFFFFFFFE], np.uint32)
  got = np.asarray(managed_serving.find_rows(ids, rows, x))
  np.testing.assert_array_equal(got, [1, 0, 2, 3, 0, 0])
  empty = np.asarray(managed_serving.find_rows(np.zeros(1, np.uint32), np.zeros(1, np.int32), x))
  np.testing.assert_array_equal(empty, 0)
