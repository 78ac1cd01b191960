"""DenseModel's forward pass against the NumPy transcription of the reference (dlrm_reference)."""

import dlrm_reference
import jax
import jax.numpy as jnp
import numpy as np

from dlrm_jax.model.dlrm import DenseModel


def test_dense_model_matches_numpy_reference():
  # test_model.py checks only shapes; this checks the values, end to end through the MLPs.
  rng = np.random.default_rng(0)
  tables = [rng.normal(size=(rows, 4)) for rows in (5, 9, 3)]
  dense = rng.normal(size=(6, 13))
  sparse = np.stack([rng.integers(0, t.shape[0], 6) for t in tables], axis=1)
  model = DenseModel(bottom_mlp=(16, 4), top_mlp=(8, 1), interaction="dot")
  emb = np.stack([t[sparse[:, k]] for k, t in enumerate(tables)], axis=1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 13)), jnp.zeros((1, 3, 4)))["params"]
  got = model.apply(
    {"params": params}, jnp.asarray(dense, jnp.float32), jnp.asarray(emb, jnp.float32)
  )
  want = dlrm_reference.forward(jax.tree.map(np.asarray, params), tables, dense, sparse)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
