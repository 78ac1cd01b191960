"""DCN, DCN-V2 and the embedding-MLP model on meshes (8,) and (2,4) equal one plain device.

Only the dense model differs from tests/test_sharding_equivalence.py: the
embedding exchange and the sparse updates are the same code, so one plan
(the paper's table-wise) and SGD suffice here.
"""

import functools

import jax
import numpy as np
import pytest
from sharding_testlib import DIM, ROWS, Sharded, make_batch, reference_logits, reference_train

from dlrm_jax.model.dlrm import DenseModel

MESHES = [(8,), (2, 4)]
STEPS = 3
TOL = 1e-5
PLAN = "table"
MODELS = {
  "dcn": DenseModel(
    bottom_mlp=(16, DIM), top_mlp=(1,), interaction="dcn", dcn_num_layers=3, dcn_deep_mlp=(16, 8)
  ),
  "dcnv2": DenseModel(
    bottom_mlp=(16, DIM),
    top_mlp=(16, 1),
    interaction="dcnv2",
    dcn_num_layers=2,
    dcn_low_rank_dim=8,
  ),
  "embedding_mlp": DenseModel(
    bottom_mlp=(16, DIM), top_mlp=(16, 1), embedding_mlp=(12, DIM), embedding_mlp_shared=False
  ),
}


@functools.cache
def batches():
  return tuple(make_batch(i) for i in range(STEPS))


@functools.cache
def run(mesh_shape, name):
  s = Sharded(mesh_shape, PLAN, "sgd", dense_model=MODELS[name])
  init = {"params": jax.device_get(s.state.params), "tables": s.tables()}
  forward, losses = s.forward_then_train(batches())
  return {
    "init": init,
    "forward": forward,
    "losses": losses,
    "params": jax.device_get(s.state.params),
    "tables": s.tables(),
  }


@functools.cache
def reference(name):
  init = run((8,), name)["init"]
  model = MODELS[name]
  params, tables, losses = reference_train(model, init["params"], init["tables"], batches(), "sgd")
  forward = np.asarray(reference_logits(model, init["params"], init["tables"], batches()[0]))
  return {"forward": forward, "params": params, "tables": tables, "losses": np.asarray(losses)}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mesh_shape", MESHES, ids=["8", "2x4"])
def test_sharding_dense_variants_match_single_device(mesh_shape, name):
  r, ref = run(mesh_shape, name), reference(name)
  np.testing.assert_allclose(r["forward"], ref["forward"], atol=TOL, rtol=0)
  np.testing.assert_allclose(r["losses"], ref["losses"], atol=TOL, rtol=0)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=TOL, rtol=0), r["params"], ref["params"]
  )
  for t, (a, b, a0) in enumerate(zip(r["tables"], ref["tables"], r["init"]["tables"], strict=True)):
    assert a.shape == (ROWS[t], DIM)
    np.testing.assert_allclose(a, b, atol=TOL, rtol=0, err_msg=f"table {t}")
    # The row gradients passed through the cross / embedding MLP layers and are well above TOL.
    assert np.abs(a - a0).max() > 20 * TOL, f"table {t}"
  # The model's own parameters moved too (cross layers, deep and embedding MLPs).
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), r["params"], r["init"]["params"])
  assert min(jax.tree.leaves(moved)) > 0
