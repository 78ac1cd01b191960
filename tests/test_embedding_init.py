"""Embedding initialisation: the reference's U(-sqrt(1/rows), sqrt(1/rows)), layout-free."""

import jax
import numpy as np

from dlrm_jax.model.dlrm import DenseModel
from dlrm_jax.optim.sparse import SparseOptimizer
from dlrm_jax.sharding.mesh import make_mesh
from dlrm_jax.sharding.planner import build_layout, choose_plans
from dlrm_jax.sharding.specs import table_specs
from dlrm_jax.train.state import create_train_state, dense_optimizer


def test_rows_are_uniform_within_reference_bound():
  rows = [3, 400, 70_000]
  specs = table_specs(["C1", "C2", "C3"], rows, 8)
  mesh = make_mesh((1, 1), devices=jax.devices()[:1])
  layout = build_layout(specs, choose_plans(specs, 1), 1)
  state = create_train_state(
    DenseModel((8,), (1,)),
    layout,
    SparseOptimizer("sgd", 0.1),
    dense_optimizer("sgd", 0.1),
    mesh,
    jax.random.key(0),
  )
  buffer = np.asarray(state.tables["sharded"])
  for p in layout.placements:
    t = buffer[p.offset : p.offset + p.spec.rows]
    bound = np.sqrt(1.0 / p.spec.rows)
    assert np.all(np.abs(t) <= bound)
    if p.spec.rows >= 400:
      # U(-b, b): mean 0, std b/sqrt(3); rows differ from each other.
      assert abs(t.mean()) < 0.05 * bound
      np.testing.assert_allclose(t.std(), bound / np.sqrt(3), rtol=0.05)
      assert len(np.unique(t[:, 0])) > 0.99 * p.spec.rows
