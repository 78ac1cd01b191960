"""save_checkpoint / restore_checkpoint (the public API): a state saved on one mesh and plan
comes back equal on another, tables, optimizer slots and dense parameters alike."""

import jax
import numpy as np
import pytest
from sharding_testlib import Sharded, make_batch

from dlrm_jax import logical_table, restore_checkpoint, save_checkpoint
from dlrm_jax.faults import CheckpointError


def slot_tables(s: Sharded) -> list[np.ndarray]:
  acc = {n: slots["accumulator"] for n, slots in s.state.slots.items()}
  return [logical_table(s.layout, acc, t) for t in range(len(s.layout.placements))]


def test_saved_on_2x4_mixed_restores_on_1x8_row_wise(tmp_path):
  saved = Sharded((2, 4), "mixed", "adagrad")
  for i in range(2):
    saved.state, _ = saved.train_step(saved.state, saved.put(make_batch(i)))
  path = save_checkpoint(str(tmp_path), saved.state, saved.layout, saved.mesh)
  assert path == str(tmp_path / "checkpoints" / "2")

  other = Sharded((1, 8), "row", "adagrad", seed=1)  # other initial values, to be overwritten
  abstract = jax.eval_shape(lambda s: s, other.state)
  other.state = restore_checkpoint(str(tmp_path), other.layout, abstract, other.mesh)
  assert int(other.state.step) == 2
  for a, b in zip(other.tables(), saved.tables(), strict=True):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(slot_tables(other), slot_tables(saved), strict=True):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(
    jax.tree.leaves(other.state.params), jax.tree.leaves(saved.state.params), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # It trains on from there exactly as the saved state does.
  batch = make_batch(2)
  _, m_other = other.train_step(other.state, other.put(batch))
  _, m_saved = saved.train_step(saved.state, saved.put(batch))
  np.testing.assert_allclose(float(m_other["loss"]), float(m_saved["loss"]), rtol=1e-6)


def test_restore_without_checkpoints_names_the_directory(tmp_path):
  s = Sharded((1, 8), "row", "sgd")
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(CheckpointError, match="no checkpoints under .*checkpoints"):
    restore_checkpoint(str(tmp_path), s.layout, jax.eval_shape(lambda x: x, s.state), s.mesh)
