"""Multi-hot bags on every plan and meshes (8,) and (2,4) equal one plain device.

Forward against a NumPy EmbeddingBag (sum and mean), 5 steps of SGD, Adagrad and
row-wise Adagrad against whole-table training, and empty (-1) slots never touch
a row or its optimizer state. The "mixed" layout holds all four plans at once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sharding_testlib import DIM, ROWS, Sharded, batch_around, reference_logits, reference_train

from dlrm_jax.checkpoint.table_io import logical_table

BAGS = (3, 1, 4, 2, 1, 5, 2, 3)
BATCH = 64
STEPS = 5
TOL = 1e-5
OFFSETS = np.concatenate([[0], np.cumsum(BAGS)[:-1]])
# (mesh, plan, optimizer, pooling): mixed covers table, row, column and
# replicated in one program (C1 forced column: the planner prefers rows for
# row-wise Adagrad); "table" on 2x4 puts several bags of different sizes on
# one owner.
COLUMN = {"C1": "column"}
CASES = [
  ((8,), "mixed", "sgd", "sum"),
  ((8,), "mixed", "adagrad", "sum"),
  ((8,), "mixed", "rowwise_adagrad", "sum"),
  ((2, 4), "mixed", "sgd", "sum"),
  ((2, 4), "mixed", "adagrad", "sum"),
  ((2, 4), "mixed", "rowwise_adagrad", "sum"),
  ((8,), "mixed", "sgd", "mean"),
  ((2, 4), "table", "rowwise_adagrad", "mean"),
]


def _case_id(case) -> str:
  return "-".join(["x".join(map(str, case[0])), *case[1:]])


def _allowed(rows: int) -> np.ndarray:
  """Ids that valid slots may use: never buffer-local row 0 of any shard on 8 or 4 shards.

  Empty slots are read from (and masked at) local row 0, so keeping valid ids
  off those rows lets the test see any leak from an empty slot.
  """
  ids = np.arange(rows)
  keep = (ids % -(-rows // 8) != 0) & (ids % -(-rows // 4) != 0)
  return ids[keep]


def make_bag_batch(step: int) -> dict[str, np.ndarray]:
  """sparse i32[B, sum(BAGS)]: bags hitting every row shard, repeating ids, and -1 padding."""
  rng = np.random.default_rng(2000 + step)
  cols = []
  for t, (rows, size) in enumerate(zip(ROWS, BAGS, strict=True)):
    allowed = _allowed(rows)
    ids = rng.choice(allowed, (BATCH, size)).astype(np.int32)
    chunk = -(-rows // 8)
    for k in range(-(-rows // chunk)):
      ids[k, 0] = allowed[allowed >= k * chunk][0]
    ids[8:20, 0] = ids[step % 8, 0]  # one row in 12 bags across devices
    if size > 1:
      ids[8:20, 1] = ids[8:20, 0]  # and twice within each of those bags
    lengths = rng.integers(0, size + 1, BATCH)
    lengths[:20] = size
    ids[np.arange(size)[None, :] >= lengths[:, None]] = -1
    ids[24 + t] = -1  # at least one empty bag per feature
    cols.append(ids)
  sparse = np.concatenate(cols, axis=1)
  rng.shuffle(sparse, axis=0)
  return batch_around(sparse, rng)


@functools.cache
def batches():
  return tuple(make_bag_batch(i) for i in range(STEPS))


def numpy_embedding_bag(tables, sparse: np.ndarray, pooling: str) -> np.ndarray:
  """torch.nn.EmbeddingBag semantics, one bag at a time: f32[B, T, D]; -1 = no id."""
  out = np.zeros((sparse.shape[0], len(tables), DIM), np.float64)
  for i in range(sparse.shape[0]):
    for t, (offset, size) in enumerate(zip(OFFSETS, BAGS, strict=True)):
      ids = [x for x in sparse[i, offset : offset + size] if x >= 0]
      for x in ids:
        out[i, t] += tables[t][x]
      if pooling == "mean" and ids:
        out[i, t] /= len(ids)
  return out.astype(np.float32)


def dense_embedding_bag(pooling: str):
  """The same pooling as weighted whole-table gathers, differentiable w.r.t. whole tables."""

  def embed(tables, sparse):
    out = []
    for t, (offset, size) in enumerate(zip(OFFSETS, BAGS, strict=True)):
      ids = sparse[:, offset : offset + size]
      w = (ids >= 0).astype(jnp.float32)
      if pooling == "mean":
        w = w / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1.0)
      out.append(jnp.einsum("bl,bld->bd", w, tables[t][jnp.maximum(ids, 0)]))
    return jnp.stack(out, axis=1)

  return embed


def _accumulators(s: Sharded) -> list[np.ndarray] | None:
  if not any(s.state.slots.values()):
    return None
  acc = {n: v["accumulator"] for n, v in s.state.slots.items()}
  return [logical_table(s.layout, acc, t) for t in range(len(ROWS))]


@functools.cache
def run(mesh_shape, plan, optimizer, pooling):
  s = Sharded(mesh_shape, plan, optimizer, bag_sizes=BAGS, pooling=pooling, overrides=COLUMN)
  init = {"params": jax.device_get(s.state.params), "tables": s.tables()}
  forward, losses = s.forward_then_train(batches())
  return {
    "model": s.model,
    "plans": {p.plan for p in s.layout.placements},
    "init": init,
    "forward": forward,
    "losses": losses,
    "params": jax.device_get(s.state.params),
    "tables": s.tables(),
    "accumulators": _accumulators(s),
  }


def test_sharding_multihot_batches_have_repeats_padding_and_every_shard():
  for batch in batches():
    sparse = batch["sparse"]
    assert sparse.shape == (BATCH, sum(BAGS))
    for t, (offset, size, rows) in enumerate(zip(OFFSETS, BAGS, ROWS, strict=True)):
      bag = sparse[:, offset : offset + size]
      assert (bag == -1).any() and (bag >= 0).any()
      if size > 1:
        assert any(len(set(b[b >= 0])) < (b >= 0).sum() for b in bag), t
      chunk = -(-rows // 8)
      assert set(np.unique(bag[bag >= 0] // chunk)) == set(range(-(-rows // chunk)))


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_sharding_multihot_reference_bag_matches_numpy(pooling):
  rng = np.random.default_rng(0)
  tables = [rng.normal(size=(r, DIM)).astype(np.float32) for r in ROWS]
  sparse = batches()[0]["sparse"]
  want = numpy_embedding_bag(tables, sparse, pooling)
  got = np.asarray(dense_embedding_bag(pooling)(tables, jnp.asarray(sparse)))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
  "mesh_shape,plan,optimizer,pooling", CASES, ids=[_case_id(c) for c in CASES]
)
def test_sharding_multihot_matches_single_device(mesh_shape, plan, optimizer, pooling):
  r = run(mesh_shape, plan, optimizer, pooling)
  if plan == "mixed":
    assert r["plans"] == {"table", "row", "column", "replicated"}
  model, init = r["model"], r["init"]
  forward = reference_logits(
    model,
    init["params"],
    init["tables"],
    batches()[0],
    lambda tables, sparse: numpy_embedding_bag(tables, np.asarray(sparse), pooling),
  )
  np.testing.assert_allclose(r["forward"], np.asarray(forward), atol=TOL, rtol=0)
  params, tables, losses = reference_train(
    model, init["params"], init["tables"], batches(), optimizer, dense_embedding_bag(pooling)
  )
  np.testing.assert_allclose(r["losses"], losses, atol=TOL, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=TOL, rtol=0), r["params"], params)
  for t, (a, b, a0) in enumerate(zip(r["tables"], tables, init["tables"], strict=True)):
    np.testing.assert_allclose(a, b, atol=TOL, rtol=0, err_msg=f"table {t}")
    assert np.abs(a - a0).max() > 20 * TOL


@pytest.mark.parametrize(
  "mesh_shape,plan,optimizer,pooling", CASES, ids=[_case_id(c) for c in CASES]
)
def test_sharding_multihot_empty_slots_never_change_a_row(mesh_shape, plan, optimizer, pooling):
  r = run(mesh_shape, plan, optimizer, pooling)
  for t, (offset, size, rows) in enumerate(zip(OFFSETS, BAGS, ROWS, strict=True)):
    used = np.zeros(rows, bool)
    for batch in batches():
      bag = batch["sparse"][:, offset : offset + size]
      used[bag[bag >= 0]] = True
    unused = ~used
    assert unused[0] and unused.sum() >= 2
    np.testing.assert_array_equal(r["tables"][t][unused], r["init"]["tables"][t][unused])
    if r["accumulators"] is not None:
      assert not r["accumulators"][t][unused].any(), t
      assert r["accumulators"][t][used].any(), t
