"""The dense state initialised ahead (while raw text is preprocessed) is the one init makes."""

import dataclasses
from concurrent.futures import Future

import jax
import numpy as np
import pytest

from dlrm_jax.config import Config
from dlrm_jax.data import criteo_format as cf
from dlrm_jax.sharding import mesh as mesh_lib
from dlrm_jax.train.components import build_components, dense_state_ahead, initial_state
from dlrm_jax.train.state import create_train_state, init_dense_state

SIZES = tuple(range(5, 5 + cf.NUM_SPARSE))
CONFIG = Config(embedding_dim=8, bottom_mlp=(16, 8), top_mlp=(16, 1), seed=3)


def components(config):
  mesh = mesh_lib.make_mesh(config.mesh_shape)  # as the run makes it: every device
  return build_components(config, mesh, SIZES, cf.SPARSE_NAMES)


def done(value) -> Future:
  f = Future()
  f.set_result(value)
  return f


def leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def plain_state(c):
  """The state as create_train_state computes it in one program, before init ran ahead."""
  key = jax.random.key(c.config.seed)
  return create_train_state(c.model, c.layout, c.sparse_opt, c.dense_tx, c.mesh, key)


def assert_same(a, b):
  for x, y in zip(leaves(a), leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_dense_state_ahead_gives_the_bits_of_one_program(optimizer):
  c = components(dataclasses.replace(CONFIG, optimizer=optimizer))
  ahead = dense_state_ahead(c.config)
  state = initial_state(c, ahead)
  assert ahead.done() and ahead.exception() is None
  assert_same(state, plain_state(c))


def test_the_ahead_arrays_are_the_ones_taken():
  c = components(CONFIG)
  other = init_dense_state(
    c.model, c.dense_tx, c.mesh, jax.random.key(99), len(SIZES), c.config.embedding_dim
  )
  state = initial_state(c, done(other))
  assert_same(state.params, other[0])
  plain = plain_state(c)
  pairs = zip(leaves(state.params), leaves(plain.params), strict=True)
  assert not all(np.array_equal(x, y) for x, y in pairs)
  assert_same(state.tables, plain.tables)


def failed() -> Future:
  f = Future()
  f.set_exception(RuntimeError("compilation failed"))
  return f


@pytest.mark.parametrize("case", ["another embedding dim", "failed"])
def test_an_unusable_ahead_is_not_used(case):
  c = components(CONFIG)
  if case == "failed":
    ahead = failed()
  else:
    ahead = dense_state_ahead(dataclasses.replace(CONFIG, embedding_dim=4))
  assert_same(initial_state(c, ahead), plain_state(c))
