"""Sparse (touched-rows) table updates equal a NumPy loop of the PyTorch reference's formulas."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from dlrm_jax.optim.sparse import SparseOptimizer

ROWS, DIM, LR, EPS = 20, 4, 0.3, 1e-10


def _steps(seed, n=30, num_steps=3, scale=1.0):
  rng = np.random.default_rng(seed)
  # Many repeated ids (only the first half of the rows): duplicates must be summed first.
  return [
    (
      rng.integers(0, ROWS // 2, n).astype(np.int32),
      (scale * rng.normal(size=(n, DIM))).astype(np.float32),
    )
    for _ in range(num_steps)
  ]


def reference(name, table, steps, lr=LR, eps=EPS, initial_accumulator=0.0, valid=None):
  """torch.optim.Adagrad / the reference's row-wise Adagrad, one row at a time, in float64.

  A row's gradient is the sum of its duplicates (torch coalesces sparse grads);
  rows not in the batch are not touched, their accumulators neither.
  """
  w = np.array(table, np.float64)
  acc = np.full(ROWS if name == "rowwise_adagrad" else (ROWS, DIM), initial_accumulator)
  for ids, grads in steps:
    keep = np.ones(len(ids), bool) if valid is None else valid
    for row in sorted(set(ids[keep].tolist())):
      g = grads[(ids == row) & keep].astype(np.float64).sum(axis=0)
      if name == "sgd":
        w[row] -= lr * g
      elif name == "adagrad":
        acc[row] += g * g
        w[row] -= lr * g / (np.sqrt(acc[row]) + eps)
      else:
        acc[row] += np.mean(g * g)
        w[row] -= lr * g / (np.sqrt(acc[row]) + eps)
  return w


def _run_sparse(opt, table, steps, valid=None):
  slots = opt.init_slots(jnp.asarray(table))
  apply = jax.jit(opt.apply)
  table = jnp.asarray(table)
  for ids, grads in steps:
    mask = np.ones(len(ids), bool) if valid is None else valid
    table, slots = apply(table, slots, jnp.asarray(ids), jnp.asarray(grads), jnp.asarray(mask))
  return np.asarray(table)


def _table():
  return np.asarray(jax.random.normal(jax.random.key(0), (ROWS, DIM)))


@pytest.mark.parametrize(
  "name,dedupe",
  [
    ("sgd", True),
    ("sgd", False),  # the CPU path: scatter-add of duplicates
    ("adagrad", True),
    ("rowwise_adagrad", True),
  ],
)
def test_sparse_equals_reference_loop(name, dedupe):
  table, steps = _table(), _steps(1)
  got = _run_sparse(SparseOptimizer(name, LR, dedupe=dedupe), table, steps)
  np.testing.assert_allclose(got, reference(name, table, steps), rtol=1e-5, atol=1e-6)
  # Rows never touched are bit-identical.
  np.testing.assert_array_equal(got[ROWS // 2 :], table[ROWS // 2 :])


@pytest.mark.parametrize("name", ["adagrad", "rowwise_adagrad"])
def test_eps_is_added_after_the_square_root(name):
  """At embedding-sized gradients (1e-5) eps inside the root (optax) would change the step."""
  table, steps = _table(), _steps(5, scale=1e-5)
  got = _run_sparse(SparseOptimizer(name, LR, eps=1e-7), table, steps)
  want = reference(name, table, steps, eps=1e-7)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  inside = _optax_convention(name, table, steps, eps=1e-7, initial_accumulator=0.0)
  assert np.max(np.abs(inside - want)) > 1e4 * np.max(np.abs(got - want))


@pytest.mark.parametrize("name", ["adagrad", "rowwise_adagrad"])
def test_initial_accumulator(name):
  table, steps = _table(), _steps(9)
  got = _run_sparse(SparseOptimizer(name, LR, initial_accumulator=0.5), table, steps)
  want = reference(name, table, steps, initial_accumulator=0.5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _optax_convention(name, table, steps, eps, initial_accumulator):
  """The convention this code used to follow: g / sqrt(a + eps); only to show the test can fail."""
  w = np.array(table, np.float64)
  acc = np.full(ROWS if name == "rowwise_adagrad" else (ROWS, DIM), initial_accumulator)
  for ids, grads in steps:
    for row in set(ids.tolist()):
      g = grads[ids == row].astype(np.float64).sum(axis=0)
      acc[row] += np.mean(g * g) if name == "rowwise_adagrad" else g * g
      w[row] -= LR * g / np.sqrt(acc[row] + eps)
  return w


@pytest.mark.parametrize("name", ["sgd", "adagrad", "rowwise_adagrad"])
def test_row_sharded_apply_equals_reference(name):
  """The row-wise plan: each shard updates its own rows; ids of other shards arrive invalid."""
  shards = 2
  table, steps = _table(), _steps(6)
  mesh = Mesh(np.array(jax.devices()[:shards]), ("model",))
  opt = SparseOptimizer(name, LR)
  local_rows = ROWS // shards

  @functools.partial(
    jax.shard_map, mesh=mesh, in_specs=(P("model"), P("model"), P(), P()), out_specs=P("model")
  )
  def run(table, acc, ids, grads):
    base = jax.lax.axis_index("model") * local_rows
    slots = {"accumulator": acc} if name != "sgd" else {}
    for s in range(ids.shape[0]):
      local = ids[s] - base
      valid = (local >= 0) & (local < local_rows)
      table, slots = opt.apply(table, slots, local, grads[s], valid)
    return table

  acc = jnp.zeros((ROWS, DIM) if name == "adagrad" else (ROWS,))
  steps = [(i + ROWS // 4, g) for i, g in steps]  # ids straddle the two shards
  ids = jnp.asarray(np.stack([i for i, _ in steps]))
  grads = jnp.asarray(np.stack([g for _, g in steps]))
  got = np.asarray(jax.jit(run)(jnp.asarray(table), acc, ids, grads))
  want = reference(name, table, steps)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["adagrad", "rowwise_adagrad"])
def test_column_sharded_apply_equals_reference(name):
  """The column-wise plan: row-wise Adagrad's mean square spans all shards of the row."""
  shards = 2
  table, steps = _table(), _steps(7)
  mesh = Mesh(np.array(jax.devices()[:shards]), ("model",))
  opt = SparseOptimizer(name, LR)
  acc_spec = P(None, "model") if name == "adagrad" else P()

  @functools.partial(
    jax.shard_map,
    mesh=mesh,
    in_specs=(P(None, "model"), acc_spec, P(), P(None, None, "model")),
    out_specs=P(None, "model"),
    check_vma=False,
  )
  def run(table, acc, ids, grads):
    slots = {"accumulator": acc}
    for s in range(ids.shape[0]):
      valid = jnp.ones(ids.shape[1], bool)
      table, slots = opt.apply(
        table, slots, ids[s], grads[s], valid, column_axis="model", full_dim=DIM
      )
    return table

  acc = jnp.zeros((ROWS, DIM) if name == "adagrad" else (ROWS,))
  ids = jnp.asarray(np.stack([i for i, _ in steps]))
  grads = jnp.asarray(np.stack([g for _, g in steps]))
  got = np.asarray(jax.jit(run)(jnp.asarray(table), acc, ids, grads))
  np.testing.assert_allclose(got, reference(name, table, steps), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adagrad", "rowwise_adagrad"])
def test_invalid_entries_are_ignored(name):
  table = _table()
  ids, grads = _steps(3, num_steps=1)[0]
  valid = np.arange(len(ids)) % 2 == 0
  got = _run_sparse(SparseOptimizer(name, LR), table, [(ids, grads)], valid)
  want = reference(name, table, [(ids, grads)], valid=valid)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_scheduled_rate_is_passed_per_step():
  table, steps = _table(), _steps(8, num_steps=1)
  opt = SparseOptimizer("adagrad", lambda step: 0.1 * (step + 1))
  slots = opt.init_slots(jnp.asarray(table))
  (ids, grads) = steps[0]
  valid = jnp.ones(len(ids), bool)
  lr = opt.lr_at(jnp.int32(2))
  got, _ = jax.jit(opt.apply)(jnp.asarray(table), slots, ids, grads, valid, learning_rate=lr)
  want = reference("adagrad", table, steps, lr=0.3)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="learning_rate"):
    opt.apply(jnp.asarray(table), slots, ids, grads, valid)


def test_adagrad_refuses_duplicate_gradients():
  with pytest.raises(ValueError, match="dedupe"):
    _run_sparse(SparseOptimizer("adagrad", LR, dedupe=False), jnp.zeros((ROWS, DIM)), _steps(4))


def test_unknown_optimizer_names_the_flag():
  with pytest.raises(ValueError, match="--optimizer"):
    SparseOptimizer("adam", 0.1)
