"""Module shapes and the reference initialisation."""

import jax
import jax.numpy as jnp
import numpy as np

from dlrm_jax.model.dlrm import DenseModel


def test_shapes_and_param_shapes():
  model = DenseModel(bottom_mlp=(32, 8), top_mlp=(16, 1), interaction="dot")
  params = model.init(jax.random.key(0), jnp.zeros((4, 13)), jnp.zeros((4, 26, 8)))["params"]
  out = model.apply({"params": params}, jnp.ones((4, 13)), jnp.ones((4, 26, 8)))
  assert out.shape == (4,)
  assert params["bottom_mlp"]["dense_0"]["kernel"].shape == (13, 32)
  assert params["bottom_mlp"]["dense_1"]["kernel"].shape == (32, 8)
  # Top input = 8 + 27*26/2 pairs.
  assert params["top_mlp"]["dense_0"]["kernel"].shape == (8 + 351, 16)


def test_cat_interaction_widths():
  model = DenseModel(bottom_mlp=(8,), top_mlp=(1,), interaction="cat")
  params = model.init(jax.random.key(0), jnp.zeros((2, 13)), jnp.zeros((2, 3, 4)))["params"]
  assert params["top_mlp"]["dense_0"]["kernel"].shape == (8 + 3 * 4, 1)


def test_reference_init_scales():
  model = DenseModel(bottom_mlp=(512, 256), top_mlp=(1,), interaction="cat")
  params = model.init(jax.random.key(0), jnp.zeros((1, 13)), jnp.zeros((1, 1, 256)))["params"]
  kernel = np.asarray(params["bottom_mlp"]["dense_1"]["kernel"])
  bias = np.asarray(params["bottom_mlp"]["dense_1"]["bias"])
  np.testing.assert_allclose(kernel.std(), np.sqrt(2 / (512 + 256)), rtol=0.02)
  np.testing.assert_allclose(bias.std(), np.sqrt(1 / 256), rtol=0.15)
  assert abs(kernel.mean()) < 0.002
