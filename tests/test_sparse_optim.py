"""Sparse (touched-rows) table updates equal the dense-gradient updates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlrm_jax.sparse_optim import SparseOptimizer

ROWS, DIM, LR = 20, 4, 0.3


def _steps(seed, n=30, num_steps=3):
  rng = np.random.default_rng(seed)
  # Many repeated ids: duplicates must be summed before the update.
  return [
    (rng.integers(0, ROWS // 2, n).astype(np.int32), rng.normal(size=(n, DIM)).astype(np.float32))
    for _ in range(num_steps)
  ]


def _dense_grad(ids, grads):
  return jnp.zeros((ROWS, DIM)).at[ids].add(grads)


def _run_sparse(opt, table, steps, valid=None):
  slots = opt.init_slots(table)
  apply = jax.jit(opt.apply)
  for ids, grads in steps:
    mask = np.ones(len(ids), bool) if valid is None else valid
    table, slots = apply(table, slots, jnp.asarray(ids), jnp.asarray(grads), jnp.asarray(mask))
  return np.asarray(table)


@pytest.mark.parametrize(
  "name,tx,dedupe",
  [
    ("sgd", optax.sgd(LR), True),
    ("sgd", optax.sgd(LR), False),  # the CPU path: scatter-add of duplicates
    ("adagrad", optax.adagrad(LR, initial_accumulator_value=0.0, eps=1e-7), True),
  ],
)
def test_sparse_equals_optax_on_dense_gradient(name, tx, dedupe):
  table = jax.random.normal(jax.random.key(0), (ROWS, DIM))
  steps = _steps(1)
  dense, state = table, tx.init(table)
  for ids, grads in steps:
    updates, state = tx.update(_dense_grad(ids, grads), state, dense)
    dense = optax.apply_updates(dense, updates)
  got = _run_sparse(SparseOptimizer(name, LR, eps=1e-7, dedupe=dedupe), table, steps)
  np.testing.assert_allclose(got, np.asarray(dense), rtol=1e-5, atol=1e-6)
  # Rows never touched are bit-identical.
  np.testing.assert_array_equal(got[ROWS // 2 :], np.asarray(table)[ROWS // 2 :])


def test_rowwise_adagrad_equals_dense_numpy():
  table = np.asarray(jax.random.normal(jax.random.key(0), (ROWS, DIM)))
  steps = _steps(2)
  want, acc = table.astype(np.float64), np.zeros(ROWS)
  for ids, grads in steps:
    g = np.zeros((ROWS, DIM))
    np.add.at(g, ids, grads)
    touched = np.abs(g).sum(axis=1) > 0
    acc = acc + np.where(touched, (g * g).mean(axis=1), 0.0)
    want = want - LR * np.where(touched[:, None], g / np.sqrt(acc[:, None] + 1e-7), 0.0)
  got = _run_sparse(SparseOptimizer("rowwise_adagrad", LR, eps=1e-7), jnp.asarray(table), steps)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dedupe", [True, False])
def test_invalid_entries_are_ignored(dedupe):
  table = jnp.zeros((ROWS, DIM))
  ids, grads = _steps(3, num_steps=1)[0]
  valid = np.arange(len(ids)) % 2 == 0
  got = _run_sparse(SparseOptimizer("sgd", LR, dedupe=dedupe), table, [(ids, grads)], valid)
  want = -LR * np.asarray(_dense_grad(ids[valid], grads[valid]))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_adagrad_refuses_duplicate_gradients():
  with pytest.raises(ValueError, match="dedupe"):
    _run_sparse(SparseOptimizer("adagrad", LR, dedupe=False), jnp.zeros((ROWS, DIM)), _steps(4))


def test_unknown_optimizer_names_the_flag():
  with pytest.raises(ValueError, match="--optimizer"):
    SparseOptimizer("adam", 0.1)
